"""The KPI engine against hand-computed cases and, property-based, against the offline oracle."""

from __future__ import annotations

import itertools
import random
import tomllib
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpi import engine as engine_module
from kpi.engine import DAY_MS, KindEngine, engines_for
from kpi.quality import DUPLICATES
from kpi.state import Entity
from models.city import City, parse_city
from models.kinds import reading_types
from models.readings import BaseReading
from models.records import Kpi
from tests.oracle import compute_from_readings

MONDAY = 1_794_787_200_000  # 2026-11-16T00:00:00Z, a Monday: hour-of-week 0
MIN = 60_000


def week(base: float) -> list[float]:
    return [base + h for h in range(168)]


CITY_TOML = f"""
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
water_baseline_l_h = {week(400.0)}
energy_baseline_kwh_h = {week(50.0)}
[[districts]]
slug = "south"
name = "South"
water_saving_pct = 10.0
water_baseline_l_h = {week(200.0)}
energy_baseline_kwh_h = {[0.0] * 168}
[[junctions]]
id = "j1"
district = "north"
name = "J1"
free_flow_speed_kmh = 50.0
congestion_baseline = {[0.5] * 168}
[[junctions]]
id = "j2"
district = "south"
name = "J2"
congestion_baseline = {[0.2 + h / 1000 for h in range(168)]}
[[routes]]
id = "r1"
district = "north"
name = "R1"
fleet_size = 3
"""


@pytest.fixture(scope="module")
def city() -> City:
    return parse_city(CITY_TOML)


def reading(kind: str, district: str, **fields: Any) -> BaseReading:
    return reading_types()[kind].model_validate({"district": district, "kind": kind, **fields})  # type: ignore[attr-defined,no-any-return]


class Run:
    """Feeds an engine in batches and keeps the last value written per InfluxDB point."""

    def __init__(self, engine: KindEngine) -> None:
        self.engine = engine
        self.state: dict[str, bytes] = {}
        self.points: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, Any]] = {}
        self.writes = 0

    def feed(self, readings: list[BaseReading]) -> None:
        out = self.engine.process(readings, self.state)
        self._keep(out.records)

    def flush(self) -> None:
        for entity in self.engine.entities(self.state):
            self._keep(self.engine.due(entity, self.state))

    def _keep(self, records: list[Kpi]) -> None:
        for r in records:
            self.writes += 1
            key = (r.measurement, tuple(sorted(r.tags().items())), r.time_ms)
            self.points[key] = r.fields()


def oracle_points(readings: list[BaseReading], city_toml: str = CITY_TOML) -> dict[Any, Any]:
    flat = [{**r.model_dump(exclude_none=True, exclude={"ts_ms"}), "ts": r.ts_ms}
            for r in readings]
    return compute_from_readings(flat, tomllib.loads(city_toml)).points


def assert_same(got: dict[Any, Any], want: dict[Any, Any]) -> None:
    assert set(got) == set(want), (f"extra {sorted(set(got) - set(want))[:3]}, "
                                   f"missing {sorted(set(want) - set(got))[:3]}")
    for key, fields in want.items():
        assert set(got[key]) == set(fields), key
        for name, value in fields.items():
            mine = got[key][name]
            assert type(mine) is type(value), (key, name, mine, value)
            if isinstance(value, float):
                assert mine == pytest.approx(value, rel=1e-9, abs=1e-9), (key, name)
            else:
                assert mine == value, (key, name)


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def test_register_deltas_reset_and_out_of_order(city: City) -> None:
    run = Run(engines_for(city)["water"])
    run.feed([
        reading("water", "north", sensor_id="m1", ts_ms=MONDAY + 1 * MIN, volume_m3=10.0),
        reading("water", "north", sensor_id="m1", ts_ms=MONDAY + 5 * MIN, volume_m3=10.5),
        reading("water", "north", sensor_id="m1", ts_ms=MONDAY + 3 * MIN, volume_m3=10.2),
        reading("water", "north", sensor_id="m1", ts_ms=MONDAY + 10 * MIN, volume_m3=0.3),
        reading("water", "north", sensor_id="m1", ts_ms=MONDAY + 20 * MIN, volume_m3=0.4),
        reading("water", "north", sensor_id="m1", ts_ms=MONDAY + 20 * MIN, volume_m3=0.4),
    ])
    run.flush()
    first = run.points[("water_kpi", (("district", "north"), ("window", "15m")), MONDAY + 15 * MIN)]
    # 0.5 m³ (5 min) + out-of-order 10.2 adds nothing + reset: 0.3 m³ counted whole = 800 L
    assert first["consumption_l"] == pytest.approx(800.0)
    assert first["baseline_l"] == pytest.approx(400.0 / 4)        # hour 0 of the week
    assert first["saving_pct"] == pytest.approx(100 * (1 - 800 / 100))
    assert first["meters_reporting"] == 1
    second = run.points[("water_kpi", (("district", "north"), ("window", "15m")),
                         MONDAY + 30 * MIN)]
    assert second["consumption_l"] == pytest.approx(100.0)
    assert second["saving_pct_24h"] == pytest.approx(100 * (1 - 900 / 200))


