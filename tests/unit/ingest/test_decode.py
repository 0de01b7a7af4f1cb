"""One test (or parameter set) per contract rule and per dead-letter reason of ingest.decode."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from ingest.decode import Decoded, decode
from kinds.shuttle import ShuttleReading
from kinds.traffic import TrafficReading
from kinds.water import WaterReading
from models.deadletter import DeadLetter, Reason

TS = 1_795_241_700_000  # 2026-11-21T06:15:00Z
NOW = TS + 1_000
SENSOR = "s-1"
TOPICS = {kind: f"city/central-mk/{kind}/{SENSOR}"
          for kind in ("water", "energy", "traffic", "shuttle")}
VALID: dict[str, dict[str, Any]] = {
    "water": {"sensor_id": SENSOR, "ts": TS, "seq": 1, "volume_m3": 10.5, "flow_l_min": 1.0,
              "pressure_bar": 3.2},
    "energy": {"sensor_id": SENSOR, "ts": TS, "energy_kwh": 1000.25, "power_kw": 3},
    "traffic": {"sensor_id": SENSOR, "ts": TS, "junction": "j-portway-h5", "vehicle_count": 7,
                "interval_s": 60, "mean_speed_kmh": 31.5, "occupancy_pct": 9.5},
    "shuttle": {"sensor_id": SENSOR, "ts": TS, "route_id": "station-centre", "lat": 52.04,
                "lon": -0.76, "speed_kmh": 12.0, "passengers": 4, "capacity": 10,
                "battery_pct": 77.0, "status": "in_service", "stop_id": "mk-central",
                "delay_s": 30, "disengaged": False},
}
REQUIRED = {
    "water": ["sensor_id", "ts", "volume_m3"],
    "energy": ["sensor_id", "ts", "energy_kwh"],
    "traffic": ["sensor_id", "ts", "junction", "vehicle_count", "interval_s", "mean_speed_kmh"],
    "shuttle": ["sensor_id", "ts", "route_id", "lat", "lon", "speed_kmh", "passengers",
                "capacity", "battery_pct", "status"],
}


def run(payload: bytes | dict[str, Any] | list[Any], kind: str = "water", *,
        topic: str | None = None, **options: int) -> Decoded:
    raw = (payload if isinstance(payload, bytes)
           else json.dumps(payload, separators=(",", ":")).encode())
    return decode(TOPICS[kind] if topic is None else topic, raw, NOW, **options)


def rejected(payload: bytes | dict[str, Any] | list[Any], kind: str = "water", *,
             topic: str | None = None, **options: int) -> DeadLetter:
    out = run(payload, kind, topic=topic, **options)
    assert out.readings == []
    assert len(out.dead_letters) == 1
    letter = out.dead_letters[0]
    assert letter.received_at_ms == NOW
    DeadLetter.from_json(letter.to_json())  # every dead letter survives the wire
    return letter


def with_(kind: str, **changes: Any) -> dict[str, Any]:
    return {**VALID[kind], **changes}


def without(kind: str, name: str) -> dict[str, Any]:
    return {k: v for k, v in VALID[kind].items() if k != name}


class TestAccepted:
    @pytest.mark.parametrize("kind", VALID)
    def test_single_object(self, kind: str) -> None:
        out = run(VALID[kind], kind)
        assert out.dead_letters == []
        [reading] = out.readings
        assert (reading.kind, reading.district, reading.sensor_id, reading.ts_ms) == (
            kind, "central-mk", SENSOR, TS)

    def test_water_fields(self) -> None:
        [reading] = run(VALID["water"]).readings
        assert isinstance(reading, WaterReading)
        assert (reading.volume_m3, reading.flow_l_min, reading.pressure_bar, reading.seq) == (
            10.5, 1.0, 3.2, 1)

    def test_shuttle_fields(self) -> None:
        [reading] = run(VALID["shuttle"], "shuttle").readings
        assert isinstance(reading, ShuttleReading)
        assert reading.delay_s == 30.0 and reading.disengaged is False
        assert reading.partition_key == "station-centre"

    def test_optional_fields_may_be_absent_or_null(self) -> None:
        [reading] = run({"sensor_id": SENSOR, "ts": TS, "volume_m3": 0, "seq": None,
                         "flow_l_min": None}).readings
        assert reading.seq is None

    def test_rfc3339_timestamp(self) -> None:
        [reading] = run(with_("water", ts="2026-11-21T07:15:00.250+01:00")).readings
        assert reading.ts_ms == TS + 250

    def test_unknown_fields_ignored(self) -> None:
        [reading] = run(with_("water", firmware="v2", extra={"a": [1, None]}, note=None)).readings
        assert b"firmware" not in reading.to_json()

    def test_unknown_field_holding_nan_is_ignored(self) -> None:
        payload = orjson.dumps(VALID["water"])[:-1] + b',"junk":NaN}'
        assert len(run(payload).readings) == 1

    def test_district_and_kind_come_from_the_topic(self) -> None:
        [reading] = run({**VALID["water"], "district": "elsewhere", "kind": "energy",
                         "ts_ms": 5}).readings
        assert (reading.district, reading.kind, reading.ts_ms) == ("central-mk", "water", TS)

    def test_array_batch(self) -> None:
        batch = [with_("traffic", ts=TS - i * 60_000, seq=i) for i in range(50)]
        out = run(batch, "traffic")
        assert out.dead_letters == []
        assert [r.seq for r in out.readings] == list(range(50))
        assert all(isinstance(r, TrafficReading) for r in out.readings)

    def test_payload_exactly_at_size_limit(self) -> None:
        body = orjson.dumps(VALID["water"])
        padded = body[:-1] + b',"pad":"' + b"x" * (200 - len(body) - 9) + b'"}'
        assert len(padded) == 200
        assert len(run(padded, max_bytes=200).readings) == 1

    def test_duplicate_keys_last_wins(self) -> None:
        payload = b'{"sensor_id":"s-1","ts":%d,"volume_m3":-1,"volume_m3":2}' % TS
        [reading] = run(payload).readings
        assert isinstance(reading, WaterReading) and reading.volume_m3 == 2.0

    def test_whitespace_around_json(self) -> None:
        assert len(run(b"  \n" + orjson.dumps(VALID["water"]) + b"\n").readings) == 1


class TestBadTopic:
    @pytest.mark.parametrize("topic", [
        "", "city/central-mk/water", "city/central-mk/gas/s-1", "city/Central/water/s-1",
        "city/central-mk/water/s 1", "city/central-mk/water/+", "city/#",
        "city/central-mk/water/s-1/extra", "city/alerts/water/x/y", "city/central-mk/water/\u00e9",
        "city/central-mk/water/s-1\n", "city/central-mk/water/" + "x" * 65,
    ])
    def test_rejected(self, topic: str) -> None:
        letter = rejected(VALID["water"], topic=topic)
        assert letter.reason == Reason.BAD_TOPIC
        assert letter.topic == topic and letter.field is None and letter.index is None
        assert letter.raw == orjson.dumps(VALID["water"])

    def test_checked_before_size_and_json(self) -> None:
        letter = rejected(b"\xff" * 70_000, topic="nope")
        assert letter.reason == Reason.BAD_TOPIC

    def test_unencodable_topic_is_kept_readably(self) -> None:
        letter = rejected(b"{}", topic="city/\ud800/water/x")
        assert letter.reason == Reason.BAD_TOPIC
        assert "\\ud800" in letter.topic

    def test_topic_not_a_string(self) -> None:
        letter = rejected(b"{}", topic=b"city/central-mk/water/s-1")  # type: ignore[arg-type]
        assert letter.reason == Reason.BAD_TOPIC


class TestTooLarge:
    def test_over_default_limit(self) -> None:
        payload = orjson.dumps([VALID["water"]] * 1000)
        assert len(payload) > 65536
        letter = rejected(payload)
        assert letter.reason == Reason.TOO_LARGE and letter.raw == payload[:65536]
        assert f"payload is {len(payload)} bytes" in letter.detail

    def test_raw_is_bounded_whatever_the_size(self) -> None:
        payload = b"A" * (10 * 1024 * 1024)
        letter = rejected(payload)
        assert letter.reason == Reason.TOO_LARGE and letter.raw == payload[:65536]
        assert len(letter.to_json()) < 100_000

    def test_custom_limit(self) -> None:
        body = orjson.dumps(VALID["water"])
        assert rejected(body, max_bytes=len(body) - 1).reason == Reason.TOO_LARGE

    def test_checked_before_json(self) -> None:
        assert rejected(b"not json" * 10, max_bytes=20).reason == Reason.TOO_LARGE


class TestInvalidJson:
    @pytest.mark.parametrize("payload", [
        b"", b" ", b"{", b'{"sensor_id": "s-1",}', b"{'sensor_id': 's-1'}", b"[1, 2",
        b"\xff\xfe{}", b'{"sensor_id": "s\xff"}', b"\xef\xbb\xbf{}", b"{} {}", b"[] x",
        b'{"a": "\\ud800"}', b'{"\\udfff": 1}', b'{"a": "\x01"}', b"nul", b"+1", b"01",
        b"[" * 5000, b"[" * 100_000 + b"]" * 100_000,
    ])
    def test_unparsable(self, payload: bytes) -> None:
        letter = rejected(payload, max_bytes=1_000_000)
        assert letter.reason == Reason.INVALID_JSON
        assert letter.raw == payload and letter.index is None and letter.field is None

    @pytest.mark.parametrize("payload", [
        b"[]", b"1", b"-2.5", b'"s-1"', b"null", b"true", b"false", b" [ ] ",
        b"NaN", b"Infinity", b"-Infinity", b"1e999",
    ])
    def test_top_level_not_object_or_array(self, payload: bytes) -> None:
        letter = rejected(payload)
        assert letter.reason == Reason.INVALID_JSON

    def test_surrogate_with_nan_is_still_invalid(self) -> None:
        payload = b'{"sensor_id": "\\ud800", "ts": 1, "volume_m3": NaN}'
        assert rejected(payload).reason == Reason.INVALID_JSON

    def test_deep_nesting_with_nan(self) -> None:
        payload = b'{"volume_m3": NaN, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
        assert rejected(payload).reason == Reason.INVALID_JSON


class TestSchema:
    @pytest.mark.parametrize(("kind", "name"), [
        (kind, name) for kind, names in REQUIRED.items() for name in names])
    def test_missing_required_field(self, kind: str, name: str) -> None:
        letter = rejected(without(kind, name), kind)
        assert letter.reason == Reason.SCHEMA
        assert letter.field == name

    @pytest.mark.parametrize(("kind", "name", "value"), [
        ("water", "volume_m3", "10.5"),
        ("water", "volume_m3", True),
        ("water", "volume_m3", None),
        ("water", "volume_m3", [1.0]),
        ("water", "flow_l_min", False),
        ("water", "seq", 1.5),
        ("water", "seq", 1.0),
        ("water", "seq", "1"),
        ("water", "seq", True),
        ("water", "sensor_id", 1),
        ("water", "sensor_id", ""),
        ("water", "sensor_id", "s 1"),
        ("water", "sensor_id", "x" * 65),
        ("energy", "energy_kwh", {"value": 1}),
        ("energy", "power_kw", "3"),
        ("traffic", "vehicle_count", 7.0),
        ("traffic", "vehicle_count", 7.5),
        ("traffic", "vehicle_count", True),
        ("traffic", "vehicle_count", 2**64),
        ("traffic", "junction", "j/1"),
        ("traffic", "junction", 5),
        ("traffic", "interval_s", "60"),
        ("traffic", "occupancy_pct", True),
        ("shuttle", "passengers", 4.0),
        ("shuttle", "capacity", 10.0),
        ("shuttle", "capacity", False),
        ("shuttle", "status", "IN_SERVICE"),
        ("shuttle", "status", None),
        ("shuttle", "route_id", ""),
        ("shuttle", "stop_id", 3),
        ("shuttle", "stop_id", "mk\ncentral"),
        ("shuttle", "stop_id", "mk\r"),
        ("shuttle", "delay_s", "late"),
        ("shuttle", "disengaged", 0),
        ("shuttle", "disengaged", "false"),
        ("shuttle", "lat", "52.0"),
    ])
    def test_wrong_type(self, kind: str, name: str, value: Any) -> None:
        letter = rejected(with_(kind, **{name: value}), kind)
        assert letter.reason == Reason.SCHEMA
        assert letter.field == name

    @pytest.mark.parametrize("ts", [
        float(TS), TS + 0.5, True, None, "2026-11-21T06:15:00", "2026-11-21 06:15:00Z",
        "1795241700000", "yesterday", "2026-11-21T06:15:00+0000", [TS], {"ms": TS}, 2**64,
    ])
    def test_bad_timestamp(self, ts: Any) -> None:
        letter = rejected(with_("water", ts=ts))
        assert letter.reason == Reason.SCHEMA
        assert letter.field == "ts"

    def test_ts_ms_is_not_ts(self) -> None:
        letter = rejected({**without("water", "ts"), "ts_ms": TS})
        assert (letter.reason, letter.field) == (Reason.SCHEMA, "ts")

    def test_raw_is_whole_payload_for_single_object(self) -> None:
        payload = orjson.dumps(without("water", "volume_m3"))
        letter = rejected(payload)
        assert letter.raw == payload and letter.index is None

    def test_detail_mentions_further_problems(self) -> None:
        letter = rejected({"sensor_id": SENSOR, "ts": TS})
        assert letter.reason == Reason.SCHEMA
        assert "more" not in letter.detail
        letter = rejected({"sensor_id": SENSOR, "ts": TS}, "traffic")
        assert "(and 3 more)" in letter.detail

    def test_non_object_array_elements(self) -> None:
        out = run([VALID["water"], 5, "x", None, [VALID["water"]], True])
        assert len(out.readings) == 1
        assert [(d.reason, d.field, d.index) for d in out.dead_letters] == [
            (Reason.SCHEMA, f"[{i}]", i) for i in range(1, 6)]
        assert [d.raw for d in out.dead_letters] == [
            b"5", b'"x"', b"null", orjson.dumps([VALID["water"]]), b"true"]


class TestNonFinite:
    @pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999",
                                         b"1" * 400, b"-" + b"9" * 5000])
    @pytest.mark.parametrize("name", ["volume_m3", "flow_l_min", "pressure_bar"])
    def test_float_fields(self, literal: bytes, name: str) -> None:
        payload = orjson.dumps(with_("water", **{name: 0})).replace(
            f'"{name}":0'.encode(), f'"{name}":'.encode() + literal)
        letter = rejected(payload)
        assert (letter.reason, letter.field) == (Reason.NON_FINITE, name)
        assert letter.raw == payload

    @pytest.mark.parametrize(("kind", "name"), [
        ("traffic", "vehicle_count"), ("shuttle", "passengers"), ("water", "seq"),
        ("water", "ts"), ("shuttle", "delay_s"), ("shuttle", "lat")])
    def test_any_numeric_field(self, kind: str, name: str) -> None:
        payload = orjson.dumps(with_(kind, **{name: 0})).replace(
            f'"{name}":0'.encode(), f'"{name}":NaN'.encode())
        letter = rejected(payload, kind)
        assert (letter.reason, letter.field) == (Reason.NON_FINITE, name)

    def test_nan_in_string_field_is_schema(self) -> None:
        payload = orjson.dumps(with_("water", sensor_id=0)).replace(b'"sensor_id":0',
                                                                   b'"sensor_id":NaN')
        assert rejected(payload).reason == Reason.SCHEMA


class TestOutOfRange:
    @pytest.mark.parametrize(("kind", "name", "value"), [
        ("water", "volume_m3", -0.5), ("water", "flow_l_min", -1), ("water", "pressure_bar", 26),
        ("water", "pressure_bar", -0.1), ("water", "seq", -1), ("water", "seq", 2**63),
        ("energy", "energy_kwh", -1e-9), ("energy", "power_kw", -3),
        ("traffic", "vehicle_count", -1), ("traffic", "interval_s", 0),
        ("traffic", "interval_s", -5), ("traffic", "interval_s", 3600.5),
        ("traffic", "mean_speed_kmh", 251), ("traffic", "mean_speed_kmh", -0.1),
        ("traffic", "occupancy_pct", 100.5), ("traffic", "occupancy_pct", -1),
        ("shuttle", "lat", 91), ("shuttle", "lat", -90.5), ("shuttle", "lon", 180.5),
        ("shuttle", "lon", -181), ("shuttle", "speed_kmh", 120.1), ("shuttle", "speed_kmh", -1),
        ("shuttle", "passengers", -1), ("shuttle", "capacity", 0), ("shuttle", "capacity", -10),
        ("shuttle", "battery_pct", 100.01), ("shuttle", "battery_pct", -1),
        ("shuttle", "passengers", 11),
    ])
    def test_rejected(self, kind: str, name: str, value: Any) -> None:
        letter = rejected(with_(kind, **{name: value}), kind)
        assert (letter.reason, letter.field) == (Reason.OUT_OF_RANGE, name)

    @pytest.mark.parametrize(("kind", "name", "value"), [
        ("water", "volume_m3", 0), ("water", "pressure_bar", 25), ("traffic", "interval_s", 3600),
        ("traffic", "interval_s", 0.001), ("traffic", "mean_speed_kmh", 250),
        ("traffic", "occupancy_pct", 100), ("shuttle", "lat", -90), ("shuttle", "lon", 180),
        ("shuttle", "speed_kmh", 120), ("shuttle", "passengers", 10), ("shuttle", "capacity", 4),
        ("shuttle", "battery_pct", 100), ("shuttle", "delay_s", -86400),
        ("water", "seq", 2**63 - 1),
    ])
    def test_boundaries_accepted(self, kind: str, name: str, value: Any) -> None:
        assert len(run(with_(kind, **{name: value}), kind).readings) == 1

    def test_passengers_over_capacity(self) -> None:
        letter = rejected(with_("shuttle", passengers=11, capacity=10), "shuttle")
        assert (letter.reason, letter.field) == (Reason.OUT_OF_RANGE, "passengers")
        assert "capacity" in letter.detail


class TestSensorMismatch:
    def test_other_sensor(self) -> None:
        letter = rejected(with_("water", sensor_id="s-2"))
        assert letter.reason == Reason.SENSOR_MISMATCH and letter.field is None

    def test_case_matters(self) -> None:
        assert rejected(with_("water", sensor_id="S-1")).reason == Reason.SENSOR_MISMATCH


class TestTime:
    def test_future_limit(self) -> None:
        assert len(run(with_("water", ts=NOW + 300_000)).readings) == 1
        letter = rejected(with_("water", ts=NOW + 300_001))
        assert letter.reason == Reason.FUTURE_TIMESTAMP

    def test_future_custom_limit(self) -> None:
        assert rejected(with_("water", ts=NOW + 1001), max_future_s=1).reason == (
            Reason.FUTURE_TIMESTAMP)

    def test_far_future_and_huge_integers(self) -> None:
        assert rejected(with_("water", ts=2**63)).reason == Reason.FUTURE_TIMESTAMP
        assert rejected(with_("water", ts="9999-12-31T23:59:59Z")).reason == (
            Reason.FUTURE_TIMESTAMP)

    def test_horizon(self) -> None:
        assert len(run(with_("water", ts=NOW - 86_400_000)).readings) == 1
        letter = rejected(with_("water", ts=NOW - 86_400_001))
        assert letter.reason == Reason.TOO_OLD

    def test_custom_horizon(self) -> None:
        assert rejected(with_("water", ts=NOW - 3_601_000), horizon_s=3600).reason == (
            Reason.TOO_OLD)
        assert len(run(with_("water", ts=NOW - 3_600_000), horizon_s=3600).readings) == 1

    @pytest.mark.parametrize("ts", [0, -1, -(2**63), "1970-01-01T00:00:00Z",
                                    "0001-01-01T00:00:00+00:00"])
    def test_ancient(self, ts: Any) -> None:
        assert rejected(with_("water", ts=ts)).reason == Reason.TOO_OLD

    def test_rfc3339_compared_in_utc(self) -> None:
        ahead = "2026-11-21T07:21:00+01:00"  # 6 min after TS, 5 min after NOW
        assert rejected(with_("water", ts=ahead)).reason == Reason.FUTURE_TIMESTAMP


class TestOrder:
    """The first failing check decides: schema, non_finite, out_of_range, sensor, future, old."""

    def test_schema_before_non_finite(self) -> None:
        payload = (b'{"sensor_id":"s-1","ts":%d,"volume_m3":NaN,"seq":"x"}' % TS)
        letter = rejected(payload)
        assert (letter.reason, letter.field) == (Reason.SCHEMA, "seq")

    def test_missing_field_before_non_finite(self) -> None:
        assert rejected(b'{"sensor_id":"s-1","volume_m3":NaN}').reason == Reason.SCHEMA

    def test_non_finite_before_out_of_range(self) -> None:
        payload = b'{"sensor_id":"s-1","ts":%d,"volume_m3":-1,"flow_l_min":Infinity}' % TS
        letter = rejected(payload)
        assert (letter.reason, letter.field) == (Reason.NON_FINITE, "flow_l_min")

    def test_schema_before_out_of_range(self) -> None:
        letter = rejected(with_("water", volume_m3=-1, seq=0.5))
        assert (letter.reason, letter.field) == (Reason.SCHEMA, "seq")

    def test_bad_ts_string_before_everything_else(self) -> None:
        payload = b'{"sensor_id":"s-2","ts":"soon","volume_m3":NaN}'
        assert (rejected(payload).reason, rejected(payload).field) == (Reason.SCHEMA, "ts")

    def test_out_of_range_before_sensor_mismatch(self) -> None:
        letter = rejected(with_("water", sensor_id="s-2", volume_m3=-1))
        assert letter.reason == Reason.OUT_OF_RANGE

    def test_capacity_after_other_ranges_is_still_out_of_range(self) -> None:
        letter = rejected(with_("shuttle", passengers=20, battery_pct=-1), "shuttle")
        assert (letter.reason, letter.field) == (Reason.OUT_OF_RANGE, "battery_pct")

    def test_sensor_mismatch_before_time(self) -> None:
        assert rejected(with_("water", sensor_id="s-2", ts=NOW + 10**9)).reason == (
            Reason.SENSOR_MISMATCH)
        assert rejected(with_("water", sensor_id="s-2", ts=0)).reason == Reason.SENSOR_MISMATCH

    def test_invalid_sensor_id_is_schema_not_mismatch(self) -> None:
        assert rejected(with_("water", sensor_id="s 2")).reason == Reason.SCHEMA


class TestArrays:
    def test_each_bad_element_is_its_own_dead_letter(self) -> None:
        batch = [
            VALID["water"],
            without("water", "volume_m3"),
            with_("water", volume_m3=-1),
            with_("water", ts=TS - 1),
            with_("water", sensor_id="other"),
            with_("water", ts=NOW + 10**7),
            with_("water", ts=0),
        ]
        out = run(batch)
        assert [r.ts_ms for r in out.readings] == [TS, TS - 1]
        assert [(d.reason, d.index, d.field) for d in out.dead_letters] == [
            (Reason.SCHEMA, 1, "[1].volume_m3"),
            (Reason.OUT_OF_RANGE, 2, "[2].volume_m3"),
            (Reason.SENSOR_MISMATCH, 4, None),
            (Reason.FUTURE_TIMESTAMP, 5, None),
            (Reason.TOO_OLD, 6, None),
        ]
        for letter in out.dead_letters:
            assert orjson.loads(letter.raw) == batch[letter.index or 0]
            assert letter.topic == TOPICS["water"]

    def test_ts_path_in_array(self) -> None:
        out = run([VALID["water"], VALID["water"], VALID["water"], with_("water", ts=1.5)])
        [letter] = out.dead_letters
        assert (letter.reason, letter.field, letter.index) == (Reason.SCHEMA, "[3].ts", 3)

    def test_single_element_array_uses_index(self) -> None:
        letter = rejected([with_("water", volume_m3=-2)])
        assert (letter.index, letter.field) == (0, "[0].volume_m3")
        assert letter.raw == orjson.dumps(with_("water", volume_m3=-2))

    def test_non_finite_element_raw_keeps_the_literal(self) -> None:
        good = orjson.dumps(VALID["water"])
        bad = b'{"sensor_id":"s-1","ts":%d,"volume_m3":NaN}' % TS
        out = run(b"[" + good + b"," + bad + b"]")
        assert len(out.readings) == 1
        [letter] = out.dead_letters
        assert (letter.reason, letter.field, letter.index) == (
            Reason.NON_FINITE, "[1].volume_m3", 1)
        assert b"NaN" in letter.raw
        assert json.loads(letter.raw)["sensor_id"] == "s-1"

    def test_invalid_json_anywhere_rejects_the_whole_message(self) -> None:
        payload = b"[" + orjson.dumps(VALID["water"]) + b", {]"
        letter = rejected(payload)
        assert letter.reason == Reason.INVALID_JSON and letter.index is None

    def test_payload_kind_key_kept_in_raw(self) -> None:
        bad = {**VALID["water"], "kind": "energy", "volume_m3": -1}
        out = run([{**VALID["water"], "kind": "energy"}, bad])
        assert len(out.readings) == 1 and out.readings[0].kind == "water"
        [letter] = out.dead_letters
        assert letter.reason == Reason.OUT_OF_RANGE
        assert orjson.loads(letter.raw) == bad

    def test_mixed_kinds_validated_against_topic_kind(self) -> None:
        out = run([VALID["water"], VALID["energy"]])
        assert len(out.readings) == 1
        assert out.dead_letters[0].reason == Reason.SCHEMA


class TestNeverRaises:
    @pytest.mark.parametrize("payload", [None, 5, "text", object()])
    def test_payload_of_wrong_type(self, payload: Any) -> None:
        out = decode(TOPICS["water"], payload, NOW)
        assert out.readings == [] and len(out.dead_letters) == 1

    def test_bytearray_and_memoryview(self) -> None:
        body = orjson.dumps(VALID["water"])
        assert len(decode(TOPICS["water"], bytearray(body), NOW).readings) == 1  # type: ignore[arg-type]
        assert len(decode(TOPICS["water"], memoryview(body), NOW).readings) == 1  # type: ignore[arg-type]
