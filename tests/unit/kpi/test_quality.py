"""Data quality per sensor and hour (`sensor_quality`): the judgement of one hour, and what the
engine tallies and writes for meters with known faults, across restarts and redeliveries."""

from __future__ import annotations

from typing import Any

import pytest

from kpi.alerts import AlertRules, AlertSettings
from kpi.engine import KindEngine, engines_for
from kpi.quality import judge_hour, new_history, new_tally, problems
from models.city import City, parse_city
from models.kinds import reading_types
from models.quality import HOUR_MS, SensorQuality
from models.readings import BaseReading
from models.records import Alert

MONDAY = 1_794_787_200_000  # 2026-11-16T00:00:00Z
MIN = 60_000

CITY = f"""
name = "Testville"
[targets]
water_saving_pct = 20.0
energy_saving_pct = 3.0
congestion_reduction_pct = 50.0
[windows]
grace_s = 120
horizon_s = 86400
[[districts]]
slug = "north"
name = "North"
water_baseline_l_h = {[400.0] * 168}
energy_baseline_kwh_h = {[50.0] * 168}
"""


@pytest.fixture(scope="module")
def city() -> City:
    return parse_city(CITY)


def water(sensor: str, ts: int, volume: float) -> BaseReading:
    return reading_types()["water"].model_validate(
        {"district": "north", "kind": "water", "sensor_id": sensor, "ts": ts,
         "volume_m3": volume, "flow_lpm": 1.0})


def engine(city: City) -> KindEngine:
    rules = AlertRules(AlertSettings(quality_min_score=80.0, quality_alert_hours=2))
    return engines_for(city, rules=rules)["water"]


def city_minutes(hours: int) -> list[tuple[str, int, float]]:
    """Three meters every minute: m-ok clean, m-gap silent 30 min in hour 1, m-frozen stuck in
    hour 2 and after; plus a duplicate of m-ok in hour 0."""
    rows: list[tuple[str, int, float]] = []
    for minute in range(hours * 60):
        ts = MONDAY + minute * MIN
        rows.append(("m-ok", ts, 100.0 + minute * 0.01))
        if not 90 <= minute < 120:
            rows.append(("m-gap", ts, 200.0 + minute * 0.01))
        rows.append(("m-frozen", ts, 300.0 + min(minute, 120) * 0.01))
        if minute == 10:
            rows.append(("m-ok", ts, 100.0 + minute * 0.01))
    return rows


Points = dict[tuple[str, int], SensorQuality]


def run(engine_of: Any, rows: list[tuple[str, int, float]], batch: int = 7,
        restart_every: int | None = None) -> tuple[Points, list[Alert]]:
    store: dict[str, bytes] = {}
    eng = engine_of()
    points: dict[tuple[str, int], SensorQuality] = {}
    alerts: list[Alert] = []
    for n, i in enumerate(range(0, len(rows), batch)):
        if restart_every and n % restart_every == 0:
            eng = engine_of()  # a new worker: state read back from the store
        out = eng.process([water(*row) for row in rows[i:i + batch]], store, offset=n)
        for point in out.quality:
            points[(point.sensor_id, point.hour_end_ms)] = point
        alerts += [a for a in out.alerts if a.rule == "sensor_quality"]
    return points, alerts


def test_an_hour_is_judged_by_completeness_usable_share_and_a_frozen_register() -> None:
    history = new_history(0, "north")
    history[0] = [60_000, 60_000]  # mean gaps of earlier hours: one minute
    history[1] = [1, 1, 1]  # its value changed in each of its last three hours
    tally = new_tally("north")
    tally[:6] = [30, 3, 2, 0, 0, 29 * MIN]
    point = judge_hour("water", "m1", 0, tally, history, judges_stuck=True)
    assert (point.readings, point.duplicates, point.late, point.stuck) == (30, 3, 2, True)
    assert point.completeness_pct == 50.0
    assert point.score == 25.0  # 50 x 30/35 = 42.9, capped while stuck
    assert problems(point) == "50 % complete, stuck, 3 duplicates, 2 late"
    silent = judge_hour("water", "m1", HOUR_MS, None, history, judges_stuck=True)
    assert (silent.readings, silent.completeness_pct, silent.score) == (0, 0.0, 0.0)
    assert problems(silent) == "silent"


def test_the_engine_flags_exactly_the_faulty_meters_with_their_counts(city: City) -> None:
    points, alerts = run(lambda: engine(city), city_minutes(5))
    hours = sorted({end for _, end in points})
    assert hours == [MONDAY + h * HOUR_MS for h in (1, 2, 3, 4)]  # hour 4 is not final yet
    by = {(s, (end - MONDAY) // HOUR_MS - 1): p for (s, end), p in points.items()}
    assert by[("m-ok", 0)].duplicates == 1 and by[("m-ok", 0)].readings == 60
    assert all(by[("m-ok", h)].score == 100.0 for h in (1, 2, 3))
    assert by[("m-gap", 1)].readings == 30 and by[("m-gap", 1)].completeness_pct == 50.0
    assert by[("m-gap", 2)].score == 100.0
    assert [by[("m-frozen", h)].stuck for h in range(4)] == [False, False, False, True]
    # frozen from minute 120: hour 2 still saw its first reading change it
    assert by[("m-ok", 0)].score == 98.4  # 60 usable of 61 messages
    flagged = {(s, h) for (s, h), p in by.items() if (p.score or 0) < 80}
    assert flagged == {("m-gap", 1), ("m-frozen", 3)}
    assert [a.entity for a in alerts] == []  # no sensor was bad two hours in a row


def test_restarts_and_redeliveries_change_no_point(city: City) -> None:
    rows = city_minutes(5)
    want, _ = run(lambda: engine(city), rows)
    got, _ = run(lambda: engine(city), rows, restart_every=3)
    assert got == want
    store: dict[str, bytes] = {}
    eng = engine(city)
    seen: dict[tuple[str, int], SensorQuality] = {}
    for n, i in enumerate(range(0, len(rows), 7)):
        batch = [water(*row) for row in rows[i:i + 7]]
        first = eng.process(batch, store, offset=n).quality
        again = engine(city).process(batch, store, offset=n).quality  # redelivered after a crash
        assert again == first
        seen.update({(p.sensor_id, p.hour_end_ms): p for p in first})
    assert seen == want


def test_a_silent_meter_raises_and_clears_a_sensor_quality_alert(city: City) -> None:
    rows = [r for r in city_minutes(6)
            if not (r[0] == "m-gap" and 60 <= (r[1] - MONDAY) // MIN < 180)]
    points, alerts = run(lambda: engine(city), rows)
    assert points[("m-gap", MONDAY + 2 * HOUR_MS)].readings == 0
    assert [(a.entity, a.active, (a.ts_ms - MONDAY) // HOUR_MS) for a in alerts] == [
        ("m-gap", True, 3), ("m-gap", False, 4), ("m-frozen", True, 5)]
    assert alerts[0].kind == "water" and alerts[0].message.startswith("quality score 0 below 80")


def test_state_written_before_quality_existed_still_loads(city: City) -> None:
    eng = engine(city)
    store: dict[str, bytes] = {}
    eng.process([water("m-ok", MONDAY, 1.0)], store, offset=0)
    old = {k: v.replace(b',"qh":', b',"_qh":') for k, v in store.items()}
    out = engine(city).process([water("m-ok", MONDAY + MIN, 1.1)], old, offset=1)
    assert out.accepted == 1
