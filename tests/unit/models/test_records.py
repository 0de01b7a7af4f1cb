from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from connectors.influxdb.lineproto import to_line_protocol
from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.errors import RecordError
from models.records import (
    Alert,
    PipelineCounters,
    Record,
    record_from_json,
    record_to_json,
)

END = 1_795_241_700_000


def water(**changes: Any) -> WaterKpi:
    values: dict[str, Any] = {
        "district": "central-mk", "window_end_ms": END, "consumption_l": 1200.5,
        "baseline_l": 1500, "saving_pct": 19.97, "saving_pct_24h": 21.0, "on_track": True,
        "meters_reporting": 40}
    return WaterKpi.model_validate({**values, **changes})


def alert(**changes: Any) -> Alert:
    values: dict[str, Any] = {
        "kind": "water", "entity": "central-mk", "rule": "night_flow", "ts_ms": END,
        "value": 3.5, "threshold": 2, "message": "night flow 3.5 L/min above 2", "active": True}
    return Alert.model_validate({**values, **changes})


class TestSchema:
    @pytest.mark.parametrize(("cls", "measurement", "tags", "fields"), [
        (WaterKpi, "water_kpi", ("district", "window"),
         ("consumption_l", "baseline_l", "saving_pct", "saving_pct_24h", "target_pct",
          "on_track", "meters_reporting")),
        (EnergyKpi, "energy_kpi", ("district", "window"),
         ("energy_kwh", "baseline_kwh", "saving_pct", "saving_pct_24h", "target_pct", "on_track",
          "peak_kw", "meters_reporting")),
        (TrafficKpi, "traffic_kpi", ("district", "junction", "window"),
         ("vehicles", "flow_veh_h", "space_mean_speed_kmh", "congestion_index",
          "baseline_congestion_index", "reduction_pct", "reduction_pct_24h", "target_pct",
          "on_track")),
        (ShuttleKpi, "shuttle_kpi", ("route", "window"),
         ("boardings", "occupancy_pct", "on_time_pct", "availability_pct", "mean_battery_pct",
          "disengagements", "vehicles_reporting")),
        (Alert, "alert", ("kind", "entity", "rule"),
         ("value", "threshold", "message", "active")),
        (PipelineCounters, "pipeline", ("component", "instance"),
         ("received", "accepted", "rejected", "late", "duplicates", "written")),
    ])
    def test_contract_names(self, cls: type[Record], measurement: str, tags: tuple[str, ...],
                            fields: tuple[str, ...]) -> None:
        assert cls.measurement == measurement
        assert cls.tag_names == tags
        assert cls.field_names() == fields

    def test_default_windows_and_targets(self) -> None:
        kpi = water()
        assert (kpi.window, kpi.target_pct) == ("15m", 20.0)
        assert EnergyKpi.model_fields["window"].default == "30m"
        assert EnergyKpi.model_fields["target_pct"].default == 3.0
        assert TrafficKpi.model_fields["window"].default == "5m"
        assert TrafficKpi.model_fields["target_pct"].default == 50.0
        assert ShuttleKpi.model_fields["window"].default == "15m"

    def test_timestamp_is_window_end(self) -> None:
        assert water().time_ms == END
        assert alert().time_ms == END

    @pytest.mark.parametrize(("name", "value"), [
        ("meters_reporting", 3.0), ("meters_reporting", True), ("meters_reporting", -1),
        ("on_track", 1), ("consumption_l", float("nan")), ("consumption_l", float("inf")),
        ("consumption_l", "1.0"), ("district", "Central MK"), ("window", "15 m"),
        ("window", ""), ("unknown_field", 1.0), ("window_end_ms", 1.5),
    ])
    def test_strict_field_types(self, name: str, value: Any) -> None:
        with pytest.raises(ValidationError):
            water(**{name: value})

    def test_ints_become_floats(self) -> None:
        kpi = water(consumption_l=0, baseline_l=7)
        assert type(kpi.consumption_l) is float and type(kpi.baseline_l) is float

    def test_alert_message_without_line_breaks(self) -> None:
        with pytest.raises(ValidationError):
            alert(message="two\nlines")

    def test_alert_mqtt(self) -> None:
        a = alert()
        assert a.mqtt_topic == "city/alerts/water/central-mk"
        assert orjson.loads(a.to_json())["active"] is True

    def test_instance_tag_rejects_newline(self) -> None:
        with pytest.raises(ValidationError):
            PipelineCounters(component="ingest", instance="a\nb", ts_ms=END)


class TestKafkaForm:
    @pytest.mark.parametrize("record", [
        water(),
        water(saving_pct=None, saving_pct_24h=None),
        alert(message='quote " and \\ backslash'),
        PipelineCounters(component="worker", instance="w-1", ts_ms=END, received=5, written=4),
        ShuttleKpi(route="r-1", window_end_ms=END, boardings=3, occupancy_pct=None,
                   on_time_pct=80, availability_pct=75, mean_battery_pct=66.5,
                   disengagements=0, vehicles_reporting=3),
    ])
    def test_round_trip(self, record: Record) -> None:
        data = record_to_json(record)
        assert orjson.loads(data)["measurement"] == record.measurement
        again = record_from_json(data)
        assert again == record and type(again) is type(record)
        assert to_line_protocol(again) == to_line_protocol(record)

    def test_unknown_measurement(self) -> None:
        with pytest.raises(RecordError):
            record_from_json(b'{"measurement": "gas_kpi"}')
