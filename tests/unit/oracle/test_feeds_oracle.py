"""Hand-computed cases for the declared-feed oracle (tests/oracle/feeds.py, CONTRACT section 5).

Every expected number is worked out by hand in the comments, never by calling the oracle's
internals. T0 is Monday 2026-11-23 00:00 UTC. Readings are flat dicts: ``district`` (the
topic's), ``sensor_id``, ``ts`` and the feed's fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.oracle import OracleInputError
from tests.oracle.feeds import compute_feed_points, load_feed, window_tag

T0 = 1_795_392_000_000  # 2026-11-23T00:00:00Z, a Monday
S = 1000
MIN = 60 * S
H = 3600 * S

Points = dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, float | int | bool]]


def make_feed(kind: str, window_s: int, kpis: list[dict[str, Any]], *,
              entity: str = "district", fields: dict[str, Any] | None = None,
              target: dict[str, Any] | None = None) -> dict[str, Any]:
    feed: dict[str, Any] = {"kind": kind, "title": kind.title(), "window_s": window_s,
                            "entity": entity, "fields": fields or {}, "kpis": kpis}
    if target is not None:
        feed["target"] = target
    return feed


def rd(sensor: str, ts: int | str, district: str = "d1", **fields: Any) -> dict[str, Any]:
    return {"district": district, "sensor_id": sensor, "ts": ts, **fields}


def pkey(kind: str, end: int, window: str, **entity: str) -> tuple[
        str, tuple[tuple[str, str], ...], int]:
    return (f"{kind}_kpi", tuple(sorted({"window": window, **entity}.items())), end)


def point(points: Points, kind: str, end: int, window: str, **entity: str) -> dict[str, Any]:
    key = pkey(kind, end, window, **entity)
    assert key in points, f"no point {key}; have {sorted(points)}"
    return points[key]


def ends(points: Points) -> list[int]:
    return sorted(k[2] for k in points)


# --------------------------------------------------------------------------- window tag, TOML


@pytest.mark.parametrize(("window_s", "tag"), [
    (3600, "1h"), (7200, "2h"), (86400, "24h"), (43200, "12h"),
    (900, "15m"), (300, "5m"), (60, "1m"), (5400, "90m"), (1800, "30m"),
    (30, "30s"), (90, "90s"), (45, "45s"),
])
def test_window_tag(window_s: int, tag: str) -> None:
    assert window_tag(window_s) == tag


CITY_TOML = """
name = "Test City"

[[feeds]]
kind = "noise"
title = "Noise"
window_s = 3600
entity = "district"

[feeds.fields]
laeq_db  = { type = "number", min = 20, max = 140 }
lamax_db = { type = "number", min = 20, max = 160, optional = true }

[[feeds.kpis]]
name = "laeq_mean_db"
agg = "mean"
field = "laeq_db"

[feeds.target]
kpi = "laeq_mean_db"
at_most = 55.0

[[feeds.alerts]]
rule = "loud"
kpi = "laeq_mean_db"
above = 65.0

[[feeds]]
kind = "parking"
title = "Parking"
window_s = 900
entity = "car_park"

[feeds.fields]
car_park = { type = "string" }
free = { type = "integer", min = 0 }

