"""Declared feeds (CONTRACT section 5) through the KPI engine: hand-computed cases, definition
errors, alerts, and property-based against the independent oracle (tests/oracle/feeds.py)."""

from __future__ import annotations

import random
import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinds.feed import FeedEngine
from models import kinds
from models.city import City, parse_city
from models.errors import CityModelError
from models.readings import BaseReading
from tests.oracle.feeds import compute_feed_points
from tests.unit.streams.test_engine import CITY_TOML, MIN, MONDAY, Run, assert_same

HOUR = 60 * MIN

FEEDS_TOML = """
[[feeds]]
kind = "noise"
title = "Noise"
window_s = 3600
entity = "district"

[feeds.fields]
laeq_db = { type = "number", min = 20, max = 140 }
lamax_db = { type = "number", min = 20, max = 160, optional = true }

[[feeds.kpis]]
name = "laeq_mean_db"
agg = "mean"
field = "laeq_db"

[[feeds.kpis]]
name = "lamax_max_db"
agg = "max"
field = "lamax_db"

[[feeds.kpis]]
name = "laeq_min_db"
agg = "min"
field = "laeq_db"

[[feeds.kpis]]
name = "readings"
agg = "count"

[[feeds.kpis]]
name = "sensors"
agg = "sensors"

[[feeds.kpis]]
name = "loud_readings"
agg = "count_above"
field = "laeq_db"
threshold = 65.0

[[feeds.kpis]]
name = "quiet_pct"
agg = "share_between"
field = "laeq_db"
min = 20.0
max = 55.0

[feeds.target]
kpi = "laeq_mean_db"
at_most = 55.0

[[feeds.alerts]]
rule = "loud"
kpi = "laeq_mean_db"
above = 65.0

[[feeds.feeds_placeholder]]
"""

CAR_PARK_TOML = """
[[feeds]]
kind = "car_park"
title = "Car parks"
window_s = 900
entity = "car_park"

[feeds.fields]
car_park = { type = "string" }
occupied = { type = "integer", min = 0, max = 5000 }
capacity = { type = "integer", min = 1, max = 5000 }
entries_total = { type = "integer", min = 0, optional = true }
barrier_open = { type = "boolean", optional = true }
energy_m3 = { type = "number", min = 0, optional = true }

[[feeds.kpis]]
name = "occupancy_pct"
agg = "ratio_pct"
field = "occupied"
of = "capacity"

[[feeds.kpis]]
name = "entries"
agg = "delta"
field = "entries_total"

[[feeds.kpis]]
name = "arrivals"
agg = "increase"
field = "entries_total"

[[feeds.kpis]]
name = "water_l"
agg = "delta"
field = "energy_m3"
scale = 1000.0

[[feeds.kpis]]
name = "open_share"
agg = "mean"
field = "barrier_open"

[[feeds.kpis]]
name = "occupied_sum"
agg = "sum"
field = "occupied"
scale = 0.5

[feeds.target]
kpi = "occupancy_pct"
at_least = 10.0

[[feeds.alerts]]
rule = "full"
kpi = "occupancy_pct"
above = 95.0
"""

TOML = CITY_TOML + FEEDS_TOML.replace("[[feeds.feeds_placeholder]]\n", "") + CAR_PARK_TOML


@pytest.fixture(scope="module")
def city() -> City:
    city = parse_city(TOML)
    kinds.activate(city.feeds)
    return city


def feed_table(kind: str) -> dict[str, Any]:
    tables: list[dict[str, Any]] = tomllib.loads(TOML)["feeds"]
    return next(t for t in tables if t["kind"] == kind)


def engine_of(city: City, kind: str) -> FeedEngine:
    spec = kinds.get(kind)
    assert spec is not None and spec.feed is not None
    engine = spec.engine(city)
    assert isinstance(engine, FeedEngine)
    return engine


def reading(city: City, kind: str, district: str, **fields: Any) -> BaseReading:
    model = kinds.reading_type(kind)
    assert model is not None
    return model.model_validate({"district": district, **fields})


