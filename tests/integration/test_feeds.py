"""Declared feeds end to end (CONTRACT section 5): two feeds declared in a city file, one keyed by
district and one by a string field, through the real Mosquitto, ingest, Kafka, the worker and
InfluxDB. Every KPI point equals the independent oracle (tests/oracle/feeds.py), none missing,
none extra, with duplicates, a counter reset, a late reading that corrects a final window,
rejects of every field rule, alerts, raw points, and a worker SIGKILLed mid-run."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import (
    KpiMismatch,
    Lane,
    Message,
    compare_points,
    gateway_publisher,
    read_kafka,
    wait_for,
)
from tests.oracle.feeds import compute_feed_points
from tests.support import influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]

HOUR = 3_600_000
MIN = 60_000
WEEK = [10.0] * 168

CITY = f"""
name = "Feedtown"
[windows]
grace_s = 120
horizon_s = 86400
[[districts]]
slug = "north"
name = "North"
water_baseline_l_h = {WEEK}
energy_baseline_kwh_h = {WEEK}
[[districts]]
slug = "south"
name = "South"
water_baseline_l_h = {WEEK}
energy_baseline_kwh_h = {WEEK}

[[feeds]]
kind = "noise"
title = "Noise"
window_s = 3600
[feeds.fields]
laeq_db = {{ type = "number", min = 20, max = 140 }}
lamax_db = {{ type = "number", min = 20, max = 160, optional = true }}
[[feeds.kpis]]
name = "laeq_mean_db"
agg = "mean"
field = "laeq_db"
[[feeds.kpis]]
name = "lamax_max_db"
agg = "max"
field = "lamax_db"
[[feeds.kpis]]
name = "loud_readings"
agg = "count_above"
field = "laeq_db"
threshold = 65.0
[[feeds.kpis]]
name = "readings"
agg = "count"
[feeds.target]
kpi = "laeq_mean_db"
at_most = 55.0
[[feeds.alerts]]
rule = "loud"
kpi = "laeq_mean_db"
above = 65.0

