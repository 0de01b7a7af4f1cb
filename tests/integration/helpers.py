"""Real clients for integration tests: an MQTT publisher, a Kafka reader, the oracle's points
compared with InfluxDB's, and `Lane`, one isolated pipeline on the shared stack. The process
harness and the InfluxDB helpers are in tests/support.py (the benchmarks use them too)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from deploy.local.stack import Stack
from tests.support import (
    ROOT,
    IngestProcess,
    Point,
    WorkerProcess,
    create_bucket,
    influx_points,
)


@dataclass
class Message:
    topic: str
    payload: bytes


class Publisher:
    """A QoS 1 MQTT 5 publisher that waits for every PUBACK; reconnects after broker restarts."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(0)  # unlimited: paho slows down with big windows
        self.client.max_queued_messages_set(0)
        self._acked: set[int] = set()
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._acked.add(mid)

    def publish_all(self, messages: Iterable[Message], timeout: float = 120.0) -> None:
        infos = []
        for m in messages:
            info = self.client.publish(m.topic, m.payload, qos=1)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN, info.rc
            infos.append(info)
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge every message in time"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gateway_publisher(stack: Stack) -> Publisher:
    gw = stack.client_info()["mqtt"]
    return Publisher(gw["host"], gw["port"], gw["username"], gw["password"])


