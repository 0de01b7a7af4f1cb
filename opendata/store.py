"""Where the published points come from: a `Store` (InfluxDB, or `MemoryStore` in tests and
benchmarks).

`InfluxStore` runs the Flux of `opendata.queries` over HTTP (aiohttp, so a slow query never
blocks the server and a timeout really cancels it) with a READ-ONLY token, and parses InfluxDB's
annotated CSV into typed values. It reads the `kpi` bucket only; nothing here can read
`telemetry`. Every failure becomes `StoreError` (`StoreTimeout` when InfluxDB did not answer in
time) with a message for the operator's log (`connectors.influxdb.errors`); the public sees a
generic sentence.

`MemoryStore` holds points in memory and answers the same questions the same way, including the
`data_quality` aggregate of `sensor_quality` points (it is the oracle the integration tests
compare InfluxDB's answers with).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import aiohttp

from connectors.influxdb.errors import describe_http_error, describe_transport_error
from models.errors import CitystreamError
from opendata import queries
from opendata.datasets import DATA_QUALITY, SENSOR_QUALITY, Dataset
from opendata.tables import NS_PER_MS, Point, Value

_FLUX_COLUMNS: Final = frozenset({"", "result", "table", "_start", "_stop", "_time",
                                  "_measurement", "_field", "_value"})


class StoreError(CitystreamError):
    """InfluxDB failed to answer a query; the message is for the operator (no credentials)."""


class StoreTimeout(StoreError):
    """InfluxDB did not answer within the query timeout."""


class Store(Protocol):
    """The questions the open-data service asks; called from the event loop."""

    async def points(self, dataset: Dataset, start_ns: int, stop_ns: int,
                     limit: int) -> list[Point]:
        """At most `limit` points of `dataset` with window end in [start_ns, stop_ns), in no
        particular order."""
        ...

    async def latest(self, datasets: Sequence[Dataset], start_ns: int,
                     stop_ns: int) -> list[Point]:
        """Per entity of each dataset with a target, its newest point in [start_ns, stop_ns)
        with the target's fields (`queries.latest_fields`) of that point."""
        ...

    async def coverage(self, datasets: Sequence[Dataset], stop_ns: int,
                       ) -> dict[str, tuple[int, int]]:
        """Measurement -> (first, last) window end in ms, for datasets that have points."""
        ...

    async def close(self) -> None: ...


# -- InfluxDB's annotated CSV -----------------------------------------------------------------


def _rfc3339_ms(text: str) -> int:
    """`2026-10-01T00:15:00Z` or with up to 9 fraction digits, as epoch ms."""
    base, _, rest = text.partition(".")
    if rest:
        fraction = rest.rstrip("Zz")
        base += "+00:00"
        ms = int(fraction[:3].ljust(3, "0"))
    else:
        base = base.rstrip("Zz") + "+00:00"
        ms = 0
    return int(datetime.fromisoformat(base).timestamp()) * 1000 + ms


def _convert(kind: str, text: str) -> Any:
    if text == "":
        return None
    if kind in ("long", "unsignedLong"):
        return int(text)
    if kind == "double":
        return float(text)
    if kind == "boolean":
        return text == "true"
    if kind.startswith("dateTime"):
        return _rfc3339_ms(text)
    return text


def parse_annotated_csv(text: str) -> list[dict[str, Any]]:
    """InfluxDB's annotated CSV (`datatype` annotation, header) as rows of typed values; `_time`
    becomes epoch ms. An error table (`error`, `reference` columns) raises `StoreError`."""
    out: list[dict[str, Any]] = []
    types: list[str] = []
    header: list[str] | None = None
    for record in csv.reader(io.StringIO(text)):
        if not record or record == [""]:
            header = None
            continue
        if record[0] == "#datatype":
            types, header = record, None
            continue
        if record[0].startswith("#"):
            continue
        if header is None:
            header = record
            continue
        if "error" in header and "_time" not in header:
            message = record[header.index("error")] if len(record) > header.index("error") else ""
            raise StoreError(f"InfluxDB query failed: {message[:300]}")
        row = {name: _convert(types[i] if i < len(types) else "string", value)
               for i, (name, value) in enumerate(zip(header, record, strict=False))
               if name not in ("", "result", "table")}
        out.append(row)
    return out


def _point(row: Mapping[str, Any], fields: Iterable[str], measurement: str | None = None,
           ) -> Point | None:
    when = row.get("_time")
    if when is None:
        return None
    tags = {k: str(v) for k, v in row.items()
            if k not in _FLUX_COLUMNS and k not in fields and v is not None}
    values: dict[str, Value] = {f: row.get(f) for f in fields if row.get(f) is not None}
    return Point(measurement or str(row.get("_measurement", "")), int(when), tags, values)


