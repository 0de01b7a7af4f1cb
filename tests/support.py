"""What the tests and the benchmarks share: the process harness, fake KPI data and the small
pieces of protocol both speak. Imported as `tests.support` from the repository root (pytest's
`pythonpath`, `python -m bench...`); never installed with citystream.

- `Process` runs a program as a child with its output in a log file, `IngestProcess` and
  `WorkerProcess` are `citystream ingest` and `citystream worker` on a stack, `stop_all`
  stops whatever is still running;
- `create_bucket`, `influx_points`, `new_bucket` (a bucket with a read-only token of its own),
  and `city_kpis` / `feed_kpis`: plausible KPI points for every entity of a city;
- `varint`: MQTT's variable byte integer, for hand-made MQTT packets.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from influxdb_client.client.influxdb_client import InfluxDBClient
from pydantic import SecretStr

from connectors.influxdb.lineproto import to_line_protocol
from connectors.influxdb.write import InfluxWriter
from deploy.influxdb.provision import read_authorization
from deploy.local.stack import Stack
from deploy.local.supervision import in_netns
from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.city import City
from models.feeds import FeedSpec, kpi_model
from models.records import Alert, PipelineCounters, Record
from models.settings import InfluxSettings

ROOT = Path(__file__).resolve().parents[1]

# -- processes --------------------------------------------------------------------------------

_RUNNING: list[Process] = []


def stop_all() -> None:
    """Stop every process started here and not stopped since (after a failed measurement)."""
    while _RUNNING:
        _RUNNING[-1].stop(timeout_s=15)


class Process:
    """A program run as a child process in a session of its own, its output appended to `log`.

    `start` returns once `ready` appears in what the program logged since (at once without
    `ready`), and raises with the log's tail if it exits or takes longer than
    `start_timeout_s`. `stop` sends SIGTERM to its process group and SIGKILL when it is still
    there after `timeout_s`. A stopped or killed process can be started again. With `netns`
    set it runs in that network namespace (`deploy.local.supervision.in_netns`: same pid).
    """

    start_timeout_s = 120.0
    netns: str | None = None

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log: Path,
                 ready: str | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log = log
        self.ready = ready
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._offset = 0

    def argv(self) -> list[str]:
        return self.command

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self, *, wait: bool = True) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        argv = in_netns(self.netns, self.argv()) if self.netns else self.argv()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         start_new_session=True)
        self.started_at = time.time()
        _RUNNING.append(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        if self.ready is None:
            return
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"{self.name} exited ({code}) during start-up; its log "
                                   f"{self.log} ends:\n{self.tail()}")
            with self.log.open("rb") as f:
                f.seek(self._offset)
                if self.ready.encode() in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start within {timeout_s:.0f} s; its log "
                           f"{self.log} ends:\n{self.tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(timeout_s=0.1, sig=signal.SIGKILL)


class IngestProcess(Process):
    """`citystream ingest --instance <instance>` with `stack`'s service environment plus
    `extra_env`, logging to `<log_dir>/ingest-<instance>.log`; counters every second, and it
    leaves its MQTT session on SIGTERM unless `extra_env` says otherwise."""

    component = "ingest"
    verbosity = "-v"  # "-vv" logs at DEBUG
    start_timeout_s = 90.0

    def __init__(self, stack: Stack, instance: str = "0", *, log_dir: Path,
                 extra_env: Mapping[str, str] | None = None) -> None:
        env = {**os.environ, **stack.service_env(), **(extra_env or {}),
               "CITYSTREAM_INGEST_COUNTERS_INTERVAL": "1"}
        env.setdefault("CITYSTREAM_INGEST_LEAVE_ON_EXIT", "1")
        name = f"{self.component}-{instance}"
        super().__init__(name, (), env, log_dir / f"{name}.log",
                         ready=f"{self.component} {instance} running")
        self.stack = stack
        self.instance = instance

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "citystream", self.verbosity, self.component,
                "--instance", self.instance]


class WorkerProcess(IngestProcess):
    """`citystream worker` as `IngestProcess` runs ingest, its RocksDB state under `log_dir`."""

    component = "worker"
    # A worker replays the changelogs past its stores first (all of them, when it has none):
    # on a busy machine a full rebuild alone has taken more than 90 s.
    start_timeout_s = 300.0

    def argv(self) -> list[str]:
        return [*super().argv(), "--data-dir", str(self.log.parent / "worker-state"),
                "--quiet", "3"]


# -- MQTT -------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (a packet's remaining length, a property length)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# -- InfluxDB ---------------------------------------------------------------------------------

Point = tuple[str, tuple[tuple[str, str], ...], int]
"""(measurement, sorted (tag, value) pairs, time in ms)."""
ALL_TIME = "range(start: 0, stop: 2200-01-01T00:00:00Z)"
"""Flux range of every point, also those stamped in the future (a KPI point is stamped at the
end of its window: the current window's is a few minutes ahead)."""
KPI_MEASUREMENTS = ("water_kpi", "energy_kpi", "traffic_kpi", "shuttle_kpi")


def _client(stack: Stack, timeout_ms: int = 10_000) -> InfluxDBClient:
    info = stack.client_info()["influxdb"]
    return InfluxDBClient(url=info["url"], token=info["token"], org=info["org"],
                          timeout=timeout_ms)


def influx_points(stack: Stack, bucket: str,
                  measurements: tuple[str, ...] = KPI_MEASUREMENTS) -> dict[Point, dict[str, Any]]:
    """Every point of `measurements` in `bucket`: (measurement, sorted tags, ms) -> fields."""
    names = " or ".join(f'r._measurement == "{m}"' for m in measurements)
    query = f'from(bucket: "{bucket}") |> {ALL_TIME} |> filter(fn: (r) => {names})'
    points: dict[Point, dict[str, Any]] = {}
    with _client(stack, 60_000) as client:
        for table in client.query_api().query(query):
            for rec in table.records:
                tags = tuple(sorted((k, str(v)) for k, v in rec.values.items()
                                    if not k.startswith("_") and k not in ("result", "table")))
                ts_ms = int(rec.get_time().timestamp() * 1000)
                points.setdefault((rec.get_measurement(), tags, ts_ms), {})[
                    rec.get_field()] = rec.get_value()
    return points


def create_bucket(stack: Stack, name: str) -> None:
    info = stack.client_info()["influxdb"]
    with _client(stack) as client:
        client.buckets_api().create_bucket(bucket_name=name, org=info["org"])


@dataclass
class Bucket:
    """A bucket of its own (for one test or measurement) with a token that may only read it."""

    stack: Stack
    name: str
    read_token: str

    @property
    def influx(self) -> InfluxSettings:
        info = self.stack.client_info()["influxdb"]
        return InfluxSettings(url=info["url"], org=info["org"], token=SecretStr(info["token"]),
                              bucket_kpi=self.name)

    def write(self, records: list[Record]) -> None:
        """Write through the sink's own path: `to_line_protocol` and `InfluxWriter`."""
        self.write_lines([to_line_protocol(r) for r in records])

    def write_lines(self, lines: list[str]) -> None:
        writer = InfluxWriter(self.influx)
        try:
            writer.write(self.name, lines)
        finally:
            writer.close()

    def latest(self, measurement: str, tag: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """The newest point per `tag` value, read back from InfluxDB with the admin token."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for (_m, tags, ts), fields in influx_points(self.stack, self.name, (measurement,)).items():
            key = dict(tags)[tag]
            if key not in out or ts > out[key][0]:
                out[key] = (ts, fields)
        return out


def new_bucket(stack: Stack) -> Bucket:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    create_bucket(stack, name)
    info = stack.client_info()["influxdb"]
    with _client(stack) as client:
        bucket = client.buckets_api().find_bucket_by_name(name)
        org_id, bucket_id = str(bucket.org_id), str(bucket.id)
    token = read_authorization(info["url"], info["token"], org_id, [bucket_id],
                               f"dashboard test {name}")
    return Bucket(stack, name, token)


# -- KPI points -------------------------------------------------------------------------------

MIN = 60_000


def city_kpis(city: City, end_ms: int, hours: int = 3, seed: int = 5,
              skip_districts: tuple[str, ...] = ()) -> list[Record]:
    """Plausible KPI points for every entity of `city` over the `hours` before `end_ms`
    (window ends aligned), plus two active alerts, one cleared alert and pipeline counters."""
    rnd = random.Random(seed)
    out: list[Record] = []
    for i, d in enumerate(city.districts):
        if d.slug in skip_districts:
            continue
        for minutes in (15, 30):
            step = minutes * MIN
            last = end_ms // step * step
            for k in range(hours * 60 // minutes):
                t = last - k * step
                s24 = 10 + 4 * i + 3 * math.sin(k / 5) + rnd.uniform(-0.5, 0.5)
                s = s24 + rnd.uniform(-5, 5)
                if minutes == 15:
                    target = city.water_target_pct(d.slug)
                    out.append(WaterKpi(district=d.slug, window_end_ms=t,
                                        consumption_l=800.0 + k, baseline_l=1000.0,
                                        saving_pct=s, saving_pct_24h=s24, target_pct=target,
                                        on_track=s24 >= target,
                                        meters_reporting=max(1, d.water_meters - k % 3)))
                else:
                    target = city.energy_target_pct(d.slug)
                    e24 = s24 / 4 - 1
                    out.append(EnergyKpi(district=d.slug, window_end_ms=t, energy_kwh=95.0,
                                         baseline_kwh=100.0, saving_pct=s / 4,
                                         saving_pct_24h=e24, target_pct=target,
                                         on_track=e24 >= target, peak_kw=120.0,
                                         meters_reporting=d.energy_meters))
    step = 5 * MIN
    for i, j in enumerate(city.junctions):
        last = end_ms // step * step
        for k in range(hours * 12):
            t = last - k * step
            base = 0.3 + 0.05 * i
            ci = base * (0.4 + 0.15 * i) + rnd.uniform(0, 0.05)
            red24 = 70.0 - 9 * i + rnd.uniform(-1, 1)
            out.append(TrafficKpi(district=j.district, junction=j.id, window_end_ms=t,
                                  vehicles=100 + k, flow_veh_h=1200.0 + 37.5 * i + k,
                                  space_mean_speed_kmh=j.free_flow_speed_kmh / (1 + ci),
                                  congestion_index=ci, baseline_congestion_index=base,
                                  reduction_pct=100 * (1 - ci / base), reduction_pct_24h=red24,
                                  target_pct=city.congestion_target_pct(j.id),
                                  on_track=red24 >= city.congestion_target_pct(j.id)))
    step = 15 * MIN
    for r in city.routes:
        last = end_ms // step * step
        for k in range(hours * 4):
            out.append(ShuttleKpi(route=r.id, window_end_ms=last - k * step,
                                  boardings=20 + k, occupancy_pct=35.0 + 2 * k,
                                  on_time_pct=92.5 - k, availability_pct=75.0,
                                  mean_battery_pct=64.0 - 1.5 * k, disengagements=k % 2,
                                  vehicles_reporting=r.fleet_size))
    d0, d1 = city.districts[0].slug, city.districts[1].slug
    out += [
        Alert(kind="water", entity=d0, rule="leak", ts_ms=end_ms - 90 * MIN, value=900.0,
              threshold=450.0, message="minimum night flow 900 L per 15 min, 3.0x baseline",
              active=True),
        Alert(kind="energy", entity=d1, rule="off_track", ts_ms=end_ms - 30 * MIN, value=1.0,
              threshold=3.0, message="energy saving over 24 h is 1.0 %, target 3 %",
              active=True),
        Alert(kind="water", entity=d1, rule="leak", ts_ms=end_ms - 120 * MIN, value=900.0,
              threshold=450.0, message="raised", active=True),
        Alert(kind="water", entity=d1, rule="leak", ts_ms=end_ms - 60 * MIN, value=100.0,
              threshold=450.0, message="cleared", active=False),
        PipelineCounters(component="ingest", instance="0", ts_ms=end_ms - 2000,
                         received=120_000, accepted=119_500, rejected=500),
    ]
    return out


def feed_entities(city: City, feed: FeedSpec, skip_districts: tuple[str, ...] = ()) -> list[str]:
    """The entities `feed_kpis` writes for a feed: the city's districts (but `skip_districts`)
    for a district feed, else two made-up ids such as `car-park-1`."""
    if feed.entity == "district":
        return [d.slug for d in city.districts if d.slug not in skip_districts]
    return [f"{feed.entity.replace('_', '-')}-{n}" for n in (1, 2)]


def feed_kpis(city: City, end_ms: int, hours: int = 3, seed: int = 7,
              skip_districts: tuple[str, ...] = (), skip_feeds: tuple[str, ...] = ()
              ) -> list[Record]:
    """Points of every declared feed of `city` (but `skip_feeds`) for each of its
    `feed_entities` over the `hours` before `end_ms`, built from the feed's spec alone: counts
    whole, other KPIs floats; with a target, the first entity is on track and the others off."""
    rnd = random.Random(seed)
    out: list[Record] = []
    for feed in city.feeds:
        if feed.kind in skip_feeds:
            continue
        model = kpi_model(feed)
        step = feed.window_s * 1000
        last = end_ms // step * step
        for i, entity in enumerate(feed_entities(city, feed, skip_districts)):
            for k in range(max(1, hours * 3600 // feed.window_s)):
                fields: dict[str, Any] = {
                    kpi.name: (rnd.randint(1, 40) if kpi.is_integer
                               else round(rnd.uniform(5, 95), 3)) for kpi in feed.kpis}
                if feed.target is not None:
                    limit = feed.target.limit
                    good = i == 0
                    at_most = feed.target.at_most is not None
                    factor = 0.9 if good == at_most else 1.1
                    fields[f"{feed.target.kpi}_24h"] = round(limit * factor + 0.123, 3)
                    fields["on_track"] = good
                out.append(model.model_validate({feed.entity: entity,
                                                 "window_end_ms": last - k * step, **fields}))
    return out