def test_windows_close_by_event_time_then_late_reading_corrects(city: City) -> None:
    run = Run(engines_for(city)["traffic"])
    j1 = {"junction": "j1", "interval_s": 60.0}
    run.feed([reading("traffic", "north", sensor_id="c1", ts_ms=MONDAY + MIN,
                      vehicle_count=10, mean_speed_kmh=40.0, **j1)])
    assert run.points == {}
    run.feed([reading("traffic", "north", sensor_id="c1", ts_ms=MONDAY + 8 * MIN,
                      vehicle_count=5, mean_speed_kmh=25.0, **j1)])
    key = ("traffic_kpi", (("district", "north"), ("junction", "j1"), ("window", "5m")),
           MONDAY + 5 * MIN)
    assert run.points[key]["vehicles"] == 10                       # final: 8 min > 5 + 2
    run.feed([reading("traffic", "north", sensor_id="c2", ts_ms=MONDAY + 2 * MIN,
                      vehicle_count=30, mean_speed_kmh=20.0, **j1)])
    corrected = run.points[key]
    assert corrected["vehicles"] == 40
    assert corrected["flow_veh_h"] == pytest.approx(40 * 12)
    speed = 40 / (10 / 40 + 30 / 20)                               # harmonic, count-weighted
    assert corrected["space_mean_speed_kmh"] == pytest.approx(speed)
    assert corrected["congestion_index"] == pytest.approx(50 / speed - 1)


def test_shuttle_route_window(city: City) -> None:
    run = Run(engines_for(city)["shuttle"])
    base = {"route_id": "r1", "lat": 52.0, "lon": -0.7, "speed_kmh": 20.0, "capacity": 10}
    run.feed([
        reading("shuttle", "north", sensor_id="v1", ts_ms=MONDAY + MIN, passengers=2,
                battery_pct=80.0, status="in_service", stop_id="s1", delay_s=-60.0, **base),
        reading("shuttle", "north", sensor_id="v1", ts_ms=MONDAY + 2 * MIN, passengers=6,
                battery_pct=78.0, status="in_service", stop_id="s2", delay_s=181.0,
                disengaged=True, **base),
        reading("shuttle", "north", sensor_id="v2", ts_ms=MONDAY + 3 * MIN, passengers=0,
                battery_pct=40.0, status="charging", **base),
    ])
    run.flush()
    point = run.points[("shuttle_kpi", (("route", "r1"), ("window", "15m")), MONDAY + 15 * MIN)]
    assert point == {"boardings": 4, "occupancy_pct": pytest.approx(40.0),
                     "on_time_pct": pytest.approx(50.0),
                     "availability_pct": pytest.approx(100 / 3),
                     "mean_battery_pct": pytest.approx(66.0), "disengagements": 1,
                     "vehicles_reporting": 2}


