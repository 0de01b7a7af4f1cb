"""Reading KPI windows back from InfluxDB's `kpi` bucket as `models.records` objects."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any, TypeVar

from dashboard.queries import flux_string
from models.errors import CitystreamError
from models.records import Kpi
from models.settings import InfluxSettings

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Kpi)


class ReadError(CitystreamError):
    """InfluxDB could not be read; the message says which setting to check."""


def _flux_time(ms: int) -> str:
    return f"time(v: {ms * 1_000_000})"


def _column(name: str) -> str:
    """`r.name` for a tag name (an identifier: tag names come from the contract and from
    feed declarations, whose names are identifiers too)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a tag name")
    return f"r.{name}"


def _any_of(tag: str, values: frozenset[str]) -> str:
    """`r.tag == "a" or r.tag == "b"`: InfluxDB pushes this down to storage (contains() would
    run per row, 40 times slower). Values are Flux string literals, escaped."""
    return " or ".join(f"{_column(tag)} == {flux_string(v)}" for v in sorted(values))


def kpi_query(bucket: str, measurement: str, start_ms: int, stop_ms: int,
              where: dict[str, frozenset[str]] | None = None) -> str:
    """Flux for the points of `measurement` whose window ends in (start_ms, stop_ms], one row
    per point with its fields as columns; `where` keeps only these tag values (an empty set
    keeps none). Bucket, measurement and tag values are escaped Flux strings."""
    filters = "".join(f"\n  |> filter(fn: (r) => {_any_of(tag, values)})"
                      for tag, values in sorted((where or {}).items()))
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: {_flux_time(start_ms + 1)}, stop: {_flux_time(stop_ms + 1)})\n"
            f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)}){filters}\n"
            f'  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")')


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
        self.timeout_ms = int(timeout_s * 1000)

    def records(self, cls: type[K], start_ms: int, stop_ms: int,
                where: dict[str, frozenset[str]] | None = None) -> list[K]:
        """The `cls` points whose window ends in (start_ms, stop_ms], oldest first."""
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        if where and not all(where.values()):
            return []
        query = kpi_query(self.s.bucket_kpi, cls.measurement, start_ms, stop_ms, where)
        token = self.token
        out: list[K] = []
        skipped = 0
        try:
            with InfluxDBClient(url=self.s.url, token=token, org=self.s.org,
                                timeout=self.timeout_ms) as client:
                for rec in client.query_api().query_stream(query):
                    try:
                        out.append(to_record(cls, rec.values))
                    except ValueError as exc:
                        skipped += 1
                        log.debug("skipping %s point at %s: %s", cls.measurement,
                                  rec.get_time(), exc)
        except ApiException as exc:
            raise ReadError(f"InfluxDB {self.s.url} refused the query (HTTP {exc.status}: "
                            f"{exc.body or exc.reason}); check CITYSTREAM_INFLUX__TOKEN, __ORG "
                            f"and __BUCKET_KPI") from None
        except (HTTPError, OSError) as exc:
            raise ReadError(f"cannot reach InfluxDB at {self.s.url} ({exc}); check "
                            "CITYSTREAM_INFLUX__URL") from None
        if skipped:
            log.warning("skipped %d %s points that do not match the contract (debug log has "
                        "why)", skipped, cls.measurement)
        out.sort(key=lambda r: r.time_ms)
        return out
