"""Querying InfluxDB 2.x with influxdb-client: `query_client` builds its client, in one place.

Used by the dashboard (`dashboard.source.InfluxSource`) and `citystream report`
(`analysis.influx.KpiReader`); their failures are worded by `connectors.influxdb.errors`. The
open-data service queries over aiohttp instead (`opendata.store`), to stay on its event loop.
influxdb-client is imported only when a client is built: it is slow to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from influxdb_client.client.influxdb_client import InfluxDBClient


def query_client(url: str, token: str, org: str, timeout_s: float) -> InfluxDBClient:
    """An influxdb-client `InfluxDBClient` for `org` at `url`, each request bounded by
    `timeout_s`; close it (or use it as a context manager) when done."""
    from influxdb_client.client.influxdb_client import InfluxDBClient

    return InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000))
