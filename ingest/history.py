"""Past readings from files, as the messages live ingest would have received (`citystream import`).

Three formats, told apart by the file name (`.gz` for gzip on top of either):

- `*.csv`: a vendor's export, one reading per row, read with a mapping (`ingest.csvmap`);
- `*.jsonl`, `*.ndjson`, `*.json`: JSON lines. A line is one message: `{"topic": ...,
  "payload": <the reading object or array>}`, or `"payload_b64"` for the exact bytes, or the
  reading's own fields beside `"topic"` (a flat line). The simulator's recordings
  (`citystream sim --record`, docs/recording.md) are such lines.

A message may say when it was received: `"received_at"` (RFC 3339 or epoch ms; a recording's
`"sim_time"`, its publish time, counts as that). Then it is validated exactly as live ingest
would have validated it then: more than the late-data horizon older than its receipt is
`too_old`, more than 5 minutes ahead `future_timestamp`. Without one, no age limit applies (the
live horizon is about the wall clock, and these readings are history) and the future is the
import's start.

Messages keep the order of the files as given and of the lines in each, as live readings keep
their arrival order: the KPI engine then applies section 3 of the contract to them (dedupe,
register ordering, late corrections, the event-time horizon) as the worker would have.

`Inputs` reads the files as one stream of `Item`s with a `Position` to resume from, and
`Partitioner` says which of the import's parallel partitions owns a message.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, cast

import orjson

from ingest.csvmap import BadInput, CsvMapping, RowReader
from models import kinds
from models.deadletter import Reason
from models.errors import CitystreamError
from models.readings import parse_ts

JSON_SUFFIXES: Final = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES: Final = (".csv",)
RECEIPT_KEYS: Final = ("received_at", "received_at_ms", "sim_time")
ENVELOPE_KEYS: Final = frozenset({"topic", "payload", "payload_b64", *RECEIPT_KEYS})
# A line as `sensors_sim.recording.Recorder` writes it: topic, payload and receipt without a
# JSON parse (every partition reads every line, and decodes only its own). Other lines, and
# any that does not match exactly, are parsed as JSON. The topic (at most once per topic) and
# the base64 (by `a2b_base64` in strict mode) are checked apart: a character class scanned by
# the regular expression costs more than the rest of reading the line.
_RECORDING_HEAD: Final = re.compile(rb'\{"seq":\d+,"topic":"([^"]*)"')
_RECORDING_TAIL: Final = re.compile(
    rb',"payload_b64":"([^"]*)","qos":\d+,"sim_time":"([0-9A-Za-z:.+-]*)"')
_TOPIC_CHARS: Final = re.compile(rb"[!#-\[\]-~]*")  # printable ASCII but space, '"' and '\'
_HEADS_MAX: Final = 1 << 20
_FINGERPRINT_BYTES: Final = 1 << 20
_WEIGHT_CAP: Final = 2048


class HistoryError(CitystreamError):
    """An import cannot start or go on: an unreadable input, a state that belongs to other
    inputs, InfluxDB refusing the import's token; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where an import stands: the next message is message `index` of the import, in input
    `file` at byte `offset` (uncompressed), line `line` (1-based, of the line before it)."""

    file: int = 0
    offset: int = 0
    line: int = 0
    index: int = 0

    def to_json(self) -> dict[str, int]:
        return {"file": self.file, "offset": self.offset, "line": self.line,
                "index": self.index}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Position:
        return cls(int(data["file"]), int(data["offset"]), int(data["line"]),
                   int(data["index"]))


class Item(NamedTuple):
    """One message of the stream, before it is decoded: `data` is what `Inputs.message`
    needs (a recording line's payload and receipt, read already; a line; a parsed line; CSV
    cells; or a `BadInput`)."""

    n: int  # the message's number in the import, from 0
    topic: str
    data: Any
    file: int
    line: int
    offset: int  # where it starts: resuming at this item starts here

    @property
    def position(self) -> Position:
        """The position that resumes at this item."""
        return Position(self.file, self.offset, self.line - 1, self.n)


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path
    format: str  # "csv" or "jsonl"
    size: int
    fingerprint: str
    length: int  # bytes once uncompressed (a gzip file's own count, modulo 4 GiB): progress

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "size": self.size,
                "fingerprint": self.fingerprint}


def open_binary(path: Path) -> IO[bytes]:
    """A file as bytes, uncompressed if it is gzip (`.gz`)."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb", buffering=1 << 20)


