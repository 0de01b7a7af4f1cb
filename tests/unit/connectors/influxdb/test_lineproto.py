"""Line protocol for raw readings and pipeline counters, checked by an independent parser."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.influxdb.lineproto import (
    escape_measurement,
    escape_tag,
    field_text,
    format_line,
    pipeline_line,
    reading_line,
)
from kinds.energy import EnergyReading
from kinds.shuttle import ShuttleReading
from kinds.traffic import TrafficReading
from kinds.water import WaterReading
from models.errors import RecordError
from models.kinds import raw_schemas
from models.readings import BaseReading
from models.records import PipelineCounters, record_to_json

TS = 1_795_241_700_000
BASE: dict[str, Any] = {"district": "central-mk", "sensor_id": "s-1", "ts_ms": TS}
WATER = {**BASE, "kind": "water", "volume_m3": 12.5}
SHUTTLE = {**BASE, "kind": "shuttle", "route_id": "station-centre", "lat": 52.03, "lon": -0.77,
           "speed_kmh": 18.0, "passengers": 3, "capacity": 10, "battery_pct": 81.0,
           "status": "in_service", "stop_id": "mk-central", "delay_s": -12.0, "disengaged": False}

Value = float | int | bool | str


# -- an independent parser, written from the InfluxDB 2.x line protocol reference -------------

def _scan(line: str, i: int, stops: str, unescape: str) -> tuple[str, int]:
    """Read up to an unescaped stop character; `\\x` for x in `unescape` becomes x, any other
    backslash stays literal (InfluxDB 2.x behaviour)."""
    out = []
    while i < len(line) and line[i] not in stops:
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in unescape:
            out.append(line[i + 1])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out), i


def _field_value(line: str, i: int) -> tuple[Value, int]:
    if line[i] == '"':
        out = []
        i += 1
        while line[i] != '"':
            if line[i] == "\\" and line[i + 1] in '"\\':
                i += 1
            out.append(line[i])
            i += 1
        return "".join(out), i + 1
    raw, i = _scan(line, i, ", ", "")
    if raw in ("true", "false"):
        return raw == "true", i
    if raw.endswith("i"):
        return int(raw[:-1]), i
    assert any(c in raw for c in ".eEn"), f"{raw!r} would be read as a float without a point"
    return float(raw), i


def parse(line: str) -> tuple[str, dict[str, str], dict[str, Value], int]:
    """(measurement, tags, fields, timestamp) of one line."""
    assert "\n" not in line
    measurement, i = _scan(line, 0, ", ", ", ")
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _scan(line, i + 1, "=", ",= ")
        value, i = _scan(line, i + 1, ", ", ",= ")
        tags[key] = value
    assert line[i] == " "
    fields: dict[str, Value] = {}
    sep = " "
    while line[i] == sep:
        key, i = _scan(line, i + 1, "=", ",= ")
        fields[key], i = _field_value(line, i + 1)
        sep = ","
    assert line[i] == " ", line[i:]
    return measurement, tags, fields, int(line[i + 1:])


# -- examples ---------------------------------------------------------------------------------

class TestReadingLine:
    def test_water(self) -> None:
        line = reading_line({**WATER, "flow_l_min": 3, "seq": 7}, "water")
        assert line == ("water,district=central-mk,sensor_id=s-1 "
                        f"volume_m3=12.5,flow_l_min=3.0,seq=7i {TS}")

    def test_shuttle_tags_and_typed_fields(self) -> None:
        m, tags, fields, ts = parse(reading_line(SHUTTLE, "shuttle"))
        assert (m, ts) == ("shuttle", TS)
        assert tags == {"district": "central-mk", "route": "station-centre", "sensor_id": "s-1"}
        assert fields == {"lat": 52.03, "lon": -0.77, "speed_kmh": 18.0, "passengers": 3,
                          "capacity": 10, "battery_pct": 81.0, "status": "in_service",
                          "stop_id": "mk-central", "delay_s": -12.0, "disengaged": False}
        assert type(fields["passengers"]) is int and type(fields["speed_kmh"]) is float

    def test_traffic_count_is_integer_and_junction_a_tag(self) -> None:
        traffic = {**BASE, "kind": "traffic", "junction": "j-1", "vehicle_count": 12,
                   "interval_s": 60, "mean_speed_kmh": 35}
        assert reading_line(traffic) == (
            "traffic,district=central-mk,junction=j-1,sensor_id=s-1 "
            f"vehicle_count=12i,interval_s=60.0,mean_speed_kmh=35.0 {TS}")

    @pytest.mark.parametrize(("value", "text"), [
        (5, "5.0"), (5.0, "5.0"), (0, "0.0"), (-0.5, "-0.5"), (1e16, "1e+16"),
        (1e-7, "1e-07"), (123456.789, "123456.789"), (2**60, "1.152921504606847e+18")])
    def test_floats_always_look_like_floats(self, value: float, text: str) -> None:
        line = reading_line({**WATER, "volume_m3": value})
        assert f"volume_m3={text} " in line

    def test_optional_fields_left_out(self) -> None:
        _, _, fields, _ = parse(reading_line(WATER))
        assert fields == {"volume_m3": 12.5}

    def test_extra_keys_ignored(self) -> None:
        assert reading_line({**WATER, "colour": "blue"}) == reading_line(WATER)

    @pytest.mark.parametrize("change", [
        {"volume_m3": None}, {"volume_m3": True}, {"volume_m3": "12.5"},
        {"volume_m3": float("nan")}, {"volume_m3": float("inf")}, {"volume_m3": 10**400},
        {"seq": 1.0}, {"seq": True}, {"ts_ms": 1.5e12}, {"ts_ms": None},
        {"sensor_id": "s 1"}, {"sensor_id": "s,1"}, {"sensor_id": "s=1"}, {"sensor_id": ""},
        {"sensor_id": ["s"]}, {"sensor_id": None}, {"district": "Central"},
        {"district": {"a": 1}}, {"kind": "energy"}, {"kind": "gas"},
    ])
    def test_bad_readings_are_record_errors(self, change: dict[str, Any]) -> None:
        with pytest.raises(RecordError):
            reading_line({**WATER, **change}, "water")

    @pytest.mark.parametrize("change", [
        {"status": 1}, {"stop_id": "a\nb"}, {"disengaged": 0}, {"passengers": 3.0},
        {"route_id": "r 1"},
    ])
    def test_bad_shuttle_readings(self, change: dict[str, Any]) -> None:
        with pytest.raises(RecordError):
            reading_line({**SHUTTLE, **change}, "shuttle")

    def test_string_fields_escaped(self) -> None:
        line = reading_line({**SHUTTLE, "stop_id": 'stop "A" \\ B, C=D'})
        assert 'stop_id="stop \\"A\\" \\\\ B, C=D"' in line
        assert parse(line)[2]["stop_id"] == 'stop "A" \\ B, C=D'

    def test_no_kind_anywhere(self) -> None:
        reading = {k: v for k, v in WATER.items() if k != "kind"}
        assert reading_line(reading, "water") == reading_line(WATER)
        with pytest.raises(RecordError):
            reading_line(reading)


class TestEscaping:
    @pytest.mark.parametrize(("text", "escaped"), [
        ("plain", "plain"), ("a b", "a\\ b"), ("a,b", "a\\,b"), ("a=b", "a\\=b"),
        (" ,= ", "\\ \\,\\=\\ "), ('q"uote', 'q"uote'), ("ünï", "ünï")])
    def test_tag(self, text: str, escaped: str) -> None:
        assert escape_tag(text) == escaped

    @pytest.mark.parametrize("text", ["", "a\nb", "a\rb", "a\\b", "trailing\\"])
    def test_tag_refused(self, text: str) -> None:
        with pytest.raises(RecordError):
            escape_tag(text)

    def test_measurement(self) -> None:
        assert escape_measurement("a b,c=d") == "a\\ b\\,c=d"
        with pytest.raises(RecordError):
            escape_measurement("#comment")

    def test_format_line_round_trips_awkward_tags(self) -> None:
        tags = {"instance": "host a,b=c", "component": "sink"}
        line = format_line("pipeline", tags, {"written": 3}, TS)
        assert line == f"pipeline,component=sink,instance=host\\ a\\,b\\=c written=3i {TS}"
        assert parse(line) == ("pipeline", tags, {"written": 3}, TS)

    @pytest.mark.parametrize(("value", "text"), [
        (True, "true"), (False, "false"), (3, "3i"), (-3, "-3i"), (3.0, "3.0"),
        ("x", '"x"'), ('a"b\\', '"a\\"b\\\\"')])
    def test_field_text(self, value: Value, text: str) -> None:
        assert field_text("f", value) == text

    @pytest.mark.parametrize("value", [float("nan"), float("-inf"), 2**63, "a\nb"])
    def test_field_text_refused(self, value: Value) -> None:
        with pytest.raises(RecordError):
            field_text("f", value)


class TestPipelineLine:
    def test_counters_present_become_integer_fields(self) -> None:
        record = {"component": "ingest", "instance": "gw 1", "ts_ms": TS, "received": 10,
                  "accepted": 9, "rejected": 1, "duplicates": 0, "messages": 4,
                  "rejected_by_reason": {"schema": 1}}
        assert parse(pipeline_line(record)) == (
            "pipeline", {"component": "ingest", "instance": "gw 1"},
            {"received": 10, "accepted": 9, "rejected": 1, "duplicates": 0}, TS)

    def test_a_pipeline_counters_record_as_records_json_writes_it(self) -> None:
        record = PipelineCounters(component="worker", instance="w 1", ts_ms=TS, received=5,
                                  written=4)
        assert pipeline_line(orjson.loads(record_to_json(record))) == (
            "pipeline,component=worker,instance=w\\ 1 received=5i,accepted=0i,rejected=0i,"
            f"late=0i,duplicates=0i,written=4i {TS}")

    @pytest.mark.parametrize("change", [
        {"component": "in gest"}, {"instance": 3}, {"received": 1.0}, {"received": -1},
        {"received": True}, {"ts_ms": "now"}, {"received": None, "written": None}])
    def test_bad_records(self, change: dict[str, Any]) -> None:
        record = {"component": "sink", "instance": "0", "ts_ms": TS, "received": 1,
                  "written": 1, **change}
        with pytest.raises(RecordError):
            pipeline_line(record)


# -- properties -------------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
slugs = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


def numbers(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats and (like JSON producers) integers in range; the model turns ints into floats."""
    return st.one_of(st.floats(lo, hi, allow_nan=False, allow_infinity=False),
                     st.integers(math.ceil(lo), math.floor(hi)))


