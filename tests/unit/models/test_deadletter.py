from __future__ import annotations

import base64

import orjson
import pytest
from pydantic import ValidationError

from models.deadletter import FIELD_REASONS, DeadLetter, Reason, sink_dead_letter

CONTRACT_REASONS = ["bad_topic", "too_large", "invalid_json", "schema", "non_finite",
                    "out_of_range", "sensor_mismatch", "future_timestamp", "too_old"]


def letter(**changes: object) -> DeadLetter:
    values: dict[str, object] = {
        "reason": Reason.SCHEMA, "detail": "Field required", "field": "[3].ts",
        "topic": "city/central-mk/water/wm-1", "raw": b'{"a":1}', "received_at_ms": 17,
        "index": 3}
    return DeadLetter.model_validate({**values, **changes})


def test_reasons_are_exactly_the_contract_codes() -> None:
    assert [r.value for r in Reason] == CONTRACT_REASONS
    assert Reason("too_old") is Reason.TOO_OLD
    assert f"{Reason.SCHEMA}" == "schema"


def test_json_round_trip_with_binary_raw() -> None:
    original = letter(raw=bytes(range(256)))
    again = DeadLetter.from_json(original.to_json())
    assert again == original


def test_raw_is_standard_base64_in_json() -> None:
    raw = b"\xfb\xff\xfe?>"
    data = orjson.loads(letter(raw=raw).to_json())
    assert data["raw"] == base64.b64encode(raw).decode()
    assert "+" in data["raw"] or "/" in data["raw"]  # standard, not URL-safe, alphabet
    assert data["reason"] == "schema" and data["field"] == "[3].ts" and data["index"] == 3


def test_python_dump_keeps_bytes() -> None:
    assert letter().model_dump()["raw"] == b'{"a":1}'


@pytest.mark.parametrize("reason", sorted(FIELD_REASONS))
def test_field_required_for_field_reasons(reason: Reason) -> None:
    with pytest.raises(ValidationError, match="must name the failing field"):
        letter(reason=reason, field=None)


@pytest.mark.parametrize("reason", sorted(set(Reason) - FIELD_REASONS))
def test_field_optional_otherwise(reason: Reason) -> None:
    assert letter(reason=reason, field=None, index=None).field is None


def test_unknown_reason_rejected() -> None:
    with pytest.raises(ValidationError):
        letter(reason="bogus")


def test_bad_base64_rejected() -> None:
    data = orjson.loads(letter().to_json())
    data["raw"] = "not base64!"
    with pytest.raises(ValidationError, match="base64"):
        DeadLetter.from_json(orjson.dumps(data))


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        letter().detail = "x"  # type: ignore[misc]


def test_a_sink_dead_letter_keeps_where_it_came_from() -> None:
    value = orjson.loads(sink_dead_letter("rejected_by_influxdb", "bad", "kpi.records", 2, 9,
                                          line="x v=1i 1", bucket="kpi"))
    assert list(value) == ["reason", "detail", "topic", "partition", "offset",
                           "received_at_ms", "bucket", "line"]
    value = orjson.loads(sink_dead_letter("undecodable", "no", "t", 0, 1, raw=b"\x00",
                                          index=3))
    assert (value["index"], value["raw"]) == (3, "AA==")
