"""The benchmark's input: a synthetic city of N sensors, recordings of the simulated city
(`record_city`), and a light MQTT publisher that plays them.

`city_fleet` makes a city of any size with the shipped city's mix (per district the same share
of water and energy meters, traffic counters per junction, the routes' shuttles), so the KPI
engine sees real districts, junctions and routes. Payloads are contract-valid JSON built with
string templates (energy and shuttle `ts` as RFC 3339 text, like the simulator); the same
`(seed, sensor, cycle)` always gives the same bytes, so every system under test gets the same
input.

The publisher is a minimal MQTT 3.1.1 QoS 1 client on a plain socket (CONNECT, pipelined
PUBLISH, PUBACK counting): about 5 µs of CPU per message, a tenth of paho-mqtt's, so on a
2-core box the load generator takes as little as possible from the system it measures. It runs
in its own process, paces messages to a schedule (`LiveSpec`) and notes the wall-clock publish
time of every reading of the probe sensors (`probe-<district>-NNNNN`, water meters like the
others), which the latency measurement looks up in InfluxDB.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.city import City
from tests.support import ROOT, varint

PROBE_PREFIX = "probe-"
CITY_MESSAGES_PER_MINUTE = 340
"""About what `record_city` yields per simulated minute at size 1 (the shipped city: ~331)."""
TICK_S = 0.02


@dataclass(frozen=True, slots=True)
class Sensor:
    """One simulated sensor: where it publishes and the fixed part of its payload."""

    index: int
    kind: str
    district: str
    sensor_id: str
    entity: str  # junction or route id for traffic and shuttle, else ""

    @property
    def topic(self) -> str:
        return f"city/{self.district}/{self.kind}/{self.sensor_id}"

    @property
    def probe(self) -> bool:
        return self.sensor_id.startswith(PROBE_PREFIX)


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainder, sums exactly)."""
    whole = sum(weights)
    if whole == 0 or total <= 0:
        return [0] * len(weights)
    raw = [total * w / whole for w in weights]
    out = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[:total - sum(out)]:
        out[i] += 1
    return out


def city_fleet(city: City, sensors: int, probes: int = 0,
               kinds: Sequence[str] = ("water", "energy", "traffic", "shuttle")) -> list[Sensor]:
    """`sensors` sensors in the city's mix (only of `kinds`); the routes' shuttles are their
    fleets, as in the simulator, and the meters and counters share the rest. `probes` of the
    water meters, spread over the districts, are named `probe-...` (for latency)."""
    slots: list[tuple[str, str, str]] = []  # (kind, district, entity) groups, weighted below
    weights: list[int] = []
    for d in city.districts:
        for kind, n in (("water", d.water_meters), ("energy", d.energy_meters)):
            if kind in kinds:
                slots.append((kind, d.slug, ""))
                weights.append(n)
    if "traffic" in kinds:
        for j in city.junctions:
            slots.append(("traffic", j.district, j.id))
            weights.append(j.counters)
    shuttles = [(r.district, r.id, r.fleet_size) for r in city.routes] if "shuttle" in kinds else []
    fleet = sum(n for _, _, n in shuttles)
    counts = _apportion(max(0, sensors - fleet), weights)
    out: list[Sensor] = []
    for (kind, district, entity), n in zip(slots, counts, strict=True):
        prefix = {"water": "wm", "energy": "em", "traffic": f"tc-{entity}"}[kind]
        for i in range(n):
            sid = f"{prefix}-{district}-{i:05d}" if kind != "traffic" else f"{prefix}-{i:04d}"
            out.append(Sensor(len(out), kind, district, sid, entity))
    for district, route, n in shuttles:
        for i in range(n):
            out.append(Sensor(len(out), "shuttle", district, f"sh-{route}-{i:02d}", route))
    water = [s for s in out if s.kind == "water"]
    if probes and water:
        step = max(1, len(water) // probes)
        for s in water[::step][:probes]:
            out[s.index] = Sensor(s.index, "water", s.district,
                                  f"{PROBE_PREFIX}{s.district}-{s.index:05d}", "")
    return out


def _rfc3339(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000)) + f".{ts_ms % 1000:03d}Z"


