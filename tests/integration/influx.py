"""InfluxDB helpers for the analyst-facing tests: per-test buckets provisioned like `citystream
up` does, KPI records written through `to_line_protocol`, Flux and InfluxQL queries."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from influxdb_client import InfluxDBClient

from connectors.influxdb.admin import InfluxAdmin, ProvisionError
from connectors.influxdb.lineproto import to_line_protocol
from deploy.influxdb.provision import Bucket, Plan, provision
from deploy.local.stack import Stack
from models.records import Record

HOUR_MS = 3_600_000


@dataclass
class Influx:
    """One test's own buckets (`<prefix>-telemetry`, `-kpi`, `-kpi_1h`) in the session's org,
    with InfluxQL mappings and the roll-up task, exactly as onboarding makes them."""

    url: str
    org: str
    token: str
    plan: Plan
    task_id: str

    @property
    def admin(self) -> InfluxAdmin:
        return InfluxAdmin(self.url, self.token, timeout=60)

    @property
    def kpi(self) -> str:
        return self.plan.kpi.name

    def write(self, bucket: str, records: Iterable[Record]) -> None:
        lines = "\n".join(to_line_protocol(r) for r in records).encode()
        query = urllib.parse.urlencode({"org": self.org, "bucket": bucket, "precision": "ms"})
        req = urllib.request.Request(f"{self.url}/api/v2/write?{query}", data=lines,
                                     method="POST")
        req.add_header("Authorization", f"Token {self.token}")
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 204

    def flux(self, query: str) -> list[dict[str, Any]]:
        """Every row of every table, as dicts of column -> value."""
        with InfluxDBClient(url=self.url, token=self.token, org=self.org,
                            timeout=60_000) as client:
            tables = client.query_api().query(query)
        return [dict(rec.values) for table in tables for rec in table.records]

    def influxql(self, database: str, query: str) -> list[dict[str, Any]]:
        """InfluxQL through the v1 `/query` endpoint: every series, one dict per row, the
        series' tags included."""
        params = urllib.parse.urlencode({"db": database, "q": query, "epoch": "ms"})
        req = urllib.request.Request(f"{self.url}/query?{params}")
        req.add_header("Authorization", f"Token {self.token}")
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.loads(resp.read())
        rows = []
        for result in body["results"]:
            assert "error" not in result, result["error"]
            for series in result.get("series", []):
                for values in series["values"]:
                    rows.append({**series.get("tags", {}), **dict(zip(series["columns"],
                                                                      values, strict=True))})
        return rows

    def run_task(self, scheduled_for_ms: int, timeout: float = 60.0) -> dict[str, Any]:
        """Run the roll-up task now as if scheduled at `scheduled_for_ms` (its `now()`)."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(scheduled_for_ms / 1000))
        run = self.admin.call("POST", f"/api/v2/tasks/{self.task_id}/runs",
                              {"scheduledFor": when})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state: dict[str, Any] = self.admin.call(
                    "GET", f"/api/v2/tasks/{self.task_id}/runs/{run['id']}")
            except ProvisionError as exc:  # between "running" and the run log: briefly 404
                if "HTTP 404" not in str(exc):
                    raise
            else:
                if state["status"] not in ("scheduled", "started"):
                    return state
            time.sleep(0.3)
        raise AssertionError(f"task run {run['id']} did not finish in {timeout:.0f}s")


def influx_for_test(stack: Stack, kpi_retention_s: int = 400 * 86400) -> Influx:
    """Provision a fresh set of buckets for one test."""
    info = stack.client_info()["influxdb"]
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    plan = Plan(info["org"], Bucket(f"{prefix}-telemetry", 7 * 86400),
                Bucket(f"{prefix}-kpi", kpi_retention_s), Bucket(f"{prefix}-kpi_1h", 0))
    task_id = provision(InfluxAdmin(info["url"], info["token"], timeout=60), plan)
    return Influx(info["url"], info["org"], info["token"], plan, task_id)


def hour_floor(ms: int) -> int:
    return ms // HOUR_MS * HOUR_MS
