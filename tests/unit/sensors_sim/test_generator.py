"""The simulated city: deterministic, valid by construction, and shaped like a city."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from models.city import hour_of_week
from sensors_sim import faults
from sensors_sim.generator import Message, SimConfig, Simulation
from tests.unit.sensors_sim.helpers import (
    MONDAY,
    city,
    contract_check,
    simulate,
    simulate_until,
    ts_ms,
)

SMALL = 0.1
"""--size for the day-long runs: a few sensors per district keep them fast."""


@pytest.fixture(scope="module")
def day() -> list[Message]:
    """26 simulated hours of the shipped city (small), from Monday 00:00 UTC."""
    return simulate_until(26, seed=1, size=SMALL)


def _readings(msgs: list) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    out = []
    for m in msgs:
        doc = json.loads(m.payload)
        for r in doc if isinstance(doc, list) else [doc]:
            out.append((m.topic.split("/")[2], r))
    return out


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    rates = dict.fromkeys(faults.FAULT_KINDS, 0.02)
    a = simulate(3000, seed=42, batch=2, fault_rates=rates, leak_districts=("wolverton",))
    b = simulate(3000, seed=42, batch=2, fault_rates=rates, leak_districts=("wolverton",),
                 gateways=7)
    c = simulate(3000, seed=43, batch=2, fault_rates=rates, leak_districts=("wolverton",))
    key = [(m.topic, m.payload, m.faults, m.expected, m.sim_time_ms) for m in a]
    assert key == [(m.topic, m.payload, m.faults, m.expected, m.sim_time_ms) for m in b]
    assert key != [(m.topic, m.payload, m.faults, m.expected, m.sim_time_ms) for m in c]


def test_clean_messages_are_valid_and_never_ahead_of_sim_time() -> None:
    msgs = simulate(6000, batch=3)
    for m in msgs:
        assert contract_check(m.topic, m.payload, m.sim_time_ms) == [(True, None)] * len(
            m.expected)
        for r in json.loads(m.payload):
            assert ts_ms(r["ts"]) <= m.sim_time_ms
    times = [m.sim_time_ms for m in msgs]
    assert times == sorted(times)


def test_every_kind_district_and_ts_format_appears() -> None:
    msgs = simulate(2000)
    kinds = {m.topic.split("/")[2] for m in msgs}
    districts = {m.topic.split("/")[1] for m in msgs}
    declared = {f.kind for f in city().feeds}  # air_quality, car_park, bus_occupancy
    assert len(declared) == 3
    assert kinds == {"water", "energy", "traffic", "shuttle"} | declared
    assert districts == {d.slug for d in city().districts}
    formats = {k: type(r["ts"]).__name__ for k, r in _readings(msgs)}
    assert formats == {"water": "int", "energy": "str", "traffic": "int", "shuttle": "str",
                       **dict.fromkeys(declared, "int")}


def test_gateways_group_sensors_by_district() -> None:
    sim = Simulation(city(), SimConfig(start_ms=MONDAY, gateways=6))
    per_gateway = collections.defaultdict(set)
    for _, _, topic, gw in sim.sensors():
        per_gateway[gw].add(topic.split("/")[1])
    assert sorted(per_gateway) == list(range(6))
    assert sum(len(d) for d in per_gateway.values()) <= 6 + 5


def test_batches_hold_readings_of_one_sensor() -> None:
    msgs = simulate(3000, batch=5)
    staggered: collections.Counter[int] = collections.Counter()
    for m in msgs:
        doc = json.loads(m.payload)
        assert isinstance(doc, list)
        assert {r["sensor_id"] for r in doc} == {m.topic.rsplit("/", 1)[1]}
        assert [r["seq"] for r in doc] == list(range(doc[0]["seq"], doc[0]["seq"] + len(doc)))
        staggered[len(doc)] += 1
    assert staggered[5] > 0 and len(staggered) > 1  # first batches staggered, then full


def test_water_and_energy_follow_the_baselines_without_a_programme(
        day: list[Message]) -> None:
    use, base = _district_use(day)
    for slug, (water, energy) in use.items():
        assert water == pytest.approx(base[slug][0], rel=0.02), slug
        assert energy == pytest.approx(base[slug][1], rel=0.02), slug


def test_size_multiplies_sensors_but_keeps_district_totals() -> None:
    msgs = simulate_until(3, seed=1, size=0.5)
    sensors = {m.topic for m in msgs if "/water/" in m.topic}
    assert len(sensors) == sum(round(d.water_meters * 0.5) for d in city().districts)
    counters = {m.topic for m in msgs if "/traffic/" in m.topic}
    assert len(counters) == sum(max(1, round(j.counters * 0.5)) for j in city().junctions)
    use, base = _district_use(msgs)
    for slug, (water, _) in use.items():
        assert water == pytest.approx(base[slug][0], rel=0.04), slug


def test_savings_programme_reaches_beyond_the_targets() -> None:
    # Same seed with and without the programme: the same random draws, so the ratio is exact.
    def after_ramp(scenario: str) -> list[Message]:
        msgs = simulate_until(9, seed=1, size=SMALL, scenario=scenario, ramp_s=2 * 3600)
        return [m for m in msgs if m.sim_time_ms > MONDAY + 3 * 3600_000]

    saved, plain = after_ramp("savings"), after_ramp("baseline")
    use, _ = _district_use(saved)
    use0, _ = _district_use(plain)
    for slug, (water, energy) in use.items():
        assert 1 - water / use0[slug][0] == pytest.approx(0.22, abs=0.005), slug
        assert 1 - energy / use0[slug][1] == pytest.approx(0.033, abs=0.002), slug
    ci, _ = _congestion(saved)
    ci0, _ = _congestion(plain)
    assert 1 - ci / ci0 == pytest.approx(0.55, abs=0.02)


def test_congestion_follows_its_baseline_and_speed_falls_with_flow(
        day: list[Message]) -> None:
    msgs = day
    ci, ci_base = _congestion(msgs)
    assert ci == pytest.approx(ci_base, rel=0.05)
    counts, speeds = [], []
    for kind, r in _readings(msgs):
        if kind == "traffic" and r["junction"] == "j-portway-h5" and r["vehicle_count"] > 0:
            counts.append(r["vehicle_count"])
            speeds.append(r["mean_speed_kmh"])
            assert r["mean_speed_kmh"] <= 48.0
    assert np.corrcoef(counts, speeds)[0, 1] < -0.5


def test_traffic_has_am_and_pm_peaks_on_a_weekday(day: list[Message]) -> None:
    per_hour: collections.Counter[int] = collections.Counter()
    for kind, r in _readings(day):
        if kind == "traffic":
            per_hour[hour_of_week(ts_ms(r["ts"]))] += r["vehicle_count"]
    night, am, midday, pm = per_hour[3], per_hour[8], per_hour[12], per_hour[17]
    assert am > 1.5 * midday and pm > 1.5 * midday and midday > 5 * night


def test_shuttles_stay_within_capacity_battery_and_route(day: list[Message]) -> None:
    route = city().routes[0]
    lats = [s.lat for s in route.stops]
    lons = [s.lon for s in route.stops]
    status: collections.Counter[str] = collections.Counter()
    arrivals, on_time, disengaged, boardings = 0, 0, 0, 0
    last_pax: dict[str, int] = {}
    for kind, r in _readings(day):
        if kind != "shuttle":
            continue
        status[r["status"]] += 1
        assert 0 <= r["passengers"] <= r["capacity"] == route.capacity
        assert 0 <= r["battery_pct"] <= 100
        assert 0 <= r["speed_kmh"] <= 120
        assert min(lats) - 1e-6 <= r["lat"] <= max(lats) + 1e-6
        assert min(lons) - 1e-6 <= r["lon"] <= max(lons) + 1e-6
        if r["status"] != "in_service":
            assert r["passengers"] == 0 and r["speed_kmh"] == 0 and "stop_id" not in r
        if "delay_s" in r:
            arrivals += 1
            on_time += -60 <= r["delay_s"] <= 180
            assert r["stop_id"] in {s.id for s in route.stops}
        disengaged += bool(r.get("disengaged"))
        boardings += max(0, r["passengers"] - last_pax.get(r["sensor_id"], 0))
        last_pax[r["sensor_id"]] = r["passengers"]
    assert set(status) == {"in_service", "charging", "out_of_service"}
    assert arrivals > 500 and on_time / arrivals > 0.75
    assert disengaged > 0 and boardings > 500


def test_shuttles_are_parked_at_night_and_run_by_day(day: list[Message]) -> None:
    by_hour: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for kind, r in _readings(day):
        if kind == "shuttle":
            assert r["ts"].endswith("+00:00")  # London is on UTC in November
            by_hour[ts_ms(r["ts"]) // 3600_000 % 24][r["status"]] += 1
    assert by_hour[3]["in_service"] == 0
    assert by_hour[12]["in_service"] > 0.8 * sum(by_hour[12].values())


def test_a_leak_raises_night_flow_in_its_district_only() -> None:
    msgs = simulate_until(5, seed=6, size=SMALL, leak_districts=("bletchley",))
    night: dict[str, float] = collections.defaultdict(float)
    base_night: dict[str, float] = collections.defaultdict(float)
    last: dict[str, float] = {}
    for m in msgs:
        if "/water/" not in m.topic:
            continue
        r = json.loads(m.payload)
        slug = m.topic.split("/")[1]
        hour = hour_of_week(ts_ms(r["ts"]))
        if r["sensor_id"] in last and hour % 24 in (2, 3):  # London is on UTC in November
            night[slug] += 1000 * (r["volume_m3"] - last[r["sensor_id"]])
        last[r["sensor_id"]] = r["volume_m3"]
    for d in city().districts:
        base_night[d.slug] = d.water_baseline_l_h[2] + d.water_baseline_l_h[3]
    assert night["bletchley"] > 3 * base_night["bletchley"]
    assert night["wolverton"] == pytest.approx(base_night["wolverton"], rel=0.15)
    assert any("leak" in m.faults for m in msgs if "/bletchley/water/" in m.topic)
    assert not any("leak" in m.faults for m in msgs if "/bletchley/water/" not in m.topic)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="no such district"):
        Simulation(city(), SimConfig(start_ms=MONDAY, leak_districts=("atlantis",)))
    with pytest.raises(ValueError, match="3600"):
        Simulation(city(), SimConfig(start_ms=MONDAY, traffic_interval_s=7200))


def _district_use(msgs: list) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Per district, water (L) and energy (kWh) used after each meter's first reading, and the
    baselines for the same hours (whole hours only, the first one skipped)."""
    last: dict[str, float] = {}
    use: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    hours: set[int] = set()
    first_hour = (msgs[0].sim_time_ms // 3600_000) + 1
    end_hour = msgs[-1].sim_time_ms // 3600_000
    for m in msgs:
        _, slug, kind, _ = m.topic.split("/")
        if kind not in ("water", "energy"):
            continue
        r = json.loads(m.payload)
        reg = r["volume_m3"] * 1000 if kind == "water" else r["energy_kwh"]
        t = ts_ms(r["ts"])
        if r["sensor_id"] in last and first_hour <= t // 3600_000 < end_hour:
            use[slug][0 if kind == "water" else 1] += reg - last[r["sensor_id"]]
            hours.add(t // 3600_000)
        last[r["sensor_id"]] = reg
    base = {}
    for d in city().districts:
        how = [hour_of_week(h * 3600_000) for h in sorted(hours)]
        base[d.slug] = (sum(d.water_baseline_l_h[h] for h in how),
                        sum(d.energy_baseline_kwh_h[h] for h in how))
    return {k: (v[0], v[1]) for k, v in use.items()}, base


def _congestion(msgs: list) -> tuple[float, float]:  # type: ignore[type-arg]
    """Mean congestion index over 5-minute windows with traffic (the KPI's rule), and the mean
    baseline over the same windows, across all junctions."""
    windows: dict[tuple[str, int], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for kind, r in _readings(msgs):
        if kind == "traffic" and r["vehicle_count"] > 0 and r["mean_speed_kmh"] > 0:
            acc = windows[(r["junction"], ts_ms(r["ts"]) // 300_000)]
            acc[0] += r["vehicle_count"]
            acc[1] += r["vehicle_count"] / r["mean_speed_kmh"]
    ci, base = [], []
    for (jid, window), (n, inv) in windows.items():
        j = city().junction(jid)
        ci.append(max(0.0, j.free_flow_speed_kmh / (n / inv) - 1))
        base.append(j.congestion_baseline[hour_of_week(window * 300_000)])
    return float(np.mean(ci)), float(np.mean(base))
