"""The `--record FILE.jsonl` format (docs/recording.md): one JSON object per published message.

    {"seq": 17, "topic": "city/bletchley/water/wm-bletchley-0003", "payload_b64": "eyJz...",
     "qos": 1, "sim_time": "2026-11-21T06:15:00Z", "faults": ["duplicate"],
     "expected": [{"valid": true, "reason": null, "duplicate": true}]}

`Recorder` writes it as messages are handed to the broker; `read_recording` reads it back.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import orjson

from sensors_sim.faults import Expected
from sensors_sim.generator import Message


def iso_utc(ts_ms: int) -> str:
    """RFC 3339 in UTC with `Z`; milliseconds only when there are some."""
    instant = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    if ts_ms % 1000:
        return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


class Recorder:
    """Appends one line per published message; `close` flushes. Also a context manager."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: BinaryIO = path.open("wb", buffering=1 << 20)
        self._seq = 0
        self._sim_time_ms = -1
        self._sim_time = b""
        self._tails: dict[tuple[tuple[str, ...], tuple[Expected, ...]], bytes] = {}

    def write(self, msg: Message) -> None:
        """Record `msg` as the next message; call right after the broker took it."""
        if msg.sim_time_ms != self._sim_time_ms:
            self._sim_time_ms = msg.sim_time_ms
            self._sim_time = iso_utc(msg.sim_time_ms).encode()
        tail = self._tails.get((msg.faults, msg.expected))
        if tail is None:
            tail = b"".join((
                b'","faults":', orjson.dumps(list(msg.faults)), b',"expected":',
                orjson.dumps([e.as_json() for e in msg.expected]), b"}\n"))
            if len(self._tails) < 4096:
                self._tails[(msg.faults, msg.expected)] = tail
        self._file.write(b"".join((
            b'{"seq":', str(self._seq).encode(), b',"topic":', orjson.dumps(msg.topic),
            b',"payload_b64":"', binascii.b2a_base64(msg.payload, newline=False),
            b'","qos":1,"sim_time":"', self._sim_time, tail)))
        self._seq += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class Recorded:
    """One line of a recording, decoded."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    sim_time: str
    faults: tuple[str, ...]
    expected: tuple[Expected, ...]

    @property
    def sim_time_ms(self) -> int:
        """`sim_time` as epoch milliseconds."""
        instant = datetime.fromisoformat(self.sim_time.replace("Z", "+00:00"))
        return int(instant.timestamp() * 1000)


def read_recording(path: Path) -> Iterator[Recorded]:
    """The recorded messages of a `--record` file, in publish order."""
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            d = orjson.loads(line)
            yield Recorded(
                seq=d["seq"], topic=d["topic"], payload=base64.b64decode(d["payload_b64"]),
                qos=d["qos"], sim_time=d["sim_time"], faults=tuple(d["faults"]),
                expected=tuple(Expected(e["valid"], e["reason"], e["duplicate"])
                               for e in d["expected"]))
