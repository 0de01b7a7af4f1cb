from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.city import (
    DEFAULT_CITY_FILE,
    HOURS_PER_WEEK,
    City,
    dump_city,
    hour_of_week,
    load_city,
    parse_city,
    window_value,
)
from models.errors import CityModelError, CitystreamError, UnknownEntityError


def week(value: float = 1.0) -> str:
    return "[" + ", ".join([repr(value)] * HOURS_PER_WEEK) + "]"


def ramp() -> str:
    return "[" + ", ".join(str(float(i)) for i in range(HOURS_PER_WEEK)) + "]"


def city_toml(*, district_extra: str = "", junction_extra: str = "", route_extra: str = "",
              top: str = "", water: str | None = None) -> str:
    return f"""
name = "Testville"
timezone = "Europe/London"
{top}

[targets]
water_saving_pct = 20.0
energy_saving_pct = 3.0
congestion_reduction_pct = 50.0

[windows]
grace_s = 120
horizon_s = 86400

[[districts]]
slug = "central-mk"
name = "Central"
water_meters = 4
energy_meters = 2
water_baseline_l_h = {water if water is not None else ramp()}
energy_baseline_kwh_h = {week(2.0)}
{district_extra}

[[districts]]
slug = "bletchley"
name = "Bletchley"
water_saving_pct = 25.0
water_baseline_l_h = {week()}
energy_baseline_kwh_h = {week()}

[[junctions]]
id = "j-portway-h5"
district = "central-mk"
name = "Portway"
counters = 4
congestion_baseline = {week(0.5)}
{junction_extra}

[[junctions]]
id = "j-2"
district = "bletchley"
name = "Other"
free_flow_speed_kmh = 60.0
congestion_reduction_pct = 40.0
congestion_baseline = {week(0.25)}

[[routes]]
id = "station-centre"
district = "central-mk"
name = "Station - centre"
fleet_size = 4
capacity = 10
stops = [
  {{ id = "mk-central", lat = 52.0343, lon = -0.7741 }},
  {{ id = "centre-mk", lat = 52.0437, lon = -0.7564 }},
]
{route_extra}
"""


@pytest.fixture
def city() -> City:
    return parse_city(city_toml(), "test.toml")


def error_for(text: str) -> str:
    with pytest.raises(CityModelError) as info:
        parse_city(text, "bad.toml")
    return str(info.value)


class TestHourOfWeek:
    def test_monday_midnight_is_zero(self) -> None:
        monday = datetime(2026, 11, 23, tzinfo=UTC)
        assert hour_of_week(int(monday.timestamp() * 1000)) == 0

    def test_epoch_is_thursday(self) -> None:
        assert hour_of_week(0) == 72

    def test_last_millisecond_of_week(self) -> None:
        monday = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp() * 1000)
        assert hour_of_week(monday - 1) == 167
        assert hour_of_week(monday + 3_600_000 - 1) == 0
        assert hour_of_week(monday + 3_600_000) == 1

    def test_matches_datetime_for_every_hour_of_a_fortnight(self) -> None:
        start = datetime(2026, 3, 28, 0, 30, tzinfo=UTC)  # spans the UK clock change
        for h in range(2 * HOURS_PER_WEEK):
            instant = start + timedelta(hours=h)
            expected = instant.weekday() * 24 + instant.hour
            assert hour_of_week(int(instant.timestamp() * 1000)) == expected

    def test_before_epoch(self) -> None:
        assert hour_of_week(-1) == 71


