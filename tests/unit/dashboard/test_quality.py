"""Sensors needing attention and the KPIs' coverage: the Flux, the shaping of its rows, the
`quality` event and each panel's "computed from 37 of 40 meters"."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dashboard.live import Hub, Poller, PollerOptions
from dashboard.queries import (
    Row,
    attention_query,
    coverage_query,
    kind_coverage,
    sensor_hours,
)
from dashboard.views import SourceStatus, build_quality, build_snapshot
from tests.unit.dashboard.fakes import HOSTILE_TITLE, FakeSource, feed_city, row, small_city

H = 3_600_000
NOW = 1_800_000_000_000 // H * H + 600_000   # ten minutes into an hour
HOUR = NOW - 600_000                          # the end of the last complete hour
OK = SourceStatus(ok=True)


def bad(sensor_id: str, bad_for_h: int = 0, kind: str = "water", district: str = "bletchley",
        time_ms: int = HOUR, **fields: Any) -> dict[str, Any]:
    """A row of `attention_query`: the pivoted fields of a sensor's latest hour."""
    return {"result": "_result", "table": 0, "kind": kind, "district": district,
            "sensor_id": sensor_id, "time_ms": time_ms, "bad_for_s": bad_for_h * 3600, **fields}


def seen(kind: str, district: str, sensors: int, reporting: int) -> dict[str, Any]:
    """A row of `coverage_query`."""
    return {"result": "_result", "table": 0, "kind": kind, "district": district,
            "seen": sensors, "reporting": reporting, "newest": HOUR * 10**6, "time_ms": HOUR}


def test_the_queries_name_the_bucket_and_the_threshold_as_literals() -> None:
    flux = attention_query('k"pi', 24, 72.5)
    assert flux.startswith('from(bucket: "k\\"pi")\n  |> range(start: -24h)')
    assert 'r._measurement == "sensor_quality" and r.window == "1h"' in flux
    assert "r.score < 72.500000" in flux
    assert "if exists r.rejected then r.rejected > 0" in flux      # absent rejected: none
    assert "stateDuration(" in flux and "tail(n: 1)" in flux
    flux = coverage_query("kpi", 24)
    assert 'r._field == "readings"' in flux and "last()" in flux
    assert 'group(columns: ["kind", "district"])' in flux


def test_rows_become_sensor_hours_with_the_start_of_their_bad_run() -> None:
    (hour, rejected_only) = sensor_hours([
        bad("wm-1", 2, readings=2, duplicates=5, late=3, completeness_pct=42.0, stuck=False,
            score=42.0),
        bad("tc-1", kind="traffic", rejected=9, readings=None, score=None),
        {"kind": "water", "district": "", "sensor_id": "x", "time_ms": HOUR},
    ])
    assert hour.since_ms == HOUR - 3 * H          # three bad hours: the run began 3 h before
    assert (hour.readings, hour.duplicates, hour.late, hour.rejected) == (2, 5, 3, None)
    assert (hour.completeness_pct, hour.stuck, hour.score) == (42.0, False, 42.0)
    assert rejected_only.since_ms == HOUR - H and rejected_only.score is None
    assert kind_coverage([seen("traffic", "bletchley", 4, 3), {"kind": "x"}]) == {
        ("traffic", "bletchley"): kind_coverage([seen("traffic", "bletchley", 4, 3)])[
            ("traffic", "bletchley")]}


def test_worst_first_with_what_is_wrong_in_words() -> None:
    city = feed_city()
    view = build_quality(city, [
        bad("wm-ok-but-rejected", readings=4, rejected=17, score=95.0),
        bad("wm-incomplete", 3, readings=2, duplicates=5, late=3, completeness_pct=42.0,
            stuck=False, score=42.0),
        bad("wm-stuck", 1, district="wolverton", readings=4, completeness_pct=100.0,
            stuck=True, score=25.0),
        bad("wm-newly-incomplete", 0, readings=2, completeness_pct=42.0, score=42.0),
        bad("n-1", kind="noise", rejected=9),
        bad("unknown", kind="gas", district="nowhere", readings=4, score=70.0),
    ], min_score=80.0)
    assert view.total == 6 and view.min_score == 80.0 and view.hours == 24
    got = [(s.sensor_id, s.score, s.problems) for s in view.sensors]
    assert got == [
        ("n-1", None, ["no readings accepted", "9 rejected"]),
        ("wm-stuck", 25.0, ["stuck"]),
        ("wm-incomplete", 42.0, ["42 % complete", "5 duplicates", "3 late"]),
        ("wm-newly-incomplete", 42.0, ["42 % complete"]),
        ("unknown", 70.0, ["score 70 below 80"]),
        ("wm-ok-but-rejected", 95.0, ["17 rejected"]),
    ]
    first = view.sensors[0]
    assert (first.kind_title, first.district_name) == (HOSTILE_TITLE, "Bletchley")
    assert view.sensors[2].since_ms == HOUR - 4 * H and view.sensors[2].hour_ms == HOUR
    assert (view.sensors[4].kind_title, view.sensors[4].district_name) == ("gas", "nowhere")
    assert view.sensors[1].kind_title == "Water"
    shown = build_quality(city, [bad(f"wm-{i}", readings=1, score=float(i)) for i in range(60)],
                          80.0, shown=50)
    assert shown.total == 60 and len(shown.sensors) == 50
    assert shown.sensors[-1].sensor_id == "wm-49"


