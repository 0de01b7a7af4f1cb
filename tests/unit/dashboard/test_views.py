"""The snapshot the page receives: every entity of the city file, data where InfluxDB has it."""

from __future__ import annotations

from dashboard.views import PIPELINE_STALE_MS, SourceStatus, build_history, build_snapshot
from tests.unit.dashboard.fakes import row, small_city

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
