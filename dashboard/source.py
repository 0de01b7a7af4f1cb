"""Where the dashboard's rows come from: a `FluxSource` (InfluxDB, or a fake in tests).

`InfluxSource` runs a Flux query with influxdb-client and returns plain rows (see
`dashboard.queries.Row`). Every failure becomes `SourceError` with a short message an operator
can act on; the message is shown on the page, so it is built here from the status code and the
server's own message, never from the request (which carries the token).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import orjson
import urllib3

from dashboard.queries import Row
from models.errors import CitystreamError

log = logging.getLogger(__name__)


class SourceError(CitystreamError):
    """A query failed; the message is safe to show (no credentials)."""


class FluxSource(Protocol):
    """Runs one Flux query; called from a worker thread, one query at a time."""

    def query(self, flux: str) -> list[Row]: ...

    def close(self) -> None: ...


def rows_from_tables(tables: Any) -> list[Row]:
    """influxdb-client `FluxTable`s as rows: the record's columns plus `time_ms`."""
    rows: list[Row] = []
    for table in tables:
        for record in table.records:
            values = {k: v for k, v in record.values.items() if k not in ("_start", "_stop")}
            when = values.pop("_time", None)
            if when is None:
                continue
            values["time_ms"] = int(when.timestamp() * 1000)
            rows.append(values)
    return rows


def describe_http_error(status: int, body: bytes | str | None, token_setting: str) -> str:
    """An operator's sentence for an InfluxDB HTTP error answer."""
    message = ""
    if body:
        try:
            message = str(orjson.loads(body).get("message", ""))
        except (orjson.JSONDecodeError, AttributeError):
            message = ""
    if status in (401, 403):
        return (f"InfluxDB refused the token (HTTP {status}): check {token_setting} "
                "(it needs read access to the kpi bucket)")
    if status == 404:
        return (f"InfluxDB: {message or 'not found'} (HTTP 404): check CITYSTREAM_INFLUX__ORG "
                "and CITYSTREAM_INFLUX__BUCKET_KPI")
    return f"InfluxDB answered HTTP {status}" + (f": {message}" if message else "")


def describe_transport_error(exc: BaseException, url: str) -> str:
    """An operator's sentence for a failure to talk to InfluxDB at all."""
    reason = getattr(exc, "reason", None) or exc
    text = type(reason).__name__
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        text = "host name not found"
    elif isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError):
        text = "no answer in time"
    elif isinstance(reason, urllib3.exceptions.ProtocolError | ConnectionError):
        text = "connection dropped"
    return f"cannot reach InfluxDB at {url}: {text}"


class InfluxSource:
    """`FluxSource` over InfluxDB 2.x (influxdb-client's synchronous query API)."""

    def __init__(self, url: str, org: str, token: str, *, timeout_s: float = 10.0,
                 token_setting: str = "CITYSTREAM_DASHBOARD__TOKEN") -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient

        self.url = url
        self.token_setting = token_setting
        self._client = InfluxDBClient(url=url, token=token, org=org,
                                      timeout=int(timeout_s * 1000))
        self._api = self._client.query_api()

    def query(self, flux: str) -> list[Row]:
        from influxdb_client.rest import ApiException

        try:
            tables = self._api.query(flux)
        except ApiException as exc:
            raise SourceError(describe_http_error(int(exc.status or 0), exc.body,
                                                  self.token_setting)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SourceError(describe_transport_error(exc, self.url)) from None
        return rows_from_tables(tables)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]
