"""The one rule for a sensor needing attention, and what is wrong in words."""

from __future__ import annotations

from typing import Any

import pytest

from models.attention import needs_attention, pct_text, problems


def test_a_low_score_rejected_readings_or_stuck_need_attention() -> None:
    assert needs_attention(79.9, None, False, 80.0)
    assert not needs_attention(80.0, None, False, 80.0)
    assert not needs_attention(None, None, None, 80.0)      # nothing known: nothing to say
    assert needs_attention(100.0, 1, False, 80.0)           # rejected
    assert not needs_attention(100.0, 0, None, 80.0)        # absent rejected is none
    assert needs_attention(100.0, None, True, 80.0)         # stuck this hour
    assert needs_attention(100.0, None, 2, 80.0)            # stuck 2 hours of a period
    assert not needs_attention(100.0, None, 0, 80.0)


def words(**fields: Any) -> list[str]:
    base: dict[str, Any] = {"readings": 4, "duplicates": 0, "rejected": None, "late": 0,
                            "completeness_pct": 100.0, "stuck": False, "score": 100.0,
                            "min_score": 80.0}
    return problems(**{**base, **fields})


def test_what_is_wrong_worst_first() -> None:
    assert words() == []
    assert words(completeness_pct=42.0, stuck=True, rejected=17, duplicates=5, late=3,
                 score=10.0) == ["42 % complete", "stuck", "17 rejected", "5 duplicates",
                                 "3 late"]
    assert words(duplicates=1, late=1, rejected=1) == ["1 rejected", "1 duplicate", "1 late"]
    assert words(stuck=5) == ["stuck 5 h"]
    assert words(readings=0, completeness_pct=0.0, score=0.0) == ["no readings"]
    assert words(readings=None, rejected=9, score=None) == ["no readings accepted", "9 rejected"]
    assert words(completeness_pct=None, score=70.0) == ["score 70 below 80"]
    assert words(completeness_pct=None, score=70.0, min_score=60.0) == []
    assert words(duplicates=12_345) == ["12,345 duplicates"]


@pytest.mark.parametrize(("value", "text"), [
    (42.0, "42"), (99.6, "99.6"), (100.0, "100"), (0.4, "0.4"), (0.0, "0"), (66.66, "67")])
def test_percentages_never_round_to_a_false_0_or_100(value: float, text: str) -> None:
    assert pct_text(value) == text
