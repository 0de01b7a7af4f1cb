"""Tools for the fault tests: a canary that measures recovery, Kafka lag and RSS sampling, the
simulator in the background, and the reconciliation of every published reading.

Recovery time. A `Probe` publishes a canary reading (its own sensor in its own district, so
its KPIs are separate entities the oracle also computes) every half second and watches where
each one has got to: in Kafka (ingest has it), past the KPI worker's committed offset (the
worker processed it) and past the InfluxDB sink's committed offset (the sink commits only
what InfluxDB accepted). The recovery time from a moment T, for a stage, is the time until
the first canary published at or after T has passed that stage: "fresh data flows again",
including the backlog queued ahead of it in its partition. T is when a stopped service is
back (outages) or when the process was killed or stopped (kills, rebalances: restarting it is
part of the recovery); the outage length is reported beside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from paho.mqtt.enums import CallbackAPIVersion

from deploy.local.stack import Credentials, Stack
from tests.integration.helpers import Lane, city_kinds, oracle_points, scan_kafka
from tests.oracle import iter_recording, parse_ts
from tests.support import ALL_TIME, ROOT

CANARY_DISTRICT = "canary"
CANARY_SENSOR = "canary-0001"
CANARY_TOPIC = f"city/{CANARY_DISTRICT}/water/{CANARY_SENSOR}"
STAGES = ("kafka", "worker", "influxdb")


@dataclass
class Sample:
    """One look at the lane: seconds since the probe started, consumer lag (records) of the KPI
    worker and of the sink (None while Kafka cannot be asked), RSS in MB by component (the sum
    of its processes) and by process (`worker 1`: to tell which one moved)."""

    t: float
    worker_lag: int | None
    sink_lag: int | None
    rss_mb: dict[str, float]
    rss_each_mb: dict[str, float] = field(default_factory=dict)


@dataclass
class Event:
    """A fault or action on the timeline (seconds since the probe started)."""

    t: float
    what: str


@dataclass
class Recovery:
    fault: str
    duration_s: float
    stages: dict[str, float]

    def line(self) -> str:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items())
        return f"{self.fault:<46} outage {self.duration_s:6.1f} s   recovered: {stages}"


class Probe:
    """Canary publisher and lane observer, in background threads (see module docstring)."""

    def __init__(self, lane: Lane, *, interval_s: float = 0.5, sample_s: float = 1.0,
                 services: bool = False) -> None:
        self.lane = lane
        self.services = services  # also sample the RSS of Mosquitto, Kafka and InfluxDB
        self.interval_s = interval_s
        self.sample_s = sample_s
        self.t0 = time.monotonic()
        self.published: list[tuple[float, int]] = []  # (monotonic, ts_ms)
        self.rows: list[dict[str, Any]] = []  # recording rows of the canary, for the oracle
        self.in_kafka: dict[int, tuple[int, float]] = {}  # ts_ms -> (offset, monotonic)
        self.committed: dict[str, list[tuple[float, int]]] = {"worker": [], "influxdb": []}
        self.samples: list[Sample] = []
        # (component, pid) -> CPU seconds at its first and its last sample
        self.cpu_s: dict[tuple[str, int], tuple[float, float]] = {}
        self.events: list[Event] = []
        self.recoveries: list[Recovery] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._volume = 0.0
        self._infos: list[mqtt.MQTTMessageInfo] = []
        self._acked: set[int] = set()
        self._failed: BaseException | None = None
        gateway = lane.stack.client_info()["mqtt"]
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                   client_id=f"canary-{lane.prefix}")
        self._client.username_pw_set(gateway["username"], gateway["password"])
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_publish = self._on_publish
        self._mqtt_at = (gateway["host"], int(gateway["port"]))

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Probe:
        self._client.connect(*self._mqtt_at)
        self._client.loop_start()
        for target in (self._publish_loop, self._kafka_thread):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop publishing (wait a moment for the last PUBACKs) and observing."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._unacked():
            time.sleep(0.2)
        self._client.disconnect()
        self._client.loop_stop()
        unacked = self._unacked()
        assert not unacked, f"{unacked} canary readings never acknowledged by the broker"

    def _unacked(self) -> int:
        with self._lock:
            return sum(info.mid not in self._acked for info in self._infos)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._acked.add(mid)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, what: str) -> float:
        """Note an event on the timeline; returns its monotonic time."""
        t = time.monotonic()
        with self._lock:
            self.events.append(Event(t - self.t0, what))
        line = f"[{t - self.t0:7.1f}s] {time.strftime('%H:%M:%S')} {what}"
        print(line, flush=True)
        with (self.lane.dir / "timeline.log").open("a") as f:
            f.write(line + "\n")
        return t

    # -- the canary ----------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            ts = int(time.time() * 1000)
            self._volume += 0.001
            body = {"sensor_id": CANARY_SENSOR, "ts": ts, "volume_m3": round(self._volume, 3)}
            payload = json.dumps(body).encode()
            info = self._client.publish(CANARY_TOPIC, payload, qos=1)
            with self._lock:
                self._infos.append(info)
                self.published.append((time.monotonic(), ts))
                self.rows.append({"seq": 10_000_000 + n, "topic": CANARY_TOPIC,
                                  "payload_b64": base64.b64encode(payload).decode(), "qos": 1,
                                  "faults": [], "expected": [
                                      {"valid": True, "reason": None, "duplicate": False}]})
            n += 1
            self._stop.wait(self.interval_s)

    # -- Kafka side ----------------------------------------------------------------------------

    def _kafka_thread(self) -> None:
        try:
            asyncio.run(self._kafka_loop())
        except BaseException as exc:
            self._failed = exc
            raise

    async def _kafka_loop(self) -> None:
        bootstrap = self.lane.stack.client_info()["kafka"]["bootstrap"]
        prefix = self.lane.prefix
        water = f"{prefix}telemetry.water"
        groups = {"worker": f"{prefix}citystream-worker", "influxdb": f"{prefix}citystream-sink"}
        # Metadata refreshed every 5 s, and each request given up by aiokafka (4 s) before the
        # loop's own 5 s: a request cancelled from outside does not close its connection, so
        # a node isolated from the network (cluster fault 1b) left the probe asking its old
        # leaders, and seeing no commits, for metadata_max_age_ms (5 minutes by default).
        clients: dict[str, Any] = {"bootstrap_servers": bootstrap, "request_timeout_ms": 4000,
                                   "metadata_max_age_ms": 5000}
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **clients)
        await consumer.start()
        admin: AIOKafkaAdminClient | None = None
        try:
            telemetry = await _partitions(consumer, [f"{prefix}telemetry.{k}" for k in
                                                     city_kinds()])
            numbers = sorted(tp.partition for tp in telemetry if tp.topic == water)
            canary_tp = TopicPartition(water, DefaultPartitioner()(
                CANARY_DISTRICT.encode(), numbers, numbers))
            consumer.assign([canary_tp])
            await consumer.seek_to_beginning(canary_tp)
            last_sample = 0.0
            while not self._stop.is_set():
                try:
                    batch = await asyncio.wait_for(consumer.getmany(timeout_ms=300), 5)
                except Exception:  # Kafka away: keep trying
                    await asyncio.sleep(0.5)
                    batch = {}
                seen = time.monotonic()
                for records in batch.values():
                    for r in records:
                        if r.key != CANARY_DISTRICT.encode():
                            continue
                        for reading in json.loads(r.value):
                            if reading.get("sensor_id") == CANARY_SENSOR:
                                with self._lock:
                                    self.in_kafka.setdefault(reading["ts_ms"], (r.offset, seen))
                if seen - last_sample < self.sample_s:
                    continue
                last_sample = seen
                try:
                    if admin is None:
                        admin = AIOKafkaAdminClient(**clients)
                        await asyncio.wait_for(admin.start(), 5)
                    ends = await asyncio.wait_for(consumer.end_offsets(telemetry), 5)
                    lags: dict[str, int | None] = {}
                    for stage, group in groups.items():
                        offsets = await asyncio.wait_for(
                            admin.list_consumer_group_offsets(group), 5)
                        done = {tp: meta.offset for tp, meta in offsets.items()}
                        lags[stage] = sum(max(0, end - max(0, done.get(tp, 0)))
                                          for tp, end in ends.items())
                        if canary_tp in done:
                            with self._lock:
                                self.committed[stage].append((seen, done[canary_tp]))
                except Exception:  # Kafka away or a group not there yet
                    lags = {"worker": None, "influxdb": None}
                    if admin is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(admin.close(), 5)
                    admin = None
                rss = self._rss()  # takes the lock itself
                with self._lock:
                    self.samples.append(Sample(seen - self.t0, lags["worker"], lags["influxdb"],
                                               *rss))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)
            if admin is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(admin.close(), 5)

    def _rss(self) -> tuple[dict[str, float], dict[str, float]]:
        out: dict[str, float] = {}
        each: dict[str, float] = {}
        for proc in list(self.lane.processes):
            if proc.proc is None or proc.proc.poll() is not None:
                continue
            mb = rss_mb(proc.proc.pid)
            if mb is not None:
                out[proc.component] = out.get(proc.component, 0.0) + mb
                each[f"{proc.component} {proc.instance}"] = mb
            self._note_cpu(proc.component, proc.proc.pid, since_start=True)
        if self.services:
            for name in self.lane.stack.SERVICES:
                svc = self.lane.stack.services[name]
                pid = svc.pid if svc.running() else None
                mb = rss_mb(pid) if pid is not None else None
                if pid is not None and mb is not None:
                    out[name] = mb
                    self._note_cpu(name, pid, since_start=False)
        return out, each

    def _note_cpu(self, component: str, pid: int, *, since_start: bool) -> None:
        used = cpu_s(pid)
        if used is not None:
            with self._lock:
                first = self.cpu_s.get((component, pid), (0.0 if since_start else used, 0.0))[0]
                self.cpu_s[(component, pid)] = (first, used)

    def cpu_by_component(self) -> dict[str, float]:
        """CPU seconds (user + system) each component's processes used while the probe ran: a
        lane process from its start (it starts with the lane), a service (shared with earlier
        tests) from the probe's first sample of it; a process that ended up to its last
        sample."""
        out: dict[str, float] = {}
        with self._lock:
            for (component, _), (first, last) in self.cpu_s.items():
                out[component] = out.get(component, 0.0) + last - first
        return out

    # -- recovery ------------------------------------------------------------------------------

    def wait_recovered(self, since: float, fault: str, *, duration_s: float = 0.0,
                       stages: Iterable[str] = STAGES, timeout: float = 300.0) -> Recovery:
        """Wait until a canary published at or after `since` (monotonic) passed each stage;
        record and return the times from `since`. Fails with the logs if it takes longer than
        `timeout`."""
        wanted = list(stages)
        deadline = since + timeout
        got: dict[str, float] = {}
        while time.monotonic() < deadline:
            if self._failed is not None:
                raise AssertionError(f"the probe's Kafka observer failed: {self._failed!r}")
            with self._lock:
                first = next((ts for t, ts in self.published if t >= since), None)
                where = self.in_kafka.get(first) if first is not None else None
                if where is not None:
                    offset, seen = where
                    got.setdefault("kafka", seen - since)
                    for stage in ("worker", "influxdb"):
                        done = next((t for t, committed in self.committed[stage]
                                     if t >= seen and committed > offset), None)
                        if done is not None:
                            got.setdefault(stage, max(0.0, done - since))
            if all(s in got for s in wanted):
                rec = Recovery(fault, duration_s, {s: got[s] for s in wanted})
                self.recoveries.append(rec)
                self.mark(f"recovered from {fault}: " + rec.line().split("recovered: ")[1])
                return rec
            time.sleep(0.25)
        raise AssertionError(f"no recovery from {fault} within {timeout:.0f}s (stages reached: "
                             f"{got}, wanted {wanted})\n{self.lane_logs()}")

    def lane_logs(self, lines: int = 25) -> str:
        return "\n".join(f"--- {p.log} (last {lines} lines)\n{p.tail(lines)}"
                         for p in self.lane.processes)

    def report(self) -> str:
        return "\n".join(r.line() for r in self.recoveries)


async def _partitions(consumer: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    deadline = time.monotonic() + 60
    while True:
        await consumer._client.force_metadata_update()
        known = {t: consumer.partitions_for_topic(t) for t in topics}
        if all(known.values()):
            return [TopicPartition(t, p) for t in topics for p in sorted(known[t] or ())]
        if time.monotonic() > deadline:
            raise AssertionError(f"topics without metadata: {known}")
        await asyncio.sleep(0.5)


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks: int = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- the simulator in the background ----------------------------------------------------------


class BackgroundSim:
    """`citystream sim` as a child process until `stop` (SIGTERM: it stops generating, waits
    for the outstanding PUBACKs and exits 0 only if the broker acknowledged every message).
    After `stop`, `summary()` is what the simulator says it did (its closing line)."""

    def __init__(self, lane: Lane, *args: str, record: Path) -> None:
        self.record = record
        self.log = lane.dir / "sim.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citystream", "sim", "--no-progress", "--record",
                 str(record), *args], env=lane.sim_env(), cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 120.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        text = self.log.read_text(errors="replace")
        assert self.proc.returncode == 0, f"sim failed ({self.proc.returncode}):\n{text[-3000:]}"

    def running(self) -> bool:
        return self.proc.poll() is None

    def summary(self) -> SimRun:
        """The simulator's own account of its run (its last summary line in the log)."""
        return SimRun.parse(self.log.read_text(errors="replace"))


