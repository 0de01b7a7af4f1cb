"""InfluxDB as the benchmark sees it from outside: buckets per measurement, point counts, and the
pollers that note when probe readings and KPI windows become visible to a query."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import urllib3

RAW_FIELDS = ("volume_m3", "energy_kwh", "vehicle_count", "battery_pct")
"""One field every raw point of its kind has: counting these counts raw points."""
KPI_FIELDS = ("consumption_l", "energy_kwh", "vehicles", "boardings")
"""One field every KPI point of its kind has."""


class Influx:
    """A small InfluxDB 2.x HTTP client (Flux queries as CSV, bucket admin)."""

    def __init__(self, url: str, org: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.org = org
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        self.http = urllib3.PoolManager(maxsize=4, timeout=urllib3.Timeout(connect=5, read=120))
        self._org_id: str | None = None

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.http.request(method, self.url + path, headers=self.headers,
                                 body=orjson.dumps(body) if body is not None else None)
        if resp.status >= 300:
            raise RuntimeError(f"InfluxDB {method} {path}: {resp.status} {resp.data[:300]!r}")
        return orjson.loads(resp.data) if resp.data else None

    def query(self, flux: str) -> list[dict[str, str]]:
        """Rows of a Flux query's CSV answer (all tables together)."""
        resp = self.http.request(
            "POST", f"{self.url}/api/v2/query?org={self.org}", headers=self.headers,
            body=orjson.dumps({"query": flux, "type": "flux",
                               "dialect": {"header": True, "annotations": []}}))
        if resp.status >= 300:
            raise RuntimeError(f"Flux query failed: {resp.status} {resp.data[:300]!r}")
        rows: list[dict[str, str]] = []
        for block in resp.data.decode().split("\r\n\r\n"):
            if block.strip():
                rows.extend(csv.DictReader(io.StringIO(block)))
        return rows

    def org_id(self) -> str:
        if self._org_id is None:
            self._org_id = str(self._json("GET", f"/api/v2/orgs?org={self.org}")["orgs"][0]["id"])
        return self._org_id

    def create_bucket(self, name: str) -> str:
        made = self._json("POST", "/api/v2/buckets",
                          {"orgID": self.org_id(), "name": name, "retentionRules": []})
        return str(made["id"])

    def delete_bucket(self, name: str) -> None:
        found = self._json("GET", f"/api/v2/buckets?name={name}&orgID={self.org_id()}")
        for bucket in found.get("buckets", []):
            self._json("DELETE", f"/api/v2/buckets/{bucket['id']}")

    def count(self, bucket: str, fields: tuple[str, ...] = RAW_FIELDS) -> int:
        """Points in `bucket` that have one of `fields` (raw points by default)."""
        cond = " or ".join(f'r._field == "{f}"' for f in fields)
        rows = self.query(f'from(bucket: "{bucket}") |> range(start: 0) '
                          f'|> filter(fn: (r) => {cond}) |> group() |> count()')
        return sum(int(r["_value"]) for r in rows if r.get("_value"))


def _ms(rfc3339: str) -> int:
    """Flux `_time` (RFC 3339, UTC, up to ns) as epoch ms."""
    from datetime import datetime

    head, _, frac = rfc3339.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00")
    return int(base.timestamp()) * 1000 + int((frac + "000")[:3])


@dataclass
class Visibility:
    """When each awaited item was first seen in a query; `resolution_s` bounds how late that
    note can be (the time between the two polls around it)."""

    seen: dict[Any, float] = field(default_factory=dict)
    polls: int = 0
    resolution_s: float = 0.0
    errors: int = 0