def reading_json(sensor: Sensor, cycle: int, ts_ms: int, interval_s: float = 60.0) -> str:
    """One contract-valid reading of `sensor`'s `cycle`-th report, as JSON text."""
    h = (sensor.index * 2654435761 + cycle * 40503) & 0xFFFF
    head = f'{{"sensor_id":"{sensor.sensor_id}","seq":{cycle},'
    if sensor.kind == "water":
        volume = 100 + sensor.index % 1000 + cycle * 0.0125 + (h % 7) * 1e-4
        return (f'{head}"ts":{ts_ms},"volume_m3":{volume:.4f},"flow_l_min":{h % 40 / 4:.2f},'
                f'"pressure_bar":{2.5 + h % 10 / 10:.1f}}}')
    if sensor.kind == "energy":
        return (f'{head}"ts":"{_rfc3339(ts_ms)}","energy_kwh":'
                f'{1000 + sensor.index % 500 + cycle * 0.02:.3f},"power_kw":{h % 50 / 10:.1f}}}')
    if sensor.kind == "traffic":
        return (f'{head}"ts":{ts_ms},"junction":"{sensor.entity}","vehicle_count":{h % 30},'
                f'"interval_s":{interval_s:.1f},"mean_speed_kmh":{20 + h % 300 / 10:.1f},'
                f'"occupancy_pct":{h % 100:.1f}}}')
    passengers = h % 11
    return (f'{head}"ts":"{_rfc3339(ts_ms)}","route_id":"{sensor.entity}",'
            f'"lat":{52.034 + h % 100 / 10000:.4f},"lon":{-0.774 + h % 180 / 10000:.4f},'
            f'"speed_kmh":{h % 30:.1f},"passengers":{passengers},"capacity":10,'
            f'"battery_pct":{40 + h % 600 / 10:.1f},"status":"in_service"}}')


def payload(sensor: Sensor, first_cycle: int, ts_list: Sequence[int],
            interval_s: float = 60.0) -> bytes:
    """A message of `sensor`: one reading, or a gateway batch (JSON array) of several."""
    items = [reading_json(sensor, first_cycle + i, ts, interval_s) for i, ts in enumerate(ts_list)]
    return (items[0] if len(items) == 1 else "[" + ",".join(items) + "]").encode()


def backlog(fleet: Sequence[Sensor], cycles: int, end_ms: int, interval_s: float = 60.0,
            batch: int = 1) -> Iterator[tuple[Sensor, bytes, int]]:
    """A recorded-looking past: every sensor reports `cycles` times, `interval_s` apart, the
    last report at `end_ms`, `batch` reports per message; in time order. Yields (sensor,
    payload, readings in it)."""
    step = int(interval_s * 1000)
    spread = step / max(1, len(fleet))
    for first in range(0, cycles, batch):
        n = min(batch, cycles - first)
        for s in fleet:
            phase = int(s.index * spread)
            ts = [end_ms - (cycles - 1 - c) * step - step + phase for c in range(first, first + n)]
            yield s, payload(s, first, ts, interval_s), n


def record_city(path: Path, *, start_ms: int, count: int, seed: int, size: float = 1.0) -> None:
    """`count` messages of the shipped city at `size` from `start_ms` (epoch ms), one reading
    each, recorded to `path` without publishing (`citystream sim --dry-run --speed 0 --record`,
    docs/recording.md)."""
    subprocess.run([sys.executable, "-m", "citystream", "sim", "--dry-run", "--speed", "0",
                    "--size", str(size), "--count", str(count), "--seed", str(seed),
                    "--start", str(start_ms), "--batch", "1", "--no-progress",
                    "--record", str(path)], check=True, cwd=ROOT, capture_output=True)


# -- the MQTT publisher -----------------------------------------------------------------------


