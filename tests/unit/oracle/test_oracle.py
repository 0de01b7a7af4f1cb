"""Hand-computed cases for the offline KPI oracle (tests/oracle).

Every expected number is worked out by hand in the comments. T0 is Monday 2026-11-23 00:00 UTC,
i.e. hour-of-week 0. Test city: district d1 with a constant water baseline of 2000 L/h (500 L per
15 min window) and an energy baseline of ``hour_of_week`` kWh/h; d2 the same water baseline with
a 25 % water target; junction j1 (free flow 80 km/h, congestion baseline 1.0 except 3.0 at hour
1); j2 (free flow omitted -> 48, baseline 0.0, target 40); route r1 with a fleet of 4.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import (
    OracleInputError,
    OracleLabelMismatch,
    OracleResult,
    compute_from_readings,
    compute_kpis,
    hour_of_week,
    parse_ts,
    window_start,
)

T0 = 1_795_392_000_000  # 2026-11-23T00:00:00Z, a Monday
S = 1000  # ms per second
MIN = 60 * S
H = 3600 * S
DAY = 24 * H


def make_city() -> dict[str, Any]:
    congestion = [1.0] * 168
    congestion[1] = 3.0
    water = [2000.0] * 168
    return {
        "name": "Test City",
        "targets": {"water_saving_pct": 20.0, "energy_saving_pct": 3.0,
                    "congestion_reduction_pct": 50.0},
        "windows": {"grace_s": 120, "horizon_s": 86400},
        "districts": [
            {"slug": "d1", "water_baseline_l_h": water,
             "energy_baseline_kwh_h": [float(i) for i in range(168)]},
            {"slug": "d2", "water_saving_pct": 25.0, "water_baseline_l_h": water,
             "energy_baseline_kwh_h": [1.0] * 168},
        ],
        "junctions": [
            {"id": "j1", "district": "d1", "free_flow_speed_kmh": 80.0,
             "congestion_baseline": congestion},
            {"id": "j2", "district": "d1", "congestion_reduction_pct": 40.0,
             "congestion_baseline": [0.0] * 168},
        ],
        "routes": [{"id": "r1", "district": "d1", "fleet_size": 4, "capacity": 10}],
    }


CITY = make_city()


def water(sensor: str, ts: int | str, volume: float, district: str = "d1") -> dict[str, Any]:
    return {"district": district, "kind": "water", "sensor_id": sensor, "ts": ts,
            "volume_m3": volume}


def energy(sensor: str, ts: int, kwh: float, power: float | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"district": "d1", "kind": "energy", "sensor_id": sensor, "ts": ts,
                         "energy_kwh": kwh}
    if power is not None:
        r["power_kw"] = power
    return r


def traffic(sensor: str, ts: int, count: int, speed: float,
            junction: str = "j1") -> dict[str, Any]:
    return {"district": "d1", "kind": "traffic", "sensor_id": sensor, "ts": ts,
            "junction": junction, "vehicle_count": count, "interval_s": 60,
            "mean_speed_kmh": speed}


def shuttle(sensor: str, ts: int, passengers: int, *, status: str = "in_service",
            battery: float = 50.0, route: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"district": "d1", "kind": "shuttle", "sensor_id": sensor, "ts": ts,
            "route_id": route, "lat": 52.04, "lon": -0.76, "speed_kmh": 20.0,
            "passengers": passengers, "capacity": 10, "battery_pct": battery,
            "status": status, **extra}


def wpoint(res: OracleResult, end: int, district: str = "d1") -> dict[str, Any]:
    p = res.point("water_kpi", end, district=district, window="15m")
    assert p is not None, f"no water point ending at T0+{(end - T0) // S}s"
    return p


def tpoint(res: OracleResult, end: int, junction: str = "j1") -> dict[str, Any]:
    p = res.point("traffic_kpi", end, district="d1", junction=junction, window="5m")
    assert p is not None
    return p


def spoint(res: OracleResult, end: int, route: str = "r1") -> dict[str, Any]:
    p = res.point("shuttle_kpi", end, route=route, window="15m")
    assert p is not None
    return p


# --------------------------------------------------------------------------- time helpers


def test_hour_of_week_and_timestamps() -> None:
    assert hour_of_week(T0) == 0  # Monday 00:00
    assert hour_of_week(T0 + 7 * DAY - 1) == 167  # Sunday 23:59:59.999
    assert hour_of_week(0) == 72  # 1970-01-01 was a Thursday: 3 * 24
    assert hour_of_week(T0 + DAY + 13 * H + 30 * MIN) == 37  # Tuesday 13:30 -> 24 + 13
    assert parse_ts("2026-11-23T00:00:00Z") == T0
    assert parse_ts("2026-11-23T01:00:00+01:00") == T0  # same instant, other offset
    assert parse_ts(T0) == T0
    assert parse_ts("2026-11-23T00:00:00.0019Z") == T0 + 1  # sub-ms digits floored
    with pytest.raises(OracleInputError):
        parse_ts("2026-11-23T00:00:00")  # no offset
    with pytest.raises(OracleInputError):
        parse_ts(True)


def test_window_edges() -> None:
    assert window_start(T0 + 15 * MIN, 900) == T0 + 15 * MIN
    assert window_start(T0 + 15 * MIN - 1, 900) == T0
    res = compute_from_readings([
        water("m1", T0 + 15 * MIN - 1, 1.0),  # last ms of [T0, T0+15m): point at T0+15m
        water("m1", T0 + 15 * MIN, 1.5),  # exactly on the edge: window [T0+15m, T0+30m)
        traffic("c1", T0 + 5 * MIN, 6, 80.0),  # edge: traffic window [T0+5m, T0+10m)
    ], CITY)
    assert wpoint(res, T0 + 15 * MIN)["consumption_l"] == 0.0  # first reading: no delta
    assert wpoint(res, T0 + 15 * MIN)["meters_reporting"] == 1
    assert wpoint(res, T0 + 30 * MIN)["consumption_l"] == 500.0  # 1000 * (1.5 - 1.0)
    assert tpoint(res, T0 + 10 * MIN)["vehicles"] == 6
    assert res.point("traffic_kpi", T0 + 5 * MIN, district="d1", junction="j1",
                     window="5m") is None
    assert {k[2] for k in res.points} == {T0 + 15 * MIN, T0 + 30 * MIN, T0 + 10 * MIN}


# --------------------------------------------------------------------------- registers


def test_register_deltas_and_water_baseline() -> None:
    res = compute_from_readings([
        water("m1", T0 + 1 * MIN, 10.0),  # first reading: no delta
        water("m2", T0 + 2 * MIN, 3.0),  # first reading of m2: no delta, but reporting
        water("m1", T0 + 5 * MIN, 10.5),  # +0.5 m3
        water("m1", T0 + 10 * MIN, 11.0),  # +0.5 m3
    ], CITY)
    p = wpoint(res, T0 + 15 * MIN)
    # consumption 1000 * 1.0 = 1000 L; baseline 2000 L/h * 0.25 h = 500 L
    # saving = 100 * (1 - 1000/500) = -100; 24 h: only this window -> -100; -100 < 20
    assert p == {"consumption_l": 1000.0, "baseline_l": 500.0, "saving_pct": -100.0,
                 "saving_pct_24h": -100.0, "target_pct": 20.0, "on_track": False,
                 "meters_reporting": 2}
    assert len(res.points) == 1


def test_meter_reset_counts_new_register_value() -> None:
    res = compute_from_readings([
        water("m1", T0, 100.0),  # first: no delta
        water("m1", T0 + 5 * MIN, 100.5),  # +0.5
        water("m1", T0 + 10 * MIN, 0.25),  # went backwards: reset, delta = 0.25
        water("m1", T0 + 16 * MIN, 0.75),  # next window: +0.5
    ], CITY)
    assert wpoint(res, T0 + 15 * MIN)["consumption_l"] == 750.0  # 1000 * (0.5 + 0.25)
    assert wpoint(res, T0 + 30 * MIN)["consumption_l"] == 500.0  # 1000 * 0.5


def test_duplicates_counted_once() -> None:
    iso = "2026-11-23T01:01:00+01:00"  # == T0 + 1 min: same (sensor_id, ts)
    res = compute_from_readings([
        water("m1", T0 + 1 * MIN, 1.0),
        {**water("m1", iso, 5.0), "expected_duplicate": True},  # dropped, value ignored
        water("m1", T0 + 1 * MIN, 1.0),  # exact replay: dropped as well
        water("m1", T0 + 2 * MIN, 1.25),  # delta against 1.0 (not 5.0): +0.25
        water("m2", T0 + 1 * MIN, 7.0),  # another sensor, same ts: not a duplicate
    ], CITY)
    assert res.duplicates == 2
    assert res.accepted == 5
    assert [r.sensor_id for r in res.valid_readings] == ["m1", "m1", "m2"]
    p = wpoint(res, T0 + 15 * MIN)
    assert p["consumption_l"] == 250.0
    assert p["meters_reporting"] == 2


def test_duplicate_label_mismatch_is_reported() -> None:
    readings = [water("m1", T0, 1.0), {**water("m1", T0, 1.0), "expected_duplicate": False}]
    with pytest.raises(OracleLabelMismatch):
        compute_from_readings(readings, CITY)
    res = compute_from_readings(readings, CITY, check_duplicate_labels=False)
    assert len(res.duplicate_label_mismatches) == 1
    assert res.duplicates == 1


def test_out_of_order_register_reading_adds_no_delta() -> None:
    res = compute_from_readings([
        water("m1", T0 + 100 * S, 1.0),  # first: no delta (window A = [T0, T0+15m))
        water("m1", T0 + 1000 * S, 3.0),  # window B: +2.0
        water("m1", T0 + 500 * S, 2.0),  # older than latest (1000 s): no delta, in window A
        water("m1", T0 + 1100 * S, 3.5),  # window B: +0.5 against 3.0 (the latest)
    ], CITY)
    a, b = wpoint(res, T0 + 15 * MIN), wpoint(res, T0 + 30 * MIN)
    assert a["consumption_l"] == 0.0
    assert a["meters_reporting"] == 1
    assert a["saving_pct"] == 100.0  # 100 * (1 - 0/500)
    assert b["consumption_l"] == 2500.0  # 1000 * (2.0 + 0.5): the next delta covers the use
    assert b["saving_pct"] == -400.0  # 100 * (1 - 2500/500)
    assert b["saving_pct_24h"] == -150.0  # 100 * (1 - 2500/1000)
    assert res.late == 0  # watermark 1000 s is not past window A's end + grace (1020 s)


def test_saving_pct_24h_over_several_windows_and_district_target() -> None:
    readings = []
    for ts, volume in (
        (T0, 0.0),  # first: no delta
        (T0 + 800 * S, 0.5),  # w0 [T0, +15m): 500 L
        (T0 + 1000 * S, 0.75),  # w1 [+15m, +30m): 250 L
        (T0 + DAY + 1 * MIN, 1.0),  # w96 [+24h, +24h15m): 250 L
    ):  # the same use in d1 (meter m1) and d2 (meter m2), interleaved in arrival order
        readings += [water("m1", ts, volume, "d1"), water("m2", ts, volume, "d2")]
    res = compute_from_readings(readings, CITY)
    assert res.beyond_horizon == 0
    w0, w1 = wpoint(res, T0 + 15 * MIN), wpoint(res, T0 + 30 * MIN)
    w96 = wpoint(res, T0 + DAY + 15 * MIN)
    # w0: 100*(1-500/500) = 0; 24h: only w0 -> 0; 0 < 20
    assert (w0["saving_pct"], w0["saving_pct_24h"], w0["on_track"]) == (0.0, 0.0, False)
    # w1: 100*(1-250/500) = 50; 24h: w0 + w1 = 750 / 1000 -> 25 >= 20
    assert (w1["saving_pct"], w1["saving_pct_24h"], w1["on_track"]) == (50.0, 25.0, True)
    # w96 ends at T0+24h15m: its 24 h holds windows starting >= T0+15m, so w1 and w96 (w0
    # starts exactly 24 h 15 min before the end and is out): 500 / 1000 -> 50
    assert (w96["saving_pct"], w96["saving_pct_24h"]) == (50.0, 50.0)
    # d2 has a 25 % target: w1's 25 % meets it exactly
    d2w1 = wpoint(res, T0 + 30 * MIN, "d2")
    assert (d2w1["target_pct"], d2w1["saving_pct_24h"], d2w1["on_track"]) == (25.0, 25.0, True)
    assert wpoint(res, T0 + 15 * MIN, "d2")["target_pct"] == 25.0


def test_energy_baseline_hour_of_week_scaling_and_peak() -> None:
    t = T0 + DAY + 13 * H + 30 * MIN  # Tuesday 13:30 UTC: hour of week 37
    res = compute_from_readings([
        energy("e1", t + 1 * MIN, 100.0, power=3.5),  # first: no delta
        energy("e2", t + 5 * MIN, 50.0, power=1.0),  # first: no delta
        energy("e1", t + 10 * MIN, 104.0),  # +4.0, no power_kw
        energy("e1", t + 20 * MIN, 106.5, power=7.25),  # +2.5
        energy("e1", t + 31 * MIN, 107.0),  # next window (14:00, hour 38): +0.5, no power
    ], CITY)
    p = res.point("energy_kpi", t + 30 * MIN, district="d1", window="30m")
    assert p is not None
    # energy 6.5 kWh; baseline = 37 kWh/h * 0.5 h = 18.5; saving = 100*(1-6.5/18.5) = 64.86
    assert p["energy_kwh"] == 6.5
    assert p["baseline_kwh"] == 18.5
    assert p["saving_pct"] == pytest.approx(100 * (1 - 6.5 / 18.5))
    assert p["saving_pct_24h"] == pytest.approx(64.864864864)
    assert (p["target_pct"], p["on_track"]) == (3.0, True)
    assert p["peak_kw"] == 7.25  # max of 3.5, 1.0, 7.25
    assert p["meters_reporting"] == 2
    q = res.point("energy_kpi", t + 60 * MIN, district="d1", window="30m")
    assert q is not None
    # baseline 38 * 0.5 = 19; saving 100*(1-0.5/19); 24h: 7.0 / 37.5 -> 81.33
    assert (q["energy_kwh"], q["baseline_kwh"], q["peak_kw"]) == (0.5, 19.0, 0.0)
    assert q["saving_pct"] == pytest.approx(100 * (1 - 0.5 / 19))
    assert q["saving_pct_24h"] == pytest.approx(100 * (1 - 7.0 / 37.5))
    assert q["meters_reporting"] == 1


def test_zero_baseline_gives_zero_saving() -> None:
    res = compute_from_readings([
        energy("e3", T0 + 1 * MIN, 1.0),
        energy("e3", T0 + 2 * MIN, 2.0),  # +1.0 in Monday 00:00 (baseline 0 kWh/h)
    ], CITY)
    p = res.point("energy_kpi", T0 + 30 * MIN, district="d1", window="30m")
    assert p is not None
    assert (p["energy_kwh"], p["baseline_kwh"]) == (1.0, 0.0)
    assert (p["saving_pct"], p["saving_pct_24h"], p["on_track"]) == (0.0, 0.0, False)


def test_unknown_district_has_zero_baseline() -> None:
    res = compute_from_readings([water("m9", T0, 1.0, "elsewhere"),
                                 water("m9", T0 + MIN, 2.0, "elsewhere")], CITY)
    p = wpoint(res, T0 + 15 * MIN, "elsewhere")
    assert (p["consumption_l"], p["baseline_l"], p["saving_pct"]) == (1000.0, 0.0, 0.0)
    assert p["target_pct"] == 20.0  # city default


# --------------------------------------------------------------------------- traffic


def test_space_mean_speed_harmonic_weighted_by_count() -> None:
    res = compute_from_readings([
        traffic("c1", T0 + 1 * MIN, 10, 40.0),
        traffic("c2", T0 + 1 * MIN, 30, 60.0),
        traffic("c3", T0 + 2 * MIN, 5, 0.0),  # speed 0: out of the mean, counted in vehicles
        traffic("c4", T0 + 2 * MIN, 0, 30.0),  # count 0: out of the mean
    ], CITY)
    p = tpoint(res, T0 + 5 * MIN)
    # vehicles 45; flow = 3600 * 45 / 300 = 540
    # sms = (10 + 30) / (10/40 + 30/60) = 40 / 0.75 = 53.33 km/h
    # ci = 80 / 53.33 - 1 = 0.5; baseline 1.0 -> reduction 50 -> on track (>= 50)
    assert p["vehicles"] == 45
    assert p["flow_veh_h"] == 540.0
    assert p["space_mean_speed_kmh"] == pytest.approx(160 / 3)
    assert p["congestion_index"] == pytest.approx(0.5)
    assert p["baseline_congestion_index"] == 1.0
    assert p["reduction_pct"] == pytest.approx(50.0)
    assert p["reduction_pct_24h"] == pytest.approx(50.0)
    assert p["target_pct"] == 50.0


def test_traffic_without_usable_speed_and_zero_baseline() -> None:
    res = compute_from_readings([
        traffic("c1", T0 + 1 * MIN, 0, 30.0, junction="j2"),
        traffic("c2", T0 + 1 * MIN, 0, 0.0, junction="j2"),
        traffic("c3", T0 + 1 * MIN, 4, 10.0, junction="jx"),  # unknown junction
    ], CITY)
    p = tpoint(res, T0 + 5 * MIN, "j2")
    # nothing usable -> sms = free flow (default 48), ci 0; baseline 0 -> reductions 0.0
    assert p == {"vehicles": 0, "flow_veh_h": 0.0, "space_mean_speed_kmh": 48.0,
                 "congestion_index": 0.0, "baseline_congestion_index": 0.0,
                 "reduction_pct": 0.0, "reduction_pct_24h": 0.0, "target_pct": 40.0,
                 "on_track": False}
    q = tpoint(res, T0 + 5 * MIN, "jx")
    # unknown junction: free flow 48, sms 10 -> ci 3.8; baseline 0 -> 0.0; city target 50
    assert q["congestion_index"] == pytest.approx(3.8)
    assert (q["reduction_pct"], q["target_pct"], q["on_track"]) == (0.0, 50.0, False)


def test_reduction_pct_24h_uses_means_over_windows_with_traffic() -> None:
    res = compute_from_readings([
        # A: [T0, T0+5m), hour 0 (baseline 1.0): ci 0.5 as in the harmonic-mean test
        traffic("c1", T0 + 1 * MIN, 10, 40.0),
        traffic("c2", T0 + 1 * MIN, 30, 60.0),
        # B: [T0+1h, T0+1h5m), hour 1 (baseline 3.0): sms 20 -> ci 80/20 - 1 = 3.0
        traffic("c1", T0 + H + 1 * MIN, 1, 20.0),
        # C: [T0+24h5m, T0+24h10m), Tuesday 00 (baseline 1.0): sms 80 -> ci 0
        traffic("c1", T0 + DAY + 6 * MIN, 5, 80.0),
    ], CITY)
    b = tpoint(res, T0 + H + 5 * MIN)
    assert b["reduction_pct"] == 0.0  # 100 * (1 - 3/3)
    # A and B: mean ci (0.5 + 3) / 2 = 1.75, mean baseline (1 + 3) / 2 = 2 -> 12.5
    assert b["reduction_pct_24h"] == pytest.approx(12.5)
    assert b["on_track"] is False
    c = tpoint(res, T0 + DAY + 10 * MIN)
    assert c["reduction_pct"] == 100.0
    # C's 24 h holds windows starting >= T0+10m: B and C (not A)
    # mean ci (3 + 0) / 2 = 1.5, mean baseline (3 + 1) / 2 = 2 -> 25
    assert c["reduction_pct_24h"] == pytest.approx(25.0)
    assert c["on_track"] is False


def test_late_interval_reading_corrects_its_own_window() -> None:
    readings = [
        traffic("c1", T0 + 1 * MIN, 10, 80.0),  # window [T0, T0+5m)
        traffic("c1", T0 + 1000 * S, 5, 80.0),  # window [T0+15m, T0+20m); watermark 1000 s
        traffic("c2", T0 + 2 * MIN, 20, 40.0),  # late: its window was final at 300+120 s
    ]
    res = compute_from_readings(readings, CITY)
    p = tpoint(res, T0 + 5 * MIN)
    # vehicles 30, flow 360, sms = 30 / (10/80 + 20/40) = 48, ci = 80/48 - 1 = 2/3
    # reduction = 100 * (1 - (2/3) / 1) = 33.3
    assert p["vehicles"] == 30
    assert p["flow_veh_h"] == 360.0
    assert p["space_mean_speed_kmh"] == pytest.approx(48.0)
    assert p["congestion_index"] == pytest.approx(2 / 3)
    assert p["reduction_pct"] == pytest.approx(100 / 3)
    assert res.late == 1
    assert [r.late for r in res.valid_readings] == [False, False, True]
    assert tpoint(res, T0 + 20 * MIN)["vehicles"] == 5


def test_reading_beyond_horizon_is_kept_out_of_kpis() -> None:
    readings = [
        traffic("c1", T0 + 1 * MIN, 10, 80.0),
        traffic("c1", T0 + 1000 * S, 5, 80.0),  # watermark 1000 s
        traffic("c2", T0 + 2 * MIN, 20, 40.0),  # 120 s < 1000 - 600 s: beyond the horizon
        traffic("c3", T0 + 450 * S, 7, 80.0),  # 450 s >= 400 s: inside, late, window [5m,10m)
    ]
    res = compute_from_readings(readings, CITY, horizon_s=600)
    assert res.beyond_horizon == 1
    assert tpoint(res, T0 + 5 * MIN)["vehicles"] == 10  # not corrected by c2
    assert tpoint(res, T0 + 10 * MIN)["vehicles"] == 7
    assert [r.beyond_horizon for r in res.valid_readings] == [False, False, True, False]


# --------------------------------------------------------------------------- shuttle


def test_boardings_per_vehicle_with_ordering_rule() -> None:
    res = compute_from_readings([
        shuttle("v1", T0 + 60 * S, 0),  # first: no boardings
        shuttle("v2", T0 + 100 * S, 4),  # first of v2: none
        shuttle("v1", T0 + 120 * S, 3),  # +3
        shuttle("v1", T0 + 180 * S, 2),  # alighting: 0
        shuttle("v1", T0 + 240 * S, 5),  # +3
        shuttle("v1", T0 + 200 * S, 9),  # older than v1's latest (240 s): no boardings
        shuttle("v2", T0 + 300 * S, 6),  # +2
        shuttle("v1", T0 + 960 * S, 7),  # next window: +2 against 5 (not 9)
    ], CITY)
    p = spoint(res, T0 + 15 * MIN)
    assert p["boardings"] == 8  # 3 + 3 + 2
    # occupancy: passengers 0+4+3+2+5+9+6 = 29 of 7 * 10 seats
    assert p["occupancy_pct"] == pytest.approx(100 * 29 / 70)
    assert p["vehicles_reporting"] == 2
    assert spoint(res, T0 + 30 * MIN)["boardings"] == 2


def test_availability_occupancy_battery_disengagements() -> None:
    res = compute_from_readings([
        shuttle("v1", T0 + 1 * MIN, 5, battery=80.0),
        shuttle("v2", T0 + 2 * MIN, 0, status="charging", battery=20.0, disengaged=False),
        shuttle("v3", T0 + 3 * MIN, 2, battery=60.0, disengaged=True),
        shuttle("v3", T0 + 4 * MIN, 4, battery=58.0, disengaged=True),
    ], CITY)
    p = spoint(res, T0 + 15 * MIN)
    # in service: v1, v3 -> 2 of fleet 4 = 50 %; reporting v1, v2, v3
    # occupancy over in-service readings: (5 + 2 + 4) / 30; battery (80+20+60+58)/4 = 54.5
    assert p == {"boardings": 2, "occupancy_pct": pytest.approx(100 * 11 / 30),
                 "on_time_pct": 100.0, "availability_pct": 50.0, "mean_battery_pct": 54.5,
                 "disengagements": 2, "vehicles_reporting": 3}


def test_availability_capped_and_unknown_route() -> None:
    res = compute_from_readings(
        [shuttle(f"v{i}", T0 + i * MIN, 1) for i in range(5)]  # 5 in service, fleet 4
        + [shuttle("x1", T0 + MIN, 1, route="rx"), shuttle("x2", T0 + MIN, 0, status="charging",
                                                            route="rx")], CITY)
    assert spoint(res, T0 + 15 * MIN)["availability_pct"] == 100.0
    rx = spoint(res, T0 + 15 * MIN, "rx")
    assert (rx["availability_pct"], rx["occupancy_pct"]) == (0.0, 10.0)  # unknown fleet


def test_on_time_boundaries_inclusive() -> None:
    res = compute_from_readings([
        shuttle("v1", T0 + 1 * MIN, 1, stop_id="s1", delay_s=-60),  # on time (edge)
        shuttle("v1", T0 + 2 * MIN, 1, stop_id="s2", delay_s=180),  # on time (edge)
        shuttle("v1", T0 + 3 * MIN, 1, stop_id="s3", delay_s=-61),  # early
        shuttle("v1", T0 + 4 * MIN, 1, stop_id="s4", delay_s=180.5),  # late
        shuttle("v1", T0 + 5 * MIN, 1, stop_id="s5"),  # no delay_s: not an arrival
        shuttle("v1", T0 + 6 * MIN, 1, delay_s=0),  # no stop_id: not an arrival
    ], CITY)
    assert spoint(res, T0 + 15 * MIN)["on_time_pct"] == 50.0  # 2 of 4


# --------------------------------------------------------------------------- recording


def _row(seq: int, topic: str, payload: bytes | Any, expected: list[dict[str, Any]],
         faults: list[str] | None = None) -> dict[str, Any]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {"seq": seq, "topic": topic, "payload_b64": base64.b64encode(raw).decode(),
            "qos": 1, "sim_time": "2026-11-23T00:05:00Z", "faults": faults or [],
            "expected": expected}


OK = {"valid": True, "reason": None, "duplicate": False}


def _bad(reason: str) -> dict[str, Any]:
    return {"valid": False, "reason": reason, "duplicate": False}


CITY_TOML = """\
name = "Test City"
timezone = "Europe/London"