_SIM_SUMMARY = re.compile(r"^sim: (\d+) messages, (\d+) readings in ([\d.]+) s .*?"
                          r"(?:, sim (\S+) \.\. (\S+))?$", re.MULTILINE)


@dataclass
class SimRun:
    """What a simulator run did: messages and readings published, wall seconds from its
    connection to its last PUBACK, and the simulated time of its first and last message."""

    messages: int
    readings: int
    elapsed_s: float
    first_sim_ms: int | None
    last_sim_ms: int | None

    @classmethod
    def parse(cls, output: str) -> SimRun:
        """From the output of `citystream sim` (its last summary line)."""
        found = _SIM_SUMMARY.findall(output)
        assert found, f"no summary line in the simulator's output:\n{output[-3000:]}"
        messages, readings, elapsed, first, last = found[-1]
        return cls(int(messages), int(readings), float(elapsed),
                   parse_ts(first) if first else None, parse_ts(last) if last else None)

    @property
    def rate(self) -> float:
        """Messages per wall second achieved."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def sim_speed(self) -> float:
        """Simulated seconds per wall second achieved (0 when unknown)."""
        if self.first_sim_ms is None or self.last_sim_ms is None or self.elapsed_s <= 0:
            return 0.0
        return (self.last_sim_ms - self.first_sim_ms) / 1000 / self.elapsed_s


# -- reconciliation ---------------------------------------------------------------------------


def reading_key(kind: str, sensor_id: str, ts_ms: int) -> int:
    """A reading's identity as one 64-bit number (Python's hash of the tuple, the same within
    a process): the millions of a soak fit in arrays."""
    return hash((kind, sensor_id, ts_ms))


def valid_items(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(kind, district, reading object) of every valid reading published, in publish order."""
    for row in rows:
        expected = row["expected"]
        if not any(e["valid"] for e in expected):
            continue
        body = json.loads(base64.b64decode(row["payload_b64"]))
        items = body if isinstance(body, list) else [body]
        _, district, kind, _sensor = row["topic"].split("/")
        for item, e in zip(items, expected, strict=True):
            if e["valid"]:
                yield kind, district, item


