"""The snapshot the page receives: every entity of the city file, data where InfluxDB has it."""

from __future__ import annotations

import pytest

from dashboard.views import (
    PIPELINE_STALE_MS,
    SourceStatus,
    build_history,
    build_snapshot,
    readable,
)
from tests.unit.dashboard.fakes import HOSTILE_TITLE, feed_city, row, small_city

NOW = 1_800_000_000_000
OK = SourceStatus(ok=True)


def test_every_city_entity_is_listed_with_none_where_no_data() -> None:
    snap = build_snapshot(small_city(), [], [], OK, NOW)
    assert [d.id for d in snap.districts] == ["bletchley", "wolverton"]
    assert [d.name for d in snap.districts] == ["Bletchley", "Wolverton"]
    assert all(d.water is None and d.energy is None and d.in_city for d in snap.districts)
    assert snap.districts[0].water_target_pct == 25.0      # the district's own target
    assert snap.districts[1].water_target_pct == 20.0      # the city's
    assert snap.junctions[0].traffic is None and snap.junctions[0].target_pct == 40.0
    assert snap.routes[0].shuttle is None and snap.routes[0].fleet_size == 4
    assert snap.latest_ms is None and snap.alerts == [] and snap.pipeline == []
    assert (snap.city, snap.timezone) == ("Testville", "Europe/London")


def test_points_land_on_their_entity_and_unknown_entities_come_last() -> None:
    latest = [
        row("water_kpi", "saving_pct_24h", 21.5, NOW - 60_000, district="bletchley",
            window="15m"),
        row("water_kpi", "on_track", True, NOW - 60_000, district="bletchley", window="15m"),
        row("energy_kpi", "saving_pct_24h", 1.5, NOW - 120_000, district="zeta", window="30m"),
        row("traffic_kpi", "congestion_index", 0.3, NOW - 30_000, district="bletchley",
            junction="j-1", window="5m"),
        row("traffic_kpi", "congestion_index", 0.9, NOW - 30_000, district="wolverton",
            junction="j-new", window="5m"),
        row("shuttle_kpi", "occupancy_pct", 40.0, NOW - 10_000, route="r-1", window="15m"),
        row("pipeline", "received", 5, NOW - 1000, component="ingest", instance="0"),
        row("pipeline", "received", 5, NOW - PIPELINE_STALE_MS - 1, component="ingest",
            instance="old"),
    ]
    snap = build_snapshot(small_city(), latest, [], OK, NOW)
    bletchley = snap.districts[0]
    assert bletchley.water is not None and bletchley.energy is None
    assert bletchley.water.fields == {"saving_pct_24h": 21.5, "on_track": True}
    assert (bletchley.water.time_ms, bletchley.water.window) == (NOW - 60_000, "15m")
    extra = snap.districts[2]
    assert (extra.id, extra.name, extra.in_city) == ("zeta", "zeta", False)
    assert extra.energy is not None and extra.water is None
    assert [j.id for j in snap.junctions] == ["j-1", "j-new"]
    assert snap.junctions[1].district == "wolverton" and not snap.junctions[1].in_city
    assert snap.routes[0].shuttle is not None
    assert snap.latest_ms == NOW - 10_000
    assert [(c.component, c.instance) for c in snap.pipeline] == [("ingest", "0")]