[targets]
water_saving_pct = 20.0
energy_saving_pct = 3.0
congestion_reduction_pct = 50.0

[windows]
grace_s = 120
horizon_s = 86400

[[districts]]
slug = "d1"
name = "District One"
water_meters = 1
energy_meters = 0
water_baseline_l_h = [WATER]
energy_baseline_kwh_h = [ENERGY]

[[routes]]
id = "r1"
district = "d1"
name = "Route One"
fleet_size = 2
capacity = 10
stops = [{ id = "s1", lat = 52.0, lon = -0.7 }]
""".replace("WATER", ", ".join(["4000.0"] * 168)).replace("ENERGY", ", ".join(["10.0"] * 168))


def test_recording_jsonl(tmp_path: Path) -> None:
    wm = "city/d1/water/m1"
    rows = [
        _row(0, wm, {"sensor_id": "m1", "ts": "2026-11-23T00:01:00Z", "volume_m3": 1.0}, [OK]),
        _row(1, wm, b'{"sensor_id": "m1", ', [_bad("invalid_json")], ["invalid_json"]),
        _row(2, wm, [{"sensor_id": "m1", "ts": T0 + 2 * MIN, "volume_m3": 1.25, "seq": 2},
                     {"sensor_id": "m1", "ts": T0 + 3 * MIN, "volume_m3": -1.0}],
             [OK, _bad("out_of_range")], ["out_of_range"]),
        # the same instant as seq 0, spelled with another offset, and another value
        _row(3, wm, {"sensor_id": "m1", "ts": "2026-11-23T01:01:00+01:00", "volume_m3": 9.0},
             [{"valid": True, "reason": None, "duplicate": True}], ["duplicate"]),
        _row(4, wm, b"\xff\xfe{", [_bad("invalid_json")], ["invalid_utf8"]),
        _row(5, "city/d1/water/m2", {"sensor_id": "m1", "ts": T0 + 4 * MIN, "volume_m3": 2.0},
             [_bad("sensor_mismatch")], ["spoof"]),
        _row(6, "city/D1/water/m1", {"sensor_id": "m1", "ts": T0 + 4 * MIN, "volume_m3": 2.0},
             [_bad("bad_topic")], ["bad_topic"]),
        _row(7, "city/d1/shuttle/v1", {
            "sensor_id": "v1", "ts": T0 + 5 * MIN, "route_id": "r1", "lat": 52.0, "lon": -0.7,
            "speed_kmh": 0.0, "passengers": 3, "capacity": 10, "battery_pct": 90.0,
            "status": "in_service", "stop_id": "s1", "delay_s": 30, "unknown_extra": 1}, [OK]),
    ]
    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    city = tmp_path / "city.toml"
    city.write_text(CITY_TOML, encoding="utf-8")

    res = compute_kpis(rec, city)
    assert res.messages == 8
    assert res.readings == 9  # the batch has two entries
    assert res.accepted == 4  # seq 0, seq 2[0], seq 3 (a duplicate), seq 7
    assert dict(res.rejected) == {"invalid_json": 2, "out_of_range": 1,
                                  "sensor_mismatch": 1, "bad_topic": 1}
    assert res.duplicates == 1
    assert [(r.seq, r.district, r.kind, r.sensor_id, r.ts_ms) for r in res.valid_readings] == [
        (0, "d1", "water", "m1", T0 + MIN), (2, "d1", "water", "m1", T0 + 2 * MIN),
        (7, "d1", "shuttle", "v1", T0 + 5 * MIN)]
    # water: 1000 * (1.25 - 1.0) = 250 L, baseline 4000 L/h * 0.25 h = 1000 L -> 75 % >= 20
    assert wpoint(res, T0 + 15 * MIN) == {
        "consumption_l": 250.0, "baseline_l": 1000.0, "saving_pct": 75.0,
        "saving_pct_24h": 75.0, "target_pct": 20.0, "on_track": True, "meters_reporting": 1}
    # shuttle: fleet 2, one in service -> 50 %; occupancy 3/10; one on-time arrival
    assert spoint(res, T0 + 15 * MIN) == {
        "boardings": 0, "occupancy_pct": 30.0, "on_time_pct": 100.0,
        "availability_pct": 50.0, "mean_battery_pct": 90.0, "disengagements": 0,
        "vehicles_reporting": 1}
    assert len(res.points) == 2
    # rows given directly give the same answer
    assert compute_kpis(rows, city).points == res.points

    # a recording whose duplicate label is wrong is caught
    wrong = [*rows[:3], {**rows[3], "expected": [OK]}]
    with pytest.raises(OracleLabelMismatch):
        compute_kpis(wrong, city)
    # a message labelled valid that cannot be decoded is an inconsistent recording
    with pytest.raises(OracleInputError):
        compute_kpis([{**rows[1], "expected": [OK]}], city)


# --------------------------------------------------------------------------- field types


CONTRACT_FIELDS = {
    "water_kpi": {"consumption_l", "baseline_l", "saving_pct", "saving_pct_24h", "target_pct",
                  "on_track", "meters_reporting"},
    "energy_kpi": {"energy_kwh", "baseline_kwh", "saving_pct", "saving_pct_24h", "target_pct",
                   "on_track", "peak_kw", "meters_reporting"},
    "traffic_kpi": {"vehicles", "flow_veh_h", "space_mean_speed_kmh", "congestion_index",
                    "baseline_congestion_index", "reduction_pct", "reduction_pct_24h",
                    "target_pct", "on_track"},
    "shuttle_kpi": {"boardings", "occupancy_pct", "on_time_pct", "availability_pct",
                    "mean_battery_pct", "disengagements", "vehicles_reporting"},
}
INT_FIELDS = {"meters_reporting", "vehicles", "boardings", "disengagements",
              "vehicles_reporting"}
TAGS = {"water_kpi": {"district", "window"}, "energy_kpi": {"district", "window"},
        "traffic_kpi": {"district", "junction", "window"}, "shuttle_kpi": {"route", "window"}}


def test_field_names_and_types_follow_the_contract() -> None:
    res = compute_from_readings([
        water("m1", T0, 1), water("m1", T0 + MIN, 2),  # integer registers on purpose
        energy("e1", T0, 1, power=2), energy("e1", T0 + MIN, 3),
        traffic("c1", T0, 3, 30), shuttle("v1", T0, 1, battery=50, delay_s=3, stop_id="s"),
    ], CITY)
    assert {k[0] for k in res.points} == set(CONTRACT_FIELDS)
    for (measurement, tags, _end), fields in res.points.items():
        assert {t for t, _ in tags} == TAGS[measurement]
        assert all(isinstance(v, str) for _, v in tags)
        assert set(fields) == CONTRACT_FIELDS[measurement]
        for name, value in fields.items():
            if name == "on_track":
                assert type(value) is bool, (measurement, name)
            elif name in INT_FIELDS:
                assert type(value) is int, (measurement, name)
            else:
                assert type(value) is float, (measurement, name)
    windows = {dict(tags)["window"] for (_m, tags, _e) in res.points}
    assert windows == {"15m", "30m", "5m"}