class TestCity:
    def test_lookups(self, city: City) -> None:
        assert city.district("central-mk").water_meters == 4
        assert city.junction("j-portway-h5").free_flow_speed_kmh == 48.0
        assert city.route("station-centre").stops[1].id == "centre-mk"
        assert [j.id for j in city.junctions_in("central-mk")] == ["j-portway-h5"]
        assert [r.id for r in city.routes_in("bletchley")] == []

    @pytest.mark.parametrize("lookup", ["district", "junction", "route"])
    def test_unknown_entity_is_a_key_error(self, city: City, lookup: str) -> None:
        with pytest.raises(KeyError, match="nope"):
            getattr(city, lookup)("nope")
        with pytest.raises(UnknownEntityError):
            getattr(city, lookup)("nope")

    def test_targets_fall_back_to_city(self, city: City) -> None:
        assert city.water_target_pct("central-mk") == 20.0
        assert city.water_target_pct("bletchley") == 25.0
        assert city.energy_target_pct("bletchley") == 3.0
        assert city.congestion_target_pct("j-portway-h5") == 50.0
        assert city.congestion_target_pct("j-2") == 40.0

    def test_defaults_when_sections_omitted(self) -> None:
        text = city_toml().replace("[targets]\nwater_saving_pct = 20.0\nenergy_saving_pct = 3.0\n"
                                   "congestion_reduction_pct = 50.0\n", "")
        c = parse_city(text)
        assert (c.targets.water_saving_pct, c.targets.energy_saving_pct,
                c.targets.congestion_reduction_pct) == (20.0, 3.0, 50.0)
        assert (c.windows.grace_s, c.windows.horizon_s) == (120, 86400)

    def test_baselines_by_window_start(self, city: City) -> None:
        monday = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp() * 1000)
        d = city.district("central-mk")
        # hour 5 of the ramp is 5.0 L/h; a 15 min window is a quarter of it.
        assert d.water_baseline_l(monday + 5 * 3_600_000 + 45 * 60_000, 900) == 1.25
        assert d.energy_baseline_kwh(monday, 1800) == 1.0
        j = city.junction("j-portway-h5")
        assert j.baseline_congestion_index(monday) == 0.5
        assert window_value(d.water_baseline_l_h, monday + 167 * 3_600_000, 3600) == 167.0

    def test_models_are_frozen(self, city: City) -> None:
        with pytest.raises(ValueError, match="frozen"):
            city.name = "x"  # type: ignore[misc]

    def test_integers_accepted_in_baselines(self) -> None:
        ints = "[" + ", ".join(["3"] * HOURS_PER_WEEK) + "]"
        c = parse_city(city_toml(water=ints))
        assert c.district("central-mk").water_baseline_l_h[0] == 3.0


