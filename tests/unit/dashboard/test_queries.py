"""Flux text and the shaping of InfluxDB rows, without InfluxDB (the integration tests run the
same queries against the real one)."""

from __future__ import annotations

from typing import Any

from dashboard.queries import (
    HISTORY_FIELDS,
    KPI_MEASUREMENTS,
    alerts_query,
    flux_string,
    history_query,
    latest_query,
    newest_points,
    series,
)


def row(measurement: str, field: str, value: Any, time_ms: int, **tags: str) -> dict[str, Any]:
    return {"_measurement": measurement, "_field": field, "_value": value, "time_ms": time_ms,
            "result": "_result", "table": 0, **tags}


def test_flux_strings_are_escaped() -> None:
    assert flux_string("kpi") == '"kpi"'
    assert flux_string('a"b\\c${x}') == '"a\\"b\\\\c\\${x}"'


def test_latest_query_reads_every_kpi_and_the_counters_with_last() -> None:
    flux = latest_query("kpi-x", 7)
    assert flux.startswith('from(bucket: "kpi-x")')
    assert "range(start: -7d)" in flux and flux.rstrip().endswith("last()")
    for measurement in (*KPI_MEASUREMENTS, "pipeline"):
        assert f'r._measurement == "{measurement}"' in flux
    assert '"alert"' not in flux


def test_alerts_query_reads_only_alerts() -> None:
    flux = alerts_query("kpi", 30)
    assert 'r._measurement == "alert"' in flux and "range(start: -30d)" in flux
    assert "last()" in flux


def test_history_query_names_each_chart_field_and_thins_traffic_only() -> None:
    flux = history_query("kpi", 24)
    for measurement, fields in HISTORY_FIELDS.items():
        assert f'r._measurement == "{measurement}"' in flux
        for name in fields:
            assert f'r._field == "{name}"' in flux
    assert flux.count("aggregateWindow(every: 15m") == 1
    traffic = flux[flux.index('"traffic_kpi"'):]
    assert traffic.index("aggregateWindow") < traffic.index("t3 =")
    assert flux.count("range(start: -24h)") == len(HISTORY_FIELDS)
    assert "union(tables: [t0, t1, t2, t3])" in flux


def test_newest_points_keep_only_the_newest_timestamp_per_entity() -> None:
    rows = [
        row("water_kpi", "saving_pct_24h", 12.5, 2000, district="bletchley", window="15m"),
        row("water_kpi", "on_track", False, 2000, district="bletchley", window="15m"),
        row("water_kpi", "meters_reporting", 30, 2000, district="bletchley", window="15m"),
        row("water_kpi", "stale_field", 1.0, 1000, district="bletchley", window="15m"),
        row("water_kpi", "saving_pct_24h", 3.0, 1000, district="wolverton", window="15m"),
        row("energy_kpi", "saving_pct_24h", 4.0, 1800, district="bletchley", window="30m"),
        row("traffic_kpi", "congestion_index", 0.4, 1900, district="bletchley", junction="j-1"),
        row("pipeline", "received", 10, 1950, component="ingest", instance="0"),
        row("pipeline", "written", 7, 1960, component="worker", instance="1"),
        row("alert", "active", True, 500, kind="water", entity="bletchley", rule="leak"),
        row("water_kpi", "saving_pct_24h", 1.0, 3000, window="15m"),  # no district tag
        row("unknown", "x", 1.0, 3000, district="bletchley"),
    ]
    got = newest_points(rows)
    assert set(got) == {("water_kpi", "bletchley"), ("water_kpi", "wolverton"),
                        ("energy_kpi", "bletchley"), ("traffic_kpi", "j-1"),
                        ("pipeline", "ingest/0"), ("pipeline", "worker/1"),
                        ("alert", "water/bletchley/leak")}
    water = got[("water_kpi", "bletchley")]
    assert water.time_ms == 2000
    assert water.fields == {"saving_pct_24h": 12.5, "on_track": False, "meters_reporting": 30}
    assert water.tags == {"district": "bletchley", "window": "15m"}
    assert got[("traffic_kpi", "j-1")].tags["district"] == "bletchley"


def test_series_group_sort_and_skip_values_a_chart_cannot_draw() -> None:
    rows = [
        row("water_kpi", "saving_pct_24h", 2.0, 3000, district="b"),
        row("water_kpi", "saving_pct_24h", 1.0, 1000, district="b"),
        row("water_kpi", "saving_pct_24h", 5, 2000, district="b"),
        row("water_kpi", "on_track", True, 2000, district="b"),
        row("shuttle_kpi", "message", "text", 2000, route="r"),
        row("traffic_kpi", "congestion_index", 0.5, 1000, junction="j"),
        row("traffic_kpi", "baseline_congestion_index", 0.6, 1000, junction="j"),
        row("traffic_kpi", "congestion_index", 0.7, 1000),
    ]
    got = series(rows)
    assert [(s.measurement, s.entity, s.field) for s in got] == [
        ("traffic_kpi", "j", "baseline_congestion_index"), ("traffic_kpi", "j", "congestion_index"),
        ("water_kpi", "b", "saving_pct_24h")]
    water = got[-1]
    assert water.t == [1000, 2000, 3000] and water.v == [1.0, 5.0, 2.0]
    assert all(isinstance(v, float) for v in water.v)