def oracle(readings: list[BaseReading], kind: str) -> dict[Any, Any]:
    flat = [{**r.model_dump(exclude_none=True, exclude={"ts_ms"}), "ts": r.ts_ms}
            for r in readings]
    return compute_feed_points(flat, feed_table(kind))


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def test_noise_window_by_district(city: City) -> None:
    run = Run(engine_of(city, "noise"))
    run.feed([
        reading(city, "noise", "north", sensor_id="n1", ts_ms=MONDAY + 1 * MIN, laeq_db=50.0),
        reading(city, "noise", "north", sensor_id="n2", ts_ms=MONDAY + 2 * MIN, laeq_db=70.0,
                lamax_db=90.0),
        reading(city, "noise", "north", sensor_id="n1", ts_ms=MONDAY + 3 * MIN, laeq_db=60.0),
        reading(city, "noise", "north", sensor_id="n1", ts_ms=MONDAY + 3 * MIN, laeq_db=99.0),
    ])
    run.flush()
    key = ("noise_kpi", (("district", "north"), ("window", "1h")), MONDAY + HOUR)
    assert run.points[key] == {
        "laeq_mean_db": 60.0, "lamax_max_db": 90.0, "laeq_min_db": 50.0, "readings": 3,
        "sensors": 2, "loud_readings": 1, "quiet_pct": pytest.approx(100 / 3),
        "target": 55.0, "laeq_mean_db_24h": 60.0, "on_track": False}


def test_a_kpi_whose_field_no_reading_carries_is_left_out(city: City) -> None:
    run = Run(engine_of(city, "noise"))
    run.feed([reading(city, "noise", "south", sensor_id="n1", ts_ms=MONDAY, laeq_db=40.0)])
    run.flush()
    (fields,) = run.points.values()
    assert "lamax_max_db" not in fields
    assert fields["quiet_pct"] == 100.0


def test_deltas_resets_out_of_order_and_scale(city: City) -> None:
    run = Run(engine_of(city, "car_park"))
    base = {"occupied": 10, "capacity": 100}
    run.feed([
        reading(city, "car_park", "north", sensor_id="c1", ts_ms=MONDAY + 1 * MIN,
                car_park="cp-a", entries_total=100, energy_m3=1.0, **base),
        reading(city, "car_park", "north", sensor_id="c1", ts_ms=MONDAY + 3 * MIN,
                car_park="cp-a", entries_total=130, energy_m3=1.5, **base),
        # out of order: counted, but no delta and no change of the sensor's values
        reading(city, "car_park", "north", sensor_id="c1", ts_ms=MONDAY + 2 * MIN,
                car_park="cp-a", entries_total=5, **base),
        # a reading without the field keeps the previous value for the next delta
        reading(city, "car_park", "north", sensor_id="c1", ts_ms=MONDAY + 4 * MIN,
                car_park="cp-a", **base),
        # reset: the new register value counts; increase adds nothing for a decrease
        reading(city, "car_park", "north", sensor_id="c1", ts_ms=MONDAY + 5 * MIN,
                car_park="cp-a", entries_total=7, barrier_open=True, **base),
        reading(city, "car_park", "south", sensor_id="c2", ts_ms=MONDAY + 6 * MIN,
                car_park="cp-a", entries_total=50, barrier_open=False, occupied=90,
                capacity=100),
    ])
    run.flush()
    key = ("car_park_kpi", (("car_park", "cp-a"), ("window", "15m")), MONDAY + 15 * MIN)
    assert run.points[key] == {
        "occupancy_pct": pytest.approx(100 * 140 / 600), "entries": 37.0, "arrivals": 30.0,
        "water_l": 500.0, "open_share": 0.5, "occupied_sum": 70.0, "target": 10.0,
        "occupancy_pct_24h": pytest.approx(100 * 140 / 600), "on_track": True}


def test_delta_is_zero_when_the_field_is_carried_without_a_delta(city: City) -> None:
    run = Run(engine_of(city, "car_park"))
    run.feed([reading(city, "car_park", "north", sensor_id="c1", ts_ms=MONDAY, car_park="x",
                      occupied=0, capacity=10, entries_total=3)])
    run.flush()
    (fields,) = run.points.values()
    assert fields["entries"] == 0.0 and fields["arrivals"] == 0.0
    assert "water_l" not in fields and "open_share" not in fields


def test_late_reading_corrects_a_final_window_and_the_24h_figures(city: City) -> None:
    run = Run(engine_of(city, "noise"))
    r = [reading(city, "noise", "north", sensor_id="n1", ts_ms=MONDAY + h * HOUR, laeq_db=v)
         for h, v in ((0, 50.0), (1, 60.0), (3, 40.0))]
    run.feed(r)
    first = MONDAY + HOUR
    before = run.points[("noise_kpi", (("district", "north"), ("window", "1h")), first)]
    assert before["laeq_mean_db"] == 50.0
    late = reading(city, "noise", "north", sensor_id="n2", ts_ms=MONDAY + 30 * MIN,
                   laeq_db=70.0)
    run.feed([late])
    run.flush()
    points = run.points
    assert points[("noise_kpi", (("district", "north"), ("window", "1h")), first)][
        "laeq_mean_db"] == 60.0
    assert_same(points, oracle([*r, late], "noise"))


