"""The benchmark's synthetic city: the shipped city's mix at any size, contract-valid payloads,
deterministic bytes, and the MQTT packets of the light publisher."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

from bench.load import (
    Burst,
    LiveSpec,
    RawPublisher,
    _streams,
    backlog,
    city_fleet,
    payload,
    run_live,
)
from ingest.decode import decode
from models.city import load_city

CITY = load_city()


def test_fleet_has_the_requested_size_and_the_city_mix() -> None:
    fleet = city_fleet(CITY, 10_000, probes=50)
    assert len(fleet) == 10_000
    kinds = Counter(s.kind for s in fleet)
    assert kinds["shuttle"] == sum(r.fleet_size for r in CITY.routes)
    assert kinds["water"] == kinds["energy"]  # the shipped city has as many of each
    assert 800 < kinds["traffic"] < 950
    assert len({s.sensor_id for s in fleet}) == len(fleet)
    assert sum(s.probe for s in fleet) == 50
    assert {s.kind for s in fleet if s.probe} == {"water"}
    assert len({s.district for s in fleet if s.probe}) == len(CITY.districts)
    assert [s.index for s in fleet] == list(range(len(fleet)))


def test_fleet_of_one_kind() -> None:
    fleet = city_fleet(CITY, 1000, kinds=("water",))
    assert len(fleet) == 1000
    assert {s.kind for s in fleet} == {"water"}


def test_every_payload_is_valid_for_the_decoder() -> None:
    now = int(time.time() * 1000)
    fleet = city_fleet(CITY, 400, probes=5)
    for sensor in fleet:
        for body in (payload(sensor, 3, [now - 1000]),
                     payload(sensor, 10, [now - 3000, now - 2000, now - 1000])):
            result = decode(sensor.topic, body, now)
            assert not result.dead_letters, (sensor, body, result.dead_letters)
            assert [r.ts_ms for r in result.readings] == sorted(r.ts_ms for r in result.readings)


def test_payloads_are_deterministic_and_registers_grow() -> None:
    sensor = city_fleet(CITY, 50)[0]
    assert payload(sensor, 7, [1_800_000_000_000]) == payload(sensor, 7, [1_800_000_000_000])
    first = decode(sensor.topic, payload(sensor, 1, [1_800_000_000_000]), 1_800_000_000_000)
    later = decode(sensor.topic, payload(sensor, 2, [1_800_000_060_000]), 1_800_000_060_000)
    assert later.readings[0].volume_m3 > first.readings[0].volume_m3  # type: ignore[union-attr]


def test_backlog_covers_every_sensor_and_cycle_once_in_time_order() -> None:
    fleet = city_fleet(CITY, 300)
    end = 1_800_000_000_000
    messages = list(backlog(fleet, 4, end, batch=2))
    assert len(messages) == 2 * len(fleet)
    assert sum(n for _, _, n in messages) == 4 * len(fleet)
    seen: set[tuple[str, int]] = set()
    for sensor, body, n in messages:
        readings = decode(sensor.topic, body, end).readings
        assert len(readings) == n
        seen.update((r.sensor_id, r.ts_ms) for r in readings)
        assert all(end - 5 * 60_000 <= r.ts_ms < end for r in readings)
    assert len(seen) == 4 * len(fleet)


def test_live_streams_split_the_rate_by_kind_and_burst() -> None:
    spec = LiveSpec(mqtt={}, sensors=1000, rate=500.0, duration_s=10,
                    bursts=(Burst("traffic", 2.0, 4.0, 10.0),))
    fleet = city_fleet(CITY, 1000)
    streams = {s.kind: s for s in _streams(spec, fleet)}
    total = sum(1 / st.step(0.0) for st in streams.values())
    assert abs(total - 500.0) < 1e-6
    traffic = streams["traffic"]
    assert traffic.step(3.0) * 10 == traffic.step(1.0)
    assert streams["water"].step(3.0) == streams["water"].step(1.0)


class _Broker(threading.Thread):
    """A fake MQTT broker for one connection: CONNACK, then PUBACK for every PUBLISH."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.published: list[tuple[str, bytes, int]] = []
        self.connect = b""

    def run(self) -> None:
        conn, _ = self.server.accept()
        data = b""

        def packet() -> tuple[int, bytes] | None:
            nonlocal data
            while True:
                size, shift, i = 0, 0, 1
                while i < len(data):  # the remaining-length varint may be split by recv
                    byte = data[i]
                    size |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        break
                else:
                    i = 0
                if i and len(data) >= i + size:
                    kind, body, data = data[0], data[i:i + size], data[i + size:]
                    return kind, body
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                data += chunk

        while (got := packet()) is not None:
            kind, body = got
            if kind == 0x10:
                self.connect = body
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 0x32:
                n = struct.unpack("!H", body[:2])[0]
                topic = body[2:2 + n].decode()
                pid = struct.unpack("!H", body[2 + n:4 + n])[0]
                self.published.append((topic, body[4 + n:], pid))
                conn.sendall(b"\x40\x02" + pid.to_bytes(2, "big"))
            elif kind == 0xE0:
                break
        conn.close()


def test_raw_publisher_speaks_mqtt_qos1() -> None:
    broker = _Broker()
    broker.start()
    pub = RawPublisher("127.0.0.1", broker.port, "gateway", "secret", "bench-test", window=3)
    bodies = [b'{"n":%d}' % i + b"x" * (i * 40) for i in range(10)]
    for i, body in enumerate(bodies):
        pub.publish(f"city/central-mk/water/wm-{i}", body)
    assert pub.wait_acked(10)
    pub.close()
    broker.join(5)
    assert b"MQTT" in broker.connect and b"gateway" in broker.connect
    assert [(t, b) for t, b, _ in broker.published] == [
        (f"city/central-mk/water/wm-{i}", body) for i, body in enumerate(bodies)]
    assert [pid for *_, pid in broker.published] == list(range(1, 11))
    assert pub.acked == pub.sent == 10


def test_a_feed_that_falls_behind_stops_and_says_so() -> None:
    """An offered rate the machine cannot generate stops the feed once it is `max_lag_s`
    behind, instead of running on for minutes and ending as a timeout without figures."""
    broker = _Broker()
    broker.start()
    mqtt = {"host": "127.0.0.1", "port": broker.port, "username": "gateway",
            "password": "secret"}
    spec = LiveSpec(mqtt=mqtt, sensors=1000, rate=5_000_000, duration_s=60, probes=0,
                    max_lag_s=0.5)
    t0 = time.monotonic()
    sent = run_live(spec, CITY, lambda probes: None)
    broker.join(5)
    assert sent["fell_behind_at_s"] is not None and sent["fell_behind_at_s"] < 30
    assert time.monotonic() - t0 < 45
    assert sent["acked"] and sent["messages"] == len(broker.published) > 0