def latest_points(rows: Iterable[Mapping[str, Any]], datasets: Sequence[Dataset]) -> list[Point]:
    """`last()` rows (one per series and field) as the newest point of each entity: the fields
    of the newest window end only (an older value of a field belongs to an older point)."""
    by_source = {d.source: d for d in datasets}
    grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[Mapping[str, Any]]] = (
        defaultdict(list))
    for row in rows:
        dataset = by_source.get(str(row.get("_measurement", "")))
        if dataset is None or row.get("_time") is None:
            continue
        tags = tuple(sorted((k, str(v)) for k, v in row.items()
                            if k not in _FLUX_COLUMNS and v is not None))
        grouped[(dataset.measurement, tags)].append(row)
    out = []
    for (measurement, tags), group in grouped.items():
        newest = max(int(r["_time"]) for r in group)
        fields = {str(r["_field"]): r["_value"] for r in group
                  if int(r["_time"]) == newest and r.get("_value") is not None}
        out.append(Point(measurement, newest, dict(tags), fields))
    return out


class InfluxStore:
    """`Store` over InfluxDB 2.x's HTTP query API (see module docstring)."""

    def __init__(self, url: str, org: str, token: str, bucket: str, *,
                 timeout_s: float = 10.0, token_setting: str = "CITYSTREAM_OPENDATA__TOKEN",
                 max_concurrent: int = 4) -> None:
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.timeout_s = timeout_s
        self.token_setting = token_setting
        self._headers = {"Authorization": f"Token {token}", "Accept": "application/csv",
                         "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(max_concurrent)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=16))
        return self._session

    async def query(self, flux: str) -> list[dict[str, Any]]:
        """Run one Flux query; rows of typed values (`parse_annotated_csv`)."""
        body = {"query": flux, "type": "flux",
                "dialect": {"annotations": ["datatype"], "header": True, "delimiter": ","}}
        try:
            async with (asyncio.timeout(self.timeout_s), self._slots,
                        self._client().post(f"{self.url}/api/v2/query",
                                            params={"org": self.org}, json=body) as resp):
                data = await resp.read()
                if resp.status != 200:
                    raise StoreError(describe_http_error(resp.status, data,
                                                         self.token_setting))
        except TimeoutError:
            raise StoreTimeout(f"InfluxDB at {self.url} did not answer within "
                               f"{self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise StoreError(describe_transport_error(exc, self.url)) from None
        except OSError as exc:
            raise StoreError(describe_transport_error(exc, self.url)) from None
        return parse_annotated_csv(data.decode("utf-8"))

    async def points(self, dataset: Dataset, start_ns: int, stop_ns: int,
                     limit: int) -> list[Point]:
        rows = await self.query(queries.points_query(self.bucket, dataset, start_ns, stop_ns,
                                                     limit))
        integers = {c.name for c in dataset.fields if c.type == "integer"}
        out = []
        for row in rows:
            point = _point(row, dataset.field_names, dataset.measurement)
            if point is None:
                continue
            fields = {name: int(value) if name in integers and isinstance(value, float)
                      and value.is_integer() else value     # data_quality's counts (queries)
                      for name, value in point.fields.items()}
            out.append(Point(point.measurement, point.time_ms, point.tags, fields))
        return out

    async def latest(self, datasets: Sequence[Dataset], start_ns: int,
                     stop_ns: int) -> list[Point]:
        targets = [d for d in datasets if d.target is not None]
        if not targets:
            return []
        rows = await self.query(queries.latest_query(self.bucket, targets, start_ns, stop_ns))
        return latest_points(rows, targets)

    async def coverage(self, datasets: Sequence[Dataset], stop_ns: int,
                       ) -> dict[str, tuple[int, int]]:
        rows = await self.query(queries.coverage_query(self.bucket, datasets, stop_ns))
        names = {d.source: d.measurement for d in datasets}
        firsts: dict[str, int] = {}
        lasts: dict[str, int] = {}
        for row in rows:
            name = names.get(str(row.get("_measurement")))
            when = row.get("_time")
            if name is None or when is None:
                continue
            if row.get("edge") == "first":
                firsts[name] = min(firsts.get(name, when), when)
            else:
                lasts[name] = max(lasts.get(name, when), when)
        return {n: (firsts[n], lasts.get(n, firsts[n])) for n in firsts}

    async def can_write(self) -> bool:
        """Whether the token may write the bucket (an empty write: nothing is stored). The
        open-data service refuses to run with such a token."""
        try:
            async with self._client().post(f"{self.url}/api/v2/write",
                                           params={"org": self.org, "bucket": self.bucket},
                                           data=b"") as resp:
                return resp.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StoreError(describe_transport_error(exc, self.url)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# -- in memory ------------------------------------------------------------------------------


class MemoryStore:
    """`Store` over points held in memory (tests, benchmarks); `add` them first."""

    def __init__(self) -> None:
        self._points: dict[str, dict[tuple[int, tuple[tuple[str, str], ...]],
                                     dict[str, Value]]] = defaultdict(dict)
        self.queries = 0
        self.closed = False
        self.fail: StoreError | None = None

    def add(self, measurement: str, time_ms: int, tags: Mapping[str, str],
            fields: Mapping[str, Value]) -> None:
        """Write a point; the same measurement, tags and time overwrite it field by field, as
        InfluxDB does."""
        key = (time_ms, tuple(sorted(tags.items())))
        self._points[measurement].setdefault(key, {}).update(
            {k: v for k, v in fields.items() if v is not None})

    def all(self, measurement: str) -> list[Point]:
        return [Point(measurement, t, dict(tags), dict(fields))
                for (t, tags), fields in self._points[measurement].items()]

    def _check(self) -> None:
        self.queries += 1
        if self.fail is not None:
            raise self.fail

    async def points(self, dataset: Dataset, start_ns: int, stop_ns: int,
                     limit: int) -> list[Point]:
        self._check()
        inside = [p for p in self.all(dataset.source)
                  if start_ns <= p.time_ms * NS_PER_MS < stop_ns]
        if dataset.measurement == DATA_QUALITY:
            inside = data_quality(inside)
        else:
            inside = [Point(dataset.measurement, p.time_ms, p.tags,
                            {k: v for k, v in p.fields.items() if k in dataset.field_names})
                      for p in inside]
            inside = [p for p in inside if p.fields]
        return inside[:limit]

    async def latest(self, datasets: Sequence[Dataset], start_ns: int,
                     stop_ns: int) -> list[Point]:
        self._check()
        out = []
        for dataset in datasets:
            if dataset.target is None:
                continue
            wanted = queries.latest_fields(dataset)
            newest: dict[tuple[tuple[str, str], ...], Point] = {}
            for p in self.all(dataset.source):
                if not start_ns <= p.time_ms * NS_PER_MS < stop_ns:
                    continue
                if not any(f in p.fields for f in wanted):
                    continue
                key = tuple(sorted(p.tags.items()))
                if key not in newest or p.time_ms > newest[key].time_ms:
                    newest[key] = p
            out += [Point(dataset.measurement, p.time_ms, p.tags,
                          {k: v for k, v in p.fields.items() if k in wanted})
                    for p in newest.values()]
        return out

    async def coverage(self, datasets: Sequence[Dataset], stop_ns: int,
                       ) -> dict[str, tuple[int, int]]:
        self._check()
        out = {}
        for dataset in datasets:
            times = [p.time_ms for p in self.all(dataset.source)
                     if p.time_ms * NS_PER_MS < stop_ns]
            if times:
                out[dataset.measurement] = (min(times), max(times))
        return out

    async def close(self) -> None:
        self.closed = True


def data_quality(points: Iterable[Point]) -> list[Point]:
    """`sensor_quality` points aggregated as `data_quality` rows (the Python twin of
    `queries.data_quality_query`)."""
    groups: dict[tuple[int, str, str, str], list[Point]] = defaultdict(list)
    for p in points:
        if not any(f in p.fields for f in ("readings", "rejected", "completeness_pct")):
            continue
        key = (p.time_ms, p.tags.get("kind", ""), p.tags.get("district", ""),
               p.tags.get("window", ""))
        groups[key].append(p)
    out = []
    for (when, kind, district, window), group in groups.items():
        fields: dict[str, Value] = {
            "sensors": len({p.tags.get("sensor_id") for p in group})}
        for name in ("readings", "rejected"):
            values = [int(v) for p in group if isinstance(v := p.fields.get(name), int)]
            if values:
                fields[name] = sum(values)
        shares = [float(v) for p in group
                  if isinstance(v := p.fields.get("completeness_pct"), int | float)]
        if shares:
            fields["completeness_pct"] = sum(shares) / len(shares)
        tags = {"kind": kind, "district": district, "window": window}
        out.append(Point(DATA_QUALITY, when, {k: v for k, v in tags.items() if v}, fields))
    return out


__all__ = ["SENSOR_QUALITY", "InfluxStore", "MemoryStore", "Store", "StoreError",
           "StoreTimeout", "data_quality", "latest_points", "parse_annotated_csv"]
