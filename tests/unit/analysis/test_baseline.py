"""`citystream baseline learn`'s pure part: hour-of-week profiles, gaps kept, the file format."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from analysis.baseline import describe_hours, learn, week_profile, window_seconds
from kinds.energy import EnergyKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.city import HOURS_PER_WEEK, dump_city, hour_of_week, load_city, parse_city

H = 3_600_000
MONDAY = int(datetime(2026, 10, 5, tzinfo=UTC).timestamp() * 1000)  # a Monday 00:00 UTC
CITY = load_city()


def water_l_h(how: int, week: int) -> float:
    """The L/h a district used in hour-of-week `how` of week `week` (differs per week)."""
    return 100.0 + 10.0 * how + 50.0 * week


def water_windows(weeks: int, skip: set[int] = frozenset(), district: str = "bletchley",
                  window_s: int = 900) -> list[WaterKpi]:
    out = []
    for week in range(weeks):
        for how in range(HOURS_PER_WEEK):
            if how in skip:
                continue
            for i in range(3600 // window_s):
                end = MONDAY + (week * HOURS_PER_WEEK + how) * H + (i + 1) * window_s * 1000
                used = water_l_h(how, week) * window_s / 3600
                out.append(WaterKpi(district=district, window=f"{window_s // 60}m",
                                    window_end_ms=end, consumption_l=used, baseline_l=1.0,
                                    saving_pct=0.0, saving_pct_24h=0.0, on_track=False,
                                    meters_reporting=1))
    return out


def test_window_lengths() -> None:
    assert window_seconds("15m") == 900 and window_seconds("1h") == 3600
    with pytest.raises(ValueError):
        window_seconds("15 minutes")


def test_week_profile_divides_by_weight() -> None:
    profile = week_profile([(MONDAY, 10.0, 0.25), (MONDAY + 900_000, 30.0, 0.25),
                            (MONDAY + 25 * H, 7.0, 1.0)])
    assert profile[0] == 80.0 and profile[25] == 7.0
    assert profile.count(None) == HOURS_PER_WEEK - 2


def test_water_baseline_is_litres_per_hour_averaged_over_weeks() -> None:
    result = learn(CITY, water_windows(2), [], [])
    week = result.city.district("bletchley").water_baseline_l_h
    assert week == pytest.approx([(water_l_h(h, 0) + water_l_h(h, 1)) / 2
                                  for h in range(HOURS_PER_WEEK)])
    # other districts and the energy week are untouched (no data), and say so
    assert result.city.district("wolverton") == CITY.district("wolverton")
    assert (result.city.district("bletchley").energy_baseline_kwh_h
            == CITY.district("bletchley").energy_baseline_kwh_h)
    assert "district bletchley energy_baseline_kwh_h: no data in the period, kept all 168 " \
           "values" in result.notes
    assert result.learned_hours == HOURS_PER_WEEK


def test_window_length_does_not_matter() -> None:
    half_hours = learn(CITY, water_windows(1, window_s=1800), [], [])
    quarters = learn(CITY, water_windows(1, window_s=900), [], [])
    assert (half_hours.city.district("bletchley").water_baseline_l_h
            == quarters.city.district("bletchley").water_baseline_l_h)


def test_a_window_counts_in_the_hour_it_starts_in() -> None:
    # the window 00:45-01:00 is stamped 01:00 but belongs to hour 0
    w = water_windows(1)[3]
    assert hour_of_week(w.window_end_ms) == 1
    result = learn(CITY, [w], [], [])
    assert result.city.district("bletchley").water_baseline_l_h[0] == pytest.approx(
        water_l_h(0, 0))


def test_gaps_keep_the_old_values_and_are_listed() -> None:
    skip = {2, 3, 4, 30}
    result = learn(CITY, water_windows(2, skip=skip), [], [])
    old = CITY.district("bletchley").water_baseline_l_h
    new = result.city.district("bletchley").water_baseline_l_h
    assert [new[h] for h in sorted(skip)] == [old[h] for h in sorted(skip)]
    assert new[5] == pytest.approx((water_l_h(5, 0) + water_l_h(5, 1)) / 2)
    assert ("district bletchley water_baseline_l_h: no data for 4 hours, kept the old values "
            "for Mon 02:00-05:00, Tue 06:00-07:00") in result.notes
    assert result.kept_hours == 4 + 168 * (2 * len(CITY.districts) + len(CITY.junctions) - 1)


def test_energy_and_congestion() -> None:
    energy = [EnergyKpi(district="wolverton", window_end_ms=MONDAY + 1800_000 * (i + 1),
                        energy_kwh=5.0 + i, baseline_kwh=1.0, saving_pct=0.0,
                        saving_pct_24h=0.0, on_track=False, peak_kw=0.0, meters_reporting=1)
              for i in range(2)]
    traffic = [TrafficKpi(district="central-mk", junction="j-portway-h5",
                          window_end_ms=MONDAY + 300_000 * (i + 1), vehicles=vehicles,
                          flow_veh_h=0.0, space_mean_speed_kmh=48.0, congestion_index=index,
                          baseline_congestion_index=1.0, reduction_pct=0.0,
                          reduction_pct_24h=0.0, on_track=False)
               for i, (vehicles, index) in enumerate([(10, 0.4), (5, 0.2), (0, 0.0)])]
    result = learn(CITY, [], energy, traffic)
    assert result.city.district("wolverton").energy_baseline_kwh_h[0] == 11.0  # 11 kWh in 1 h
    assert result.city.junction("j-portway-h5").congestion_baseline[0] == pytest.approx(0.3)


def test_unknown_entities_are_reported_not_added() -> None:
    result = learn(CITY, water_windows(1, district="atlantis"), [], [])
    assert [d.slug for d in result.city.districts] == [d.slug for d in CITY.districts]
    assert ("ignored water_baseline_l_h data of 'atlantis': not in the city file (add it there "
            "first)") in result.notes


def test_learned_city_round_trips_through_the_file_format() -> None:
    result = learn(CITY, water_windows(1), [], [])
    text = dump_city(result.city, ("learned", ""))
    assert text.startswith("# learned\n#\n")
    assert parse_city(text) == result.city


@pytest.mark.parametrize("hours,text", [
    ([0, 1, 2], "Mon 00:00-03:00"),
    ([23], "Mon 23:00-24:00"),
    ([22, 23, 24, 25], "Mon 22:00-Tue 02:00"),
    ([0, 30, 167], "Mon 00:00-01:00, Tue 06:00-07:00, Sun 23:00-24:00"),
])
def test_describe_hours(hours: list[int], text: str) -> None:
    assert describe_hours(hours) == text