def test_active_alerts_are_the_newest_point_per_alert_newest_first() -> None:
    alerts = [
        # raised then cleared: not active
        row("alert", "active", True, NOW - 5000, kind="water", entity="bletchley", rule="leak"),
        row("alert", "active", False, NOW - 1000, kind="water", entity="bletchley", rule="leak"),
        row("alert", "message", "cleared", NOW - 1000, kind="water", entity="bletchley",
            rule="leak"),
        # raised: active
        row("alert", "active", True, NOW - 3000, kind="traffic", entity="j-1", rule="congestion"),
        row("alert", "value", 1.5, NOW - 3000, kind="traffic", entity="j-1", rule="congestion"),
        row("alert", "threshold", 1.0, NOW - 3000, kind="traffic", entity="j-1",
            rule="congestion"),
        row("alert", "message", "<b>index</b> 1.5", NOW - 3000, kind="traffic", entity="j-1",
            rule="congestion"),
        row("alert", "active", True, NOW - 2000, kind="water", entity="wm-1", rule="silent"),
    ]
    snap = build_snapshot(small_city(), [], alerts, OK, NOW)
    assert [(a.entity, a.rule) for a in snap.alerts] == [("wm-1", "silent"),
                                                         ("j-1", "congestion")]
    congestion = snap.alerts[1]
    assert congestion.entity_name == "Saxon St roundabout"
    assert (congestion.value, congestion.threshold) == (1.5, 1.0)
    assert congestion.message == "<b>index</b> 1.5"        # text, rendered as text by the page
    assert snap.alerts[0].entity_name == "wm-1" and snap.alerts[0].message == ""


def test_history_series_carry_their_range() -> None:
    rows = [row("water_kpi", "saving_pct_24h", 3.0, NOW - 10, district="bletchley")]
    history = build_history(rows, NOW - 86_400_000, NOW)
    assert (history.start_ms, history.end_ms) == (NOW - 86_400_000, NOW)
    assert [(s.entity, s.t, s.v) for s in history.series] == [("bletchley", [NOW - 10], [3.0])]


@pytest.mark.parametrize(("name", "title", "unit"), [
    ("occupancy_pct", "Occupancy", "%"),
    ("pm25_mean_ugm3", "PM2.5 mean", "µg/m³"),
    ("no2_hours_above", "NO₂ hours above", ""),
    ("laeq_mean_db", "LAeq mean", "dB"),
    ("sensors_reporting", "Sensors reporting", ""),
    ("entries", "Entries", ""),
    ("s", "S", ""),                                # a lone word is a name, not a unit
    ("car_park", "Car park", ""),
    ("no2_high", "NO₂ high", ""),
    ("crowded-AM", "Crowded AM", ""),
])
def test_names_are_made_readable(name: str, title: str, unit: str) -> None:
    assert readable(name) == (title, unit)


def test_a_feed_panel_is_built_from_its_spec() -> None:
    snap = build_snapshot(feed_city(), [], [], OK, NOW)
    noise, car_park = snap.feeds
    assert (noise.kind, noise.title, noise.measurement) == ("noise", HOSTILE_TITLE, "noise_kpi")
    assert (noise.entity, noise.entity_title, noise.window) == ("district", "District", "1h")
    assert [(k.name, k.title, k.unit, k.integer) for k in noise.kpis] == [
        ("laeq_mean_db", "LAeq mean", "dB", False), ("readings", "Readings", "", True)]
    assert noise.target is not None
    assert noise.target.model_dump() == {
        "kpi": "laeq_mean_db", "title": "LAeq mean", "unit": "dB", "field": "laeq_mean_db_24h",
        "direction": "at_most", "limit": 55.0}
    assert noise.chart == "laeq_mean_db"
    assert [(r.rule, r.title, r.kpi, r.op, r.threshold) for r in noise.rules] == [
        ("loud", "Loud", "laeq_mean_db", "above", 65.0)]
    # every district of the city file, none reported yet
    assert [(e.id, e.name, e.in_city, e.point) for e in noise.entities] == [
        ("bletchley", "Bletchley", True, None), ("wolverton", "Wolverton", True, None)]
    # car parks are not in the city file: none known yet
    assert (car_park.entity, car_park.entity_title, car_park.window) == (
        "car_park", "Car park", "5m")
    assert car_park.target is None and car_park.chart == "occupancy_pct"
    assert car_park.entities == []


