"""The shipped Milton Keynes model: up to date, valid, and built from the simulator's profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.city import DEFAULT_CITY_FILE, load_city
from sensors_sim import make_city, profiles
from sensors_sim.generator import SimConfig, Simulation


def test_the_shipped_file_is_what_make_city_writes() -> None:
    assert DEFAULT_CITY_FILE.read_text(encoding="utf-8") == make_city.build_toml()
    assert make_city.main(["--check", "--out", str(DEFAULT_CITY_FILE)]) == 0


def test_the_city_has_districts_junctions_and_the_station_shuttle() -> None:
    city = load_city()
    slugs = [d.slug for d in city.districts]
    assert {"central-mk", "bletchley", "wolverton", "newport-pagnell", "kents-hill",
            "stony-stratford"} <= set(slugs)
    assert len(city.junctions) >= 8
    assert all(30 <= j.free_flow_speed_kmh <= 70 and j.counters >= 3 for j in city.junctions)
    route = city.route("station-centre")
    assert (route.fleet_size, route.capacity) == (4, 10)
    assert route.stops[0].id == "mk-central" and route.stops[-1].id == "centre-mk"
    for stop in route.stops:  # central Milton Keynes
        assert 52.02 < stop.lat < 52.05 and -0.79 < stop.lon < -0.75
    first, last = route.stops[0], route.stops[-1]
    km = math.dist((first.lat * 111.2, first.lon * 68.5), (last.lat * 111.2, last.lon * 68.5))
    assert 1.2 < km < 2.5


@pytest.mark.parametrize("spec", make_city.DISTRICTS, ids=lambda d: d.slug)
def test_baselines_are_the_hourly_means_of_the_unsaved_profiles(
        spec: make_city.DistrictSpec) -> None:
    district = load_city().district(spec.slug)
    water = np.asarray(district.water_baseline_l_h)
    shape = profiles.hourly_means(profiles.water_shape(spec.commercial))
    assert np.allclose(water / water.mean(), shape / shape.mean(), rtol=1e-4)
    energy = np.asarray(district.energy_baseline_kwh_h)
    shape = profiles.hourly_means(profiles.energy_shape(spec.commercial))
    assert np.allclose(energy / energy.mean(), shape / shape.mean(), rtol=1e-3)


@pytest.mark.parametrize("spec", make_city.JUNCTIONS, ids=lambda j: j.id)
def test_junction_baselines_come_from_the_speed_flow_curve(spec: make_city.JunctionSpec) -> None:
    baseline = load_city().junction(spec.id).congestion_baseline
    assert np.allclose(baseline, profiles.congestion_baseline(spec.peak_load), atol=1e-5)
    assert profiles.peak_load_for(baseline) == pytest.approx(spec.peak_load, abs=1e-3)


def test_default_city_publishes_a_few_hundred_readings_per_simulated_minute() -> None:
    sim = Simulation(load_city(), SimConfig(start_ms=0))
    per_minute = sum(60_000 / k.interval_ms * len(k.ids) for k in sim.kinds)
    assert 200 <= per_minute <= 600
