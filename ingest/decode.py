"""MQTT message -> validated readings and dead letters. Never raises: errors are data.

Checks run in this order and the first failure decides the reason (docs/contract.md, 1.4):

message: bad_topic -> too_large -> invalid_json (not UTF-8, not JSON, top level neither an
object nor a non-empty array). One dead letter with `index` None and the whole payload as `raw`
(for too_large: its first `max_bytes` bytes).

reading (each array element, or the single object): element not an object -> schema; then
schema -> non_finite -> out_of_range (over all fields) -> sensor_mismatch -> future_timestamp ->
too_old. Each bad element is its own dead letter; the good elements of the same array are kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from models import kinds
from models.deadletter import DeadLetter, Reason
from models.readings import BaseReading, topic_context

_SCHEMA, _NON_FINITE, _OUT_OF_RANGE = Reason.SCHEMA, Reason.NON_FINITE, Reason.OUT_OF_RANGE
_RANGE_ERRORS: Final = frozenset({
    "greater_than", "greater_than_equal", "less_than", "less_than_equal",
    "passengers_over_capacity"})
_NUMBER_ERRORS: Final = frozenset({"int_type", "float_type", "int_from_float"})
_RANK: Final = {_SCHEMA: 0, _NON_FINITE: 1, _OUT_OF_RANGE: 2}
_INT_MIN, _UINT_END = -(2**63), 2**64


class _Topic(NamedTuple):
    """What a valid topic means to the decoder, worked out once per topic (topics repeat a
    lot): its parts, the validation context and the kind's reading model."""

    district: str
    kind: str
    sensor_id: str
    context: dict[str, str]  # read by the validators, never changed
    model: type[BaseReading]


_TOPICS: dict[str, _Topic | None] = {}
_TOPICS_MAX: Final = 65_536
_topics_generation = -1


def _parse_topic(topic: str) -> _Topic | None:
    """`kinds.parse_topic` and what follows from it, memoised per registry generation."""
    global _topics_generation
    generation = kinds.generation()
    if generation != _topics_generation:
        _TOPICS.clear()
        _topics_generation = generation
    try:
        return _TOPICS[topic]
    except KeyError:
        pass
    parsed = kinds.parse_topic(topic)
    found = None
    if parsed is not None:
        model = kinds.reading_type(parsed[1])
        assert model is not None  # parse_topic names registered kinds only
        found = _Topic(*parsed, topic_context(parsed[0]), model)
    if len(_TOPICS) >= _TOPICS_MAX:
        _TOPICS.clear()
    _TOPICS[topic] = found
    return found


