"""Data quality end to end (contract 6, `sensor_quality`): water meters with known faults (a
silent spell, a frozen register, a burst of bad input, QoS 1 duplicates, late readings) go
through the real Mosquitto, ingest, Kafka, the worker and InfluxDB. Each sensor's hours carry
exactly the counts of what was sent, the faulty sensors and only those need attention, and a
`sensor_quality` alert is raised and cleared for each low score."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Lane, Message, gateway_publisher, wait_for
from tests.support import influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]

HOUR = 3_600_000
MIN = 60_000
WEEK = [10.0] * 168
CITY = f"""
name = "Qualitytown"
[windows]
grace_s = 120
horizon_s = 86400
[[districts]]
slug = "north"
name = "North"
water_baseline_l_h = {WEEK}
energy_baseline_kwh_h = {WEEK}
"""
METERS = ("m-ok", "m-gap", "m-frozen", "m-bad", "m-dup", "m-late")


def message(sensor: str, ts: int, volume: float) -> Message:
    body = {"sensor_id": sensor, "ts": ts, "volume_m3": round(volume, 3)}
    return Message(f"city/north/water/{sensor}", json.dumps(body).encode())


def faulty_city(t0: int) -> list[Message]:
    """Five hours of six meters, one reading a minute, with the faults of the module doc."""
    out: list[Message] = []
    for minute in range(5 * 60):
        ts = t0 + minute * MIN
        for n, sensor in enumerate(METERS):
            volume = 100.0 * (n + 1) + minute * 0.01
            if sensor == "m-gap" and 70 <= minute < 110:
                continue  # silent for 40 minutes of hour 1
            if sensor == "m-frozen" and minute >= 125:
                volume = 300.0 + 125 * 0.01  # the register froze
            if sensor == "m-late" and 10 <= minute < 15:
                continue  # sent late, below
            if sensor == "m-bad" and 60 <= minute < 75:
                volume = -1.0  # out of range: dead-lettered by ingest
            out.append(message(sensor, ts, volume))
            if sensor == "m-dup" and minute < 20:
                out.append(out[-1])  # a QoS 1 redelivery
        if minute == 150:  # hour 2: the five readings of hour 0 held back by a gateway
            out += [message("m-late", t0 + m * MIN, 600.0 + m * 0.01) for m in range(10, 15)]
    return out


WANT: dict[tuple[str, int], dict[str, Any]] = {
    # (sensor, hour): the fields that differ from a clean hour of 60 readings
    ("m-dup", 0): {"duplicates": 20, "score": 75.0},
    ("m-late", 0): {"readings": 55},  # its own mean gap: 100 % complete
    ("m-gap", 1): {"readings": 20, "completeness_pct": 33.3, "score": 33.3},
    ("m-bad", 1): {"readings": 45, "rejected": 15, "completeness_pct": 75.0, "score": 75.0},
    ("m-late", 2): {"late": 5, "score": 92.3},
    ("m-frozen", 3): {"stuck": True, "score": 25.0},
}
NEEDS_ATTENTION = {("m-dup", 0), ("m-gap", 1), ("m-bad", 1), ("m-frozen", 3)}


def expected(sensor: str, hour: int) -> dict[str, Any]:
    clean = {"readings": 60, "duplicates": 0, "late": 0, "completeness_pct": 100.0,
             "stuck": False, "score": 100.0}
    return {**clean, **WANT.get((sensor, hour), {})}


@pytest.fixture
def quality_lane(lane: Lane, tmp_path: Path) -> Lane:
    city = tmp_path / "qualitytown.toml"
    city.write_text(CITY)
    lane.env["CITYSTREAM_CITY__FILE"] = str(city)
    lane.env["CITYSTREAM_QUALITY__ALERT_HOURS"] = "1"
    return lane


def test_faulty_meters_and_only_those_are_flagged_with_exact_counts(quality_lane: Lane) -> None:
    lane = quality_lane
    lane.ingest()
    lane.worker()
    t0 = int(time.time() * 1000) // HOUR * HOUR - 8 * HOUR
    publisher = gateway_publisher(lane.stack)
    try:
        publisher.publish_all(faulty_city(t0))
    finally:
        publisher.close()

    def hours_judged() -> dict[tuple[str, int], dict[str, Any]]:
        points = influx_points(lane.stack, lane.kpi_bucket, ("sensor_quality",))
        got = {(dict(tags)["sensor_id"], (end - t0) // HOUR - 1): fields
               for (_m, tags, end), fields in points.items()}
        complete = all((s, h) in got for s in METERS for h in range(4))
        return got if complete and "rejected" in got.get(("m-bad", 1), {}) else {}

    wait_for(hours_judged, 180, interval=2, what="sensor_quality of hours 0-3 of every meter")
    time.sleep(5)  # anything late would have come with the same batches
    got = hours_judged()
    assert {h for _s, h in got} == {0, 1, 2, 3}, "hour 4 is not final: no reading after it"
    for sensor in METERS:
        for hour in range(4):
            fields = dict(got[(sensor, hour)])
            fields.setdefault("rejected", 0)
            want = {**expected(sensor, hour), "rejected": WANT.get((sensor, hour), {}).get(
                "rejected", 0)}
            assert fields == want, (sensor, hour)
    flagged = {key for key, f in got.items()
               if f["score"] < 80 or f["stuck"] or f.get("rejected", 0) > 0}
    assert flagged == NEEDS_ATTENTION
    points = influx_points(lane.stack, lane.kpi_bucket, ("sensor_quality",))
    assert all(dict(tags) == {"kind": "water", "district": "north", "sensor_id": dict(
        tags)["sensor_id"], "window": "1h"} for _m, tags, _t in points)

    def quality_alerts() -> list[tuple[str, int, bool]]:
        alerts = influx_points(lane.stack, lane.kpi_bucket, ("alert",))
        return sorted((dict(tags)["entity"], (ts - t0) // HOUR - 1, fields["active"])
                      for (_m, tags, ts), fields in alerts.items()
                      if dict(tags)["rule"] == "sensor_quality")

    wait_for(lambda: len(quality_alerts()) >= 7, 60, interval=2, what="sensor_quality alerts")
    assert quality_alerts() == [("m-bad", 1, True), ("m-bad", 2, False), ("m-dup", 0, True),
                       ("m-dup", 1, False), ("m-frozen", 3, True), ("m-gap", 1, True),
                       ("m-gap", 2, False)]
