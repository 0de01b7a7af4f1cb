"""Mutation fuzzing of the decoder, seeded with the bad-input corpus: byte flips, insertions,
deletions, splices of troublesome tokens and topic mutations. Whatever comes out, decode never
raises, never takes long, accounts for every element and agrees with its careful path.

The budget is hypothesis' `max_examples` (CITYSTREAM_FUZZ_EXAMPLES, default 200) and a
per-example `deadline` (a pathological input must not stall ingest)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.decode import decode
from tests.bad_input import load
from tests.unit.ingest.test_decode_properties import NOW, check, same_as_careful

SEEDS = [c for c in load(NOW) if len(c.payload) <= 70_000]
TOKENS = [b"NaN", b"-Infinity", b"1e999", b"9" * 40, b"\x00", b"\\u0000", b"\\ud800", b"\xff",
          b"\xc3", b'"', b"\\", b"[" * 3000, b"{" * 50, b"]", b"}", b",", b":", b"null",
          b"true", b"-0", b"1.0", b"\n", b" ", b'"ts":', b'"sensor_id":', b"\xef\xbb\xbf"]
BUDGET = settings(max_examples=int(os.environ.get("CITYSTREAM_FUZZ_EXAMPLES", "200")),
                  deadline=timedelta(seconds=2), database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    case = draw(st.sampled_from(SEEDS))
    data = bytearray(case.payload)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "token", "truncate"]))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        else:
            del data[at:]
    topic = case.topic
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(topic)))
        topic = topic[:cut] + draw(st.text(max_size=4)) + topic[cut:]
    return topic, bytes(data)


@BUDGET
@given(mutated())
def test_mutated_corpus(message: tuple[str, bytes]) -> None:
    topic, payload = message
    out = decode(topic, payload, NOW)
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        doc = None
    elements = (1 if isinstance(doc, dict) else len(doc) if isinstance(doc, list) and doc
                else None)
    check(out, elements)
    same_as_careful(topic, payload, out)
    assert len(out.readings) + len(out.dead_letters) >= 1