def test_replaying_the_same_readings_changes_nothing(city: City) -> None:
    run = Run(engines_for(city)["energy"])
    batch = [reading("energy", "north", sensor_id=f"e{i % 3}", ts_ms=MONDAY + i * MIN,
                     energy_kwh=100.0 + i, power_kw=float(i)) for i in range(90)]
    run.feed(batch)
    run.flush()
    before = dict(run.points)
    state_before = Entity.read(run.state, "north")
    run.feed(batch)
    run.flush()
    assert run.points == before
    state_after = Entity.read(run.state, "north")
    for name in ("max", "emitted", "alerts", "wins", "sensors"):
        assert getattr(state_after, name) == getattr(state_before, name), name
    # only the replay's duplicates were counted (data quality, kpi/quality.py)
    tallies = [t for hour in state_after.quality.hours.values() for t in hour.values()]
    assert sum(t[DUPLICATES] for t in tallies) == 90


# ---------------------------------------------------------------------------------------------
# property: engine == oracle for any arrival order and batching


@st.composite
def streams_of_readings(draw: st.DrawFn) -> tuple[str, list[BaseReading], list[int]]:
    kind = draw(st.sampled_from(["water", "energy", "traffic", "shuttle"]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 120))
    span_min = draw(st.sampled_from([20, 90, 600, 2000]))
    sensors = [f"s{i}" for i in range(draw(st.integers(1, 5)))]
    # a sensor belongs to one district, junction and route, as in a real city
    home = {s: (rng.choice(["north", "south", "elsewhere"]), rng.choice(["j1", "j2", "j9"]),
                rng.choice(["r1", "r9"])) for s in sensors}
    registers = {s: rng.uniform(0, 50) for s in sensors}
    out: list[BaseReading] = []
    for _ in range(n):
        s = rng.choice(sensors)
        ts = MONDAY + rng.randrange(span_min * MIN)
        if out and rng.random() < 0.1:                      # an exact duplicate
            out.append(rng.choice(out))
            continue
        district, junction, route = home[s]
        if kind in ("water", "energy"):
            registers[s] = (rng.uniform(0, 1) if rng.random() < 0.05
                            else registers[s] + rng.uniform(0, 2))
            field = "volume_m3" if kind == "water" else "energy_kwh"
            with_power = kind == "energy" and rng.random() < 0.5
            extra = {"power_kw": rng.uniform(0, 9)} if with_power else {}
            out.append(reading(kind, district, sensor_id=s, ts_ms=ts,
                               **{field: round(registers[s], 3)}, **extra))
        elif kind == "traffic":
            out.append(reading("traffic", district, sensor_id=s, ts_ms=ts,
                               junction=junction,
                               vehicle_count=rng.choice([0, 1, 7, 30]), interval_s=60.0,
                               mean_speed_kmh=rng.choice([0.0, 12.5, 35.0, 60.0])))
        else:
            cap = 10
            arrival = rng.random() < 0.4
            out.append(reading(
                "shuttle", district, sensor_id=s, ts_ms=ts, route_id=route,
                lat=52.0, lon=-0.7, speed_kmh=15.0, passengers=rng.randrange(cap + 1),
                capacity=cap, battery_pct=rng.uniform(5, 100),
                status=rng.choice(["in_service", "in_service", "charging", "out_of_service"]),
                **({"stop_id": "st", "delay_s": rng.uniform(-120, 300)} if arrival else {}),
                **({"disengaged": rng.random() < 0.5} if rng.random() < 0.3 else {})))
    cuts = sorted(draw(st.lists(st.integers(0, len(out)), max_size=6)))
    return kind, out, cuts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams_of_readings())
def test_engine_equals_oracle(city: City, case: tuple[str, list[BaseReading], list[int]]) -> None:
    kind, readings, cuts = case
    run = Run(engines_for(city)[kind])
    bounds = [0, *cuts, len(readings)]
    for a, b in itertools.pairwise(bounds):
        if b > a:
            run.feed(readings[a:b])
    run.flush()
    assert_same(run.points, oracle_points(readings))