def _mqtt_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class RawPublisher:
    """MQTT 3.1.1 QoS 1 publisher with pipelined PUBLISH packets (see module docstring).

    `publish` buffers, `flush` sends the buffer; at most `window` messages are unacknowledged
    (packet ids are unique within it). `wait_acked` blocks until every PUBACK is in.
    """

    def __init__(self, host: str, port: int, username: str, password: str, client_id: str,
                 window: int = 20000) -> None:
        self.window = min(window, 65000)
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = (_mqtt_str("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 0)
                + _mqtt_str(client_id) + _mqtt_str(username) + _mqtt_str(password))
        self.sock.sendall(bytes([0x10]) + varint(len(body)) + body)
        ack = self._recv_exact(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"MQTT broker refused the connection (CONNACK {ack.hex()})")
        self.sock.settimeout(None)
        self.sent = 0
        self.acked = 0
        self._next_id = 0
        self._buffer: list[bytes] = []
        self._topics: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._error: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("MQTT broker closed the connection")
            data += chunk
        return data

    def _read(self) -> None:
        pending = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("MQTT broker closed the connection")
                data = pending + chunk
                usable = len(data) - len(data) % 4
                # Only PUBACKs (0x40 0x02 id id) come back to a QoS 1 publisher.
                if data[0:usable:4].count(0x40) != usable // 4:
                    raise ConnectionError(f"unexpected MQTT packet {data[:8].hex()}")
                pending = data[usable:]
                with self._cond:
                    self.acked += usable // 4
                    self._cond.notify_all()
        except (OSError, ConnectionError) as exc:
            with self._cond:
                self._error = self._error or str(exc)
                self._cond.notify_all()

    def publish(self, topic: str, body: bytes) -> None:
        if self.sent - self.acked >= self.window:
            self.flush()
            with self._cond:
                while self.sent - self.acked >= self.window and self._error is None:
                    self._cond.wait(1.0)
            self._check()
        self._next_id = pid = self._next_id % 65535 + 1
        head = self._topics.get(topic)
        if head is None:
            topic_b = topic.encode()
            head = self._topics[topic] = struct.pack("!H", len(topic_b)) + topic_b
        size = len(head) + 2 + len(body)
        self._buffer.append(b"\x32" + (varint(size) if size > 127 else bytes((size,)))
                            + head + pid.to_bytes(2, "big") + body)
        self.sent += 1

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self.sock.sendall(data)

    def wait_acked(self, timeout: float = 300.0) -> bool:
        self.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.sent and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        self._check()
        return True

    def _check(self) -> None:
        if self._error is not None:
            raise ConnectionError(self._error)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


# -- live schedules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """Sensors of `kind` report `factor` times as often from `start_s` to `end_s`."""

    kind: str
    start_s: float
    end_s: float
    factor: float


@dataclass(frozen=True)
class LiveSpec:
    """A paced run: `sensors` sensors (the city mix) report together `rate` readings/s,
    `batch` readings per message, for `duration_s` seconds; event time is the schedule's wall
    time minus `shift_ms`."""

    mqtt: dict[str, Any]
    sensors: int
    rate: float
    duration_s: float
    probes: int = 50
    batch: int = 1
    bursts: tuple[Burst, ...] = ()
    shift_ms: int = 0
    kinds: tuple[str, ...] = ("water", "energy", "traffic", "shuttle")
    client_id: str = "bench-live"
    start_at: float = 0.0  # wall clock to start at (0 = at once)
    max_lag_s: float = 30.0  # give up when this far behind schedule: the box cannot take it


@dataclass
class _Stream:
    """Round robin over one kind's sensors at that kind's share of the rate."""

    kind: str
    sensors: list[Sensor]
    period_s: float  # one sensor's reporting period at factor 1
    next_due: float = 0.0
    n: int = 0
    bursts: list[Burst] = field(default_factory=list)

    def factor(self, t: float) -> float:
        for b in self.bursts:
            if b.start_s <= t < b.end_s:
                return b.factor
        return 1.0

    def step(self, t: float) -> float:
        return self.period_s / len(self.sensors) / self.factor(t)


def _streams(spec: LiveSpec, fleet: list[Sensor]) -> list[_Stream]:
    period = spec.sensors / spec.rate * spec.batch  # seconds between one sensor's messages
    out = []
    for kind in spec.kinds:
        members = [s for s in fleet if s.kind == kind]
        if members:
            stream = _Stream(kind, members, period,
                             bursts=[b for b in spec.bursts if b.kind == kind])
            stream.next_due = stream.step(0.0) * 0.5
            out.append(stream)
    return out


def run_live(spec: LiveSpec, city: City,
             report: Callable[[list[tuple[str, int, float]]], None]) -> dict[str, Any]:
    """Publish `spec` in real time (in this process), handing the probes' (sensor_id, ts_ms,
    published_at) to `report` every 0.2 s; returns counts and the pacing lag."""
    fleet = city_fleet(city, spec.sensors, spec.probes, spec.kinds)
    streams = _streams(spec, fleet)
    m = spec.mqtt
    pub = RawPublisher(m["host"], int(m["port"]), m["username"], m["password"], spec.client_id)
    probes: list[tuple[str, int, float]] = []
    reported = 0.0
    pending_probes: list[tuple[str, int]] = []
    readings = 0
    lag_max = 0.0
    cpu0 = time.process_time()
    if spec.start_at:
        time.sleep(max(0.0, spec.start_at - time.time()))
    t0 = time.time()
    end = spec.duration_s
    cycles: dict[int, int] = {}
    fell_behind_at: float | None = None
    while True:
        now = time.time() - t0
        if now >= end:
            break
        if lag_max > spec.max_lag_s:
            fell_behind_at = now
            break
        for st in streams:
            while st.next_due <= now and st.next_due < end:
                sensor = st.sensors[st.n % len(st.sensors)]
                st.n += 1
                first = cycles.get(sensor.index, 0)
                cycles[sensor.index] = first + spec.batch
                due_ms = int((t0 + st.next_due) * 1000) - spec.shift_ms
                gap_ms = st.period_s / spec.batch / st.factor(st.next_due) * 1000
                ts = [due_ms - int((spec.batch - 1 - i) * gap_ms) for i in range(spec.batch)]
                pub.publish(sensor.topic, payload(sensor, first, ts,
                                                  interval_s=max(1.0, round(gap_ms / 1000))))
                readings += spec.batch
                if sensor.probe:
                    pending_probes.extend((sensor.sensor_id, t) for t in ts)
                lag_max = max(lag_max, time.time() - t0 - st.next_due)
                st.next_due += st.step(st.next_due)
                if lag_max > spec.max_lag_s:
                    break
        sent_at = time.time()
        pub.flush()
        probes.extend((sid, ts, sent_at) for sid, ts in pending_probes)
        pending_probes.clear()
        if probes and sent_at - reported >= 0.2:
            report(probes)
            probes, reported = [], sent_at
        # one send per tick: a syscall per message would cost the publisher more CPU than the
        # messages themselves; readings keep their scheduled ts, probes their real send time
        pause = TICK_S - (time.time() - sent_at)
        if pause > 0:
            time.sleep(pause)
    report(probes)
    seconds = time.time() - t0
    acked = pub.wait_acked(120)
    pub.close()
    return {"messages": pub.sent, "readings": readings, "acked": acked, "seconds": seconds,
            "lag_max_s": lag_max, "cpu_s": time.process_time() - cpu0,
            "fell_behind_at_s": fell_behind_at}


def publish_backlog(mqtt: dict[str, Any], messages: Iterator[tuple[Sensor, bytes, int]],
                    client_id: str = "bench-preload") -> dict[str, Any]:
    """Publish as fast as the broker takes them; returns counts and seconds."""
    pub = RawPublisher(mqtt["host"], int(mqtt["port"]), mqtt["username"], mqtt["password"],
                       client_id)
    t0 = time.time()
    readings = 0
    for i, (sensor, body, n) in enumerate(messages):
        pub.publish(sensor.topic, body)
        readings += n
        if i % 512 == 511:
            pub.flush()
    acked = pub.wait_acked(600)
    pub.close()
    return {"messages": pub.sent, "readings": readings, "acked": acked,
            "seconds": time.time() - t0}
