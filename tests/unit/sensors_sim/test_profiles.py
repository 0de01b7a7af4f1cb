"""Demand profiles and the maths that turns baselines into demand and back."""

from __future__ import annotations

import numpy as np
import pytest

from sensors_sim import profiles


def _day(week: np.ndarray, day: int = 0) -> np.ndarray:
    return profiles.hourly_means(week)[24 * day: 24 * (day + 1)]


def test_traffic_peaks_in_the_weekday_rush_hours_only() -> None:
    week = profiles.traffic_shape()
    monday, saturday = _day(week, 0), _day(week, 5)
    assert week.max() == pytest.approx(1.0)
    assert monday[7:9].max() > 1.5 * monday[11:14].mean()
    assert monday[16:18].max() > 1.5 * monday[11:14].mean()
    assert monday[2:4].max() < 0.1 * monday.max()
    assert saturday[7:9].max() < saturday[11:15].max()  # no AM rush at weekends


@pytest.mark.parametrize("commercial", [0.0, 0.3, 0.7])
def test_water_and_energy_have_morning_and_evening_peaks(commercial: float) -> None:
    water, energy = _day(profiles.water_shape(commercial)), _day(profiles.energy_shape(commercial))
    assert profiles.water_shape(commercial).mean() == pytest.approx(1.0)
    assert water[6:9].max() > 3 * water[2:4].mean()
    assert energy[16:20].max() > 2 * energy[2:4].mean()
    if commercial == 0.0:
        assert water[18:21].max() > 1.2 * water[13:16].mean()  # homes: evening peak


def test_minute_rates_keep_every_hourly_mean_and_stay_smooth_and_positive() -> None:
    hourly = profiles.hourly_means(profiles.water_shape(0.2)) * 500
    rates = profiles.minute_rates(hourly)
    assert rates.shape == (profiles.MINUTES_PER_WEEK,)
    assert np.allclose(profiles.hourly_means(rates), hourly, rtol=1e-12)
    assert rates.min() >= 0
    assert np.abs(np.diff(rates)).max() < 0.05 * hourly.max()
    flat = profiles.minute_rates([7.0] * 168)
    assert np.allclose(flat, 7.0)
    zeros = profiles.minute_rates([0.0] * 100 + [5.0] * 68)
    assert zeros.min() >= 0 and np.allclose(profiles.hourly_means(zeros)[:100], 0)


def test_speed_falls_as_flow_rises() -> None:
    load = np.linspace(0, 1.2, 50)
    speed = profiles.speed_kmh(48.0, load)
    assert speed[0] == pytest.approx(48.0)
    assert np.all(np.diff(speed) < 0)
    assert profiles.congestion_index(1.0) == pytest.approx(profiles.SPEED_FLOW_A)
    assert profiles.speed_kmh(48.0, 1.0, multiplier=0.5) > profiles.speed_kmh(48.0, 1.0)


@pytest.mark.parametrize("peak", [0.5, 0.8, 0.97, 1.1])
def test_peak_load_for_inverts_congestion_baseline(peak: float) -> None:
    baseline = profiles.congestion_baseline(peak)
    assert baseline.shape == (168,)
    assert profiles.peak_load_for(baseline) == pytest.approx(peak, rel=1e-6)
    assert profiles.peak_load_for([0.0] * 168) == 0.6


def test_minute_of_week_starts_on_monday_utc() -> None:
    monday = 1794787200000  # 2026-11-16T00:00:00Z
    assert int(profiles.minute_of_week(monday)) == 0
    assert int(profiles.minute_of_week(monday + 7 * 86400_000 - 60_000)) == 10079
    assert int(profiles.minute_of_week(monday + 25 * 3600_000 + 59_999)) == 1500
