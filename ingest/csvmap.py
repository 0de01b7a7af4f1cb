"""CSV exports as contract messages: the mapping that says which column is which.

Meter and counter vendors export readings as CSV, one reading per row. A mapping file (TOML)
tells `citystream import` where each part of a contract message comes from (docs/import.md):

    [columns]                     # field = the CSV column's header text
    sensor_id = "Meter ID"
    ts = "Read at"
    volume_m3 = { column = "Register (L)", scale = 0.001 }   # litres -> m3

    [constants]                   # the same value on every row
    kind = "water"
    district = "bletchley"

    [format]                      # all optional
    delimiter = ";"               # ","
    decimal = ","                 # "."
    encoding = "cp1252"           # "utf-8" (a byte-order mark is skipped)
    skip_lines = 2                # lines before the header: 0
    ts = "%d/%m/%Y %H:%M"         # "contract", "epoch_ms", "epoch_s" or a strptime pattern
    timezone = "Europe/London"    # for a pattern without %z

Names are the contract's payload fields (section 1, or a declared feed's), so units are the ones
the names carry (`volume_m3` in cubic metres): `scale` multiplies a number column into that
unit. Besides the fields: `kind` and `district` (the topic's), or `topic` (a whole
`city/<district>/<kind>/<sensor_id>` column, e.g. from an MQTT historian; `sensor_id` then comes
from its own column if one is mapped, else from the topic), and `received_at` (when the vendor's
head-end received the reading, same format as `ts`: with it a reading more than the late-data
horizon older than its receipt is `too_old`, as in live ingest).

Each row becomes one message: topic `city/<district>/<kind>/<sensor_id>`, payload the JSON object
of the row's mapped cells, typed by the kind's fields (numbers, integers, booleans, text; an
empty cell is left out), `ts` as epoch milliseconds. `ingest.decode` then validates it exactly
as an MQTT message, so a bad row gets the contract's reason: a district or sensor id that cannot
be in a topic is `bad_topic`, a row over 64 KiB `too_large`, a row that is not CSV (wrong
number of cells, bytes not in the encoding) `invalid_json`, then `schema` (`"twelve"`, a `ts`
not in the mapping's format), `non_finite` (`NaN`, `inf`), `out_of_range`, `sensor_mismatch`
(a `topic` column whose sensor differs from the `sensor_id` column), `future_timestamp`,
`too_old`. A mapping that cannot work (an unknown field, a required field not mapped, a
column missing from the header) stops the import before it starts, naming the key.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models import kinds
from models.deadletter import DeadLetter, Reason
from models.errors import CitystreamError
from models.raw import PointType
from models.readings import parse_ts

META: Final = frozenset({"topic", "kind", "district", "received_at"})
"""Mapping names that are not payload fields: where the topic and the receipt time come from."""
COMMON: Final[dict[str, PointType]] = {"sensor_id": "str", "seq": "int"}
TIME_FORMATS: Final = ("contract", "epoch_ms", "epoch_s")
"""`format.ts` besides a strptime pattern: as the contract writes `ts` (RFC 3339 with an
offset, or integer epoch milliseconds), or epoch milliseconds or seconds (may be fractional)."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_TRUE: Final = frozenset({"true", "yes", "1"})
_FALSE: Final = frozenset({"false", "no", "0"})
_CACHE_MAX: Final = 65_536


class MappingError(CitystreamError):
    """A CSV mapping cannot work; the message names the file, key or column to fix."""


