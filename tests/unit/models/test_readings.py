from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from kinds.energy import EnergyReading
from kinds.shuttle import ShuttleReading
from kinds.traffic import TrafficReading
from kinds.water import WaterReading
from models.kinds import PYTHON_KINDS, parse_topic, python_kinds, reading_from_json, reading_types
from models.readings import parse_ts

TS = 1_795_241_700_000  # 2026-11-21T06:15:00Z

BASE: dict[str, Any] = {"district": "central-mk", "sensor_id": "s-1", "ts_ms": TS}
WATER = {**BASE, "kind": "water", "volume_m3": 12.5}
ENERGY = {**BASE, "kind": "energy", "energy_kwh": 100, "power_kw": 2.5}
TRAFFIC = {**BASE, "kind": "traffic", "junction": "j-1", "vehicle_count": 12, "interval_s": 60,
           "mean_speed_kmh": 35.5, "occupancy_pct": 12.0}
SHUTTLE = {**BASE, "kind": "shuttle", "route_id": "station-centre", "lat": 52.03, "lon": -0.77,
           "speed_kmh": 18.0, "passengers": 3, "capacity": 10, "battery_pct": 81.0,
           "status": "in_service", "stop_id": "mk-central", "delay_s": -12.0, "disengaged": False}


class TestTopic:
    @pytest.mark.parametrize(("topic", "expected"), [
        ("city/central-mk/water/wm-0001", ("central-mk", "water", "wm-0001")),
        ("city/b/energy/E_1", ("b", "energy", "E_1")),
        ("city/0/traffic/" + "x" * 64, ("0", "traffic", "x" * 64)),
        ("city/" + "a" * 63 + "/shuttle/s", ("a" * 63, "shuttle", "s")),
    ])
    def test_valid(self, topic: str, expected: tuple[str, str, str]) -> None:
        assert parse_topic(topic) == expected

    @pytest.mark.parametrize("topic", [
        "", "city", "city/central-mk/water", "city/central-mk/water/", "city//water/x",
        "city/central-mk/gas/x", "city/Central/water/x", "city/-mk/water/x",
        "city/" + "a" * 64 + "/water/x", "city/mk/water/" + "x" * 65, "city/mk/water/x/y",
        "city/mk/water/+", "city/mk/water/#", "city/+/water/x", "City/mk/water/x",
        "/city/mk/water/x", "city/mk/water/x ", "city/mk/water/x\n", "city/mk/water/wm\u00e9",
        "city/mk/water/\uff11", "city/mk\u0131/water/x", "city/alerts/water",
        "city/mk/water/a.b", "city/mk/water/\ud800",
    ])
    def test_invalid(self, topic: str) -> None:
        assert parse_topic(topic) is None

    def test_not_a_string(self) -> None:
        assert parse_topic(b"city/mk/water/x") is None  # type: ignore[arg-type]
        assert parse_topic(None) is None  # type: ignore[arg-type]