def test_hostile_sensor_ids_stay_data() -> None:
    hostile = '<img src=x onerror="window.__xss = 9">'
    view = build_quality(small_city(), [bad(hostile, district=hostile, rejected=1)], 80.0)
    (sensor,) = view.sensors
    assert sensor.sensor_id == hostile and sensor.district_name == hostile
    sent = json.loads(view.model_dump_json())["sensors"][0]   # data; the page uses textContent
    assert (sent["sensor_id"], sent["district_name"]) == (hostile, hostile)


def kpis() -> list[Row]:
    t = NOW - 60_000
    return [
        row("water_kpi", "meters_reporting", 37, t, district="bletchley", window="15m"),
        row("energy_kpi", "meters_reporting", 9, t, district="wolverton", window="30m"),
        row("water_kpi", "meters_reporting", 3, t, district="zeta", window="15m"),
        row("traffic_kpi", "congestion_index", 0.4, t, district="bletchley", junction="j-1",
            window="5m"),
        row("shuttle_kpi", "vehicles_reporting", 3, t, route="r-1", window="15m"),
        row("noise_kpi", "readings", 12, t, district="bletchley", window="1h"),
        row("car_park_kpi", "sensors_reporting", 2, t, car_park="cp-1", window="5m"),
    ]


def test_every_kpi_point_says_how_many_sensors_it_comes_from() -> None:
    city = feed_city().model_copy(update={"districts": [
        feed_city().districts[0].model_copy(update={"water_meters": 40}),
        feed_city().districts[1]]})
    coverage = [seen("energy", "wolverton", 11, 10), seen("water", "zeta", 4, 4),
                seen("traffic", "bletchley", 12, 11), seen("noise", "bletchley", 6, 5)]
    snap = build_snapshot(city, kpis(), [], OK, NOW, coverage)

    def text(point: Any) -> str | None:
        return None if point is None or point.coverage is None else point.coverage.text

    bletchley, wolverton, zeta = snap.districts
    assert text(bletchley.water) == "computed from 37 of 40 meters"     # the city file's count
    assert bletchley.water is not None and bletchley.water.coverage is not None
    assert (bletchley.water.coverage.counted, bletchley.water.coverage.of) == (37, 40)
    assert text(wolverton.energy) == "computed from 9 of 11 meters"     # seen in 24 h
    assert text(zeta.water) == "computed from 3 of 4 meters"            # not in the city file
    assert text(snap.junctions[0].traffic) == "11 of 12 district counters reporting"  # no count
    assert text(snap.routes[0].shuttle) == "computed from 3 of 4 vehicles"   # the fleet
    noise, car_park = snap.feeds
    # a feed without a `sensors` KPI: sensor_quality of its kind and district
    assert text(noise.entities[0].point) == "5 of 6 sensors reporting"
    assert noise.entities[1].point is None
    # a `sensors` KPI counts them; a car park is no district, so of how many is not known
    assert text(car_park.entities[0].point) == "computed from 2 sensors"

    bare = build_snapshot(city, kpis(), [], OK, NOW)               # no sensor_quality yet
    assert text(bare.districts[1].energy) == "computed from 9 meters"
    assert bare.junctions[0].traffic is not None and bare.junctions[0].traffic.coverage is None


def test_the_poller_reads_quality_once_a_refresh_and_after_influxdb_came_back() -> None:
    rows: dict[str, list[Row]] = {
        "latest": kpis(), "attention": [bad("wm-1", 1, readings=1, score=10.0)],
        "coverage": [seen("traffic", "bletchley", 12, 11)]}
    source = FakeSource(rows=rows)
    clock = [NOW]
    hub = Hub()
    poller = Poller(source, small_city(), hub,
                    PollerOptions(history_refresh_s=60, min_score=50.0), lambda: clock[0])
    asyncio.run(poller.poll_once())
    assert "r.score < 50.000000" in source.flux[2]
    quality = json.loads(hub.last("quality") or b"{}")
    assert quality["min_score"] == 50.0 and quality["total"] == 1
    assert quality["sensors"][0]["problems"] == ["score 10 below 50"]
    snap = json.loads(hub.last("snapshot") or b"{}")
    assert snap["junctions"][0]["traffic"]["coverage"]["of"] == 12
    clock[0] += 5000
    asyncio.run(poller.poll_once())
    assert source.asked.count("attention") == 1 and source.asked.count("coverage") == 1
    source.fail = "InfluxDB refused the token (HTTP 401)"
    clock[0] += 5000
    asyncio.run(poller.poll_once())
    snap = json.loads(hub.last("snapshot") or b"{}")
    assert snap["junctions"][0]["traffic"]["coverage"]["of"] == 12  # the last read is kept
    source.fail = None
    clock[0] += 5000
    asyncio.run(poller.poll_once())
    assert source.asked.count("attention") == 2         # InfluxDB is back: read again
    clock[0] += 60_000
    asyncio.run(poller.poll_once())
    assert source.asked.count("attention") == 3