@dataclass
class Expected:
    """What the pipeline must make of the published messages (recording + canary rows)."""

    readings: int = 0
    valid: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # the valid readings' `reading_key`s, sorted and distinct, and each one's key field
    # (`_key_fields`) in its first copy published
    unique: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    # (topic, raw payload in base64 or "[i]" for element i of an array, reason) -> count
    dead: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> Expected:
        """Reads `rows` once (a recording too big for memory may be read lazily)."""
        out = cls()
        key_fields = _key_fields()
        keys, values = array("q"), array("d")

        def counted(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for row in rows:
                expected = row["expected"]
                out.readings += len(expected)
                valid = [e for e in expected if e["valid"]]
                out.valid += len(valid)
                out.duplicates += sum(bool(e["duplicate"]) for e in valid)
                for e in expected:
                    if not e["valid"]:
                        out.rejected[e["reason"]] += 1
                if len(expected) == 1 and not expected[0]["valid"]:
                    raw = row["payload_b64"]
                    if expected[0]["reason"] == "too_large":  # ingest keeps the first 64 KiB
                        raw = base64.b64encode(base64.b64decode(raw)[:65536]).decode()
                    out.dead[(row["topic"], raw, expected[0]["reason"])] += 1
                elif len(expected) > 1:
                    out.dead.update((row["topic"], f"[{i}]", e["reason"])
                                    for i, e in enumerate(expected) if not e["valid"])
                yield row

        for kind, _district, item in valid_items(counted(rows)):
            keys.append(reading_key(kind, item["sensor_id"], parse_ts(item["ts"])))
            values.append(float(item[key_fields[kind]]))
        out.unique, out.values = _distinct(keys, values)
        return out


def _distinct(keys: array[int], values: array[float]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys, sorted, and the value of each one's first occurrence."""
    unique, first = np.unique(np.array(keys, dtype=np.int64), return_index=True)
    return unique, np.array(values, dtype=np.float64)[first]


def _published_names(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str, int]]:
    """(kind, sensor_id, ts_ms) of every valid reading published."""
    for kind, _district, item in valid_items(rows):
        yield kind, item["sensor_id"], parse_ts(item["ts"])


@dataclass
class Reconciliation:
    expected: Expected
    dead_by_reason: Counter[str]
    kafka_readings: int
    telemetry_points: int
    counters: dict[str, dict[str, int]]
    problems: list[str]
    # messages that `reconcile`'s `may_lose` allowed to be missing and that are (not in
    # `expected`; `kept` gives the rest)
    lost: list[dict[str, Any]] = field(default_factory=list)

    def kept(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` without the lost messages: what the pipeline was given."""
        lost = {id(row) for row in self.lost}
        return [row for row in rows if id(row) not in lost]

    def table(self) -> str:
        e = self.expected
        rejected = sum(e.rejected.values())
        lines = [f"messages lost by the broker     {len(self.lost)} ("
                 f"{sum(len(r['expected']) for r in self.lost)} readings; allowed, not counted "
                 "below)"] if self.lost else []
        lines += [
            f"readings published              {e.readings}",
            f"  = accepted, unique (telemetry) {self.telemetry_points}",
            f"  + duplicates dropped           {e.duplicates}",
            f"  + rejected (dead letters)      {sum(self.dead_by_reason.values())}  "
            f"{dict(sorted(self.dead_by_reason.items()))}",
            f"  expected rejected              {rejected}  {dict(sorted(e.rejected.items()))}",
            f"readings in Kafka                {self.kafka_readings} (valid published "
            f"{e.valid}; {self.kafka_readings - e.valid} redelivered copies)",
        ]
        for name, c in sorted(self.counters.items()):
            lines.append(f"pipeline counters {name:<14} {c}")
        return "\n".join(lines)


def reconcile(lane: Lane, rows: Iterable[dict[str, Any]], *, exact_counters: bool = False,
              may_lose: Callable[[dict[str, Any]], bool] | None = None) -> Reconciliation:
    """Account for every published reading; `problems` lists what does not add up.

    The pipeline's own counters are per process: a process killed or restarted loses the
    counts since its last report and its successor counts again what it reprocesses (at least
    once). With `exact_counters` (a run where no pipeline process restarted) they must add
    up exactly too: ingest received = published, rejected = dead letters; the worker received
    what Kafka holds, accepted the unique readings and dropped the rest as duplicates.

    With `may_lose`, a published message (row) for which it returns True may be missing as a
    whole, as one a broker acknowledged and then lost: such a message that left no trace (none
    of its valid readings in Kafka, and dead letters missing for all it should have made) is
    listed in `lost` and taken out of what is expected before everything above is checked.
    Anything else missing is still a problem. Without it (the default) nothing may be lost.

    `rows` is read a few times, one row at a time (a soak's recording is read from its file
    at each pass); Kafka's records and InfluxDB's points are streamed into arrays of
    `reading_key`s, so millions of readings fit in memory. With `may_lose` the rows are held
    in a list (`lost` names row objects)."""
    prefix = lane.prefix
    letters = f"{prefix}telemetry.deadletter"
    kind_of = {f"{prefix}telemetry.{k}": k for k in city_kinds()}
    problems: list[str] = []
    dead: Counter[tuple[str, str, str]] = Counter()
    keys = array("q")

    def take(topic: str, _key: bytes | None, value: bytes) -> None:
        if topic == letters:
            d = json.loads(value)
            dead[(d["topic"], d["raw"] if d["index"] is None else f"[{d['index']}]",
                  d["reason"])] += 1
            return
        kind = kind_of[topic]
        for reading in json.loads(value):
            keys.append(reading_key(kind, reading["sensor_id"], reading["ts_ms"]))

    scan_kafka(lane.stack.client_info()["kafka"]["bootstrap"], [*kind_of, letters], take,
               timeout=600)
    kafka_readings = len(keys)
    in_kafka = np.unique(np.array(keys, dtype=np.int64))
    if may_lose is not None:
        rows = list(rows)  # `lost` names row objects: the same ones at each pass
    lost = _lost(rows, may_lose, in_kafka, dead) if may_lose is not None else []
    if lost:
        gone = {id(row) for row in lost}
        rows = [row for row in rows if id(row) not in gone]
    expected = Expected.from_rows(rows)
    missing_dead = expected.dead - dead  # a redelivered message may be dead-lettered twice
    unexpected = set(dead) - set(expected.dead)
    if missing_dead or unexpected:
        problems.append(f"dead letters differ: {sum(missing_dead.values())} missing, e.g. "
                        f"{sorted(missing_dead)[:3]}; {len(unexpected)} unexpected, e.g. "
                        f"{sorted(unexpected)[:3]}")
    dead_by_reason: Counter[str] = Counter()
    for (_t, _r, reason), n in (expected.dead & dead).items():
        dead_by_reason[reason] += n
    if dead_by_reason != expected.rejected:
        problems.append(f"rejected by reason {dict(dead_by_reason)} != expected "
                        f"{dict(expected.rejected)}")
    if not np.array_equal(in_kafka, expected.unique):
        absent = np.setdiff1d(expected.unique, in_kafka, assume_unique=True)
        unknown = np.setdiff1d(in_kafka, expected.unique, assume_unique=True)
        problems.append(f"Kafka readings differ: {absent.size} missing, {unknown.size} never "
                        "published")
    if kafka_readings < expected.valid:
        problems.append(f"only {kafka_readings} readings in Kafka for {expected.valid} valid")
    points, values = telemetry_points(lane.influx, lane.telemetry_bucket)
    missing = np.setdiff1d(expected.unique, points, assume_unique=True)
    extra = np.setdiff1d(points, expected.unique, assume_unique=True)
    common, mine, theirs = np.intersect1d(expected.unique, points, assume_unique=True,
                                          return_indices=True)
    differ = expected.values[mine] != values[theirs]
    if missing.size or extra.size or differ.any():
        named = _names([*missing[:3], *common[differ][:3]], _published_names(rows))
        named_extra = _names(extra[:3], ((kind, sensor_id, ts_ms) for kind, sensor_id, ts_ms, _
                                         in _telemetry(lane.influx, lane.telemetry_bucket)))
        wrong = [(named.get(int(k)), float(v), float(w)) for k, v, w in zip(
            common[differ][:3], values[theirs][differ][:3], expected.values[mine][differ][:3],
            strict=True)]
        problems.append(f"telemetry bucket: {missing.size} accepted readings missing (e.g. "
                        f"{[named.get(int(k)) for k in missing[:3]]}), {extra.size} extra (e.g. "
                        f"{[named_extra.get(int(k)) for k in extra[:3]]}), "
                        f"{int(differ.sum())} with other values (e.g. {wrong})")
    if points.size + expected.duplicates + sum(dead_by_reason.values()) != expected.readings:
        problems.append("published != accepted + duplicates + rejected")
    counters = pipeline_counters(lane)
    if exact_counters:
        ingest, worker = counters.get("ingest", {}), counters.get("worker", {})
        want_counters = {"ingest received": expected.readings,
                "ingest accepted": expected.valid,
                "ingest rejected": sum(expected.rejected.values()),
                "worker received": kafka_readings,
                "worker accepted": expected.unique.size,
                "worker duplicates": kafka_readings - expected.unique.size}
        got = {"ingest received": ingest.get("received"),
               "ingest accepted": ingest.get("accepted"),
               "ingest rejected": ingest.get("rejected"),
               "worker received": worker.get("received"),
               "worker accepted": worker.get("accepted"),
               "worker duplicates": worker.get("duplicates")}
        problems += [f"pipeline counter {k} = {got[k]}, expected {v}"
                     for k, v in want_counters.items() if got[k] != v]
    return Reconciliation(expected, dead_by_reason, kafka_readings, int(points.size), counters,
                          problems, lost)


def _names(keys: Iterable[int], names: Iterable[tuple[str, str, int]],
           ) -> dict[int, tuple[str, str, int]]:
    """`reading_key` -> (kind, sensor_id, ts_ms) for a few keys, looked up in `names`: for the
    examples a problem names."""
    wanted = {int(k) for k in keys}
    found: dict[int, tuple[str, str, int]] = {}
    for name in names if wanted else ():
        key = reading_key(*name)
        if key in wanted:
            found[key] = name
            if len(found) == len(wanted):
                break
    return found


def _lost(rows: Iterable[dict[str, Any]], may_lose: Callable[[dict[str, Any]], bool],
          in_kafka: np.ndarray, dead: Counter[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The rows `may_lose` allows to be missing that left no trace (see `reconcile`): none of
    their valid readings in Kafka (a copy published again may have brought a reading: then
    the message is not counted lost, and nothing is missing), and for each dead letter they
    should have made one missing beyond what other lost rows account for."""
    candidates = [row for row in rows if may_lose(row)]
    if not candidates:
        return []
    deficit = Expected.from_rows(rows).dead - dead
    lost = []
    for row in reversed(candidates):  # the latest first: they are the likeliest lost
        own = Expected.from_rows([row])
        if np.isin(own.unique, in_kafka).any():
            continue
        if any(deficit[key] < n for key, n in own.dead.items()):
            continue
        deficit -= own.dead
        lost.append(row)
    lost.reverse()
    return lost


_KEY_FIELD = {"water": "volume_m3", "energy": "energy_kwh", "traffic": "vehicle_count",
              "shuttle": "lat"}


@functools.cache
def _key_fields() -> dict[str, str]:
    """Kind -> the field whose value identifies a raw point: the built-in kinds' above, a
    declared feed's first required number."""
    from models import kinds

    city_kinds()
    return {spec.name: _KEY_FIELD.get(spec.name) or next(
        name for name, point_type, required in spec.raw.fields
        if required and point_type in ("float", "int")) for spec in kinds.specs()}


def flux_csv(stack: Stack, query: str) -> list[dict[str, str]]:
    """Rows of a Flux query (operator token), as dicts of strings."""
    return list(flux_rows(stack, query))


def flux_rows(stack: Stack, query: str) -> Iterator[dict[str, str]]:
    """Rows of a Flux query (operator token), as dicts of strings, read as they come."""
    info = stack.client_info()["influxdb"]
    body = json.dumps({"query": query, "dialect": {"annotations": [], "header": True}}).encode()
    req = urllib.request.Request(f"{info['url']}/api/v2/query?org={info['org']}", data=body,
                                 method="POST")
    req.add_header("Authorization", f"Token {info['token']}")
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/csv")
    with urllib.request.urlopen(req, timeout=300) as resp:
        for row in csv.DictReader(io.TextIOWrapper(resp, encoding="utf-8", newline="")):
            if row.get("_time") and row["_time"] != "_time":
                yield row


def telemetry_points(stack: Stack, bucket: str) -> tuple[np.ndarray, np.ndarray]:
    """The `reading_key`s of the raw points in `bucket`, sorted and distinct, and each one's
    key field (`_key_fields`)."""
    keys, values = array("q"), array("d")
    for kind, sensor_id, ts_ms, value in _telemetry(stack, bucket):
        keys.append(reading_key(kind, sensor_id, ts_ms))
        values.append(value)
    return _distinct(keys, values)


def _telemetry(stack: Stack, bucket: str) -> Iterator[tuple[str, str, int, float]]:
    fields = " or ".join(f'(r._measurement == "{k}" and r._field == "{f}")'
                         for k, f in _key_fields().items())
    for r in flux_rows(stack, f'from(bucket: "{bucket}") |> {ALL_TIME} '
                              f'|> filter(fn: (r) => {fields}) '
                              f'|> keep(columns: ["_time", "_value", "_measurement", '
                              f'"sensor_id"])'):
        yield r["_measurement"], r["sensor_id"], _ms(r["_time"]), float(r["_value"])


def _ms(rfc3339: str) -> int:
    return parse_ts(rfc3339)


def pipeline_counters(lane: Lane) -> dict[str, dict[str, int]]:
    """Per component, the counters summed over process incarnations (a counter that goes down
    is a restarted process: its predecessor's last value is added)."""
    rows = flux_csv(lane.influx, f'from(bucket: "{lane.kpi_bucket}") |> {ALL_TIME} '
                                '|> filter(fn: (r) => r._measurement == "pipeline") '
                                '|> sort(columns: ["_time"])')
    series: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        series.setdefault((r["component"], r["instance"], r["_field"]), []).append(
            int(float(r["_value"])))
    out: dict[str, dict[str, int]] = {}
    for (component, _instance, name), values in series.items():
        total, last = 0, 0
        for v in values:
            if v < last:
                total += last
            last = v
        out.setdefault(component, {})[name] = out.get(component, {}).get(name, 0) + total + last
    return out


def secrets_in_logs(stacks: Iterable[Stack], extra_secrets: Iterable[str],
                    logs: Iterable[Path]) -> list[str]:
    """Which secret appears in which log ("name in path"): every secret of the stacks
    (their secrets.json) and `extra_secrets`."""
    named: dict[str, str] = {}
    for n, st in enumerate(stacks):
        named.update({f"{name}@{n}": v for name, v in
                      Credentials.load_or_create(st.home).all().items()})
    named.update({f"extra-{i}": s for i, s in enumerate(extra_secrets) if s})
    found = []
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        found += [f"{name} in {path}" for name, secret in named.items() if secret in text]
    return found


def lane_logs(lane: Lane) -> list[Path]:
    """Every log of a lane: its processes, the simulator, and the services of its stacks."""
    homes = {lane.stack.home, lane.influx.home}
    return [*lane.dir.glob("*.log"), *(p for h in homes for p in (h / "logs").glob("*.log"))]


class Published:
    """The messages a run published: the simulator's recording, read from its file at each
    pass (a soak's millions do not fit in memory as dicts), then the canary's rows (separate
    entities: order is immaterial)."""

    def __init__(self, record: Path, canary: list[dict[str, Any]]) -> None:
        self.record = record
        self.canary = canary

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from iter_recording(self.record)
        yield from self.canary


def all_rows(record: Path, probe: Probe) -> Published:
    """Every message the run published, read lazily (`Published`)."""
    return Published(record, probe.rows)


def settle(lane: Lane, probe: Probe, record: Path, capsys: pytest.CaptureFixture[str], *,
           exact_counters: bool = False, timeout: float = 300.0,
           may_lose: Callable[[dict[str, Any]], bool] | None = None) -> Reconciliation:
    """After the run: every reading accounted for (`reconcile`), no secret in any log, the
    recovery times printed and saved to `recovery.json` beside the logs, and last the KPIs
    equal to the oracle (`KpiMismatch` otherwise). With `may_lose` (see `reconcile`) the
    messages it allowed and that were lost are left out of the oracle's input too: the KPIs
    must equal those of what the pipeline was given. Returns the reconciliation."""
    rows = list(all_rows(record, probe))  # the same row objects at each pass (`kept`)
    deadline = time.monotonic() + timeout
    while True:
        result = reconcile(lane, rows, exact_counters=exact_counters, may_lose=may_lose)
        if not result.problems or time.monotonic() > deadline:
            break
        time.sleep(5)
    save_report(probe, lane.dir / "recovery.json", result.table())
    with capsys.disabled():
        print(f"\n--- recovery times (until fresh data passed each stage; "
              f"{lane.dir / 'recovery.json'})\n{probe.report()}\n--- reconciliation\n"
              f"{result.table()}", flush=True)
    assert not result.problems, "\n".join([*result.problems, result.table()])
    leaked = secrets_in_logs({lane.stack, lane.influx}, [lane.env["CITYSTREAM_INFLUX__TOKEN"]],
                             lane_logs(lane))
    assert not leaked, f"secrets in logs: {leaked}"
    lane.wait_equal(oracle_points(result.kept(rows)), timeout=timeout)  # KpiMismatch
    return result


def save_report(probe: Probe, path: Path, reconciliation: str = "") -> None:
    path.write_text(json.dumps({
        "recoveries": [r.__dict__ for r in probe.recoveries],
        "events": [e.__dict__ for e in probe.events],
        "reconciliation": reconciliation,
        "samples": [s.__dict__ for s in probe.samples]}, indent=1))


# -- plots and trends -------------------------------------------------------------------------


def plot(probe: Probe, path: Path, title: str) -> None:
    """RSS by component and consumer lag over time, faults as vertical lines, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = probe.samples
    t = [s.t / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    for name in sorted({k for s in samples for k in s.rss_mb}):
        top.plot(t, [s.rss_mb.get(name, float("nan")) for s in samples], label=name)
    top.set_ylabel("RSS (MB)")
    top.legend(loc="upper left")
    for attr, label in (("worker_lag", "KPI worker lag"), ("sink_lag", "sink lag")):
        bottom.plot(t, [getattr(s, attr) if getattr(s, attr) is not None else float("nan")
                        for s in samples], label=label)
    bottom.set_ylabel("consumer lag (records)")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper left")
    for event in probe.events:
        if not event.what.startswith("recovered"):
            for ax in (top, bottom):
                ax.axvline(event.t / 60, color="grey", alpha=0.3, linewidth=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def growth(values: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) pairs in value per second (0 for < 2 points)."""
    if len(values) < 2:
        return 0.0
    n = len(values)
    mean_t = sum(t for t, _ in values) / n
    mean_v = sum(v for _, v in values) / n
    var = sum((t - mean_t) ** 2 for t, _ in values)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in values) / var