counts = st.integers(0, 2**63 - 1)


@st.composite
def readings(draw: st.DrawFn) -> BaseReading:
    base: dict[str, Any] = {"district": draw(slugs), "sensor_id": draw(ids),
            "ts_ms": draw(st.integers(0, 9_000_000_000_000)),
            "seq": draw(st.none() | counts)}
    kind = draw(st.sampled_from(["water", "energy", "traffic", "shuttle"]))
    if kind == "water":
        return WaterReading(**base, volume_m3=draw(numbers(0, 1e12)),
                            flow_l_min=draw(st.none() | numbers(0, 1e6)),
                            pressure_bar=draw(st.none() | numbers(0, 25)))
    if kind == "energy":
        return EnergyReading(**base, energy_kwh=draw(numbers(0, 1e12)),
                             power_kw=draw(st.none() | numbers(0, 1e6)))
    if kind == "traffic":
        return TrafficReading(**base, junction=draw(ids), vehicle_count=draw(counts),
                              interval_s=draw(numbers(0.001, 3600)),
                              mean_speed_kmh=draw(numbers(0, 250)),
                              occupancy_pct=draw(st.none() | numbers(0, 100)))
    capacity = draw(st.integers(1, 2**63 - 1))
    return ShuttleReading(
        **base, route_id=draw(ids), lat=draw(numbers(-90, 90)), lon=draw(numbers(-180, 180)),
        speed_kmh=draw(numbers(0, 120)), passengers=draw(st.integers(0, capacity)),
        capacity=capacity, battery_pct=draw(numbers(0, 100)),
        status=draw(st.sampled_from(["in_service", "charging", "out_of_service"])),
        stop_id=draw(st.none() | st.text(st.characters(codec="utf-8",
                                                        exclude_characters="\n\r"))),
        delay_s=draw(st.none() | numbers(-1e6, 1e6)), disengaged=draw(st.none() | st.booleans()))