def describe_inputs(paths: list[Path], mapping: CsvMapping | None) -> list[InputFile]:
    """Check that every input can be read in a known format; `HistoryError` otherwise."""
    out = []
    for path in paths:
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        if name.endswith(CSV_SUFFIXES):
            if mapping is None:
                raise HistoryError(f"{path} is CSV: give --mapping, the TOML file that says "
                                   "which column is which (docs/import.md)")
            fmt = "csv"
        elif name.endswith(JSON_SUFFIXES):
            fmt = "jsonl"
        else:
            raise HistoryError(f"{path}: not .csv or .jsonl/.ndjson/.json (optionally .gz); "
                               "rename it to say which it is")
        try:
            size = path.stat().st_size
            fingerprint = _fingerprint(path, size)
            length = _gzip_length(path, size) if path.name.endswith(".gz") else size
        except OSError as exc:
            raise HistoryError(f"cannot read {path}: {exc.strerror or exc}") from None
        out.append(InputFile(path.resolve(), fmt, size, fingerprint, max(length, 1)))
    return out


def _gzip_length(path: Path, size: int) -> int:
    with path.open("rb") as f:
        f.seek(max(0, size - 4))
        return int.from_bytes(f.read(4), "little") or size


def _fingerprint(path: Path, size: int) -> str:
    """The file's size and the hash of its first and last MiB: the same file again, cheaply."""
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(f.read())
    return digest.hexdigest()