[[feeds.kpis]]
name = "free_mean"
agg = "mean"
field = "free"
"""


def test_load_feed_and_the_contract_example(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text(CITY_TOML, encoding="utf-8")
    noise = load_feed(path, "noise")
    assert noise["kind"] == "noise" and noise["window_s"] == 3600
    assert noise["kpis"] == [{"name": "laeq_mean_db", "agg": "mean", "field": "laeq_db"}]
    assert noise["target"] == {"kpi": "laeq_mean_db", "at_most": 55.0}
    assert noise["fields"]["lamax_db"]["optional"] is True
    assert load_feed(str(path), "parking")["entity"] == "car_park"
    with pytest.raises(KeyError):
        load_feed(path, "air")

    points = compute_feed_points([
        rd("n1", T0 + 10 * MIN, laeq_db=50.0),
        rd("n2", T0 + 20 * MIN, laeq_db=60.0, lamax_db=80.0),
    ], noise)
    # mean (50 + 60) / 2 = 55; the only window of the 24 h -> 55 <= 55 on track.
    # Only declared KPIs (+ target fields) are written: no count/sensors here.
    assert points == {pkey("noise", T0 + H, "1h", district="d1"): {
        "laeq_mean_db": 55.0, "target": 55.0, "laeq_mean_db_24h": 55.0, "on_track": True}}


# --------------------------------------------------------------------------- aggregations


AIR = make_feed("air", 900, [
    {"name": "n", "agg": "count"},
    {"name": "sensors", "agg": "sensors"},
    {"name": "pm25_sum", "agg": "sum", "field": "pm25"},
    {"name": "pm25_mean", "agg": "mean", "field": "pm25"},
    {"name": "pm25_min", "agg": "min", "field": "pm25"},
    {"name": "pm25_max", "agg": "max", "field": "pm25"},
    {"name": "pm25_over", "agg": "count_above", "field": "pm25", "threshold": 25.5},
    {"name": "pm25_ok_pct", "agg": "share_between", "field": "pm25", "min": 10, "max": 25.5},
    {"name": "no2_mean", "agg": "mean", "field": "no2"},
], fields={"pm25": {"type": "number"}, "no2": {"type": "number", "optional": True}})


def test_simple_aggregations() -> None:
    points = compute_feed_points([
        rd("s1", T0 + 1 * MIN, pm25=10.0, no2=30.0),
        rd("s2", T0 + 2 * MIN, pm25=25.5),
        rd("s1", T0 + 3 * MIN, pm25=30),  # an int value: fine for a number field
        rd("s3", T0 + 15 * MIN - 1, pm25=4.5, no2=40.0),  # last ms of [T0, T0+15m)
        rd("s1", T0 + 15 * MIN, pm25=12.0),  # on the edge: window [T0+15m, T0+30m)
        rd("s9", T0 + 5 * MIN, district="d2", pm25=100.0),  # another district, own point
    ], AIR)
    assert ends(points) == [T0 + 15 * MIN, T0 + 15 * MIN, T0 + 30 * MIN]

    p = point(points, "air", T0 + 15 * MIN, "15m", district="d1")
    assert p == {
        "n": 4,  # s1, s2, s1, s3
        "sensors": 3,  # s1, s2, s3
        "pm25_sum": 70.0,  # 10 + 25.5 + 30 + 4.5
        "pm25_mean": 17.5,  # 70 / 4
        "pm25_min": 4.5,
        "pm25_max": 30.0,
        "pm25_over": 1,  # only 30 > 25.5 (25.5 is not greater)
        "pm25_ok_pct": 50.0,  # 10 and 25.5 in [10, 25.5] (inclusive): 2 of 4
        "no2_mean": 35.0,  # (30 + 40) / 2, over the 2 readings that carry no2
    }
    assert type(p["n"]) is int and type(p["sensors"]) is int and type(p["pm25_over"]) is int
    assert type(p["pm25_max"]) is float and type(p["pm25_ok_pct"]) is float

    # [T0+15m, T0+30m): a single reading of 12, no no2 -> no2_mean left out
    assert point(points, "air", T0 + 30 * MIN, "15m", district="d1") == {
        "n": 1, "sensors": 1, "pm25_sum": 12.0, "pm25_mean": 12.0, "pm25_min": 12.0,
        "pm25_max": 12.0, "pm25_over": 0, "pm25_ok_pct": 100.0}
    assert point(points, "air", T0 + 15 * MIN, "15m", district="d2") == {
        "n": 1, "sensors": 1, "pm25_sum": 100.0, "pm25_mean": 100.0, "pm25_min": 100.0,
        "pm25_max": 100.0, "pm25_over": 1, "pm25_ok_pct": 0.0}


def test_integer_field_sum_is_float() -> None:
    feed = make_feed("visits", 3600, [
        {"name": "visits", "agg": "sum", "field": "n"},
        {"name": "peak", "agg": "max", "field": "n"},
    ], fields={"n": {"type": "integer"}})
    points = compute_feed_points([rd("g1", T0, n=3), rd("g2", T0 + 1, n=4)], feed)
    p = point(points, "visits", T0 + H, "1h", district="d1")
    assert p == {"visits": 7.0, "peak": 4.0}
    assert type(p["visits"]) is float and type(p["peak"]) is float


def test_ratio_pct() -> None:
    feed = make_feed("bays", 900, [
        {"name": "occupied_pct", "agg": "ratio_pct", "field": "occupied", "of": "capacity"},
        {"name": "n", "agg": "count"},
    ], fields={"occupied": {"type": "integer"},
               "capacity": {"type": "integer", "optional": True}})
    points = compute_feed_points([
        # window 1: only the readings carrying both count: 100 * (30 + 45) / (100 + 50) = 50
        rd("b1", T0 + 1 * MIN, occupied=30, capacity=100),
        rd("b2", T0 + 2 * MIN, occupied=45, capacity=50),
        rd("b3", T0 + 3 * MIN, occupied=10),  # no capacity: left out of both sums
        # window 2: sum(capacity) == 0 -> ratio left out
        rd("b1", T0 + 16 * MIN, occupied=0, capacity=0),
        # window 3: no reading carries capacity -> left out
        rd("b1", T0 + 31 * MIN, occupied=7),
        # window 4: occupied 0 of capacity 20 -> 0.0
        rd("b1", T0 + 46 * MIN, occupied=0, capacity=20),
    ], feed)
    assert point(points, "bays", T0 + 15 * MIN, "15m", district="d1") == {
        "occupied_pct": 50.0, "n": 3}
    assert point(points, "bays", T0 + 30 * MIN, "15m", district="d1") == {"n": 1}
    assert point(points, "bays", T0 + 45 * MIN, "15m", district="d1") == {"n": 1}
    assert point(points, "bays", T0 + 60 * MIN, "15m", district="d1") == {
        "occupied_pct": 0.0, "n": 1}


def test_booleans_count_as_one_and_zero() -> None:
    feed = make_feed("bins", 3600, [
        {"name": "full_n", "agg": "sum", "field": "full"},
        {"name": "full_pct", "agg": "mean", "field": "full", "scale": 100},
        {"name": "full_above", "agg": "count_above", "field": "full", "threshold": 0.5},
        {"name": "any_full", "agg": "max", "field": "full"},
    ], fields={"full": {"type": "boolean"}})
    points = compute_feed_points([
        rd("b1", T0 + 1 * MIN, full=True),
        rd("b2", T0 + 2 * MIN, full=False),
        rd("b3", T0 + 3 * MIN, full=True),
        rd("b4", T0 + 4 * MIN, full=True),
        rd("b1", T0 + H + 1, full=False),
    ], feed)
    # 1 + 0 + 1 + 1 = 3; mean 3/4 = 0.75, x100 = 75; 3 readings > 0.5; max 1.0
    assert point(points, "bins", T0 + H, "1h", district="d1") == {
        "full_n": 3.0, "full_pct": 75.0, "full_above": 3, "any_full": 1.0}
    # all false: 0.0 (present: the readings carry the field), 0 above
    assert point(points, "bins", T0 + 2 * H, "1h", district="d1") == {
        "full_n": 0.0, "full_pct": 0.0, "full_above": 0, "any_full": 0.0}


def test_scale_on_sum_mean_min_max() -> None:
    feed = make_feed("flow", 900, [
        {"name": "sum_l", "agg": "sum", "field": "m3", "scale": 1000},
        {"name": "mean_l", "agg": "mean", "field": "m3", "scale": 1000},
        {"name": "min_l", "agg": "min", "field": "m3", "scale": 1000},
        {"name": "max_l", "agg": "max", "field": "m3", "scale": 1000},
        {"name": "half_sum", "agg": "sum", "field": "m3", "scale": 0.5},
    ], fields={"m3": {"type": "number"}})
    points = compute_feed_points([
        rd("f1", T0, m3=0.25), rd("f2", T0 + 1, m3=1.5), rd("f3", T0 + 2, m3=0.5)], feed)
    # sum 2.25 -> 2250 L; mean 0.75 -> 750; min 0.25 -> 250; max 1.5 -> 1500; 2.25/2 = 1.125
    assert point(points, "flow", T0 + 15 * MIN, "15m", district="d1") == {
        "sum_l": 2250.0, "mean_l": 750.0, "min_l": 250.0, "max_l": 1500.0, "half_sum": 1.125}


# --------------------------------------------------------------------------- delta / increase


GAS = make_feed("gas", 900, [
    {"name": "use_l", "agg": "delta", "field": "volume_m3", "scale": 1000},
    {"name": "rise", "agg": "increase", "field": "volume_m3"},
    {"name": "n", "agg": "count"},
], fields={"volume_m3": {"type": "number", "min": 0}})


def test_delta_and_increase_with_resets_and_scale() -> None:
    points = compute_feed_points([
        rd("A", T0 + 1 * MIN, volume_m3=10.0),  # A first: nothing
        rd("B", T0 + 2 * MIN, volume_m3=100.0),  # B first: nothing
        rd("B", T0 + 3 * MIN, volume_m3=101.25),  # B +1.25
        rd("A", T0 + 5 * MIN, volume_m3=10.5),  # A +0.5
        rd("A", T0 + 16 * MIN, volume_m3=11.0),  # A +0.5
        rd("A", T0 + 20 * MIN, volume_m3=2.0),  # A reset: delta 2.0, increase 0
        rd("B", T0 + 25 * MIN, volume_m3=101.0),  # B reset: delta 101.0, increase 0
        rd("A", T0 + 31 * MIN, volume_m3=2.5),  # A +0.5 (against the reset value 2.0)
    ], GAS)
    # window 1: delta 1.25 + 0.5 = 1.75 m3 -> 1750 L; increase 1.75
    assert point(points, "gas", T0 + 15 * MIN, "15m", district="d1") == {
        "use_l": 1750.0, "rise": 1.75, "n": 4}
    # window 2: delta 0.5 + 2.0 + 101.0 = 103.5 -> 103500 L; increase 0.5 + 0 + 0
    assert point(points, "gas", T0 + 30 * MIN, "15m", district="d1") == {
        "use_l": 103500.0, "rise": 0.5, "n": 3}
    assert point(points, "gas", T0 + 45 * MIN, "15m", district="d1") == {
        "use_l": 500.0, "rise": 0.5, "n": 1}


def test_out_of_order_readings_add_no_delta() -> None:
    feed = make_feed("reg", 900, [
        {"name": "use", "agg": "delta", "field": "r"},
        {"name": "up", "agg": "increase", "field": "r"},
        {"name": "r_mean", "agg": "mean", "field": "r"},
        {"name": "n", "agg": "count"},
    ], fields={"r": {"type": "number"}})
    points = compute_feed_points([
        rd("s1", T0 + 10 * MIN, r=10),  # first: nothing
        rd("s1", T0 + 12 * MIN, r=12),  # +2
        rd("s1", T0 + 11 * MIN, r=11),  # older than 12m: no delta, prev stays 12
        rd("s1", T0 + 13 * MIN, r=15),  # +3 against 12 (not +4 against 11)
        rd("s1", T0 + 20 * MIN, r=20),  # window 2: +5
        rd("s1", T0 + 5 * MIN, r=9),  # window 1 again, older than 20m: no delta, but counted
        rd("s2", T0 + 40 * MIN, r=7),  # window 3: s2's first reading -> delta 0.0 (present)
        rd("s1", T0 + 80 * MIN, r=30),  # window [75m, 90m): +10 against 20
        rd("s1", T0 + 70 * MIN, r=25),  # window [60m, 75m): out of order only -> 0.0
        rd("s1", T0 + 85 * MIN, r=26),  # prev still 30 (25 changed nothing): reset -> 26
    ], feed)
    # window 1: deltas 2 + 3 = 5; values 10, 12, 11, 15, 9: mean 57 / 5 = 11.4
    p1 = point(points, "reg", T0 + 15 * MIN, "15m", district="d1")
    assert p1 == {"use": 5.0, "up": 5.0, "r_mean": pytest.approx(11.4), "n": 5}
    assert point(points, "reg", T0 + 30 * MIN, "15m", district="d1") == {
        "use": 5.0, "up": 5.0, "r_mean": 20.0, "n": 1}
    assert point(points, "reg", T0 + 45 * MIN, "15m", district="d1") == {
        "use": 0.0, "up": 0.0, "r_mean": 7.0, "n": 1}
    assert point(points, "reg", T0 + 75 * MIN, "15m", district="d1") == {
        "use": 0.0, "up": 0.0, "r_mean": 25.0, "n": 1}
    # window [75m, 90m): +10, then reset 30 -> 26 counts 26; increase 10 + 0
    assert point(points, "reg", T0 + 90 * MIN, "15m", district="d1") == {
        "use": 36.0, "up": 10.0, "r_mean": 28.0, "n": 2}
    assert T0 + 60 * MIN not in ends(points)  # [45m, 60m) received nothing: no point


def test_latest_ts_advances_with_readings_without_the_field() -> None:
    feed = make_feed("meter", 3600, [
        {"name": "use", "agg": "delta", "field": "reg"},
        {"name": "up", "agg": "increase", "field": "reg"},
        {"name": "temp_mean", "agg": "mean", "field": "temp"},
    ], fields={"reg": {"type": "number", "optional": True}, "temp": {"type": "number"}})
    points = compute_feed_points([
        rd("m1", T0 + 1 * MIN, reg=10.0, temp=20.0),  # first: prev 10
        rd("m1", T0 + 3 * MIN, temp=22.0),  # no reg, but the sensor's latest ts is now 3m
        rd("m1", T0 + 2 * MIN, reg=8.0, temp=21.0),  # older than 3m: no delta, prev stays 10
        rd("m1", T0 + 4 * MIN, reg=13.0, temp=23.0),  # +3 against 10
        rd("m1", T0 + H + 1 * MIN, temp=30.0),  # hour 2: nobody carries reg -> use left out
    ], feed)
    # (had the 8 been taken in order: a reset adding 8, then +5 -> use 13, up 5)
    assert point(points, "meter", T0 + H, "1h", district="d1") == {
        "use": 3.0, "up": 3.0, "temp_mean": 21.5}  # (20 + 22 + 21 + 23) / 4
    assert point(points, "meter", T0 + 2 * H, "1h", district="d1") == {"temp_mean": 30.0}


def test_delta_is_attributed_to_the_window_of_the_reading() -> None:
    points = compute_feed_points([
        rd("A", T0 + 14 * MIN, volume_m3=1.0),
        rd("A", T0 + 50 * MIN, volume_m3=3.0),  # +2 spans two windows: all of it at 45m-60m
    ], GAS)
    assert point(points, "gas", T0 + 15 * MIN, "15m", district="d1") == {
        "use_l": 0.0, "rise": 0.0, "n": 1}
    assert point(points, "gas", T0 + 60 * MIN, "15m", district="d1") == {
        "use_l": 2000.0, "rise": 2.0, "n": 1}
    assert ends(points) == [T0 + 15 * MIN, T0 + 60 * MIN]


# --------------------------------------------------------------------------- duplicates


def test_duplicates_are_dropped_whatever_the_ts_spelling() -> None:
    feed = make_feed("reg", 900, [
        {"name": "n", "agg": "count"},
        {"name": "r_sum", "agg": "sum", "field": "r"},
        {"name": "use", "agg": "delta", "field": "r"},
    ], fields={"r": {"type": "number"}})
    points = compute_feed_points([
        rd("s1", T0 + 1 * MIN, r=10.0),
        rd("s1", "2026-11-23T00:01:00Z", r=50.0),  # same instant: duplicate, dropped
        rd("s1", "2026-11-23T01:01:00+01:00", r=50.0),  # same instant again: dropped
        rd("s1", T0 + 1 * MIN, district="d2", r=50.0),  # same (sensor_id, ts): dropped
        rd("s2", T0 + 1 * MIN, r=5.0),  # other sensor, same ts: kept
        rd("s1", T0 + 2 * MIN, r=11.0),  # +1 against 10 (the dropped 50 never became prev)
        rd("s1", T0 + 2 * MIN, r=11.0, seq=7),  # exact repeat with a seq: dropped
    ], feed)
    assert points == {pkey("reg", T0 + 15 * MIN, "15m", district="d1"): {
        "n": 3, "r_sum": 26.0, "use": 1.0}}  # 10 + 5 + 11


# --------------------------------------------------------------------------- optional fields


def test_missing_optional_fields() -> None:
    feed = make_feed("noise", 3600, [
        {"name": "laeq_mean_db", "agg": "mean", "field": "laeq_db"},
        {"name": "lamax_db", "agg": "max", "field": "lamax_db"},
        {"name": "lamax_loud", "agg": "count_above", "field": "lamax_db", "threshold": 70},
        {"name": "lamax_rise", "agg": "increase", "field": "lamax_db"},
        {"name": "lamax_delta", "agg": "delta", "field": "lamax_db"},
        {"name": "n", "agg": "count"},
        {"name": "sensors", "agg": "sensors"},
    ], fields={"laeq_db": {"type": "number"},
               "lamax_db": {"type": "number", "optional": True}})
    points = compute_feed_points([
        rd("n1", T0 + 1 * MIN, laeq_db=50.0),
        rd("n2", T0 + 2 * MIN, laeq_db=60.0),
        rd("n1", T0 + H + 1 * MIN, laeq_db=40.0, lamax_db=70.0),  # n1's first lamax
        rd("n1", T0 + 2 * H + 1 * MIN, laeq_db=40.0, lamax_db=75.0),  # +5
        rd("n1", T0 + 2 * H + 2 * MIN, laeq_db=45.0),  # carries no lamax
    ], feed)
    # hour 0: no lamax anywhere: every lamax KPI left out, delta/increase included
    assert point(points, "noise", T0 + H, "1h", district="d1") == {
        "laeq_mean_db": 55.0, "n": 2, "sensors": 2}
    # hour 1: lamax carried but only a first reading: delta/increase 0.0; 70 is not > 70
    assert point(points, "noise", T0 + 2 * H, "1h", district="d1") == {
        "laeq_mean_db": 40.0, "lamax_db": 70.0, "lamax_loud": 0, "lamax_rise": 0.0,
        "lamax_delta": 0.0, "n": 1, "sensors": 1}
    # hour 2: 75 - 70 = +5
    assert point(points, "noise", T0 + 3 * H, "1h", district="d1") == {
        "laeq_mean_db": 42.5, "lamax_db": 75.0, "lamax_loud": 1, "lamax_rise": 5.0,
        "lamax_delta": 5.0, "n": 2, "sensors": 1}


def test_none_counts_as_absent() -> None:
    points = compute_feed_points([rd("s1", T0, pm25=8.0, no2=None)], AIR)
    p = point(points, "air", T0 + 15 * MIN, "15m", district="d1")
    assert "no2_mean" not in p and p["pm25_mean"] == 8.0


# --------------------------------------------------------------------------- late data, horizon


def test_late_readings_correct_their_window() -> None:
    feed = make_feed("air", 900, [
        {"name": "n", "agg": "count"},
        {"name": "sensors", "agg": "sensors"},
        {"name": "v_mean", "agg": "mean", "field": "v"},
    ], fields={"v": {"type": "number"}})
    readings = [
        rd("s1", T0 + 1 * MIN, v=10.0),
        rd("s1", T0 + 16 * MIN, v=20.0),
        rd("s2", T0 + 31 * MIN, v=30.0),
    ]
    before = compute_feed_points(readings, feed)
    assert point(before, "air", T0 + 15 * MIN, "15m", district="d1") == {
        "n": 1, "sensors": 1, "v_mean": 10.0}
    # s2 then sends a reading for window 1, 30 min late but well inside the 24 h horizon
    after = compute_feed_points([*readings, rd("s2", T0 + 2 * MIN, v=50.0)], feed)
    assert point(after, "air", T0 + 15 * MIN, "15m", district="d1") == {
        "n": 2, "sensors": 2, "v_mean": 30.0}  # (10 + 50) / 2
    # the other windows are unchanged
    assert point(after, "air", T0 + 30 * MIN, "15m", district="d1") == {
        "n": 1, "sensors": 1, "v_mean": 20.0}
    assert point(after, "air", T0 + 45 * MIN, "15m", district="d1") == {
        "n": 1, "sensors": 1, "v_mean": 30.0}


def test_horizon_per_entity() -> None:
    points = compute_feed_points([
        rd("A", T0 + 2 * H, volume_m3=1.0),  # d1 watermark T0+2h; A first
        rd("B", T0 + H - 1, volume_m3=5.0),  # < T0+2h - 1h: beyond the horizon, dropped
        rd("C", T0 + H, volume_m3=7.0),  # == watermark - horizon: accepted
        rd("D", T0 + 30 * MIN, volume_m3=50.0),  # dropped: no count, no state for D
        rd("D", T0 + 2 * H + 1 * MIN, volume_m3=60.0),  # D's first accepted: no delta
        rd("E", T0 + 10 * MIN, district="d2", volume_m3=3.0),  # d2 has its own watermark
        # same (sensor_id, ts) as the dropped B, but now accepted in d2 (watermark T0+10m):
        # a reading dropped by the horizon was never accepted, so this is no duplicate
        rd("B", T0 + H - 1, district="d2", volume_m3=5.0),
    ], GAS, horizon_s=3600)
    assert sorted((dict(k[1])["district"], k[2]) for k in points) == [
        ("d1", T0 + H + 15 * MIN), ("d1", T0 + 2 * H + 15 * MIN),
        ("d2", T0 + 15 * MIN), ("d2", T0 + H)]
    assert point(points, "gas", T0 + H + 15 * MIN, "15m", district="d1") == {
        "use_l": 0.0, "rise": 0.0, "n": 1}
    # A first + D first (the dropped 50 did not become D's previous value) -> 0.0, not 10000
    assert point(points, "gas", T0 + 2 * H + 15 * MIN, "15m", district="d1") == {
        "use_l": 0.0, "rise": 0.0, "n": 2}
    assert point(points, "gas", T0 + H, "15m", district="d2") == {
        "use_l": 0.0, "rise": 0.0, "n": 1}


def test_default_horizon_is_24_hours() -> None:
    points = compute_feed_points([
        rd("A", T0 + 25 * H, volume_m3=1.0),
        rd("B", T0 + H, volume_m3=1.0),  # exactly 24 h before the watermark: accepted
        rd("C", T0 + H - 1, volume_m3=1.0),  # 1 ms older: dropped
    ], GAS)
    assert ends(points) == [T0 + H + 15 * MIN, T0 + 25 * H + 15 * MIN]


# --------------------------------------------------------------------------- targets


NOISE_TARGET = make_feed("noise", 3600, [
    {"name": "laeq_mean_db", "agg": "mean", "field": "laeq_db"},
], fields={"laeq_db": {"type": "number"}}, target={"kpi": "laeq_mean_db", "at_most": 55.0})

NOISE_READINGS = [
    rd("n1", T0 + 10 * MIN, laeq_db=50.0),  # hour 0: 50
    rd("n1", T0 + H + 10 * MIN, laeq_db=60.0),  # hour 1: 60
    rd("n1", T0 + 2 * H + 10 * MIN, laeq_db=58.0),  # hour 2: 58
    rd("n1", T0 + 23 * H + 10 * MIN, laeq_db=52.0),  # hour 23: 52
    rd("n1", T0 + 24 * H + 10 * MIN, laeq_db=40.0),  # hour 24 (next day 00:00): 40
]


def test_target_at_most_24h_mean() -> None:
    points = compute_feed_points(NOISE_READINGS, NOISE_TARGET)

    def p(end: int) -> dict[str, Any]:
        return point(points, "noise", end, "1h", district="d1")

    assert p(T0 + H) == {"laeq_mean_db": 50.0, "target": 55.0, "laeq_mean_db_24h": 50.0,
                         "on_track": True}
    # (50 + 60) / 2 = 55 <= 55: on track (inclusive)
    assert p(T0 + 2 * H) == {"laeq_mean_db": 60.0, "target": 55.0,
                             "laeq_mean_db_24h": 55.0, "on_track": True}
    # (50 + 60 + 58) / 3 = 56 > 55
    assert p(T0 + 3 * H) == {"laeq_mean_db": 58.0, "target": 55.0,
                             "laeq_mean_db_24h": 56.0, "on_track": False}
    # window ending T0+24h: starts in [T0, T0+24h): hours 0, 1, 2, 23 -> 220 / 4 = 55
    assert p(T0 + 24 * H) == {"laeq_mean_db": 52.0, "target": 55.0,
                              "laeq_mean_db_24h": 55.0, "on_track": True}
    # window ending T0+25h: starts in [T0+1h, T0+25h): hour 0 drops out, hour 1 (starting
    # exactly at T0+1h) stays: (60 + 58 + 52 + 40) / 4 = 52.5
    assert p(T0 + 25 * H) == {"laeq_mean_db": 40.0, "target": 55.0,
                              "laeq_mean_db_24h": 52.5, "on_track": True}
    assert isinstance(p(T0 + H)["on_track"], bool) and type(p(T0 + H)["target"]) is float


def test_target_uses_corrected_values_of_earlier_windows() -> None:
    # a late reading for hour 1 (accepted: T0+1h30m >= T0+24h10m - 24h) lowers its mean to
    # (60 + 40) / 2 = 50, which changes every later 24 h figure that covers hour 1
    points = compute_feed_points(
        [*NOISE_READINGS, rd("n2", T0 + H + 30 * MIN, laeq_db=40.0)], NOISE_TARGET)

    def p(end: int) -> dict[str, Any]:
        return point(points, "noise", end, "1h", district="d1")

    assert p(T0 + H)["laeq_mean_db_24h"] == 50.0  # hour 0 alone: unchanged
    assert p(T0 + 2 * H) == {"laeq_mean_db": 50.0, "target": 55.0,
                             "laeq_mean_db_24h": 50.0, "on_track": True}  # (50 + 50) / 2
    # (50 + 50 + 58) / 3 = 52.666...: now on track
    assert p(T0 + 3 * H)["laeq_mean_db_24h"] == pytest.approx(158 / 3)
    assert p(T0 + 3 * H)["on_track"] is True
    assert p(T0 + 24 * H)["laeq_mean_db_24h"] == 52.5  # (50 + 50 + 58 + 52) / 4
    assert p(T0 + 25 * H)["laeq_mean_db_24h"] == 50.0  # (50 + 58 + 52 + 40) / 4


def test_target_at_least_skips_windows_without_the_kpi() -> None:
    feed = make_feed("bins", 3600, [
        {"name": "n", "agg": "count"},
        {"name": "fill_mean", "agg": "mean", "field": "fill_pct"},
    ], fields={"fill_pct": {"type": "number", "optional": True},
               "battery": {"type": "number"}}, target={"kpi": "fill_mean", "at_least": 75})
    points = compute_feed_points([
        rd("b1", T0 + 1 * MIN, battery=90.0),  # hour 0: no fill_pct
        rd("b1", T0 + H + 1 * MIN, battery=90.0, fill_pct=80.0),  # hour 1: 80
        rd("b1", T0 + 2 * H + 1 * MIN, battery=90.0),  # hour 2: no fill_pct
        rd("b1", T0 + 3 * H + 1 * MIN, battery=90.0, fill_pct=70.0),  # hour 3: 70
        rd("b1", T0 + 4 * H + 1 * MIN, battery=90.0, fill_pct=60.0),  # hour 4: 60
        rd("b9", T0 + 4 * H + 1 * MIN, district="d2", battery=90.0, fill_pct=100.0),
    ], feed)

    def p(end: int, district: str = "d1") -> dict[str, Any]:
        return point(points, "bins", end, "1h", district=district)

    # hour 0: no window of the span has fill_mean: the 24 h figure and on_track left out
    assert p(T0 + H) == {"n": 1, "target": 75.0}
    assert p(T0 + 2 * H) == {"n": 1, "fill_mean": 80.0, "target": 75.0, "fill_mean_24h": 80.0,
                             "on_track": True}
    # hour 2 has no fill_mean itself, but its 24 h span has hour 1's 80
    assert p(T0 + 3 * H) == {"n": 1, "target": 75.0, "fill_mean_24h": 80.0, "on_track": True}
    # (80 + 70) / 2 = 75 >= 75 (inclusive)
    assert p(T0 + 4 * H) == {"n": 1, "fill_mean": 70.0, "target": 75.0, "fill_mean_24h": 75.0,
                             "on_track": True}
    # (80 + 70 + 60) / 3 = 70 < 75
    assert p(T0 + 5 * H) == {"n": 1, "fill_mean": 60.0, "target": 75.0, "fill_mean_24h": 70.0,
                             "on_track": False}
    # d2 is its own entity: only its own 100
    assert p(T0 + 5 * H, "d2") == {"n": 1, "fill_mean": 100.0, "target": 75.0,
                                   "fill_mean_24h": 100.0, "on_track": True}


def test_target_on_an_integer_kpi_gives_a_float_mean() -> None:
    feed = make_feed("visits", 900, [{"name": "n", "agg": "count"}],
                     target={"kpi": "n", "at_least": 2})
    points = compute_feed_points([
        rd("g1", T0), rd("g2", T0 + 1),  # window 1: 2
        rd("g1", T0 + 15 * MIN),  # window 2: 1
    ], feed)
    assert point(points, "visits", T0 + 30 * MIN, "15m", district="d1") == {
        "n": 1, "target": 2.0, "n_24h": 1.5, "on_track": False}  # (2 + 1) / 2


# --------------------------------------------------------------------------- entity field


PARKING = make_feed("parking", 900, [
    {"name": "free_mean", "agg": "mean", "field": "free"},
    {"name": "freed", "agg": "increase", "field": "free"},
    {"name": "n", "agg": "count"},
    {"name": "sensors", "agg": "sensors"},
], entity="car_park", fields={"car_park": {"type": "string"}, "free": {"type": "integer"}})


def test_entity_keyed_by_a_string_field() -> None:
    points = compute_feed_points([
        rd("s1", T0 + 1 * MIN, car_park="cp-theatre", free=10),
        rd("s2", T0 + 2 * MIN, district="d2", car_park="cp-theatre", free=20),  # same point
        rd("s1", T0 + 3 * MIN, car_park="cp-station", free=50),  # s1 at another car park
        rd("s1", T0 + 4 * MIN, car_park="cp-theatre", free=15),  # +5 against 10, not 50
    ], PARKING)
    assert points == {
        pkey("parking", T0 + 15 * MIN, "15m", car_park="cp-theatre"): {
            "free_mean": 15.0, "freed": 5.0, "n": 3, "sensors": 2},  # (10 + 20 + 15) / 3
        pkey("parking", T0 + 15 * MIN, "15m", car_park="cp-station"): {
            "free_mean": 50.0, "freed": 0.0, "n": 1, "sensors": 1},  # first for (station, s1)
    }
    assert {tuple(k for k, _ in key[1]) for key in points} == {("car_park", "window")}


def test_entity_field_has_its_own_watermark() -> None:
    points = compute_feed_points([
        rd("s1", T0 + 3 * H, car_park="cp-theatre", free=1),
        rd("s2", T0 + 10 * MIN, car_park="cp-station", free=2),  # station: own watermark
        rd("s3", T0 + 20 * MIN, car_park="cp-theatre", free=3),  # < 3h - 1h: dropped
    ], PARKING, horizon_s=3600)
    assert sorted((dict(k[1])["car_park"], k[2]) for k in points) == [
        ("cp-station", T0 + 15 * MIN), ("cp-theatre", T0 + 3 * H + 15 * MIN)]


# --------------------------------------------------------------------------- ts forms, misc


def test_rfc3339_timestamps() -> None:
    points = compute_feed_points([
        rd("A", "2026-11-23T01:30:00+01:00", volume_m3=1.0),  # = T0+30m, A first
        rd("A", T0 + 40 * MIN, volume_m3=3.0),  # +2
        rd("A", "2026-11-23T00:35:00Z", volume_m3=2.0),  # older than 40m: no delta
        rd("A", "2026-11-23T00:44:59.999Z", volume_m3=3.5),  # last ms of window: +0.5
        rd("A", "2026-11-22T19:45:00-05:00", volume_m3=4.0),  # = T0+45m: next window, +0.5
    ], GAS)
    assert points == {
        pkey("gas", T0 + 45 * MIN, "15m", district="d1"): {"use_l": 2500.0, "rise": 2.5,
                                                           "n": 4},
        pkey("gas", T0 + 60 * MIN, "15m", district="d1"): {"use_l": 500.0, "rise": 0.5,
                                                           "n": 1},
    }


def test_day_and_second_windows() -> None:
    day = make_feed("recycling", 86400, [{"name": "visits", "agg": "count"}])
    points = compute_feed_points([rd("g", T0 + 24 * H - 1), rd("g", T0 + 24 * H)], day)
    assert points == {pkey("recycling", T0 + 24 * H, "24h", district="d1"): {"visits": 1},
                      pkey("recycling", T0 + 48 * H, "24h", district="d1"): {"visits": 1}}
    half_min = make_feed("footfall", 30, [{"name": "people", "agg": "count"}])
    points = compute_feed_points([rd("g", T0 + 29 * S), rd("g", T0 + 30 * S)], half_min)
    assert sorted(points) == [pkey("footfall", T0 + 30 * S, "30s", district="d1"),
                              pkey("footfall", T0 + 60 * S, "30s", district="d1")]


def test_extra_keys_are_ignored() -> None:
    plain = [rd("s1", T0, pm25=8.0), rd("s2", T0 + 1, pm25=9.0)]
    noisy = [{**plain[0], "kind": "air", "seq": 0, "topic": "city/d1/air/s1", "x": "y"},
             {**plain[1], "kind": "air", "seq": 4, "unit": "ug/m3"}]
    assert compute_feed_points(noisy, AIR) == compute_feed_points(plain, AIR)
    assert compute_feed_points([], AIR) == {}


def test_bad_inputs_raise() -> None:
    with pytest.raises(OracleInputError):
        compute_feed_points([], make_feed("x", 60, [{"name": "m", "agg": "median",
                                                     "field": "v"}]))
    with pytest.raises(OracleInputError):
        compute_feed_points([], make_feed("x", 60, [{"name": "n", "agg": "count"}],
                                          target={"kpi": "nope", "at_most": 1}))
    with pytest.raises(OracleInputError):
        compute_feed_points([rd("s1", T0, free=1)], PARKING)  # no car_park
    with pytest.raises(OracleInputError):
        compute_feed_points([rd("s1", "2026-11-23T00:00:00", pm25=1.0)], AIR)  # no offset