@dataclass(slots=True)
class Decoded:
    """What one MQTT message became: accepted readings and dead letters, in payload order."""

    readings: list[BaseReading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def decode(topic: str, payload: bytes, received_at_ms: int, *, horizon_s: int = 86400,
           max_future_s: int = 300, max_bytes: int = 65536) -> Decoded:
    """Validate one MQTT message against the contract. Never raises, whatever the input.

    Every element of an array payload ends up either in `readings` or in `dead_letters`; a
    message-level failure gives exactly one dead letter and no readings.
    """
    try:
        return _decode(topic, payload, received_at_ms, horizon_s * 1000, max_future_s * 1000,
                       max_bytes)
    except Exception as exc:  # a bug must not become a poison message; keep the input
        return Decoded([], [_letter(Reason.SCHEMA, f"decoder error: {exc!r}", "$", topic, payload,
                                    received_at_ms, None)])


def _decode(topic: str, payload: bytes, received_at_ms: int, horizon_ms: int,
            max_future_ms: int, max_bytes: int) -> Decoded:
    parsed = _parse_topic(topic) if type(topic) is str else None
    if parsed is None:
        return _reject(Reason.BAD_TOPIC, "topic is not city/<district>/<kind>/<sensor_id>",
                       topic, payload, received_at_ms)
    if len(payload) > max_bytes:
        # Only the first `max_bytes` are kept: a dead letter must stay small enough for Kafka
        # whatever a gateway sends (a 10 MB payload once wedged ingest's produce loop).
        return _reject(Reason.TOO_LARGE, f"payload is {len(payload)} bytes, limit {max_bytes}; "
                       f"raw holds the first {max_bytes}", topic, payload[:max_bytes],
                       received_at_ms)
    sensor_id, context = parsed.sensor_id, parsed.context
    oldest, newest = received_at_ms - horizon_ms, received_at_ms + max_future_ms
    readings = _fast(payload, parsed.model, context)
    if readings is not None:
        for r in readings:
            if r.sensor_id != sensor_id or not oldest <= r.ts_ms <= newest:
                break
        else:
            return Decoded(readings, [])
    return _careful(topic, payload, received_at_ms, parsed.kind, context, sensor_id, oldest,
                    newest)


def _fast(payload: bytes, model: type[BaseReading], context: dict[str, str]
          ) -> list[BaseReading] | None:
    """Parse and validate in pydantic-core in one go; None unless every reading is valid.

    Only a shortcut: whenever it says None, `_careful` decides, so the outcome never depends
    on which JSON parser accepted what. (The model's own validator is called directly:
    `model_validate_json` adds nothing for these arguments but a Python call.)
    """
    head = payload[:1]
    if head not in (b"{", b"["):
        head = bytes(payload).lstrip()[:1]
    try:
        if head == b"{":
            return [model.__pydantic_validator__.validate_json(
                payload, context=context, by_alias=True, by_name=False)]
        if head == b"[":
            return kinds.list_adapter(model).validate_json(
                payload, context=context, by_alias=True, by_name=False) or None
    except (ValidationError, TypeError):
        return None
    return None


def _careful(topic: str, payload: bytes, received_at_ms: int, kind: str,
             context: dict[str, str], sensor_id: str, oldest: int, newest: int) -> Decoded:
    """Element by element, in contract order, turning every failure into a dead letter."""
    lenient = False
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        doc = _loads_lenient(payload)
        if doc is None:
            return _reject(Reason.INVALID_JSON, str(exc), topic, payload, received_at_ms)
        lenient = True
    single = type(doc) is dict
    if single:
        elements: list[Any] = [doc]
    elif type(doc) is list and doc:
        elements = doc
    else:
        what = "an empty array" if type(doc) is list else f"a JSON {_json_type(doc)}"
        return _reject(Reason.INVALID_JSON, f"top level is {what}, not an object or array",
                       topic, payload, received_at_ms)

    model = kinds.reading_type(kind)
    assert model is not None
    readings: list[BaseReading] = []
    letters: list[DeadLetter] = []
    for i, element in enumerate(elements):
        problem: tuple[Reason, str, str | None] | None = None
        if type(element) is not dict:
            problem = (_SCHEMA, f"element is a JSON {_json_type(element)}, not an object",
                       f"[{i}]")
        else:
            data = element
            if "kind" in data:  # not a payload field: ignored like any unknown one
                data = {k: v for k, v in data.items() if k != "kind"}
            try:
                reading = model.model_validate(data, context=context, by_alias=True,
                                               by_name=False)
            except ValidationError as exc:
                problem = _classify(exc, "" if single else f"[{i}].")
            else:
                ts = reading.ts_ms
                if reading.sensor_id != sensor_id:
                    problem = (Reason.SENSOR_MISMATCH, f"payload sensor_id "
                               f"{reading.sensor_id!r} is not the topic's {sensor_id!r}", None)
                elif ts > newest:
                    problem = (Reason.FUTURE_TIMESTAMP, f"ts is {ts - received_at_ms} ms after "
                               f"receipt (limit {newest - received_at_ms})", None)
                elif ts < oldest:
                    problem = (Reason.TOO_OLD, f"ts is {received_at_ms - ts} ms before receipt "
                               f"(horizon {received_at_ms - oldest})", None)
                else:
                    readings.append(reading)
        if problem is not None:
            reason, detail, path = problem
            letters.append(_letter(reason, detail, path, topic,
                                   payload if single else _dumps(element, lenient),
                                   received_at_ms, None if single else i))
    return Decoded(readings, letters)


def _classify(exc: ValidationError, prefix: str) -> tuple[Reason, str, str]:
    """The contract reason of a validation failure: schema first, then non_finite, out_of_range.

    Errors are grouped by field (a union such as `ts` reports one error per alternative).
    """
    by_field: dict[str, list[ErrorDetails]] = {}
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if loc:
            name = str(loc[0])
        elif err["type"] == "passengers_over_capacity":
            name = "passengers"
        else:
            name = ""
        by_field.setdefault(name, []).append(err)
    best: tuple[Reason, str, list[ErrorDetails]] | None = None
    for name, errors in by_field.items():
        reason = _reason_of(errors)
        if best is None or _RANK[reason] < _RANK[best[0]]:
            best = (reason, name, errors)
    assert best is not None
    reason, name, errors = best
    detail = _describe(name, errors)
    if len(by_field) > 1:
        detail += f" (and {len(by_field) - 1} more)"
    return reason, detail, (prefix + name if name else prefix.rstrip(".") or "$")


def _describe(name: str, errors: list[ErrorDetails]) -> str:
    if len(errors) == 1:
        return errors[0]["msg"]
    for err in errors:
        if err["type"] == "value_error":
            return err["msg"].removeprefix("Value error, ")
    if name == "ts":
        return "ts must be integer epoch milliseconds or an RFC 3339 date-time with offset"
    return "; ".join(err["msg"] for err in errors)


def _reason_of(errors: list[ErrorDetails]) -> Reason:
    types = {err["type"] for err in errors}
    value = errors[0].get("input")
    if (type(value) is float and not math.isfinite(value)
            and ("finite_number" in types or types & _NUMBER_ERRORS)):
        return _NON_FINITE
    if types <= _RANGE_ERRORS:
        return _OUT_OF_RANGE
    return _SCHEMA


def _reject(reason: Reason, detail: str, topic: str, payload: bytes,
            received_at_ms: int) -> Decoded:
    return Decoded([], [_letter(reason, detail, None, topic, payload, received_at_ms, None)])


def _letter(reason: Reason, detail: str, path: str | None, topic: Any, raw: Any,
            received_at_ms: int, index: int | None) -> DeadLetter:
    return DeadLetter(reason=reason, detail=_clean_text(detail), field=path,
                      topic=_clean_text(topic), raw=_as_bytes(raw),
                      received_at_ms=received_at_ms, index=index)


def _clean_text(value: Any) -> str:
    """`value` as a string that any UTF-8 encoder accepts (lone surrogates escaped)."""
    text = value if isinstance(value, str) else repr(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    try:
        return bytes(raw)
    except (TypeError, ValueError):
        return repr(raw).encode("utf-8", "backslashreplace")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _dumps(element: Any, lenient: bool) -> bytes:
    """An array element as compact JSON (stdlib when it may hold NaN or huge integers)."""
    if lenient:
        return json.dumps(element, separators=(",", ":"), ensure_ascii=False).encode()
    return orjson.dumps(element)


def _parse_int(text: str) -> int | float:
    # Same as orjson: an integer outside the 64-bit range is read as a (possibly infinite) float.
    if len(text) <= 20:
        value = int(text)
        if _INT_MIN <= value < _UINT_END:
            return value
    return float(text)


def _loads_lenient(payload: bytes) -> Any:
    """Parse what orjson refused only when the reason is a non-finite number, else None.

    The stdlib accepts NaN, Infinity and -Infinity literals and overflows 1e999 to inf; those
    readings then fail as `non_finite`, which says more than `invalid_json`.
    """
    try:
        doc = json.loads(bytes(payload).decode("utf-8"), parse_int=_parse_int)
    except (ValueError, RecursionError):
        return None
    non_finite = False
    stack = [doc]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is float:
            non_finite = non_finite or not math.isfinite(value)
        elif kind is str:
            if not value.isascii() and not _encodable(value):
                return None
        elif kind is list:
            stack.extend(value)
        elif kind is dict:
            for key, item in value.items():
                if not key.isascii() and not _encodable(key):
                    return None
                stack.append(item)
    return doc if non_finite else None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
