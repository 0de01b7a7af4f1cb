"""Reading KPI windows back from InfluxDB's `kpi` bucket as `models.records` objects, and each
sensor's `sensor_quality` over a period, aggregated by InfluxDB (`quality_query`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final, TypeVar

from connectors.influxdb.errors import describe_http_error, describe_transport_error
from connectors.influxdb.flux import flux_any_of, flux_string
from connectors.influxdb.query import query_client
from models.errors import CitystreamError
from models.records import Kpi
from models.settings import InfluxSettings

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Kpi)
_TOKEN_SETTINGS = "CITYSTREAM_INFLUX__READ_TOKEN or CITYSTREAM_INFLUX__TOKEN"


class ReadError(CitystreamError):
    """InfluxDB could not be read; the message says which setting to check."""


def _flux_time(ms: int) -> str:
    return f"time(v: {ms * 1_000_000})"


def kpi_query(bucket: str, measurement: str, start_ms: int, stop_ms: int,
              where: dict[str, frozenset[str]] | None = None) -> str:
    """Flux for the points of `measurement` whose window ends in (start_ms, stop_ms], one row
    per point with its fields as columns; `where` keeps only these tag values (an empty set
    keeps none). Bucket, measurement and tag values are escaped Flux strings; a tag name must be
    an identifier (tag names come from the contract and from feed declarations)."""
    filters = "".join(f"\n  |> filter(fn: (r) => {flux_any_of(tag, sorted(values))})"
                      for tag, values in sorted((where or {}).items()))
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: {_flux_time(start_ms + 1)}, stop: {_flux_time(stop_ms + 1)})\n"
            f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)}){filters}\n"
            f'  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')


QUALITY_SUMS: Final = ("readings", "duplicates", "rejected", "late")
QUALITY_MEANS: Final = ("completeness_pct", "score")


def quality_query(bucket: str, start_ms: int, stop_ms: int, min_score: float,
                  where: dict[str, frozenset[str]] | None = None) -> str:
    """Flux for each sensor's `sensor_quality` hours ending in (start_ms, stop_ms]: one row per
    sensor (`kind`, `district`, `sensor_id`) with, as floats, the sums of `QUALITY_SUMS`, the
    means of `QUALITY_MEANS`, `hours` (hours with a score), `hours_below` (scored below
    `min_score`), `lowest_score` and `stuck_hours`; a column is missing when no hour had its
    field. `where` keeps only these values of the `kind` and `district` tags (escaped)."""
    start, stop = _flux_time(start_ms + 1), _flux_time(stop_ms + 1)
    tags = "".join(f"\n  |> filter(fn: (r) => {flux_any_of(tag, sorted(values))})"
                   for tag, values in sorted((where or {}).items()))

    def read(fields: tuple[str, ...]) -> str:
        # one storage read per branch: a shared one would make InfluxDB type-check every
        # field's values against the branches' expressions
        return (f"from(bucket: {flux_string(bucket)})\n"
                f"  |> range(start: {start}, stop: {stop})\n"
                '  |> filter(fn: (r) => r._measurement == "sensor_quality" and r.window == "1h" '
                f"and ({flux_any_of('_field', fields)})){tags}")

    renamed = '\n  |> set(key: "_field", value: "{}")'
    branches = [
        f"{read(QUALITY_SUMS)}\n  |> sum()\n  |> toFloat()",
        f"{read(QUALITY_MEANS)}\n  |> mean()",
        f"{read(('score',))}\n  |> count()\n  |> toFloat(){renamed.format('hours')}",
        f"{read(('score',))}\n  |> map(fn: (r) => ({{r with _value: if r._value < "
        f"{float(min_score):.6f} then 1.0 else 0.0}}))\n  |> sum(){renamed.format('hours_below')}",
        f"{read(('score',))}\n  |> min(){renamed.format('lowest_score')}",
        f"{read(('stuck',))}\n  |> map(fn: (r) => ({{r with _value: if r._value then 1.0 "
        f"else 0.0}}))\n  |> sum(){renamed.format('stuck_hours')}",
    ]
    names = ", ".join(f"t{i}" for i in range(len(branches)))
    return ("\n".join(f"t{i} = {b}" for i, b in enumerate(branches))
            + f"\nunion(tables: [{names}])\n"
            '  |> group(columns: ["kind", "district", "sensor_id"])\n'
            '  |> pivot(rowKey: ["kind", "district", "sensor_id"], columnKey: ["_field"], '
            'valueColumn: "_value")')


def to_record(cls: type[K], row: dict[str, Any]) -> K:
    """A pivoted row as a record; a field missing from the point is None (undefined) or, when
    the record has one, its default (a feed's `target`)."""
    when: datetime = row["_time"]
    data: dict[str, Any] = {name: value for name in (*cls.tag_names, *cls.field_names())
                            if (value := row.get(name)) is not None}
    data[cls.time_field] = int(when.timestamp() * 1000)
    return cls.model_validate(data, strict=False)


class KpiReader:
    """Reads KPI records from the `kpi` bucket of `settings` (token, org, URL)."""

    def __init__(self, settings: InfluxSettings, timeout_s: float = 120.0) -> None:
        self.token = next((t.get_secret_value() for t in (settings.read_token, settings.token)
                           if t is not None and t.get_secret_value()), "")
        if not self.token:
            raise ReadError("no InfluxDB token: set CITYSTREAM_INFLUX__READ_TOKEN (or "
                            'CITYSTREAM_INFLUX__TOKEN); eval "$(citystream env)" for the local '
                            "stack")
        self.s = settings
        self.timeout_s = timeout_s

    def records(self, cls: type[K], start_ms: int, stop_ms: int,
                where: dict[str, frozenset[str]] | None = None) -> list[K]:
        """The `cls` points whose window ends in (start_ms, stop_ms], oldest first."""
        if where and not all(where.values()):
            return []
        query = kpi_query(self.s.bucket_kpi, cls.measurement, start_ms, stop_ms, where)
        out: list[K] = []
        skipped = 0
        for values in self._rows(query):
            try:
                out.append(to_record(cls, values))
            except ValueError as exc:
                skipped += 1
                log.debug("skipping %s point at %s: %s", cls.measurement, values.get("_time"),
                          exc)
        if skipped:
            log.warning("skipped %d %s points that do not match the contract (debug log has "
                        "why)", skipped, cls.measurement)
        out.sort(key=lambda r: r.time_ms)
        return out

    def sensor_quality(self, start_ms: int, stop_ms: int, min_score: float,
                       where: dict[str, frozenset[str]] | None = None) -> list[dict[str, Any]]:
        """Each sensor's `sensor_quality` hours ending in (start_ms, stop_ms], as the rows of
        `quality_query`."""
        if where and not all(where.values()):
            return []
        query = quality_query(self.s.bucket_kpi, start_ms, stop_ms, min_score, where)
        return list(self._rows(query))

    def _rows(self, query: str) -> Iterator[dict[str, Any]]:
        """Every row `query` answers, its columns by name; InfluxDB's failures as `ReadError`."""
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            with query_client(self.s.url, self.token, self.s.org, self.timeout_s) as client:
                for rec in client.query_api().query_stream(query):
                    yield rec.values
        except ApiException as exc:
            raise ReadError(describe_http_error(int(exc.status or 0), exc.body,
                                                _TOKEN_SETTINGS)) from None
        except (HTTPError, OSError) as exc:
            raise ReadError(describe_transport_error(exc, self.s.url,
                                                     "CITYSTREAM_INFLUX__URL")) from None
