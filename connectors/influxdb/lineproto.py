"""InfluxDB line protocol: the one encoder for every point citystream writes, built as strings.

- `reading_line`: a raw reading (the `telemetry` bucket), by its kind's schema (below);
- `to_line_protocol`: a `models.records.Record` (KPI points, alerts, sensor quality and
  pipeline counters: the `kpi` bucket), tags sorted, fields in declaration order;
- `pipeline_line`: the `pipeline` point of a `pipeline.counters` record (either form);
- `format_line`: the general builder under `pipeline_line` (tags escaped, fields typed by their
  Python type), with `escape_tag`, `escape_measurement` and `field_text`.

The contract (section 2) says only that the `telemetry` bucket holds "valid raw readings"; this
is their schema. One point per reading, timestamp = the reading's `ts_ms` (write with
``precision=ms``):

    water    tags district, sensor_id            fields volume_m3, flow_l_min, pressure_bar
    energy   tags district, sensor_id            fields energy_kwh, power_kw
    traffic  tags district, junction, sensor_id  fields vehicle_count (int), interval_s,
                                                        mean_speed_kmh, occupancy_pct
    shuttle  tags district, route, sensor_id     fields lat, lon, speed_kmh, passengers (int),
                                                        capacity (int), battery_pct,
                                                        status (string), stop_id (string),
                                                        delay_s, disengaged (bool)

plus `seq` (int) on every kind when the reading has one. Optional fields are left out when the
reading lacks them. `route` is the reading's `route_id`. Each kind declares its schema (`RAW` in
kinds/<kind>.py; a declared feed's from its fields, `kinds.feed.raw_schema`).

Rules that keep the buckets consistent:
- Raw tags come only from validated ids (`district` a slug, the others `[A-Za-z0-9_-]{1,64}`), so
  they never need escaping and cannot explode series cardinality with free text; `status` and
  `stop_id` are therefore fields. A tag value that breaks its pattern is a `RecordError`.
- A field's type never changes: floats are always written as floats (`5.0`, never `5`, even if
  the JSON carried an integer), counts with the `i` suffix, flags as `true`/`false`, strings
  quoted with `"` and `\\` escaped. A value of the wrong type (a bool for a number, a string
  for a count) is a `RecordError`, never coerced.
- Same measurement, tags and timestamp -> same point: replaying a reading overwrites it.
- What line protocol cannot carry is a `RecordError`: a line break anywhere, an empty key or
  tag value, a non-finite float, a point without a field.

Backslashes in keys and tag values: InfluxDB 2.x unescapes only `\\,` `\\=` `\\ ` there and keeps
any other backslash literally (`a\\\\b` is stored as `a\\\\b`, tested on 2.7.12), so such text
cannot round-trip: `escape_tag` and `escape_measurement` (so `format_line` and `pipeline_line`)
refuse it. `to_line_protocol` doubles it instead, as it always has: a record's tags are
validated ids, slugs and window tags that cannot hold one, except `PipelineCounters.instance`,
which the sink writes through `pipeline_line` (so refuses).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from models import kinds
from models.errors import RecordError
from models.raw import PointType, RawSchema
from models.records import PIPELINE_COUNTERS, Record

_SLUG_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CACHE_MAX: Final = 100_000

# What InfluxDB 2.x unescapes in keys and tag values (see the module docstring on backslashes).
_KEY_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": "\\,", " ": "\\ "})
# `to_line_protocol`'s: the same, and a backslash doubled.
_RECORD_KEY_ESCAPES: Final = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_RECORD_MEASUREMENT_ESCAPES: Final = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})

Precision = Literal["s", "ms", "us", "ns"]
_TO_PRECISION: Final[dict[str, tuple[int, int]]] = {
    "s": (1, 1000), "ms": (1, 1), "us": (1000, 1), "ns": (1_000_000, 1)}


class _ValidIds:
    """Tag values already checked against their pattern (bounded memo; ids repeat a lot)."""

    def __init__(self, pattern: re.Pattern[str], what: str) -> None:
        self.pattern = pattern
        self.what = what
        self.seen: set[str] = set()

    def check(self, key: str, value: object) -> str:
        if type(value) is not str or self.pattern.fullmatch(value) is None:
            raise RecordError(f"tag {key}={value!r} is not a valid {self.what}")
        if len(self.seen) >= _CACHE_MAX:
            self.seen.clear()
        self.seen.add(value)
        return value


_SLUGS: Final = _ValidIds(_SLUG_RE, "slug")
_IDS: Final = _ValidIds(_ID_RE, "id")


def _float_text(name: str, value: object) -> str:
    # orjson never yields NaN or infinity, but a float built elsewhere might.
    if type(value) is int:
        try:
            value = float(value)
        except OverflowError:
            raise RecordError(f"field {name}={value!r} does not fit a float") from None
    if type(value) is not float or not math.isfinite(value):
        raise RecordError(f"field {name}={value!r} is not a finite number")
    return repr(value)


def _int_text(name: str, value: object) -> str:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise RecordError(f"field {name}={value!r} is not a 64-bit integer")
    return f"{value}i"


def _bool_text(name: str, value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise RecordError(f"field {name}={value!r} is not a boolean")


def _str_text(name: str, value: object) -> str:
    if type(value) is not str or "\n" in value or "\r" in value:
        raise RecordError(f"field {name}={value!r} is not a string without line breaks")
    return '"' + value.translate(_STRING_ESCAPES) + '"'


_FORMATTERS: Final[dict[PointType, Callable[[str, object], str]]] = {
    "float": _float_text, "int": _int_text, "bool": _bool_text, "str": _str_text}

ReadingLine = Callable[[Mapping[str, Any]], str]


def _builder(schema: RawSchema) -> ReadingLine:
    tags = tuple((f",{tag}=", key, _SLUGS if key == "district" else _IDS)
                 for tag, key in schema.tags)
    fields = tuple((name, f"{name}=", ftype == "float", required, _FORMATTERS[ftype])
                   for name, ftype, required in schema.fields)
    measurement = schema.measurement

    def build(reading: Mapping[str, Any]) -> str:
        value: Any
        head = measurement
        try:
            for prefix, key, valid in tags:
                value = reading.get(key)
                if value not in valid.seen:
                    valid.check(key, value)
                head += prefix + value
        except TypeError:  # an unhashable tag value (a JSON list or object)
            raise RecordError(f"{measurement} reading has a malformed tag value") from None
        out: list[str] = []
        for name, prefix, is_float, required, fmt in fields:
            value = reading.get(name)
            if value is None:
                if required:
                    raise RecordError(f"{measurement} reading has no {name}")
            elif is_float and type(value) is float and value - value == 0.0:
                out.append(prefix + repr(value))  # the common case, checks inlined
            else:
                out.append(prefix + fmt(name, value))
        ts = reading.get("ts_ms")
        if type(ts) is not int:
            raise RecordError(f"{measurement} reading has no integer ts_ms")
        return f"{head} {','.join(out)} {ts}"

    return build


_BUILDERS: dict[tuple[str, int], ReadingLine] = {}


def _builder_of(kind: str) -> ReadingLine | None:
    key = (kind, kinds.generation())
    build = _BUILDERS.get(key)
    if build is None:
        spec = kinds.get(kind)
        if spec is None:
            return None
        build = _BUILDERS[key] = _builder(spec.raw)
    return build


def reading_line(reading: Mapping[str, Any], kind: str | None = None) -> str:
    """One line (no trailing newline) for a reading as decoded from `Reading.to_json()`.

    `kind` is the topic's kind; the reading's own `kind` key, when present, must agree.
    Raises `RecordError` if the reading cannot be a point of the raw schema (missing required
    field, wrong type, invalid tag value, kind mismatch); extra keys are ignored.
    """
    own = reading.get("kind", kind)
    if kind is not None and own != kind:
        raise RecordError(f"a {own!r} reading on the {kind} topic")
    build = _builder_of(own) if type(own) is str else None
    if build is None:
        raise RecordError(f"unknown reading kind {own!r}")
    return build(reading)


def _checked(what: str, text: str) -> str:
    """`text` if line protocol can carry it as a key or tag value: not empty, no line break."""
    if not text:
        raise RecordError(f"{what} is empty")
    if "\n" in text or "\r" in text:
        raise RecordError(f"{what} {text!r} contains a line break, which line protocol cannot "
                          "carry")
    return text


def _faithful(what: str, text: str) -> str:
    """`_checked`, and no backslash (InfluxDB 2.x would store it differently)."""
    if "\\" in _checked(what, text):
        raise RecordError(f"{what} {text!r} contains a backslash, which InfluxDB 2.x cannot "
                          "store faithfully")
    return text


def escape_tag(text: str) -> str:
    """Escape a tag key, tag value or field key (comma, equals sign, space).

    Raises `RecordError` for what InfluxDB cannot store faithfully: empty text, a line break, a
    backslash (InfluxDB 2.x keeps escaping backslashes literally).
    """
    return _faithful("tag or field key or tag value", text).translate(_KEY_ESCAPES)


def escape_measurement(text: str) -> str:
    """Escape a measurement name (comma, space); the same text is refused as in `escape_tag`,
    and a leading `#` (that line would be a comment)."""
    _faithful("measurement", text)
    if text.startswith("#"):
        raise RecordError(f"measurement {text!r} starts with '#', which makes a comment line")
    return text.translate(_MEASUREMENT_ESCAPES)


def field_text(name: str, value: float | int | bool | str) -> str:
    """A field value typed by its Python type: bool, int (`i`, 64-bit), float (always with a
    point or exponent, finite), str (quoted, escaped, no line breaks)."""
    if type(value) is bool:
        return _bool_text(name, value)
    if type(value) is int:
        return _int_text(name, value)
    if type(value) is float:
        return _float_text(name, value)
    return _str_text(name, value)


def format_line(measurement: str, tags: Mapping[str, str],
                fields: Mapping[str, float | int | bool | str], ts_ms: int) -> str:
    """A general line: tags sorted and escaped, fields typed by `field_text`, ms timestamp."""
    if not fields:
        raise RecordError(f"{measurement} point has no field")
    if type(ts_ms) is not int:
        raise RecordError(f"{measurement} timestamp {ts_ms!r} is not an integer")
    head = escape_measurement(measurement) + "".join(
        f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()))
    body = ",".join(f"{escape_tag(k)}={field_text(k, v)}" for k, v in fields.items())
    return f"{head} {body} {ts_ms}"


def _record_key(what: str, text: str) -> str:
    return _checked(what, text).translate(_RECORD_KEY_ESCAPES)


def to_line_protocol(record: Record, precision: Precision = "ms") -> str:
    """One line-protocol line for a record (no trailing newline), tags sorted, fields in
    declaration order (undefined ones left out, `field_text`), timestamp in `precision`.

    Raises `RecordError` for what line protocol cannot carry: line breaks in tags or strings,
    empty tag values, non-finite floats, a record with no defined field. A backslash in a key
    or tag value is doubled (see the module docstring).
    """
    measurement = record.measurement
    if "\n" in measurement or "\r" in measurement:
        raise RecordError(f"measurement {measurement!r} contains a line break, which line "
                          "protocol cannot carry")
    parts = [measurement.translate(_RECORD_MEASUREMENT_ESCAPES)]
    for name, value in sorted(record.tags().items()):
        parts.append(f"{_record_key('tag key', name)}={_record_key(f'tag {name}', value)}")
    fields = record.fields()
    if not fields:
        raise RecordError(f"{record.measurement} point has no defined field")
    field_set = ",".join(f"{_record_key('field key', name)}={field_text(name, value)}"
                         for name, value in fields.items())
    mul, div = _TO_PRECISION[precision]
    return f"{','.join(parts)} {field_set} {record.time_ms * mul // div}"


def pipeline_line(record: Mapping[str, Any]) -> str:
    """The `pipeline` point for a `pipeline.counters` record.

    The record is a JSON object with `component` (an id), `instance` (text without line breaks),
    `ts_ms` and integer counters; the contract's counters that are present become fields, any
    other key (e.g. ingest's `messages`, `rejected_by_reason`) is ignored.
    """
    component = record.get("component")
    if type(component) is not str or _ID_RE.fullmatch(component) is None:
        raise RecordError(f"pipeline component {component!r} is not a valid id")
    instance = record.get("instance")
    if type(instance) is not str:
        raise RecordError(f"pipeline instance {instance!r} is not a string")
    fields: dict[str, float | int | bool | str] = {}
    for name in PIPELINE_COUNTERS:
        value = record.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 0:
            raise RecordError(f"pipeline counter {name}={value!r} is not a count")
        fields[name] = value
    ts_ms = record.get("ts_ms")
    if type(ts_ms) is not int:
        raise RecordError(f"pipeline record has no integer ts_ms ({ts_ms!r})")
    return format_line("pipeline", {"component": component, "instance": instance}, fields,
                       ts_ms)