class TestCityErrors:
    def test_error_is_a_citystream_error(self) -> None:
        assert issubclass(CityModelError, CitystreamError)

    def test_short_week_names_file_and_field(self) -> None:
        message = error_for(city_toml(water="[1.0, 2.0]"))
        assert message.startswith("bad.toml:")
        assert "districts[0].water_baseline_l_h" in message
        assert "168" in message

    def test_long_week(self) -> None:
        message = error_for(city_toml(water="[" + ", ".join(["1.0"] * 169) + "]"))
        assert "districts[0].water_baseline_l_h" in message

    def test_negative_value_names_the_index(self) -> None:
        values = ["1.0"] * HOURS_PER_WEEK
        values[7] = "-1.0"
        message = error_for(city_toml(water="[" + ", ".join(values) + "]"))
        assert "districts[0].water_baseline_l_h[7]" in message

    @pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
    def test_non_finite_value(self, bad: str) -> None:
        values = ["1.0"] * HOURS_PER_WEEK
        values[3] = bad
        message = error_for(city_toml(water="[" + ", ".join(values) + "]"))
        assert "districts[0].water_baseline_l_h[3]" in message

    def test_boolean_is_not_a_number(self) -> None:
        values = ["1.0"] * HOURS_PER_WEEK
        values[0] = "true"
        assert "water_baseline_l_h[0]" in error_for(city_toml(water="[" + ", ".join(values) + "]"))

    def test_bad_slug(self) -> None:
        message = error_for(city_toml().replace('slug = "central-mk"', 'slug = "Central MK"'))
        assert "districts[0].slug" in message

    def test_bad_junction_id(self) -> None:
        message = error_for(city_toml().replace('id = "j-portway-h5"', 'id = "j portway"'))
        assert "junctions[0].id" in message

    def test_unknown_key_is_an_error(self) -> None:
        message = error_for(city_toml(district_extra="water_meterz = 3"))
        assert "districts[0].water_meterz" in message

    def test_missing_field(self) -> None:
        message = error_for(city_toml().replace('name = "Portway"\n', ""))
        assert "junctions[0].name" in message

    def test_target_out_of_range(self) -> None:
        message = error_for(city_toml(junction_extra="congestion_reduction_pct = 150.0"))
        assert "junctions[0].congestion_reduction_pct" in message

    def test_alerts_is_no_district(self) -> None:
        """city/alerts/... is citystream's alert output: no district may be called that."""
        message = error_for(city_toml().replace('slug = "bletchley"', 'slug = "alerts"')
                            .replace('district = "bletchley"', 'district = "alerts"'))
        assert "'alerts' is reserved" in message

    def test_duplicate_district(self) -> None:
        message = error_for(city_toml().replace('slug = "bletchley"', 'slug = "central-mk"'))
        assert "districts[1]" in message and "duplicate" in message

    def test_duplicate_stop(self) -> None:
        message = error_for(city_toml().replace('id = "centre-mk"', 'id = "mk-central"'))
        assert "routes[0]" in message and "stops[1]" in message

    def test_junction_in_unknown_district(self) -> None:
        message = error_for(city_toml().replace('district = "bletchley"', 'district = "nowhere"'))
        assert "junctions[1].district" in message and "nowhere" in message

    def test_route_in_unknown_district(self) -> None:
        text = city_toml().replace('id = "station-centre"\ndistrict = "central-mk"',
                                   'id = "station-centre"\ndistrict = "x"')
        assert "routes[0].district: 'x'" in error_for(text)

    def test_bad_timezone(self) -> None:
        message = error_for(city_toml().replace("Europe/London", "Mars/Olympus"))
        assert "Mars/Olympus" in message

    def test_zero_fleet(self) -> None:
        message = error_for(city_toml().replace("fleet_size = 4", "fleet_size = 0"))
        assert "routes[0].fleet_size" in message

    def test_no_districts(self) -> None:
        assert "districts" in error_for('name = "Empty"\n')

    def test_invalid_toml(self) -> None:
        message = error_for("name = ")
        assert message.startswith("bad.toml: not valid TOML")


class TestLoadCity:
    def test_reads_file(self, tmp_path: Path) -> None:
        path = tmp_path / "city.toml"
        path.write_text(city_toml(), encoding="utf-8")
        assert load_city(path).name == "Testville"

    def test_missing_file_names_it(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"
        with pytest.raises(CityModelError, match=r"absent\.toml"):
            load_city(path)

    def test_invalid_file_names_it(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.toml"
        path.write_text(city_toml(water="[]"), encoding="utf-8")
        with pytest.raises(CityModelError, match=r"broken\.toml.*\n.*water_baseline_l_h"):
            load_city(path)

    def test_default_path(self) -> None:
        assert DEFAULT_CITY_FILE.name == "milton-keynes.toml"
        assert DEFAULT_CITY_FILE.parent.name == "cities"

    def test_shipped_city_validates(self) -> None:
        city = load_city()
        assert city.districts and all(len(d.water_baseline_l_h) == HOURS_PER_WEEK
                                      for d in city.districts)
        for junction in city.junctions:
            assert city.district(junction.district).slug == junction.district


def test_dump_city_round_trips_the_shipped_file() -> None:
    city = load_city()
    assert parse_city(dump_city(city)) == city


def test_dump_city_keeps_overrides_and_escapes_text() -> None:
    data = load_city().model_dump(exclude_none=True)
    data["name"] = 'Milton "MK" Keynes \\ Bucks\t'
    data["districts"][0]["water_saving_pct"] = 25.0
    data["junctions"][0]["congestion_reduction_pct"] = 40.0
    city = City.model_validate(data)
    text = dump_city(city, ("learned by a test",))
    assert text.startswith("# learned by a test\n")
    again = parse_city(text)
    assert again == city
    assert again.water_target_pct(city.districts[0].slug) == 25.0
    assert again.name == 'Milton "MK" Keynes \\ Bucks\t'