@settings(max_examples=400)
@given(readings())
def test_property_readings_round_trip(reading: BaseReading) -> None:
    """Every valid reading, through Kafka JSON, becomes a point that parses back to exactly its
    values, with each field in the schema's type."""
    decoded = orjson.loads(reading.to_json())
    measurement, tags, fields, ts = parse(reading_line(decoded, reading.kind))
    schema = raw_schemas()[reading.kind]
    assert measurement == reading.kind
    assert ts == reading.ts_ms
    assert tags == {tag: getattr(reading, key) for tag, key in schema.tags}
    expected = {name: getattr(reading, name) for name, _, _ in schema.fields
                if getattr(reading, name) is not None}
    assert fields == expected
    types = {"float": float, "int": int, "bool": bool, "str": str}
    for name, ftype in schema.field_types().items():
        if name in fields:
            assert type(fields[name]) is types[ftype], name


keys = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\\"), min_size=1)
field_values = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(st.characters(codec="utf-8", exclude_characters="\n\r")))


@given(keys.filter(lambda k: not k.startswith("#")), st.dictionaries(keys, keys),
       st.dictionaries(keys, field_values, min_size=1), st.integers(-(2**62), 2**62))
def test_property_format_line_round_trips(measurement: str, tags: dict[str, str],
                                          fields: dict[str, Value], ts: int) -> None:
    """Any text InfluxDB can store faithfully survives escaping, in every position."""
    assert parse(format_line(measurement, tags, fields, ts)) == (measurement, tags, fields, ts)
