"""The bad-input corpus (tests/data/bad_input/corpus.json): loading and token substitution.

Used by the decode test (tests/unit/ingest/test_bad_input_corpus.py) and by the pipeline test
that publishes the corpus over real MQTT (tests/integration/test_bad_input.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "data" / "bad_input" / "corpus.json"
MAX_PAYLOAD = 65536
_NOW = re.compile(r"\$NOW([+-]\d+)?")


@dataclass(frozen=True)
class Case:
    """One corpus entry, made concrete for a publish time (see the corpus README)."""

    name: str
    why: str
    topic: str
    payload: bytes
    sensor: str
    expect: list[dict[str, Any]]
    via: str = "mqtt"
    not_mqtt: str | None = None
    stored: dict[str, Any] | None = None

    @property
    def accepted(self) -> int:
        return sum(bool(e.get("accepted")) for e in self.expect)

    @property
    def rejections(self) -> list[tuple[str, str | None, int | None]]:
        """(reason, field, index) of each expected dead letter, in payload order."""
        return [(e["reason"], e.get("field"), e.get("index")) for e in self.expect
                if not e.get("accepted")]


def _text(template: str, sensor: str, now_ms: int) -> str:
    text = template.replace("$SENSOR", sensor)
    return _NOW.sub(lambda m: str(now_ms + 1000 * int(m.group(1) or 0)), text)


def _payload(raw: dict[str, Any], sensor: str, now_ms: int) -> bytes:
    if "payload_hex" in raw:
        return bytes.fromhex(raw["payload_hex"])
    if "payload_repeat" in raw:
        spec = raw["payload_repeat"]
        out = spec["text"].encode() * spec["times"]
        then = spec.get("then")
        return out + (then["text"].encode() * then["times"] if then else b"")
    text = _text(raw["payload"], sensor, now_ms)
    if "@PAD@" in text:  # pad an ignored string field so the payload is exactly the limit
        size = len(text.replace("@PAD@", "").encode())
        text = text.replace("@PAD@", "x" * (MAX_PAYLOAD - size))
    return text.encode("utf-8", "surrogatepass")


def load(now_ms: int) -> list[Case]:
    """Every case with its tokens replaced: `$SENSOR` by the case's own sensor id (`bi000`,
    `bi001`...), `$NOW`, `$NOW+S`, `$NOW-S` by epoch milliseconds `now_ms` (+/- S seconds)."""
    raw_cases = json.loads(CORPUS.read_text())["cases"]
    cases = []
    for i, raw in enumerate(raw_cases):
        sensor = f"bi{i:03d}"
        cases.append(Case(
            name=raw["name"], why=raw["why"], topic=_text(raw["topic"], sensor, now_ms),
            payload=_payload(raw, sensor, now_ms), sensor=sensor, expect=raw["expect"],
            via=raw.get("via", "mqtt"), not_mqtt=raw.get("not_mqtt"), stored=raw.get("stored")))
    return cases