class Inputs:
    """The import's files as one stream of messages (module docstring)."""

    def __init__(self, files: list[InputFile], mapping: CsvMapping | None) -> None:
        self.files = files
        self.mapping = mapping
        self._csv: dict[int, RowReader] = {}
        for i, f in enumerate(files):
            if f.format == "csv":
                assert mapping is not None
                try:
                    self._csv[i] = RowReader(f.path, mapping, open_binary)
                except OSError as exc:
                    raise HistoryError(f"cannot read {f.path}: {exc}") from None
        self._sim_time: tuple[str, int] = ("", 0)
        self._sim_bytes: tuple[bytes, int] = (b"", 0)
        self.end: Position | None = None

    @property
    def total_bytes(self) -> int:
        """The inputs' length uncompressed: what `Position.offset`s add up to."""
        return sum(f.length for f in self.files)

    def done_bytes(self, position: Position) -> int:
        """How much of the input lies before `position`."""
        before = sum(f.length for f in self.files[:position.file])
        if position.file >= len(self.files):
            return before
        return before + min(position.offset, self.files[position.file].length)

    def items(self, start: Position, keep: Callable[[str], bool] | None = None,
              every: int = 1) -> Iterator[Item]:
        """Every message from `start` on, in order. With `keep`, only the messages whose topic
        it keeps, and every message whose number is a multiple of `every` (a partition's batch
        boundaries); `keep` is asked once per topic. Once the iterator is exhausted, `end` is
        the position after the last message."""
        n = start.index
        kept: dict[str, bool] = {}
        heads: dict[bytes, tuple[str, bool]] = {}  # a recording line's topic: str, kept
        for file in range(start.file, len(self.files)):
            offset, line = (start.offset, start.line) if file == start.file else (0, 0)
            if self.files[file].format == "csv":
                for topic, data, first, at in self._csv[file].rows(offset, line):
                    if keep is None or n % every == 0 or _kept(kept, keep, topic):
                        yield Item(n, topic, data, file, first, at)
                    n += 1
                continue
            head = _RECORDING_HEAD.match
            with open_binary(self.files[file].path) as f:
                if offset:
                    f.seek(offset)
                for raw in f:
                    at = offset
                    offset += len(raw)
                    line += 1
                    match = head(raw)
                    if match is not None:
                        name = match[1]
                        known = heads.get(name)
                        if known is None:
                            known = _head(name, keep)
                            if known is not None and len(heads) < _HEADS_MAX:
                                heads[name] = known
                        if known is not None:
                            if keep is not None and known[1]:  # a partition's own: read it
                                message = self._recording(raw, match.end())
                                yield Item(n, known[0], raw if message is None else message,
                                           file, line, at)
                            elif known[1] or n % every == 0:
                                yield Item(n, known[0], raw, file, line, at)
                            n += 1
                            continue
                    if raw.isspace():
                        continue
                    topic, doc = _parse_line(raw)
                    if keep is None or n % every == 0 or _kept(kept, keep, topic):
                        yield Item(n, topic, doc, file, line, at)
                    n += 1
        self.end = Position(len(self.files), 0, 0, n)

    def message(self, item: Item) -> tuple[bytes, int | None] | BadInput:
        """An owned item's payload and receipt time (None: unknown), or why it is none."""
        data = item.data
        if type(data) is tuple:  # a recording's line, read by `items`
            return cast(tuple[bytes, int], data)
        if type(data) is bytes:  # a line with a recording's head
            head = _RECORDING_HEAD.match(data)
            got = None if head is None else self._recording(data, head.end())
            if got is not None:
                return got
            data = _parse_line(data)[1]
        if type(data) is list:
            return self._csv[item.file].message(data)
        if isinstance(data, BadInput):
            return data
        return self._envelope(data, item)

    def _recording(self, data: bytes, at: int) -> tuple[bytes, int] | None:
        """A recording line's payload and receipt, its head read up to `at`; None unless the
        line is exactly of that form (then its JSON parse decides, as it would for such a
        line)."""
        match = _RECORDING_TAIL.match(data, at)
        # a "received_at" after sim_time would win over it (`RECEIPT_KEYS`)
        if match is None or not data.endswith((b"}\n", b"}")) \
                or data.find(b'"received_at', match.end()) >= 0:
            return None
        value = match[2]
        last, received = self._sim_bytes  # a recording repeats its sim_time for many lines
        if value != last:
            got = self._receipt(value.decode("ascii"))
            if got is None:  # not a time: the envelope says so (schema)
                return None
            received = got
            self._sim_bytes = (value, received)
        try:  # strict: the standard alphabet, padded, as `b64decode(validate=True)` takes it
            return binascii.a2b_base64(match[1], strict_mode=True), received
        except binascii.Error:
            return None

    def _envelope(self, doc: dict[str, Any], item: Item) -> tuple[bytes, int | None] | BadInput:
        lenient = type(doc) is _Lenient
        received: int | None = None
        for key in RECEIPT_KEYS:
            value = doc.get(key)
            if value is not None:
                received = self._receipt(value)
                if received is None:
                    return BadInput(Reason.SCHEMA, f"{key} {value!r} is not an RFC 3339 time "
                                   "or epoch milliseconds", _dumps(doc, lenient), key)
                break
        if "payload_b64" in doc:
            encoded = doc["payload_b64"]
            try:
                if type(encoded) is not str:
                    raise ValueError
                payload = base64.b64decode(encoded, validate=True)
            except (ValueError, binascii.Error):
                return BadInput(Reason.INVALID_JSON, "payload_b64 is not standard base64",
                               _dumps(doc, lenient))
        elif "payload" in doc:
            payload = _dumps(doc["payload"], lenient)
        else:
            payload = _dumps({k: v for k, v in doc.items() if k not in ENVELOPE_KEYS}, lenient)
        return payload, received

    def _receipt(self, value: Any) -> int | None:
        if type(value) is int:
            return value
        if type(value) is not str:
            return None
        last, ms = self._sim_time  # a recording repeats its sim_time for many lines
        if value == last:
            return ms
        try:
            ms = parse_ts(value)
        except ValueError:
            return None
        self._sim_time = (value, ms)
        return ms


def _head(name: bytes, keep: Callable[[str], bool] | None) -> tuple[str, bool] | None:
    """A recording head's topic and whether `keep` keeps it; None if it is not a topic's
    text (the line is parsed as JSON)."""
    if _TOPIC_CHARS.fullmatch(name) is None:
        return None
    topic = name.decode("ascii")
    return topic, keep is None or keep(topic)