class TestParseTs:
    @pytest.mark.parametrize(("text", "ms"), [
        ("2026-11-21T06:15:00Z", TS),
        ("2026-11-21T06:15:00z", TS),
        ("2026-11-21t06:15:00Z", TS),
        ("2026-11-21T06:15:00+00:00", TS),
        ("2026-11-21T07:15:00+01:00", TS),
        ("2026-11-21T01:15:00-05:00", TS),
        ("2026-11-21T06:15:00.123Z", TS + 123),
        ("2026-11-21T06:15:00.1Z", TS + 100),
        ("2026-11-21T06:15:00.123999999Z", TS + 123),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
    ])
    def test_valid(self, text: str, ms: int) -> None:
        assert parse_ts(text) == ms

    @pytest.mark.parametrize("text", [
        "2026-11-21T06:15:00",            # naive
        "2026-11-21 06:15:00Z",           # space separator
        "2026-11-21T06:15Z",              # no seconds
        "20261121T061500Z",               # basic format
        "2026-11-21",
        "2026-13-21T06:15:00Z",
        "2026-02-30T06:15:00Z",
        "2026-11-21T24:00:00Z",
        "2026-11-21T23:59:60Z",
        "2026-11-21T06:15:00+0100",
        "2026-11-21T06:15:00+25:00",
        "2026-11-21T06:15:00.Z",
        "\uff12026-11-21T06:15:00Z",
        "2026-11-21T06:15:00Z\n",
        "",
        "1795238100000",
    ])
    def test_invalid(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_ts(text)


class TestModels:
    @pytest.mark.parametrize("data", [WATER, ENERGY, TRAFFIC, SHUTTLE])
    def test_valid_and_round_trip(self, data: dict[str, Any]) -> None:
        reading = reading_types()[data["kind"]].model_validate(data)
        assert reading.kind == data["kind"]
        again = reading_from_json(reading.to_json())
        assert again == reading
        assert type(again) is type(reading)

    def test_to_json_is_compact_and_drops_none(self) -> None:
        reading = WaterReading.model_validate(WATER)
        assert orjson.loads(reading.to_json()) == {
            "district": "central-mk", "sensor_id": "s-1", "ts_ms": TS, "kind": "water",
            "volume_m3": 12.5}
        assert b" " not in reading.to_json()

    def test_integers_become_floats_for_float_fields(self) -> None:
        reading = EnergyReading.model_validate(ENERGY)
        assert type(reading.energy_kwh) is float
        assert b'"energy_kwh":100.0' in reading.to_json()

    def test_partition_keys(self) -> None:
        assert WaterReading.model_validate(WATER).partition_key == "central-mk"
        assert EnergyReading.model_validate(ENERGY).partition_key == "central-mk"
        assert TrafficReading.model_validate(TRAFFIC).partition_key == "j-1"
        assert ShuttleReading.model_validate(SHUTTLE).partition_key == "station-centre"

    def test_kinds(self) -> None:
        assert set(PYTHON_KINDS) == {k.name for k in python_kinds()} == {
            "water", "energy", "traffic", "shuttle"}

    def test_extra_fields_ignored(self) -> None:
        reading = WaterReading.model_validate({**WATER, "firmware": "1.2", "nested": {"a": [1]}})
        assert b"firmware" not in reading.to_json()

    def test_frozen(self) -> None:
        reading = WaterReading.model_validate(WATER)
        with pytest.raises(ValidationError):
            reading.volume_m3 = 1.0  # type: ignore[misc]

    @pytest.mark.parametrize(("data", "field", "value"), [
        (WATER, "volume_m3", True),
        (WATER, "volume_m3", "1.5"),
        (WATER, "seq", 1.0),
        (WATER, "seq", True),
        (WATER, "ts_ms", 1.0e12),
        (WATER, "ts_ms", False),
        (TRAFFIC, "vehicle_count", 3.0),
        (TRAFFIC, "vehicle_count", 1.5),
        (TRAFFIC, "vehicle_count", "3"),
        (SHUTTLE, "passengers", 2.0),
        (SHUTTLE, "capacity", True),
        (SHUTTLE, "disengaged", 1),
        (SHUTTLE, "disengaged", "true"),
        (SHUTTLE, "status", "parked"),
        (SHUTTLE, "stop_id", 5),
        (SHUTTLE, "stop_id", "a\nb"),
        (SHUTTLE, "stop_id", "\ud800"),
        (SHUTTLE, "route_id", "a b"),
        (TRAFFIC, "junction", ""),
        (WATER, "sensor_id", 7),
    ])
    def test_strict_types(self, data: dict[str, Any], field: str, value: Any) -> None:
        with pytest.raises(ValidationError) as info:
            reading_types()[data["kind"]].model_validate({**data, field: value})
        assert info.value.errors()[0]["loc"][0] == field

    @pytest.mark.parametrize(("data", "field", "value"), [
        (WATER, "volume_m3", -0.001), (WATER, "flow_l_min", -1), (WATER, "pressure_bar", 25.01),
        (WATER, "pressure_bar", -0.1), (ENERGY, "energy_kwh", -1), (ENERGY, "power_kw", -1),
        (TRAFFIC, "vehicle_count", -1), (TRAFFIC, "interval_s", 0), (TRAFFIC, "interval_s", 3601),
        (TRAFFIC, "mean_speed_kmh", 250.5), (TRAFFIC, "mean_speed_kmh", -1),
        (TRAFFIC, "occupancy_pct", 100.1), (SHUTTLE, "lat", 90.1), (SHUTTLE, "lon", -180.1),
        (SHUTTLE, "speed_kmh", 121), (SHUTTLE, "passengers", -1), (SHUTTLE, "capacity", 0),
        (SHUTTLE, "battery_pct", 101), (WATER, "seq", -1), (WATER, "seq", 2**63),
    ])
    def test_ranges(self, data: dict[str, Any], field: str, value: Any) -> None:
        with pytest.raises(ValidationError) as info:
            reading_types()[data["kind"]].model_validate({**data, field: value})
        assert info.value.errors()[0]["type"].startswith(("greater", "less"))

    @pytest.mark.parametrize(("data", "field", "value"), [
        (WATER, "pressure_bar", 25), (WATER, "pressure_bar", 0), (TRAFFIC, "interval_s", 3600),
        (TRAFFIC, "mean_speed_kmh", 250), (TRAFFIC, "mean_speed_kmh", 0), (SHUTTLE, "lat", -90),
        (SHUTTLE, "speed_kmh", 120), (SHUTTLE, "passengers", 10), (SHUTTLE, "battery_pct", 0),
        (SHUTTLE, "delay_s", -3600), (WATER, "seq", 2**63 - 1), (WATER, "seq", 0),
    ])
    def test_range_boundaries_accepted(self, data: dict[str, Any], field: str,
                                       value: Any) -> None:
        reading_types()[data["kind"]].model_validate({**data, field: value})

    def test_passengers_over_capacity(self) -> None:
        with pytest.raises(ValidationError) as info:
            ShuttleReading.model_validate({**SHUTTLE, "passengers": 11})
        assert info.value.errors()[0]["type"] == "passengers_over_capacity"

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_rejected(self, value: float) -> None:
        with pytest.raises(ValidationError) as info:
            ShuttleReading.model_validate({**SHUTTLE, "delay_s": value})
        assert info.value.errors()[0]["type"] == "finite_number"

    def test_free_text_accepted_in_stop_id(self) -> None:
        reading = ShuttleReading.model_validate({**SHUTTLE, "stop_id": 'Stop "A", \u00e9 = 1'})
        assert reading_from_json(reading.to_json()) == reading

    def test_from_json_rejects_other_records(self) -> None:
        with pytest.raises(ValidationError):
            reading_from_json(b'{"kind": "gas"}')
        with pytest.raises(ValidationError):
            reading_from_json(orjson.dumps({**WATER, "kind": "energy"}))
