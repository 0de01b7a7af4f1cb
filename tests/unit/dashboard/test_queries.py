"""Flux text and the shaping of InfluxDB rows, without InfluxDB (the integration tests run the
same queries against the real one)."""

from __future__ import annotations

from typing import Any

from dashboard.queries import (
    ENTITY_TAG,
    HISTORY_FIELDS,
    KPI_MEASUREMENTS,
    alerts_query,
    chart_field,
    entity_tags,
    history_query,
    latest_query,
    newest_points,
    series,
)
from models.feeds import FeedSpec, KpiSpec
from tests.unit.dashboard.fakes import feed_city


def row(measurement: str, field: str, value: Any, time_ms: int, **tags: str) -> dict[str, Any]:
    return {"_measurement": measurement, "_field": field, "_value": value, "time_ms": time_ms,
            "result": "_result", "table": 0, **tags}


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


def test_feeds_are_read_with_the_built_in_kinds() -> None:
    noise, car_park = feed_city().feeds
    flux = latest_query("kpi", 7, (noise, car_park))
    for measurement in (*KPI_MEASUREMENTS, "noise_kpi", "car_park_kpi", "pipeline"):
        assert f'r._measurement == "{measurement}"' in flux
    assert flux.rstrip().endswith("last()")
    assert latest_query("kpi", 7) == latest_query("kpi", 7, ())


def test_a_feed_charts_its_target_kpi_else_its_first_thinned_when_windows_are_short() -> None:
    noise, car_park = feed_city().feeds
    assert (chart_field(noise), chart_field(car_park)) == ("laeq_mean_db", "occupancy_pct")
    flux = history_query("kpi", 24, (noise, car_park))
    assert ('r._measurement == "noise_kpi" and (r._field == "laeq_mean_db")' in flux)
    assert ('r._measurement == "car_park_kpi" and (r._field == "occupancy_pct")' in flux)
    assert '"readings"' not in flux and '"sensors_reporting"' not in flux
    hourly = flux[flux.index('"noise_kpi"'):flux.index("t5 =")]
    assert "aggregateWindow" not in hourly                  # 1 h windows: drawn as they are
    five_min = flux[flux.index('"car_park_kpi"'):flux.index("union(")]
    assert "aggregateWindow(every: 15m, fn: mean, createEmpty: false)" in five_min
    assert "union(tables: [t0, t1, t2, t3, t4, t5])" in flux
    keep = flux[flux.index("keep(columns:"):]
    assert '"car_park"' in keep and keep.count('"district"') == 1   # the entity tags, once each
    assert history_query("kpi", 24) == history_query("kpi", 24, ())


def test_names_from_the_city_file_are_escaped_in_the_flux() -> None:
    # the feed model refuses such names; the queries escape them all the same
    feed = FeedSpec.model_construct(
        kind='x") or true or ("', title="t", window_s=60, entity='tag"]) |> drop(',
        fields={}, kpis=[KpiSpec.model_construct(name='f" or r._value > 0 or "${x}', agg="count")],
        target=None, alerts=[])
    for flux in (latest_query("kpi", 7, (feed,)), history_query("kpi", 24, (feed,))):
        assert '"x\\") or true or (\\"_kpi"' in flux
        assert ' or true or ("' not in flux
    history = history_query("kpi", 24, (feed,))
    assert '"f\\" or r._value > 0 or \\"\\${x}"' in history
    assert '"tag\\"]) |> drop("' in history


def test_feed_points_group_by_their_entity_tag() -> None:
    noise, car_park = feed_city().feeds
    tags = entity_tags((noise, car_park))
    assert tags == {**ENTITY_TAG, "noise_kpi": "district", "car_park_kpi": "car_park"}
    rows = [
        row("car_park_kpi", "occupancy_pct", 80.0, 2000, car_park="cp-1", window="5m"),
        row("car_park_kpi", "sensors_reporting", 3, 2000, car_park="cp-1", window="5m"),
        row("car_park_kpi", "occupancy_pct", 70.0, 1000, car_park="cp-2", window="5m"),
        row("car_park_kpi", "occupancy_pct", 1.0, 3000, window="5m"),    # no entity tag
        row("noise_kpi", "laeq_mean_db", 50.0, 2000, district="bletchley", window="1h"),
    ]
    got = newest_points(rows, tags)
    assert set(got) == {("car_park_kpi", "cp-1"), ("car_park_kpi", "cp-2"),
                        ("noise_kpi", "bletchley")}
    assert got[("car_park_kpi", "cp-1")].fields == {"occupancy_pct": 80.0,
                                                    "sensors_reporting": 3}
    assert newest_points(rows) == {}                          # not a measurement it knows
    charted = series(rows, tags)
    assert [(s.measurement, s.entity, s.field, s.v) for s in charted] == [
        ("car_park_kpi", "cp-1", "occupancy_pct", [80.0]),
        ("car_park_kpi", "cp-1", "sensors_reporting", [3.0]),
        ("car_park_kpi", "cp-2", "occupancy_pct", [70.0]),
        ("noise_kpi", "bletchley", "laeq_mean_db", [50.0])]