def test_alerts_raise_and_clear_on_newer_windows_only(city: City) -> None:
    engine = engine_of(city, "noise")
    state: dict[str, bytes] = {}
    loud = [reading(city, "noise", "north", sensor_id="n1", ts_ms=MONDAY + 10 * MIN,
                    laeq_db=80.0),
            reading(city, "noise", "north", sensor_id="n1", ts_ms=MONDAY + HOUR + 10 * MIN,
                    laeq_db=50.0)]
    raised = engine.process(loud, state).alerts  # the first window is final: 80 dB
    assert [(a.kind, a.entity, a.rule, a.active, a.value, a.threshold) for a in raised] == [
        ("noise", "north", "loud", True, 80.0, 65.0)]
    out = engine.process([reading(city, "noise", "north", sensor_id="n1",
                                  ts_ms=MONDAY + 2 * HOUR + 10 * MIN, laeq_db=50.0)], state)
    assert [(a.rule, a.active, a.value) for a in out.alerts] == [("loud", False, 50.0)]
    # a late reading that makes the old window quiet changes no alert
    late = engine.process([reading(city, "noise", "north", sensor_id="n2",
                                   ts_ms=MONDAY + 20 * MIN, laeq_db=20.0)], state)
    assert late.alerts == [] and late.records


def test_state_reloads_in_a_new_engine(city: City) -> None:
    readings = [reading(city, "car_park", "north", sensor_id=f"c{i % 3}",
                        ts_ms=MONDAY + i * 2 * MIN, car_park="cp-b", occupied=i,
                        capacity=50, entries_total=i * i) for i in range(40)]
    run = Run(engine_of(city, "car_park"))
    run.feed(readings[:20])
    run.engine = engine_of(city, "car_park")  # a restarted worker: state from the store only
    run.feed(readings[20:])
    run.flush()
    assert_same(run.points, oracle(readings, "car_park"))


# ---------------------------------------------------------------------------------------------
# against the oracle


@st.composite
def feed_readings(draw: st.DrawFn, kind: str) -> list[BaseReading]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    n = draw(st.integers(1, 120))
    out: list[dict[str, Any]] = []
    t = MONDAY
    for _ in range(n):
        if out and rng.random() < 0.1:
            out.append(dict(rng.choice(out)))  # a duplicate (same sensor and ts)
            continue
        t += rng.randint(0, 9 * MIN)
        ts = t - rng.randint(0, 4 * HOUR) if rng.random() < 0.15 else t
        sensor = f"s{rng.randint(0, 3)}"
        if kind == "noise":
            fields: dict[str, Any] = {"laeq_db": round(rng.uniform(20, 100), 1)}
            if rng.random() < 0.5:
                fields["lamax_db"] = round(rng.uniform(20, 160), 1)
            district = rng.choice(["north", "south"])
        else:
            capacity = rng.randint(1, 200)
            fields = {"car_park": f"cp-{sensor[-1] if rng.random() < 0.9 else 'x'}",
                      "occupied": rng.randint(0, capacity), "capacity": capacity}
            if rng.random() < 0.7:
                fields["entries_total"] = rng.randint(0, 400)
            if rng.random() < 0.3:
                fields["barrier_open"] = rng.random() < 0.5
            if rng.random() < 0.5:
                fields["energy_m3"] = round(rng.uniform(0, 10), 3)
            district = "north"
        out.append({"district": district, "sensor_id": sensor, "ts_ms": ts, **fields})
    model = kinds.reading_type(kind)
    assert model is not None
    return [model.model_validate(r) for r in out]


@pytest.mark.parametrize("kind", ["noise", "car_park"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engine_equals_oracle(city: City, kind: str, data: st.DataObject) -> None:
    readings = data.draw(feed_readings(kind))
    if kind == "car_park":  # a sensor belongs to one car park (its entity)
        seen: dict[str, str] = {}
        readings = [r for r in readings
                    if seen.setdefault(r.sensor_id, r.car_park) == r.car_park]  # type: ignore[attr-defined]
    run = Run(engine_of(city, kind))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(readings)), max_size=5)))
    for lo, hi in zip([0, *cuts], [*cuts, len(readings)], strict=True):
        run.feed(readings[lo:hi])
    run.flush()
    assert_same(run.points, oracle(readings, kind))


