"""Alert rules: raised once, cleared once, thresholds as documented."""

from __future__ import annotations

from typing import Any

from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterEngine, WaterKpi
from kpi.alerts import AlertKey, AlertRules, AlertSettings
from models.city import parse_city
from models.kinds import reading_types
from models.readings import BaseReading
from models.records import Alert
from tests.unit.streams.test_engine import CITY_TOML, MIN, MONDAY

NIGHT_END = MONDAY + 4 * 3_600_000  # 04:00 UTC = 04:00 Europe/London in November


def water(end: int, on_track: bool = True) -> WaterKpi:
    return WaterKpi(district="north", window_end_ms=end, consumption_l=10.0, baseline_l=100.0,
                    saving_pct=90.0, saving_pct_24h=30.0 if on_track else 5.0,
                    on_track=on_track, meters_reporting=3)


def test_off_track_raised_once_then_cleared() -> None:
    rules, active = AlertRules(), set[AlertKey]()
    raised = rules.evaluate(water(MONDAY, on_track=False), active)
    assert [(a.rule, a.active) for a in raised] == [("off_track", True)]
    assert rules.evaluate(water(MONDAY + 15 * MIN, on_track=False), active) == []
    cleared = rules.evaluate(water(MONDAY + 30 * MIN), active)
    assert [(a.rule, a.active, a.entity) for a in cleared] == [("off_track", False, "north")]


def test_leak_uses_the_minimum_night_window() -> None:
    rules, active = AlertRules(AlertSettings(leak_factor=1.5)), set[AlertKey]()
    assert rules.is_night_end(NIGHT_END)
    assert not rules.is_night_end(NIGHT_END - 15 * MIN)
    night = [(200.0, 100.0)] * 7 + [(160.0, 100.0)]
    (leak,) = rules.evaluate(water(NIGHT_END), active, night)
    assert (leak.rule, leak.active, leak.value, leak.threshold) == ("leak", True, 160.0, 150.0)
    normal = [(200.0, 100.0)] * 7 + [(140.0, 100.0)]
    (cleared,) = rules.evaluate(water(NIGHT_END + 86_400_000), active, normal)
    assert (cleared.rule, cleared.active) == ("leak", False)


def test_congestion_and_battery() -> None:
    rules, active = AlertRules(), set[AlertKey]()
    jam = TrafficKpi(district="north", junction="j1", window_end_ms=MONDAY, vehicles=50,
                     flow_veh_h=600.0, space_mean_speed_kmh=10.0, congestion_index=3.0,
                     baseline_congestion_index=1.0, reduction_pct=-200.0,
                     reduction_pct_24h=60.0, on_track=True)
    assert [(a.rule, a.entity) for a in rules.evaluate(jam, active)] == [("congestion", "j1")]
    low = ShuttleKpi(route="r1", window_end_ms=MONDAY, boardings=0, occupancy_pct=0.0,
                     on_time_pct=100.0, availability_pct=100.0, mean_battery_pct=12.0,
                     disengagements=0, vehicles_reporting=2)
    (battery,) = rules.evaluate(low, active)
    assert (battery.rule, battery.kind, battery.active) == ("battery_low", "shuttle", True)
    assert battery.mqtt_topic == "city/alerts/shuttle/r1"


def test_engine_raises_silent_sensor_and_clears_it() -> None:
    engine = WaterEngine(parse_city(CITY_TOML),
                         rules=AlertRules(AlertSettings(silent_intervals=3)))
    state: dict[str, bytes] = {}

    def read(sensor: str, minute: int) -> BaseReading:
        model: Any = reading_types()["water"]
        return model.model_validate({"district": "north", "kind": "water", "sensor_id": sensor,
                                     "ts_ms": MONDAY + minute * MIN, "volume_m3": 1.0 + minute})

    alerts: list[Alert] = []
    for minute in range(0, 10):
        alerts += engine.process([read("m1", minute), read("m2", minute)], state).alerts
    for minute in range(10, 20):                                      # m2 goes quiet
        alerts += engine.process([read("m1", minute)], state).alerts
    silent = [a for a in alerts if a.rule == "silent"]
    assert [(a.entity, a.active) for a in silent] == [("m2", True)]
    assert silent[0].ts_ms == MONDAY + 13 * MIN                       # gap 4 min > 3 x 1 min
    alerts = engine.process([read("m2", 20)], state).alerts
    assert [(a.entity, a.active) for a in alerts if a.rule == "silent"] == [("m2", False)]


def test_a_silence_inside_one_batch_is_still_reported() -> None:
    engine = WaterEngine(parse_city(CITY_TOML),
                         rules=AlertRules(AlertSettings(silent_intervals=3)))
    state: dict[str, bytes] = {}
    model: Any = reading_types()["water"]
    batch = [model.model_validate({"district": "north", "kind": "water", "sensor_id": "m1",
                                   "ts_ms": MONDAY + minute * MIN, "volume_m3": 1.0 + minute})
             for minute in (0, 1, 2, 12, 13)]
    alerts = engine.process(batch, state).alerts
    assert [(a.rule, a.active, a.ts_ms) for a in alerts] == [
        ("silent", True, MONDAY + 5 * MIN), ("silent", False, MONDAY + 12 * MIN)]


def test_a_redelivered_batch_sends_its_alert_transitions_again() -> None:
    engine = WaterEngine(parse_city(CITY_TOML),
                         rules=AlertRules(AlertSettings(silent_intervals=3)))
    state: dict[str, bytes] = {}
    model: Any = reading_types()["water"]
    batches = [[model.model_validate({"district": "north", "kind": "water", "sensor_id": "m1",
                                      "ts_ms": MONDAY + minute * MIN, "volume_m3": 1.0 + minute})
                for minute in minutes] for minutes in ((0, 1, 2), (12, 13), (14,))]
    sent = [engine.process(batch, state, offset=i).alerts for i, batch in enumerate(batches)]
    assert [a.active for a in sent[1]] == [True, False] and sent[2] == []
    # a crash before the sends reached Kafka: the batches come again and say the same
    again = [engine.process(batch, state, offset=i).alerts for i, batch in enumerate(batches)]
    assert again == sent
    # and so does a new worker that restores the state
    fresh = WaterEngine(parse_city(CITY_TOML), rules=AlertRules(AlertSettings(silent_intervals=3)))
    assert fresh.process(batches[1], dict(state), offset=1).alerts == sent[1]