def water_messages(n: int, *, district: str = "central-mk", sensors: int = 50,
                   start_ms: int | None = None, tag: str = "") -> list[Message]:
    """n valid water readings, unique (sensor_id, ts), within the last hour."""
    start = start_ms if start_ms is not None else int(time.time() * 1000) - 3_000_000
    out = []
    for i in range(n):
        sensor = f"wm{tag}-{i % sensors:04d}"
        ts = start + (i // sensors) * 1000
        body = {"sensor_id": sensor, "ts": ts, "volume_m3": round(100 + i * 0.001, 3)}
        out.append(Message(f"city/{district}/water/{sensor}", json.dumps(body).encode()))
    return out


def reading_ids(messages: Iterable[Message]) -> list[tuple[str, int]]:
    ids = []
    for m in messages:
        body = json.loads(m.payload)
        for r in body if isinstance(body, list) else [body]:
            ids.append((r["sensor_id"], r["ts"]))
    return ids


@dataclass
class KafkaDump:
    readings: list[dict[str, Any]] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def read_kafka(bootstrap: str, topics: list[str], *, timeout: float = 30.0) -> dict[str, list[
        tuple[bytes | None, bytes]]]:
    """Every record currently in `topics`, from the beginning to the end offsets."""
    out: dict[str, list[tuple[bytes | None, bytes]]] = {t: [] for t in topics}
    scan_kafka(bootstrap, topics, lambda topic, key, value: out[topic].append((key, value)),
               timeout=timeout)
    return out


def scan_kafka(bootstrap: str, topics: list[str],
               on_record: Callable[[str, bytes | None, bytes], None], *,
               timeout: float = 30.0) -> None:
    """Call `on_record(topic, key, value)` for every record currently in `topics`, from the
    beginning to the end offsets, without keeping them (a soak's millions)."""

    async def run() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            parts = [TopicPartition(t, p) for t in topics
                     for p in (consumer.partitions_for_topic(t) or set())]
            if not parts:
                await consumer._client.force_metadata_update()
                parts = [TopicPartition(t, p) for t in topics
                         for p in (consumer.partitions_for_topic(t) or set())]
            if not parts:
                return
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            remaining = {tp for tp in parts if end[tp] > 0}
            deadline = time.monotonic() + timeout
            while remaining and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        on_record(tp.topic, r.key, r.value)
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
            assert not remaining, f"could not read to the end of {remaining}"
        finally:
            await consumer.stop()

    asyncio.run(run())


def kafka_contents(stack: Stack) -> KafkaDump:
    from models.topics import DEADLETTER, TELEMETRY

    raw = read_kafka(stack.client_info()["kafka"]["bootstrap"], [*TELEMETRY.values(), DEADLETTER])
    dump = KafkaDump()
    for topic, records in raw.items():
        for key, value in records:
            if topic == DEADLETTER:
                dump.dead_letters.append(json.loads(value))
                continue
            for reading in json.loads(value):
                dump.readings.append(reading)
                dump.keys.append((topic, (key or b"").decode()))
    return dump


def dead_letter_raw(dead: dict[str, Any]) -> bytes:
    return base64.b64decode(dead["raw"])


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")


def compare_points(got: dict[Point, dict[str, Any]], want: dict[Point, dict[str, Any]],
                   rel: float = 1e-6) -> list[str]:
    """Differences between InfluxDB and the oracle, as readable lines (empty = equal)."""
    problems = [f"missing point {k}" for k in sorted(set(want) - set(got))]
    problems += [f"extra point {k}" for k in sorted(set(got) - set(want))]
    for key in sorted(set(want) & set(got)):
        mine, theirs = got[key], want[key]
        if set(mine) != set(theirs):
            problems.append(f"{key}: fields {sorted(mine)} != {sorted(theirs)}")
            continue
        for name, value in theirs.items():
            have = mine[name]
            if isinstance(value, bool | int):
                ok = type(have) is type(value) and have == value
            else:
                ok = isinstance(have, float) and abs(have - value) <= rel * max(1.0, abs(value))
            if not ok:
                problems.append(f"{key} {name}: influx {have!r} != oracle {value!r}")
    return problems


class KpiMismatch(AssertionError):
    """KPI points in InfluxDB differ from the oracle's (a test may expect this one failure)."""


@dataclass
class Lane:
    """One isolated pipeline on the shared stack: its own topics (prefix), MQTT shared group,
    consumer groups and buckets, written with its own token that may write those two buckets
    only (as the stack's pipeline token does for the default buckets)."""

    stack: Stack
    dir: Path
    env: dict[str, str]
    kpi_bucket: str
    telemetry_bucket: str = ""
    influx: Stack = None  # type: ignore[assignment]  # the stack whose InfluxDB it writes to
    processes: list[IngestProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.influx = self.influx or self.stack

    @classmethod
    def create(cls, stack: Stack, directory: Path, *, influx: Stack | None = None,
               plain_subscription: bool = False) -> Lane:
        """A lane on `stack`, writing to `influx`'s InfluxDB (by default the stack's). With
        `plain_subscription` its (single) ingest subscribes without a shared group."""
        influx = influx or stack
        directory.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        kpi, telemetry = f"kpi-{tag}", f"telemetry-{tag}"
        create_bucket(influx, kpi)
        create_bucket(influx, telemetry)
        token = influx.create_write_token([kpi, telemetry], f"test lane {tag}")
        mqtt = ({"CITYSTREAM_MQTT__SHARED_GROUP": "", "CITYSTREAM_MQTT__CLIENT_ID": f"i{tag}"}
                if plain_subscription else {"CITYSTREAM_MQTT__SHARED_GROUP": f"g{tag}"})
        return cls(stack, directory, {
            **mqtt,
            "CITYSTREAM_KAFKA__TOPIC_PREFIX": f"t{tag}.",
            "CITYSTREAM_INFLUX__URL": influx.client_info()["influxdb"]["url"],
            "CITYSTREAM_INFLUX__BUCKET_KPI": kpi,
            "CITYSTREAM_INFLUX__BUCKET_TELEMETRY": telemetry,
            "CITYSTREAM_INFLUX__TOKEN": token,
            "CITYSTREAM_WORKER_SESSION_TIMEOUT_S": "10",
        }, kpi, telemetry, influx)

    @property
    def prefix(self) -> str:
        return self.env["CITYSTREAM_KAFKA__TOPIC_PREFIX"]

    def ingest(self, instance: str = "0", *, netns: str | None = None) -> IngestProcess:
        """Start `citystream ingest` (in the network namespace `netns` when given)."""
        proc = IngestProcess(self.stack, instance, log_dir=self.dir, extra_env=self.env)
        proc.netns = netns
        self.processes.append(proc.start())
        return proc

    def worker(self, instance: str = "0", *, netns: str | None = None) -> WorkerProcess:
        """Start `citystream worker` (in the network namespace `netns` when given)."""
        proc = WorkerProcess(self.stack, instance, log_dir=self.dir, extra_env=self.env)
        proc.netns = netns
        self.processes.append(proc.start())
        return proc

    def sim_env(self) -> dict[str, str]:
        """The environment of `citystream sim` as the development gateway of this lane."""
        env = {**os.environ, **self.stack.service_env(), **self.env}
        gateway = self.stack.client_info()["mqtt"]
        env["CITYSTREAM_MQTT__USERNAME"] = gateway["username"]
        env["CITYSTREAM_MQTT__PASSWORD"] = gateway["password"]
        return env

    def simulate(self, *args: str, record: Path, timeout: float = 300) -> None:
        """Publish a seeded simulation and record it (blocks until every PUBACK arrived)."""
        done = subprocess.run(
            [sys.executable, "-m", "citystream", "sim", "--no-progress", "--record", str(record),
             *args], env=self.sim_env(), cwd=ROOT, capture_output=True, text=True,
            timeout=timeout)
        assert done.returncode == 0, f"sim failed:\n{done.stdout}\n{done.stderr}"

    def wait_equal(self, want: dict[Any, Any], timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        problems: list[str] = ["nothing compared yet"]
        while time.monotonic() < deadline:
            problems = compare_points(influx_points(self.influx, self.kpi_bucket), want)
            if not problems:
                return
            time.sleep(3)
        logs = "\n".join(f"--- {p.log.name}\n{p.tail(15)}" for p in self.processes)
        raise KpiMismatch(f"{len(problems)} differences from the oracle after "
                          f"{timeout:.0f}s, e.g.:\n" + "\n".join(problems[:12]) + "\n" + logs)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


CITY = ROOT / "models" / "cities" / "milton-keynes.toml"


def city_kinds() -> tuple[str, ...]:
    """Every kind the shipped city's readings come in: the built-in ones and its declared feeds
    (the simulator publishes them all)."""
    from models import kinds
    from models.city import load_city

    load_city(CITY)
    return kinds.names()


def start_of_run(hours_back: float = 20.0) -> str:
    """A fixed simulated start inside the late-data horizon, on a window boundary."""
    start = int(time.time() // 3600 * 3600 - hours_back * 3600)
    return str(start * 1000)


def oracle_points(recording: Path | Iterable[dict[str, Any]]) -> dict[Point, dict[str, Any]]:
    """The oracle's KPI points for a recording (a JSONL path or its rows, read once)."""
    from models.city import load_city
    from tests.oracle import compute_kpis

    horizon = load_city(CITY).windows.horizon_s
    return compute_kpis(recording, CITY, horizon_s=horizon, keep_readings=False).points