class Column(BaseModel):
    """A field read from a column, times `scale` (a number field's unit conversion)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    column: Annotated[str, Field(min_length=1)]
    scale: float | None = Field(None, allow_inf_nan=False)


class CsvFormat(BaseModel):
    """How the file is written."""

    model_config = ConfigDict(extra="forbid", strict=True)

    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    quote: Annotated[str, Field(min_length=1, max_length=1)] = '"'
    decimal: Literal[".", ","] = "."
    encoding: str = "utf-8"
    skip_lines: Annotated[int, Field(ge=0)] = 0
    ts: Annotated[str, Field(min_length=1)] = "contract"
    timezone: str | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, cp1252, latin-1)") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as UTC or "
                                 "Europe/London)") from None
        return value

    @field_validator("ts")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in TIME_FORMATS and "%" not in value:
            raise ValueError(f"{value!r} is not {', '.join(TIME_FORMATS)} or a strptime "
                             "pattern such as %d/%m/%Y %H:%M")
        return value


class CsvMapping(BaseModel):
    """The mapping file: `[columns]`, `[constants]`, `[format]` (module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    columns: dict[str, str | Column]
    constants: dict[str, str | int | float | bool] = Field(default_factory=dict)
    format: CsvFormat = Field(default_factory=CsvFormat)

    def column(self, name: str) -> Column | None:
        source = self.columns.get(name)
        return Column(column=source) if isinstance(source, str) else source


def load_mapping(path: Path) -> CsvMapping:
    """Read and check a mapping file against the registered kinds (load the city first);
    `MappingError` names what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"cannot read the CSV mapping {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"CSV mapping {path} is not TOML: {exc}") from None
    return parse_mapping(data, str(path))


def parse_mapping(data: dict[str, Any], where: str = "the CSV mapping") -> CsvMapping:
    """`load_mapping` for a parsed TOML document."""
    try:
        mapping = CsvMapping.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise MappingError(f"{where}: {key}: {first['msg']}") from None
    _check(mapping, where)
    return mapping


def field_types(kind: str) -> dict[str, PointType] | None:
    """The payload fields of a registered kind and their JSON types (its raw-point schema:
    tags are text), besides `ts`; None for a kind that is not registered."""
    spec = kinds.get(kind)
    if spec is None:
        return None
    types: dict[str, PointType] = dict(COMMON)
    for _tag, key in spec.raw.tags:
        types.setdefault(key, "str")
    types.update(spec.raw.field_types())
    types.pop("district", None)
    return types


def required_fields(kind: str) -> set[str]:
    spec = kinds.get(kind)
    assert spec is not None
    tags = {key for _tag, key in spec.raw.tags if key != "district"}
    return tags | {name for name, _type, required in spec.raw.fields if required} | {"ts"}


def _check(mapping: CsvMapping, where: str) -> None:
    both = set(mapping.columns) & set(mapping.constants)
    if both:
        raise MappingError(f"{where}: {', '.join(sorted(both))} is in both [columns] and "
                           "[constants]; keep one")
    given = set(mapping.columns) | set(mapping.constants)
    if "ts" not in mapping.columns:
        raise MappingError(f"{where}: [columns] needs ts, the column with each reading's time")
    for name in ("topic", "received_at"):
        if name in mapping.constants:
            raise MappingError(f"{where}: {name} must be a column, not a constant")
    if "topic" in given:
        clash = {"kind", "district"} & given
        if clash:
            raise MappingError(f"{where}: with a topic column, {' and '.join(sorted(clash))} "
                               "come from the topic; remove them")
    else:
        missing = [n for n in ("kind", "district", "sensor_id") if n not in given]
        if missing:
            raise MappingError(f"{where}: map {', '.join(missing)} (a column or a constant), "
                               "or a topic column")
    fmt = mapping.format
    if fmt.ts not in TIME_FORMATS and "%z" not in fmt.ts \
            and fmt.timezone is None:
        raise MappingError(f"{where}: format.ts {fmt.ts!r} has no %z: set format.timezone "
                           "(UTC, Europe/London ...) to say which clock the times are in")
    kind = mapping.constants.get("kind")
    fields = set(given) - META - {"ts"}
    if kind is not None:
        types = field_types(str(kind))
        if types is None:
            raise MappingError(f"{where}: constants.kind {kind!r} is not a kind of this city "
                               f"({', '.join(kinds.names())}; feeds come from the city file)")
        unknown = sorted(fields - set(types))
        if unknown:
            raise MappingError(f"{where}: {', '.join(unknown)} is not a field of {kind} "
                               f"readings (fields: {', '.join(sorted(types))})")
        missing = sorted(required_fields(str(kind)) - given - {"sensor_id"})
        if missing:
            raise MappingError(f"{where}: {kind} readings need {', '.join(missing)}: map "
                               "them in [columns] or [constants]")
        for name in fields:
            source = mapping.column(name)
            if source is not None and source.scale is not None and types[name] != "float":
                raise MappingError(f"{where}: columns.{name}: scale applies to number fields; "
                                   f"{name} is {types[name]}")
    else:
        known = set(COMMON).union(*((field_types(k) or {}) for k in kinds.names()))
        unknown = sorted(fields - known)
        if unknown:
            raise MappingError(f"{where}: {', '.join(unknown)} is not a field of any kind of "
                               "this city")


# -- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadInput:
    """A CSV row or JSON line that is not a message (wrong cell count, bytes not in the
    encoding, not JSON, no topic, a time that cannot be read): its dead letter is made by
    `letter`."""

    reason: Reason
    detail: str
    raw: bytes
    field: str | None = None

    def letter(self, topic: str, received_at_ms: int) -> DeadLetter:
        return DeadLetter(reason=self.reason, detail=self.detail, field=self.field,
                          topic=topic, raw=self.raw, received_at_ms=received_at_ms)


Row = list[str]


class RowReader:
    """One CSV file read with a mapping: the header checked, then rows as
    (topic, cells or `BadInput`, first line, start offset), resumable from a byte offset."""

    def __init__(self, path: Path, mapping: CsvMapping, opener: Any) -> None:
        self.path = path
        self.mapping = mapping
        self.opener = opener  # path -> binary file object (plain or gzip)
        fmt = mapping.format
        self._dialect = {"delimiter": fmt.delimiter, "quotechar": fmt.quote}
        self.header, self.data_offset, self.data_line = self._read_header()
        index: dict[str, int] = {}
        for i, name in enumerate(self.header):
            index.setdefault(name, i)
        self.width = len(self.header)
        self._sources: dict[str, int] = {}
        for name in mapping.columns:
            source = mapping.column(name)
            assert source is not None
            if source.column not in index:
                raise MappingError(
                    f"{path}: column {source.column!r} (for {name}) is not in the header; "
                    f"it has {', '.join(repr(h) for h in self.header) or 'no columns'}")
            if self.header.count(source.column) > 1:
                raise MappingError(f"{path}: column {source.column!r} (for {name}) appears "
                                   "twice in the header")
            self._sources[name] = index[source.column]
        self._convert = Converter(mapping)

    def _read_header(self) -> tuple[list[str], int, int]:
        with self.opener(self.path) as f:
            lines = _Lines(f, self.mapping.format.encoding)
            for _ in range(self.mapping.format.skip_lines):
                if lines.next_raw() is None:
                    raise MappingError(f"{self.path}: ends before the header "
                                       f"(format.skip_lines = {self.mapping.format.skip_lines})")
            try:
                header = next(csv.reader(lines, **self._dialect))  # type: ignore[arg-type]
            except StopIteration:
                raise MappingError(f"{self.path}: no header line") from None
            except csv.Error as exc:
                raise MappingError(f"{self.path}: the header is not CSV: {exc}") from None
            if lines.bad:
                raise MappingError(f"{self.path}: the header is not "
                                   f"{self.mapping.format.encoding} (format.encoding)")
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            return [h.strip() for h in header], lines.offset, lines.line

    def rows(self, offset: int, line: int) -> Iterator[tuple[str, Row | BadInput, int, int]]:
        """Rows from `offset` (0: the first after the header), each as (topic, cells, its
        first line number, its start offset); a row that is not CSV comes as a `BadInput`."""
        if offset < self.data_offset:
            offset, line = self.data_offset, self.data_line
        with self.opener(self.path) as f:
            f.seek(offset)
            lines = _Lines(f, self.mapping.format.encoding, offset, line)
            reader = csv.reader(lines, **self._dialect)  # type: ignore[arg-type]
            width, topic_of = self.width, self._convert.topic
            while True:
                start, first = lines.offset, lines.line + 1
                lines.begin_row()
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield "", BadInput(Reason.INVALID_JSON, f"row is not CSV: {exc}",
                                     lines.row_bytes()), first, start
                    continue
                if not cells:
                    continue  # a blank line is no row
                if lines.bad:
                    yield "", BadInput(Reason.INVALID_JSON, "row has bytes that are not "
                                     f"{self.mapping.format.encoding} (format.encoding)",
                                     lines.row_bytes()), first, start
                elif len(cells) != width:
                    yield "", BadInput(Reason.INVALID_JSON, f"row has {len(cells)} cells, the "
                                     f"header {width}", lines.row_bytes()), first, start
                else:
                    yield topic_of(cells, self._sources), cells, first, start

    def message(self, cells: Row) -> tuple[bytes, int | None] | BadInput:
        """A row's payload and receipt time (None: not mapped), or why it is no message."""
        return self._convert.payload(cells, self._sources)


class _Lines:
    """Binary lines as text for `csv.reader`, counting bytes and lines: `offset` is where the
    next line starts. `bad` marks a row with bytes not in the encoding (kept escaped)."""

    def __init__(self, f: IO[bytes], encoding: str, offset: int = 0, line: int = 0) -> None:
        self.f = f
        self.encoding = encoding
        self.offset = offset
        self.line = line
        self.bad = False
        self._row: list[bytes] = []

    def begin_row(self) -> None:
        self.bad = False
        self._row = []

    def row_bytes(self) -> bytes:
        return b"".join(self._row).rstrip(b"\r\n")

    def next_raw(self) -> bytes | None:
        raw = self.f.readline()
        if not raw:
            return None
        self.offset += len(raw)
        self.line += 1
        return raw

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        self._row.append(raw)
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError:
            self.bad = True
            return raw.decode(self.encoding, "surrogateescape")


class Converter:
    """Cells -> topic, payload and receipt time, by the mapping (typed per the row's kind)."""

    def __init__(self, mapping: CsvMapping) -> None:
        self.mapping = mapping
        fmt = mapping.format
        self.decimal = fmt.decimal
        self.constants = {k: v for k, v in mapping.constants.items() if k not in META}
        self.kind = mapping.constants.get("kind")
        self.district = mapping.constants.get("district")
        self.sensor = mapping.constants.get("sensor_id")
        self.fields = [(name, source.scale) for name in mapping.columns
                       if name not in META and name != "ts"
                       and (source := mapping.column(name)) is not None]
        self._types: dict[str, dict[str, PointType] | None] = {}
        self._times = _TimeParser(fmt.ts, fmt.timezone)

    def topic(self, cells: Row, sources: dict[str, int]) -> str:
        if "topic" in sources:
            return cells[sources["topic"]].strip()
        kind = cells[sources["kind"]].strip() if "kind" in sources else self.kind
        district = (cells[sources["district"]].strip() if "district" in sources
                    else self.district)
        sensor = cells[sources["sensor_id"]].strip() if "sensor_id" in sources else self.sensor
        return f"city/{district}/{kind}/{sensor}"

    def _types_of(self, kind: str) -> dict[str, PointType] | None:
        if kind not in self._types:
            self._types[kind] = field_types(kind)
        return self._types[kind]

    def payload(self, cells: Row, sources: dict[str, int]) -> tuple[bytes, int | None] | BadInput:
        body: dict[str, Any] = dict(self.constants)
        if "topic" in sources:
            parts = cells[sources["topic"]].strip().split("/")
            kind = parts[2] if len(parts) == 4 else ""
            if "sensor_id" not in sources and "sensor_id" not in self.constants \
                    and len(parts) == 4:
                body["sensor_id"] = parts[3]
        else:
            kind = str(cells[sources["kind"]].strip() if "kind" in sources else self.kind)
        body.pop("kind", None)
        body.pop("district", None)
        types = self._types_of(kind) or {}
        finite = True
        for name, scale in self.fields:
            cell = cells[sources[name]].strip()
            if not cell:
                continue
            value = self._value(cell, types.get(name, "float" if scale else "str"), scale)
            if type(value) is float and not math.isfinite(value):
                finite = False
            body[name] = value
        ts_cell = cells[sources["ts"]].strip()
        ts = self._times.ms(ts_cell)
        if ts is None:
            return self._bad_time("ts", ts_cell, cells)
        body["ts"] = ts
        received: int | None = None
        if "received_at" in sources:
            cell = cells[sources["received_at"]].strip()
            if cell:  # empty: not known
                received = self._times.ms(cell)
                if received is None:
                    return self._bad_time("received_at", cell, cells)
        if finite:
            try:
                return orjson.dumps(body), received
            except orjson.JSONEncodeError:
                pass  # an integer beyond 64 bits: the stdlib writes it, decode judges it
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogateescape"), received

    def _bad_time(self, name: str, cell: str, cells: Row) -> BadInput:
        fmt = self.mapping.format
        return BadInput(Reason.SCHEMA, f"{name} {cell!r} is not a time in the mapping's "
                      f"format.ts ({fmt.ts})", _row_text(cells, fmt.delimiter), name)

    def _value(self, cell: str, kind: PointType, scale: float | None) -> Any:
        if kind == "float":
            number = _number(cell, self.decimal)
            if number is None:
                return cell
            return number * scale if scale is not None else number
        if kind == "int":
            try:
                return int(cell)
            except ValueError:
                number = _number(cell, self.decimal)
                return cell if number is None else number
        if kind == "bool":
            lowered = cell.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        return cell


def _number(cell: str, decimal: str) -> float | None:
    text = cell.replace(decimal, ".") if decimal != "." else cell
    try:
        return float(text)
    except ValueError:
        return None


def _row_text(cells: Row, delimiter: str) -> bytes:
    return delimiter.join(cells).encode("utf-8", "surrogateescape")


class _TimeParser:
    """A cell in the mapping's time format -> epoch ms, None if it is not one. RFC 3339 is read
    by `models.readings.parse_ts`, the decoder's own reading of a text `ts` (a space for the
    `T`, which RFC 3339 allows, is taken too)."""

    def __init__(self, fmt: str, timezone: str | None) -> None:
        self.fmt = fmt
        self.zone = ZoneInfo(timezone) if timezone else None
        self._cache: dict[str, int | None] = {}

    def ms(self, cell: str) -> int | None:
        cached = self._cache.get(cell, -1)
        if cached != -1:
            return cached
        value = self._parse(cell)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[cell] = value
        return value

    def _parse(self, cell: str) -> int | None:
        try:
            if self.fmt == "contract":
                if cell.isdigit():
                    return int(cell)
                if len(cell) > 10 and cell[10] == " ":
                    cell = f"{cell[:10]}T{cell[11:]}"  # RFC 3339 allows a space there
                return parse_ts(cell)
            if self.fmt == "epoch_ms":
                number = Decimal(cell)
                return int(number) if number == number.to_integral_value() else None
            if self.fmt == "epoch_s":
                return int((Decimal(cell) * 1000).to_integral_value())
            when = datetime.strptime(cell, self.fmt)
        except (ValueError, InvalidOperation, ArithmeticError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.zone or UTC)
        return (when - _EPOCH) // _MS
