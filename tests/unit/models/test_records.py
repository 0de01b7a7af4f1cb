from __future__ import annotations

from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

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
    to_line_protocol,
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


def unescape(text: str) -> str:
    """Remove line-protocol backslash escapes."""
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out += text[i]
        i += 1
    return out


def parse_line(line: str) -> tuple[str, dict[str, str], str, int]:
    """A small independent reader for lines whose string fields hold no space or comma."""
    assert "\n" not in line
    head, rest = _split_unescaped(line, " ")
    field_set, ts = rest.rsplit(" ", 1)
    measurement, *tag_parts = _split_all_unescaped(head, ",")
    tags = {}
    for part in tag_parts:
        key, value = _split_unescaped(part, "=")
        tags[unescape(key)] = unescape(value)
    return unescape(measurement), tags, field_set, int(ts)


def _split_unescaped(text: str, sep: str) -> tuple[str, str]:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            return text[:i], text[i + 1:]
        i += 1
    raise AssertionError(f"no {sep!r} in {text!r}")


def _split_all_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    while True:
        try:
            first, text = _split_unescaped(text, sep)
        except AssertionError:
            return [*parts, text]
        parts.append(first)


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


class TestLineProtocol:
    def test_water_line(self) -> None:
        assert to_line_protocol(water()) == (
            "water_kpi,district=central-mk,window=15m consumption_l=1200.5,baseline_l=1500.0,"
            "saving_pct=19.97,saving_pct_24h=21.0,target_pct=20.0,on_track=true,"
            f"meters_reporting=40i {END}")

    def test_undefined_fields_are_left_out(self) -> None:
        line = to_line_protocol(water(saving_pct=None, saving_pct_24h=None, on_track=False))
        assert "saving_pct" not in line and "on_track=false" in line

    def test_traffic_tags_sorted(self) -> None:
        kpi = TrafficKpi(district="central-mk", junction="j-1", window_end_ms=END, vehicles=12,
                         flow_veh_h=144, space_mean_speed_kmh=30, congestion_index=0.6,
                         baseline_congestion_index=1.2, reduction_pct=50, reduction_pct_24h=45,
                         on_track=False)
        line = to_line_protocol(kpi)
        assert line.startswith("traffic_kpi,district=central-mk,junction=j-1,window=5m ")
        assert "vehicles=12i," in line and "flow_veh_h=144.0," in line

    def test_string_field_escaping(self) -> None:
        line = to_line_protocol(alert(message='he said "leak" \\ here, x=1'))
        assert 'message="he said \\"leak\\" \\\\ here, x=1"' in line

    def test_tag_escaping(self) -> None:
        counters = PipelineCounters(component="ingest", instance="host 1,a=b\\c", ts_ms=END,
                                    received=3)
        line = to_line_protocol(counters)
        assert line.startswith("pipeline,component=ingest,instance=host\\ 1\\,a\\=b\\\\c ")
        measurement, tags, fields, ts = parse_line(line)
        assert (measurement, tags["instance"], ts) == ("pipeline", "host 1,a=b\\c", END)
        assert fields.startswith("received=3i,accepted=0i")

    def test_trailing_backslash_tag_does_not_escape_the_separator(self) -> None:
        line = to_line_protocol(PipelineCounters(component="x", instance="end\\", ts_ms=END))
        assert parse_line(line)[1] == {"component": "x", "instance": "end\\"}

    @pytest.mark.parametrize(("precision", "ts"), [
        ("s", END // 1000), ("ms", END), ("us", END * 1000), ("ns", END * 1_000_000)])
    def test_precision(self, precision: Any, ts: int) -> None:
        assert to_line_protocol(water(), precision).endswith(f" {ts}")

    def test_newline_in_tag_rejected_even_if_model_was_bypassed(self) -> None:
        bad = PipelineCounters.model_construct(component="x", instance="a\nb", ts_ms=END,
                                               received=1, accepted=0, rejected=0, late=0,
                                               duplicates=0, written=0)
        with pytest.raises(RecordError, match="line break"):
            to_line_protocol(bad)

    def test_empty_tag_rejected(self) -> None:
        bad = PipelineCounters.model_construct(component="", instance="a", ts_ms=END,
                                               received=1, accepted=0, rejected=0, late=0,
                                               duplicates=0, written=0)
        with pytest.raises(RecordError, match="empty"):
            to_line_protocol(bad)

    def test_newline_in_string_field_rejected(self) -> None:
        bad = alert().model_copy(update={"message": "a\nb"})
        with pytest.raises(RecordError):
            to_line_protocol(bad)

    def test_non_finite_rejected(self) -> None:
        bad = water().model_copy(update={"baseline_l": float("nan")})
        with pytest.raises(RecordError):
            to_line_protocol(bad)

    def test_no_fields_rejected(self) -> None:
        class Ratio(Record):
            measurement: ClassVar[str] = "ratio"
            tag_names: ClassVar[tuple[str, ...]] = ()
            time_field: ClassVar[str] = "ts_ms"
            ts_ms: int
            share: float | None

        with pytest.raises(RecordError, match="no defined field"):
            to_line_protocol(Ratio(ts_ms=END, share=None))
        assert to_line_protocol(Ratio(ts_ms=END, share=0.5)) == f"ratio share=0.5 {END}"

    def test_record_error_is_a_value_error(self) -> None:
        assert issubclass(RecordError, ValueError)

    @settings(max_examples=100, deadline=None)
    @given(instance=st.text(st.characters(blacklist_characters="\n\r",
                                          blacklist_categories=["Cs"]),
                            min_size=1, max_size=30))
    def test_any_tag_value_survives(self, instance: str) -> None:
        line = to_line_protocol(PipelineCounters(component="c", instance=instance, ts_ms=END))
        assert "\n" not in line
        assert parse_line(line)[1]["instance"] == instance


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
