"""Published rows and their formats: pure functions, no I/O.

`rows(dataset, points, min_meters)` turns KPI points into the published rows (suppression
applied, fields typed, ordered by window end, then entity, then the other tags); `to_csv` writes
them as RFC 4180 CSV (CRLF line ends, a header, booleans `true`/`false`, a missing field empty),
`to_json` as a JSON array of objects with the same keys in the same order (a missing field
`null`). `window_end` is RFC 3339 UTC (`2026-10-01T00:15:00Z`).

Also here: strict RFC 3339 parsing of the `from`/`to` parameters (`parse_time`).
"""

from __future__ import annotations

import calendar
import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from models.errors import CitystreamError
from opendata.datasets import Column, Dataset

Value = float | int | bool | str | None
Row = dict[str, Value]

NS_PER_MS: Final = 1_000_000
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")
MIN_NS: Final = 0  # 1970-01-01: no KPI point is older
MAX_NS: Final = 9_223_372_036_854_775_807 - 1  # InfluxDB's (and Flux's) latest time


@dataclass(frozen=True)
class Point:
    """One KPI point as read from InfluxDB: its measurement, window end, tags and fields."""

    measurement: str
    time_ms: int
    tags: Mapping[str, str]
    fields: Mapping[str, Value]


class TimeError(CitystreamError, ValueError):
    """A `from`/`to` value is not an RFC 3339 date-time; the message says what is expected."""


def parse_time(text: str, name: str) -> int:
    """An RFC 3339 date-time with a UTC offset (`2026-10-01T00:00:00Z`,
    `2026-10-01T01:00:00+01:00`, fractions of a second allowed) as epoch nanoseconds.

    A `+` sent unencoded in a query string arrives as a space; a space in the offset's place is
    read as `+`."""
    if len(text) > 40:
        raise TimeError(f"`{name}` is not an RFC 3339 date-time (too long)")
    fixed = text
    if len(text) > 6 and text[-6] == " ":
        fixed = text[:-6] + "+" + text[-5:]
    match = _RFC3339.fullmatch(fixed)
    if match is None:
        raise TimeError(f"`{name}` must be an RFC 3339 date-time with an offset, e.g. "
                        "2026-10-01T00:00:00Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute),
                          min(int(second), 59), tzinfo=UTC)
    except ValueError:
        raise TimeError(f"`{name}` is not a valid date and time") from None
    if int(off_h or 0) > 23 or int(off_m or 0) > 59:
        raise TimeError(f"`{name}` has an invalid UTC offset")
    offset_s = 0 if zulu else (int(off_h) * 3600 + int(off_m) * 60) * (1 if sign == "+" else -1)
    seconds = calendar.timegm(moment.utctimetuple()) - offset_s
    ns = seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
    if not MIN_NS <= ns <= MAX_NS:
        raise TimeError(f"`{name}` is outside 1970-01-01 .. 2262-04-11")
    return ns


def format_time(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC, with milliseconds only when there are any."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def format_time_ns(ns: int) -> str:
    """Epoch nanoseconds as RFC 3339 UTC (fraction only when there is one)."""
    moment = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = ns % 1_000_000_000
    return f"{moment}.{fraction:09d}".rstrip("0") + "Z" if fraction else f"{moment}Z"


def _typed(column: Column, value: Value) -> Value:
    """A field value as its column's type (InfluxDB keeps each field's type; this only guards
    against a point written by something else)."""
    if value is None:
        return None
    if column.type == "boolean":
        return value if isinstance(value, bool) else None
    if column.type == "string":
        return str(value)
    if isinstance(value, bool | str):
        return None
    if column.type == "integer":
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def rows(dataset: Dataset, points: Iterable[Point], min_meters: int) -> list[Row]:
    """The published rows of `points` (see module docstring)."""
    keyed: list[tuple[tuple[Any, ...], Row]] = []
    for point in points:
        suppressed = dataset.suppressed(point.tags, point.fields, min_meters)
        row: Row = {"window_end": format_time(point.time_ms)}
        for tag in dataset.tags:
            row[tag] = point.tags.get(tag, "")
        row["window"] = point.tags.get("window", dataset.window)
        for column in dataset.fields:
            row[column.name] = None if suppressed else _typed(column,
                                                               point.fields.get(column.name))
        row["suppressed"] = suppressed
        key = (point.time_ms, *(str(point.tags.get(t, "")) for t in dataset.sort_tags))
        keyed.append((key, row))
    keyed.sort(key=lambda kv: kv[0])
    return [row for _, row in keyed]


def _cell(value: Value) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(columns: Sequence[str], table: Iterable[Row]) -> bytes:
    """RFC 4180 CSV: a header line, then one line per row, CRLF line ends, UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    for row in table:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue().encode("utf-8")


def to_json(table: Sequence[Row]) -> bytes:
    """The rows as a JSON array of objects (keys in column order)."""
    return orjson.dumps(table)