def _kept(kept: dict[str, bool], keep: Callable[[str], bool], topic: str) -> bool:
    found = kept.get(topic)
    if found is None:
        found = keep(topic)
        if len(kept) < _HEADS_MAX:
            kept[topic] = found
    return found


def _parse_line(raw: bytes) -> tuple[str, dict[str, Any] | BadInput]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = _lenient(raw)
        if doc is None:
            return "", BadInput(Reason.INVALID_JSON, "line is not JSON", raw.rstrip(b"\r\n"))
    if not isinstance(doc, dict):
        return "", BadInput(Reason.INVALID_JSON, "line is not a JSON object",
                           raw.rstrip(b"\r\n"))
    topic = doc.get("topic")
    if type(topic) is not str:
        return "", BadInput(Reason.BAD_TOPIC, "line has no \"topic\" string", raw.rstrip(b"\r\n"))
    return topic, doc


class _Lenient(dict[str, Any]):
    """A line only the stdlib could read (a NaN or Infinity literal, a huge integer): its
    payload is written back by the stdlib, keeping the literal for the decoder to judge
    (`non_finite`), as live ingest judges such a payload."""


def _lenient(raw: bytes) -> Any:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return _Lenient(doc) if type(doc) is dict else doc


def _dumps(value: Any, lenient: bool = False) -> bytes:
    if not lenient:
        try:
            return orjson.dumps(value)
        except (orjson.JSONEncodeError, TypeError):
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogateescape")


# -- partitions -------------------------------------------------------------------------------


class Partitioner:
    """Which of `n` partitions owns a topic's messages, so that every KPI entity (district,
    junction, route, feed entity) lives in exactly one.

    A kind whose Kafka key is the topic's district (water, energy, feeds per district: the
    entity is the district) is split by (kind, district); any other kind (its key, junction or
    route, is in the payload) stays whole, by kind. `assignment` maps those units to
    partitions, balanced by how much of the input each had at its start (`plan_assignment`);
    units it does not know go by a hash of their name.
    """

    def __init__(self, n: int, assignment: Mapping[str, int]) -> None:
        self.n = n
        self.assignment = dict(assignment)
        self.known: dict[str, int] = {}  # topic -> owner, for callers that look up first

    def __call__(self, topic: str) -> int:
        owner = self.known.get(topic)
        if owner is None:
            unit = unit_of(topic)
            owner = self.assignment.get(unit)
            if owner is None or owner >= self.n:
                owner = zlib.crc32(unit.encode("utf-8", "surrogateescape")) % self.n
            if len(self.known) < 1_000_000:
                self.known[topic] = owner
        return owner


def unit_of(topic: str) -> str:
    """The partitioning unit of a topic (`Partitioner`): `water|bletchley`, `traffic`, or the
    topic itself when it names no registered kind (it will be a dead letter)."""
    parsed = kinds.parse_topic(topic)
    if parsed is None:
        return topic
    district, kind, _sensor = parsed
    spec = kinds.get(kind)
    if spec is not None and spec.reading_type.partition_field == "district":
        return f"{kind}|{district}"
    return kind


def plan_assignment(inputs: Inputs, n: int, sample: int = 100_000) -> dict[str, int]:
    """Units to partitions for the import's first `sample` messages: heaviest first, each to
    the partition with the least weight so far (ties: the lower number). A message weighs its
    size in the file up to `_WEIGHT_CAP` bytes: what it costs to decode grows with its
    readings and fields (a shuttle's, a gateway's batch), while an oversized one is refused
    at once."""
    weights: Counter[str] = Counter()
    units: dict[str, str] = {}
    previous: Item | None = None
    for item in inputs.items(Position()):
        if previous is not None:
            size = item.offset - previous.offset if item.file == previous.file else 0
            weights[units[previous.topic]] += min(size, _WEIGHT_CAP) if size > 0 else 256
        if item.n >= sample:
            previous = None
            break
        if item.topic not in units:
            units[item.topic] = unit_of(item.topic)
        previous = item
    if previous is not None:
        weights[units[previous.topic]] += 256
    loads = [0] * n
    assignment: dict[str, int] = {}
    for unit, weight in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])):
        target = min(range(n), key=lambda i: (loads[i], i))
        assignment[unit] = target
        loads[target] += weight
    return assignment
