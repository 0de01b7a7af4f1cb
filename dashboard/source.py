"""Where the dashboard's rows come from: a `FluxSource` (InfluxDB, or a fake in tests).

`InfluxSource` runs a Flux query with influxdb-client (`connectors.influxdb.query`) and returns
plain rows (see `dashboard.queries.Row`). Every failure becomes `SourceError` with a short
message an operator can act on; the message is shown on the page, so it is built
(`connectors.influxdb.errors`) from the status code and the server's own message, never from the
request (which carries the token).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import urllib3

from connectors.influxdb.errors import describe_http_error, describe_transport_error
from connectors.influxdb.query import query_client
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


class InfluxSource:
    """`FluxSource` over InfluxDB 2.x (influxdb-client's synchronous query API)."""

    def __init__(self, url: str, org: str, token: str, *, timeout_s: float = 10.0,
                 token_setting: str = "CITYSTREAM_DASHBOARD__TOKEN") -> None:
        self.url = url
        self.token_setting = token_setting
        self._client = query_client(url, token, org, timeout_s)
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