def test_old_windows_are_pruned_and_rolling_still_matches(city: City) -> None:
    run = Run(engines_for(city)["water"])
    readings = [reading("water", "north", sensor_id="m1", ts_ms=MONDAY + i * 10 * MIN,
                        volume_m3=float(i)) for i in range(int(3 * DAY_MS / (10 * MIN)))]
    for i in range(0, len(readings), 7):
        run.feed(readings[i:i + 7])
    run.flush()
    kept = {k.split("|")[2] for k in run.state if k.startswith("c|")}
    assert len(kept) <= (2 * DAY_MS) // (15 * MIN) + 4
    assert_same(run.points, oracle_points(readings))


class CrashingStore(dict[str, bytes]):
    """Raises after `budget` writes: a worker killed while its changelog writes were in flight
    (what reached the changelog is a prefix of the writes, in order)."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def __setitem__(self, key: str, value: bytes) -> None:
        if self.budget <= 0:
            raise RuntimeError("killed")
        self.budget -= 1
        super().__setitem__(key, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams_of_readings(), st.integers(0, 400), st.integers(0, 30))
def test_a_crash_mid_batch_then_redelivery_equals_the_oracle(
        city: City, case: tuple[str, list[BaseReading], list[int]], budget: int, at: int) -> None:
    kind, readings, cuts = case
    engine = engines_for(city)[kind]
    bounds = [0, *cuts, len(readings)]
    batches = [readings[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    store = CrashingStore(budget=10**9)
    points: dict[Any, Any] = {}

    def keep(records: list[Kpi]) -> None:
        for r in records:
            points[(r.measurement, tuple(sorted(r.tags().items())), r.time_ms)] = r.fields()

    crash_at = at % len(batches)
    offset = 0
    i = 0
    while i < len(batches):
        if i == crash_at and store.budget > 10**8:
            store.budget = budget              # this batch dies part-way...
            try:
                keep(engine.process(batches[i], store, offset=offset).records)
            except RuntimeError:
                store.budget = 10**9           # ...and is redelivered after the restart
                # offsets of earlier batches may be redelivered too (not yet committed)
                for j in range(max(0, i - 2), i + 1):
                    keep(engine.process(batches[j], store, offset=j).records)
                i += 1
                offset = i
                continue
            store.budget = 10**9
        keep(engine.process(batches[i], store, offset=offset).records)
        i += 1
        offset = i
    for entity in engine.entities(store):
        keep(engine.due(entity, store))
    assert_same(points, oracle_points(readings))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams_of_readings(), st.integers(1, 4))
def test_records_lost_in_a_crash_are_sent_again_by_the_redelivery(
        city: City, case: tuple[str, list[BaseReading], list[int]], lost: int) -> None:
    """The records of the last `lost` batches never reached Kafka; the restarted worker (a new
    engine on the same store) gets those batches again: the points equal the oracle's."""
    kind, readings, cuts = case
    bounds = [0, *cuts, len(readings)]
    batches = [readings[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    store: dict[str, bytes] = {}
    points: dict[Any, Any] = {}

    def keep(records: list[Kpi]) -> None:
        for r in records:
            points[(r.measurement, tuple(sorted(r.tags().items())), r.time_ms)] = r.fields()

    before_crash = engines_for(city)[kind]
    for offset, batch in enumerate(batches):
        records = before_crash.process(batch, store, offset=offset).records
        if offset < len(batches) - lost:
            keep(records)
    restarted = engines_for(city)[kind]
    for offset in range(max(0, len(batches) - lost), len(batches)):
        keep(restarted.process(batches[offset], store, offset=offset).records)
    for entity in restarted.entities(store):
        keep(restarted.due(entity, store))
    assert_same(points, oracle_points(readings))


def test_a_redelivered_backlog_sends_an_entity_s_windows_once(city: City) -> None:
    """After a restart every record since the last commit comes again: the entity's final
    windows are sent again for the first of them, not for each (that multiplied the records
    by the windows kept, and a restarted worker fell behind)."""
    engine = engines_for(city)["water"]
    store: dict[str, bytes] = {}
    batches = [[reading("water", "north", sensor_id="m1", ts_ms=MONDAY + i * 5 * MIN,
                        volume_m3=float(i))] for i in range(200)]
    for offset, batch in enumerate(batches):
        engine.process(batch, store, offset=offset)
    final = len(Entity.read(store, "north").emitted)
    assert final > 10
    restarted = engines_for(city)["water"]
    resent = [len(restarted.process(batch, store, offset=offset).records)
              for offset, batch in enumerate(batches[-50:], start=150)]
    assert resent == [final] + [0] * 49
    again = engines_for(city)["water"]  # the next restart sends them once more
    assert len(again.process(batches[-1], store, offset=199).records) == final


def test_stored_values_are_right_sized(city: City) -> None:
    """A memory store keeps every value for days: values must not carry orjson's 4 KiB buffer
    (they did: 15 MB per hour of the city's event time for 1 MB of JSON)."""
    run = Run(engines_for(city)["water"])
    readings = [reading("water", "north", sensor_id=f"m{i % 5}", ts_ms=MONDAY + i * MIN,
                        volume_m3=float(i)) for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(readings), 5):
            run.feed(readings[i:i + 5])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stored = sum(len(k) + len(v) for k, v in run.state.items())
    assert held < 4 * stored + 1_000_000, (held, stored, len(run.state))


def test_the_dedupe_cache_is_bounded_in_pairs_and_a_dropped_window_still_tells_duplicates(
        city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "SEEN_CACHE_PAIRS", 20)
    run = Run(engines_for(city)["water"])
    in_order = [reading("water", "north", sensor_id=f"m{s}", ts_ms=MONDAY + k * MIN,
                        volume_m3=float(k + s)) for k in range(0, 60, 2) for s in range(5)]
    run.feed(in_order)
    firsts = [w + w % 2 for w in range(0, 60, 15)]  # the first minute of a window with readings
    late = [reading("water", "north", sensor_id="m0", ts_ms=MONDAY + (k + 1) * MIN,
                    volume_m3=k + 0.5) for k in firsts]
    again = [in_order[5 * (k // 2) + 1] for k in firsts]  # m1's first reading of each window
    counts = []
    for batch in ([*late, *again], [*again, *late]):  # the second: every window dropped since
        out = run.engine.process(batch, run.state)
        counts.append(out.duplicates)
        run._keep(out.records)
        held = run.engine.held()
        assert held.dedupe_windows == 1, "40 pairs a window: only the newest window is kept"
        assert held.dedupe_pairs <= 41
    assert counts == [4, 8]
    run.flush()
    assert_same(run.points, oracle_points([*in_order, *late, *again, *again, *late]))


def test_the_dedupe_cache_drops_the_least_recently_used_window_first(
        city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "SEEN_CACHE_PAIRS", 40)
    engine = engines_for(city)["water"]
    state: dict[str, bytes] = {}

    def water(sensor: str, minute: int) -> BaseReading:
        return reading("water", "north", sensor_id=sensor, ts_ms=MONDAY + minute * MIN,
                       volume_m3=float(minute))

    def cached() -> list[int]:  # the windows' first minutes, least recently used first
        return [(start - MONDAY) // MIN for _store, _entity, start in engine._seen]

    engine.process([water(s, k) for k in range(0, 60, 2) for s in ("m0", "m1")], state)
    for late, want in ((1, [0]), (17, [0, 15]), (3, [15, 0]), (31, [0, 30]), (47, [30, 45])):
        engine.process([water("m0", late)], state)  # out of order: its window is loaded
        assert cached() == want, f"after a reading at minute {late}"
    engine.process([water(s, k) for k in range(46, 60, 2) for s in ("m2", "m3")], state)
    assert cached() == [45], "the newest window grew in order past the bound: the other goes"
    assert engine.process([water("m2", 48), water("m0", 33)], state).duplicates == 1