[[feeds]]
kind = "parking"
title = "Car parks"
window_s = 900
entity = "car_park"
[feeds.fields]
car_park = {{ type = "string" }}
occupied = {{ type = "integer", min = 0, max = 5000 }}
capacity = {{ type = "integer", min = 1, max = 5000 }}
entries_total = {{ type = "integer", min = 0, optional = true }}
barrier_ok = {{ type = "boolean", optional = true }}
note = {{ type = "string", optional = true }}
[[feeds.kpis]]
name = "occupancy_pct"
agg = "ratio_pct"
field = "occupied"
of = "capacity"
[[feeds.kpis]]
name = "entries"
agg = "delta"
field = "entries_total"
[[feeds.kpis]]
name = "sensors_reporting"
agg = "sensors"
[[feeds.kpis]]
name = "free_share_pct"
agg = "share_between"
field = "occupied"
min = 0
max = 50
[feeds.target]
kpi = "occupancy_pct"
at_most = 85.0
"""

MEASUREMENTS = ("noise_kpi", "parking_kpi")


def feed(kind: str) -> dict[str, Any]:
    tables: list[dict[str, Any]] = tomllib.loads(CITY)["feeds"]
    return next(t for t in tables if t["kind"] == kind)


def start() -> int:
    return int(time.time() * 1000) // HOUR * HOUR - 6 * HOUR


class Readings:
    """Valid readings as published (topic district + payload), for the oracle, and messages."""

    def __init__(self) -> None:
        self.valid: dict[str, list[dict[str, Any]]] = {"noise": [], "parking": []}
        self.messages: list[Message] = []

    def add(self, kind: str, district: str, body: dict[str, Any], valid: bool = True) -> None:
        topic = f"city/{district}/{kind}/{body['sensor_id']}"
        self.messages.append(Message(topic, json.dumps(body).encode()))
        if valid:
            self.valid[kind].append({"district": district, **body})

    def raw(self, kind: str, district: str, sensor: str, payload: bytes) -> None:
        self.messages.append(Message(f"city/{district}/{kind}/{sensor}", payload))

    def want(self) -> dict[Any, Any]:
        return {**compute_feed_points(self.valid["noise"], feed("noise")),
                **compute_feed_points(self.valid["parking"], feed("parking"))}


def run_of_readings(t0: int, hours: int = 4) -> Readings:
    r = Readings()
    for step in range(hours * 12):  # every 5 minutes
        ts = t0 + step * 5 * MIN
        for district, base in (("north", 45.0), ("south", 50.0)):
            for sensor in ("a", "b"):
                body: dict[str, Any] = {"sensor_id": f"n-{district}-{sensor}", "ts": ts,
                                        "laeq_db": base + (step % 7) * 2.5 + (sensor == "b")}
                if step % 3 == 0:
                    body["lamax_db"] = body["laeq_db"] + 20
                if district == "south" and 12 <= step < 24:
                    body["laeq_db"] = 80.0  # a loud hour: raises `loud`, cleared after
                r.add("noise", district, body)
        for park, sensors, capacity in (("cp-theatre", ("p1", "p2"), 400), ("cp-station",
                                                                            ("p3",), 250)):
            for sensor in sensors:
                body = {"sensor_id": sensor, "ts": ts + 1000, "car_park": park,
                        "occupied": (step * 7 + len(sensor)) % capacity, "capacity": capacity,
                        "entries_total": 1000 + step * 13}
                if sensor == "p3" and step >= 30:
                    body["entries_total"] = step - 30  # the counter was replaced: a reset
                if step % 5 == 0:
                    del body["entries_total"]
                    body["barrier_ok"] = step % 10 == 0
                r.add("parking", "north" if sensor != "p2" else "south", body)
    # a duplicate of an accepted reading (QoS 1 redelivery): dropped, not double counted
    first = r.messages[0]
    r.messages.append(Message(first.topic, first.payload))
    return r


def add_rejects(r: Readings, t0: int) -> list[tuple[str, str | None]]:
    """One reading per field rule, each rejected with its reason (and field)."""
    ts = t0 + 30 * MIN
    bad = [
        ("noise", "north", {"sensor_id": "x1", "ts": ts}, ("schema", "laeq_db")),
        ("noise", "north", {"sensor_id": "x2", "ts": ts, "laeq_db": "loud"},
         ("schema", "laeq_db")),
        ("noise", "north", {"sensor_id": "x3", "ts": ts, "laeq_db": 10.0},
         ("out_of_range", "laeq_db")),
        ("noise", "north", {"sensor_id": "x4", "ts": ts, "laeq_db": True},
         ("schema", "laeq_db")),
        ("parking", "north", {"sensor_id": "x5", "ts": ts, "car_park": "cp-theatre",
                              "occupied": 1.5, "capacity": 10}, ("schema", "occupied")),
        ("parking", "north", {"sensor_id": "x6", "ts": ts, "car_park": "cp theatre!",
                              "occupied": 1, "capacity": 10}, ("schema", "car_park")),
        ("parking", "north", {"sensor_id": "x7", "ts": ts, "car_park": "cp-theatre",
                              "occupied": 1, "capacity": 0}, ("out_of_range", "capacity")),
        ("parking", "north", {"sensor_id": "x8", "ts": ts, "car_park": "cp-theatre",
                              "occupied": 1, "capacity": 10, "barrier_ok": "yes"},
         ("schema", "barrier_ok")),
        ("parking", "north", {"sensor_id": "x9", "ts": ts, "car_park": "cp-theatre",
                              "occupied": 1, "capacity": 10, "note": "n" * 257},
         ("schema", "note")),
        ("parking", "north", {"sensor_id": "xa", "ts": ts, "car_park": "cp-theatre",
                              "capacity": 10}, ("schema", "occupied")),
    ]
    for kind, district, body, _ in bad:
        r.add(kind, district, body, valid=False)
    r.raw("noise", "north", "xb", b'{"sensor_id": "xb", "ts": %d, "laeq_db": NaN}' % ts)
    r.raw("noise", "north", "xc", b'{"sensor_id": "other", "ts": %d, "laeq_db": 50}' % ts)
    r.raw("unknown_kind", "north", "xd", b'{"sensor_id": "xd", "ts": %d}' % ts)
    return [why for *_, why in bad] + [("non_finite", "laeq_db"), ("sensor_mismatch", None),
                                       ("bad_topic", None)]


def wait_equal(lane: Lane, want: dict[Any, Any], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    problems = ["nothing compared yet"]
    while time.monotonic() < deadline:
        problems = compare_points(influx_points(lane.stack, lane.kpi_bucket, MEASUREMENTS), want)
        if not problems:
            return
        time.sleep(3)
    logs = "\n".join(f"--- {p.log.name}\n{p.tail(15)}" for p in lane.processes)
    raise KpiMismatch(f"{len(problems)} differences from the oracle, e.g.:\n"
                      + "\n".join(problems[:12]) + "\n" + logs)


@pytest.fixture
def feed_lane(lane: Lane, tmp_path: Path) -> Lane:
    city = tmp_path / "feedtown.toml"
    city.write_text(CITY)
    lane.env["CITYSTREAM_CITY__FILE"] = str(city)
    return lane


def test_declared_feeds_end_to_end_equal_the_oracle(feed_lane: Lane) -> None:
    lane = feed_lane
    lane.ingest()
    lane.worker()
    t0 = start()
    readings = run_of_readings(t0)
    expected_rejects = add_rejects(readings, t0)
    publisher = gateway_publisher(lane.stack)
    try:
        publisher.publish_all(readings.messages)
        want = readings.want()
        assert len(want) > 30
        wait_equal(lane, want)

        # a late reading inside the horizon corrects a window that was final long ago
        late = {"sensor_id": "n-north-late", "ts": t0 + 10 * MIN, "laeq_db": 130.0}
        before = want[("noise_kpi", (("district", "north"), ("window", "1h")), t0 + HOUR)]
        readings.messages = []
        readings.add("noise", "north", late)
        publisher.publish_all(readings.messages)
        want = readings.want()
        after = want[("noise_kpi", (("district", "north"), ("window", "1h")), t0 + HOUR)]
        assert after["laeq_mean_db"] > before["laeq_mean_db"]
        wait_equal(lane, want)
    finally:
        publisher.close()

    prefix = lane.prefix
    bootstrap = lane.stack.client_info()["kafka"]["bootstrap"]
    dead = [json.loads(v) for _k, v in
            read_kafka(bootstrap, [f"{prefix}telemetry.deadletter"])[
                f"{prefix}telemetry.deadletter"]]
    got = sorted((d["reason"], d.get("field")) for d in dead)
    assert got == sorted(expected_rejects), got

    alerts = influx_points(lane.stack, lane.kpi_bucket, ("alert",))
    loud = sorted((ts, fields["active"]) for (_m, tags, ts), fields in alerts.items()
                  if dict(tags) == {"kind": "noise", "entity": "south", "rule": "loud"})
    assert [active for _ts, active in loud] == [True, False], loud
    assert loud[0][0] == t0 + 2 * HOUR  # the first loud hour's window end

    raw = influx_points(lane.stack, lane.telemetry_bucket, ("noise", "parking"))
    accepted = len(readings.valid["noise"]) + len(readings.valid["parking"])
    assert len(raw) == accepted
    (tags, fields) = next((dict(k[1]), f) for k, f in raw.items() if k[0] == "parking")
    assert set(tags) == {"district", "car_park", "sensor_id"}
    assert isinstance(fields["occupied"], int) and isinstance(fields["capacity"], int)


def test_a_worker_killed_mid_run_still_equals_the_oracle(feed_lane: Lane) -> None:
    lane = feed_lane
    lane.ingest()
    worker = lane.worker()
    t0 = start()
    readings = run_of_readings(t0, hours=5)
    half = len(readings.messages) // 2
    publisher = gateway_publisher(lane.stack)
    try:
        publisher.publish_all(readings.messages[:half])
        wait_for(lambda: influx_points(lane.stack, lane.kpi_bucket, MEASUREMENTS), 120,
                 what="first feed KPI points")
        worker.kill()
        lane.processes.remove(worker)
        publisher.publish_all(readings.messages[half:])
        lane.worker()
        wait_equal(lane, readings.want(), timeout=300)
    finally:
        publisher.close()
