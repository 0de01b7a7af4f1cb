"""Property tests: decode never raises, and every input element is accounted for exactly once."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ingest.decode import Decoded, _careful, decode
from models.deadletter import DeadLetter, Reason
from models.kinds import PYTHON_KINDS, parse_topic, reading_from_json
from models.readings import topic_context

NOW = 1_795_241_700_000
MESSAGE_REASONS = {Reason.BAD_TOPIC, Reason.TOO_LARGE, Reason.INVALID_JSON}
ELEMENT_REASONS = set(Reason) - MESSAGE_REASONS
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

kinds = st.sampled_from(sorted(PYTHON_KINDS))
topics = st.one_of(
    st.text(max_size=80),
    st.builds(lambda d, k, s: f"city/{d}/{k}/{s}",
              st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True), kinds,
              st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=25)


def check(out: Decoded, elements: int | None) -> None:
    """Every dead letter is well formed; `elements` (if known) are all accounted for."""
    assert isinstance(out, Decoded)
    for letter in out.dead_letters:
        assert letter.reason in set(Reason)
        assert DeadLetter.from_json(letter.to_json()) == letter
        if letter.reason in (Reason.SCHEMA, Reason.NON_FINITE, Reason.OUT_OF_RANGE):
            assert letter.field
    for reading in out.readings:
        assert reading_from_json(reading.to_json()) == reading
        assert NOW - 86_400_000 <= reading.ts_ms <= NOW + 300_000
    message_level = [d for d in out.dead_letters if d.reason in MESSAGE_REASONS]
    if message_level:
        assert out.readings == [] and len(out.dead_letters) == 1
        assert out.dead_letters[0].index is None
    elif elements is not None:
        assert len(out.readings) + len(out.dead_letters) == elements
        indexes = [d.index for d in out.dead_letters]
        if None in indexes:
            assert len(indexes) == 1 and out.readings == []
        else:
            assert indexes == sorted(set(indexes))  # type: ignore[type-var]


def same_as_careful(topic: str, payload: bytes, out: Decoded) -> None:
    """The pydantic-core shortcut never changes an outcome: compare with the careful path."""
    parsed = parse_topic(topic)
    if parsed is None or len(payload) > 65536:
        return
    district, kind, sensor_id = parsed
    careful = _careful(topic, payload, NOW, kind, topic_context(district), sensor_id,
                       NOW - 86_400_000, NOW + 300_000)
    assert out == careful


def element_count(doc: Any) -> int | None:
    if isinstance(doc, dict):
        return 1
    if isinstance(doc, list) and doc:
        return len(doc)
    return None


@FAST
@given(topic=topics, payload=st.binary(max_size=300))
def test_arbitrary_bytes(topic: str, payload: bytes) -> None:
    out = decode(topic, payload, NOW)
    check(out, None)
    same_as_careful(topic, payload, out)
    assert len(out.readings) + len(out.dead_letters) >= 1


@FAST
@given(topic=topics, doc=json_values)
def test_arbitrary_json(topic: str, doc: Any) -> None:
    payload = json.dumps(doc).encode("utf-8", "surrogatepass")
    out = decode(topic, payload, NOW)
    check(out, element_count(doc))
    same_as_careful(topic, payload, out)


@FAST
@given(kind=kinds, elements=st.lists(st.dictionaries(
    st.sampled_from(["sensor_id", "ts", "seq", "volume_m3", "energy_kwh", "junction",
                     "vehicle_count", "interval_s", "mean_speed_kmh", "route_id", "lat", "lon",
                     "speed_kmh", "passengers", "capacity", "battery_pct", "status", "extra"]),
    st.one_of(json_scalars, st.sampled_from(["s-1", "in_service", "2026-11-21T06:15:00Z"]),
              st.integers(NOW - 90_000_000, NOW + 400_000))), min_size=1, max_size=8))
def test_reading_like_arrays(kind: str, elements: list[dict[str, Any]]) -> None:
    payload = json.dumps(elements).encode("utf-8", "surrogatepass")
    topic = f"city/central-mk/{kind}/s-1"
    out = decode(topic, payload, NOW)
    check(out, len(elements))
    same_as_careful(topic, payload, out)


def finite(low: float, high: float, *, exclude_min: bool = False) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False, exclude_min=exclude_min)


def valid_element(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    common: dict[str, Any] = {
        "sensor_id": st.just("s-1"),
        "ts": st.one_of(st.integers(NOW - 86_400_000, NOW + 300_000)),
        "seq": st.one_of(st.none(), st.integers(0, 2**63 - 1)),
    }
    fields: dict[str, dict[str, Any]] = {
        "water": {"volume_m3": finite(0, 1e12),
                  "pressure_bar": finite(0, 25)},
        "energy": {"energy_kwh": finite(0, 1e12),
                   "power_kw": finite(0, 1e6)},
        "traffic": {"junction": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
                    "vehicle_count": st.integers(0, 10_000),
                    "interval_s": finite(0, 3600, exclude_min=True),
                    "mean_speed_kmh": finite(0, 250)},
        "shuttle": {"route_id": st.just("r-1"), "lat": finite(-90, 90),
                    "lon": finite(-180, 180), "speed_kmh": finite(0, 120),
                    "passengers": st.integers(0, 10), "capacity": st.integers(10, 60),
                    "battery_pct": finite(0, 100),
                    "status": st.sampled_from(["in_service", "charging", "out_of_service"]),
                    "delay_s": finite(-1e6, 1e6), "disengaged": st.booleans()},
    }
    return st.fixed_dictionaries({**common, **fields[kind]})


@FAST
@given(data=st.data(), kind=kinds)
def test_valid_readings_are_always_accepted(data: st.DataObject, kind: str) -> None:
    elements = data.draw(st.lists(valid_element(kind), min_size=1, max_size=5))
    payload = json.dumps(elements).encode()
    assume(len(payload) <= 65536)
    topic = f"city/central-mk/{kind}/s-1"
    out = decode(topic, payload, NOW)
    same_as_careful(topic, payload, out)
    assert out.dead_letters == []
    assert len(out.readings) == len(elements)
    for element, reading in zip(elements, out.readings, strict=True):
        assert reading.ts_ms == element["ts"]
        for name, value in element.items():
            if name != "ts" and isinstance(value, float):
                assert math.isclose(getattr(reading, name), value)
