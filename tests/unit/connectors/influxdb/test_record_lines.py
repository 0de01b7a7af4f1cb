"""`to_line_protocol`: KPI, alert and pipeline records as InfluxDB lines, read back by a small
independent parser (moved from tests/unit/models/test_records.py with the encoder)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.influxdb.lineproto import to_line_protocol
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.errors import RecordError
from models.records import Alert, PipelineCounters, Record

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