def test_feed_points_land_on_their_entities() -> None:
    latest = [
        row("noise_kpi", "laeq_mean_db", 58.5, NOW - 60_000, district="wolverton", window="1h"),
        row("noise_kpi", "readings", 12, NOW - 60_000, district="wolverton", window="1h"),
        row("noise_kpi", "laeq_mean_db_24h", 54.0, NOW - 60_000, district="wolverton",
            window="1h"),
        row("noise_kpi", "target", 55.0, NOW - 60_000, district="wolverton", window="1h"),
        row("noise_kpi", "on_track", True, NOW - 60_000, district="wolverton", window="1h"),
        row("noise_kpi", "laeq_mean_db", 40.0, NOW - 60_000, district="zeta", window="1h"),
        row("car_park_kpi", "occupancy_pct", 91.0, NOW - 30_000, car_park="cp-theatre",
            window="5m"),
        row("car_park_kpi", "occupancy_pct", 60.0, NOW - 30_000, car_park="<b>cp</b>",
            window="5m"),
        row("car_park_kpi", "sensors_reporting", 2, NOW - 330_000, car_park="cp-theatre",
            window="5m"),                                     # an older window: left out
    ]
    snap = build_snapshot(feed_city(), latest, [], OK, NOW)
    noise, car_park = snap.feeds
    assert [(e.id, e.in_city, e.point is not None) for e in noise.entities] == [
        ("bletchley", True, False), ("wolverton", True, True), ("zeta", False, True)]
    wolverton = noise.entities[1].point
    assert wolverton is not None and (wolverton.time_ms, wolverton.window) == (
        NOW - 60_000, "1h")
    assert wolverton.fields == {"laeq_mean_db": 58.5, "readings": 12, "laeq_mean_db_24h": 54.0,
                                "target": 55.0, "on_track": True}
    assert [(e.id, e.name, e.in_city) for e in car_park.entities] == [
        ("<b>cp</b>", "<b>cp</b>", None), ("cp-theatre", "cp-theatre", None)]
    theatre = car_park.entities[1].point
    assert theatre is not None and theatre.fields == {"occupancy_pct": 91.0}
    assert snap.latest_ms == NOW - 30_000                  # feeds count for "Data to"


def test_feed_alerts_are_active_alerts_titled_by_their_feed() -> None:
    alerts = [
        row("alert", "active", True, NOW - 3000, kind="noise", entity="bletchley", rule="loud"),
        row("alert", "message", f"{HOSTILE_TITLE}: laeq_mean_db is 70, above 65", NOW - 3000,
            kind="noise", entity="bletchley", rule="loud"),
        # a car park whose id is also a shuttle route's: named as itself, not as the route
        row("alert", "active", True, NOW - 2000, kind="car_park", entity="r-1", rule="full"),
        row("alert", "active", True, NOW - 1000, kind="car_park", entity="cp-1", rule="full"),
        row("alert", "active", False, NOW - 500, kind="car_park", entity="cp-1", rule="full"),
        row("alert", "active", True, NOW - 4000, kind="shuttle", entity="r-1",
            rule="battery_low"),
    ]
    snap = build_snapshot(feed_city(), [], alerts, OK, NOW)
    assert [(a.kind, a.kind_title, a.entity, a.entity_name, a.rule, a.rule_title)
            for a in snap.alerts] == [
        ("car_park", "Car parks", "r-1", "r-1", "full", "Full"),
        ("noise", HOSTILE_TITLE, "bletchley", "Bletchley", "loud", "Loud"),
        ("shuttle", "Shuttle", "r-1", "Station - centre", "battery_low", "Battery low")]
    assert snap.alerts[1].message.startswith(HOSTILE_TITLE)


def test_feed_history_series() -> None:
    city = feed_city()
    rows = [row("car_park_kpi", "occupancy_pct", 80.0, NOW - 10, car_park="cp-1"),
            row("noise_kpi", "laeq_mean_db", 50, NOW - 20, district="bletchley")]
    history = build_history(rows, NOW - 86_400_000, NOW, city.feeds)
    assert [(s.measurement, s.entity, s.field, s.v) for s in history.series] == [
        ("car_park_kpi", "cp-1", "occupancy_pct", [80.0]),
        ("noise_kpi", "bletchley", "laeq_mean_db", [50.0])]
    assert build_history(rows, NOW - 86_400_000, NOW).series == []