# ---------------------------------------------------------------------------------------------
# definition errors


@pytest.mark.parametrize(("change", "message"), [
    (('kind = "noise"', 'kind = "water"'), "feeds[0] (water).kind: 'water' is a built-in kind"),
    (('kind = "noise"', 'kind = "alerts"'), "feeds[0] (alerts).kind: 'alerts' is reserved"),
    (('kind = "noise"', 'kind = "Noise!"'), "feeds[0] (Noise!).kind: String should match"),
    (("window_s = 3600", "window_s = 3700"), "feeds[0] (noise).window_s: 3700 does not divide"),
    (("window_s = 3600", "window_s = 30"), "feeds[0] (noise).window_s: Input should be greater"),
    (('entity = "district"', 'entity = "laeq_db"'),
     "feeds[0] (noise).entity: field 'laeq_db' must be a required string field"),
    (('entity = "district"', 'entity = "zone"'), "feeds[0] (noise).entity: 'zone' is neither"),
    (('field = "lamax_db"', 'field = "lamax"'),
     "feeds[0] (noise).kpis[1].field: 'lamax' is not a field of feed noise"),
    (('agg = "count"', 'agg = "avg"'), "feeds[0] (noise).kpis[3].agg: Input should be"),
    (('agg = "count"', 'agg = "sum"'), "feeds[0] (noise).kpis[3]: sum needs `field`"),
    (("threshold = 65.0", ""), "feeds[0] (noise).kpis[5]: count_above needs `threshold`"),
    (('name = "sensors"\nagg = "sensors"', 'name = "sensors"\nagg = "sensors"\nfield = "laeq_db"'),
     "feeds[0] (noise).kpis[4]: sensors takes no `field`"),
    (('name = "readings"', 'name = "laeq_mean_db"'),
     "feeds[0] (noise).kpis[3].name: 'laeq_mean_db' is declared twice"),
    (('name = "readings"', 'name = "target"'), "feeds[0] (noise).kpis[3].name: 'target' is "
     "reserved"),
    (('name = "readings"', 'name = "result"'), "feeds[0] (noise).kpis[3].name: 'result' is "
     "reserved"),
    (("at_most = 55.0", "at_most = 55.0\nat_least = 1.0"),
     "feeds[0] (noise).target: a target has exactly one of"),
    (('kpi = "laeq_mean_db"\nat_most', 'kpi = "nope"\nat_most'),
     "feeds[0] (noise).target.kpi: 'nope' is not a KPI of feed noise"),
    (("above = 65.0", ""), "feeds[0] (noise).alerts[0]: an alert has exactly one of"),
    (('rule = "loud"\nkpi = "laeq_mean_db"', 'rule = "loud"\nkpi = "nope"'),
     "feeds[0] (noise).alerts[0].kpi: 'nope' is not a KPI of feed noise"),
    (("max = 140 }", "max = 140, unit = 1 }"),
     "feeds[0] (noise).fields.laeq_db.unit: Extra inputs are not permitted"),
    (('type = "number", min = 20, max = 140', 'type = "float", min = 20, max = 140'),
     "feeds[0] (noise).fields.laeq_db.type: Input should be"),
    (("laeq_db = {", "sensor_id = {"), "feeds[0] (noise).fields.sensor_id: 'sensor_id' is "
     "reserved"),
    (("[[feeds.feeds_placeholder]]", "[[feeds]]\nkind = \"noise\"\ntitle = \"Again\"\n"
      "window_s = 60\n[feeds.fields]\n[[feeds.kpis]]\nname = \"n\"\nagg = \"count\""),
     "feeds[1]: duplicate id 'noise'"),
])
def test_a_bad_definition_is_refused_naming_the_feed_and_key(change: tuple[str, str],
                                                             message: str) -> None:
    old, new = change
    assert old in FEEDS_TOML
    text = CITY_TOML + FEEDS_TOML.replace(old, new, 1).replace("[[feeds.feeds_placeholder]]\n",
                                                                 "")
    with pytest.raises(CityModelError) as err:
        parse_city(text)
    assert message in str(err.value)


def test_the_shipped_city_and_its_feeds_load() -> None:
    from models.city import load_city

    city = load_city()
    assert {f.kind for f in city.feeds} <= set(kinds.names())