class ProbePoller(threading.Thread):
    """Polls the raw bucket for the probe readings the publisher reports (`add`).

    Each poll asks only for probe points from the oldest one not yet seen onwards, so a poll
    stays small while the pipeline keeps up. A point first returned by a poll that *ended* at t
    is noted as visible at t: never earlier than the truth, at most one poll cycle later
    (`resolution_s` is the longest cycle).
    """

    def __init__(self, influx: Influx, bucket: str, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.influx = influx
        self.bucket = bucket
        self.interval_s = interval_s
        self.published: dict[tuple[str, int], float] = {}
        self.result = Visibility()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._outstanding: deque[tuple[str, int]] = deque()

    def add(self, probes: list[tuple[str, int, float]]) -> None:
        """Probe readings just published: (sensor_id, ts_ms, wall-clock publish time)."""
        with self._lock:
            for sid, ts, at in probes:
                self.published[(sid, ts)] = at
                self._outstanding.append((sid, ts))

    def outstanding(self) -> int:
        with self._lock:
            return sum(1 for key in self._outstanding if key not in self.result.seen)

    def _since_ms(self) -> int | None:
        with self._lock:
            queue = self._outstanding
            while queue and queue[0] in self.result.seen:
                queue.popleft()
            if not queue:
                return None
            return min(ts for _, ts in itertools.islice(queue, 500)) - 1000

    def run(self) -> None:
        last_end = time.time()
        while not self.stop_event.is_set():
            started = time.time()
            since = self._since_ms()
            rows: list[dict[str, str]] = []
            if since is not None:
                try:
                    rows = self.influx.query(
                        f'from(bucket: "{self.bucket}") |> range(start: time(v: '
                        f'{since * 1_000_000})) |> filter(fn: (r) => r._measurement == "water" '
                        f'and r._field == "volume_m3" and r.sensor_id =~ /^probe-/) '
                        f'|> keep(columns: ["_time", "sensor_id"])')
                except Exception:  # an overloaded InfluxDB may time out
                    self.result.errors += 1
            ended = time.time()
            self.result.polls += 1
            self.result.resolution_s = max(self.result.resolution_s, ended - last_end)
            last_end = ended
            seen = self.result.seen
            with self._lock:
                for row in rows:
                    key = (row["sensor_id"], _ms(row["_time"]))
                    if key in self.published and key not in seen:
                        seen[key] = ended
            self.stop_event.wait(max(0.0, self.interval_s - (time.time() - started)))

    def latencies(self) -> list[float]:
        """Seconds from publish to first seen, per probe reading seen so far."""
        with self._lock:
            return [at - self.published[key] for key, at in self.result.seen.items()]

    def stop(self) -> Visibility:
        self.stop_event.set()
        self.join(30)
        return self.result


class KpiPoller(threading.Thread):
    """Polls the KPI bucket for KPI points with window end >= `since_ms`; notes when each
    (measurement, entity, window end) was first seen (`result.seen`) and when its value last
    changed (`changed`): a window can be written early (the worker's quiet-key timer) and
    rewritten once final."""

    def __init__(self, influx: Influx, bucket: str, since_ms: int,
                 interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.influx = influx
        self.bucket = bucket
        self.since_ms = since_ms
        self.interval_s = interval_s
        self.result = Visibility()
        self.changed: dict[Any, float] = {}
        self.values: dict[Any, str] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        cond = " or ".join(f'r._field == "{f}"' for f in KPI_FIELDS)
        flux = (f'from(bucket: "{self.bucket}") |> range(start: time(v: '
                f'{self.since_ms * 1_000_000})) |> filter(fn: (r) => {cond}) '
                f'|> keep(columns: ["_time", "_value", "_measurement", "district", "junction", '
                f'"route"])')
        last_end = time.time()
        while not self.stop_event.is_set():
            started = time.time()
            try:
                rows = self.influx.query(flux)
            except Exception:  # poll again
                self.result.errors += 1
                rows = []
            ended = time.time()
            self.result.polls += 1
            self.result.resolution_s = max(self.result.resolution_s, ended - last_end)
            last_end = ended
            for row in rows:
                entity = row.get("junction") or row.get("route") or row.get("district") or ""
                key = (row["_measurement"], entity, _ms(row["_time"]))
                self.result.seen.setdefault(key, ended)
                if self.values.get(key) != row["_value"]:
                    self.values[key] = row["_value"]
                    self.changed[key] = ended
            self.stop_event.wait(max(0.0, self.interval_s - (time.time() - started)))

    def stop(self) -> Visibility:
        self.stop_event.set()
        self.join(30)
        return self.result


class WriteCounter(threading.Thread):
    """Samples InfluxDB's own count of points written (`storage_writer_ok_points_sum` on
    /metrics, all buckets) every `interval_s`: cheap at any data size, unlike a Flux count."""

    def __init__(self, influx: Influx, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.influx = influx
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()
        self.base = self.read()

    def read(self) -> float:
        resp = self.influx.http.request("GET", self.influx.url + "/metrics")
        for line in resp.data.decode().splitlines():
            if line.startswith("storage_writer_ok_points_sum"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.time()
            with contextlib.suppress(Exception):  # sample again
                self.samples.append((t, self.read() - self.base))
            self.stop_event.wait(self.interval_s)

    def written(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def wait_for(self, points: float, timeout_s: float, idle_s: float = 0.0) -> bool:
        """Until `points` were written (True) or `timeout_s` passed; with `idle_s`, also give
        up when nothing more was written for that long."""
        deadline = time.time() + timeout_s
        last_change, last = time.time(), -1.0
        while time.time() < deadline:
            now = self.written()
            if now >= points:
                return True
            if now != last:
                last, last_change = now, time.time()
            elif idle_s and time.time() - last_change > idle_s:
                return False
            time.sleep(0.2)
        return False

    def stop(self) -> list[tuple[float, float]]:
        self.stop_event.set()
        self.join(10)
        return self.samples
