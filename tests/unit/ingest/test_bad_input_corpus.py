"""The decoder against every case of the bad-input corpus (tests/data/bad_input): nothing
raises, and each reading becomes exactly the expected reading or dead letter."""

from __future__ import annotations

import time

import pytest

from ingest.decode import decode
from models.deadletter import Reason
from tests.bad_input import Case, load

NOW_MS = int(time.time() * 1000)
CASES = load(NOW_MS)


def test_the_corpus_covers_every_reason_and_the_nasties() -> None:
    reasons = {reason for case in CASES for reason, _f, _i in case.rejections}
    assert reasons == {r.value for r in Reason}
    largest = max(len(case.payload) for case in CASES)
    assert largest >= 10 * 1024 * 1024
    names = {case.name for case in CASES}
    for needle in ("10mb", "deep-nesting", "utf8", "nul", "nan", "infinity", "overflow",
                   "negative", "1970", "9999", "plus", "hash", "unicode", "tag-junction-space",
                   "tag-junction-comma", "tag-junction-equals", "tag-junction-newline"):
        assert any(needle in name for name in names), needle
    assert all(case.not_mqtt for case in CASES if case.via != "mqtt")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decode(case: Case) -> None:
    result = decode(case.topic, case.payload, NOW_MS)
    assert len(result.readings) == case.accepted
    got = [(str(d.reason), d.field, d.index) for d in result.dead_letters]
    assert got == case.rejections
    for letter in result.dead_letters:
        assert letter.topic.encode("utf-8")  # always encodable, even from a bad topic
        assert len(letter.to_json()) < 200_000
    if case.stored and result.readings:
        reading = result.readings[0].model_dump(by_alias=True)
        for name, value in case.stored["fields"].items():
            assert reading[name] == value, name
