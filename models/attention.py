"""Which sensors need attention, and what is wrong with them in words (contract 6).

One rule for the dashboard's "Sensors needing attention" view (a sensor's latest hour of
`sensor_quality`) and `citystream report --quality` (a sensor's hours over a period): a sensor
needs attention when its score is below `CITYSTREAM_QUALITY__MIN_SCORE` (default 80), it had
rejected readings, or it was stuck. `rejected` is written by a separate writer and absent when
the sensor had none: None counts as 0, as does any other count left out of a point.
"""

from __future__ import annotations


def needs_attention(score: float | None, rejected: int | None, stuck: bool | int | None,
                    min_score: float) -> bool:
    """The rule above; `stuck` is an hour's flag or a period's number of stuck hours."""
    return (score is not None and score < min_score) or (rejected or 0) > 0 or bool(stuck)


def pct_text(value: float) -> str:
    """A percentage without its sign: whole, unless rounding would make it 0 or 100 when it
    is neither (`99.6`, `0.4`)."""
    text = f"{value:.0f}"
    if (text == "100" and value < 100) or (text == "0" and value > 0):
        text = f"{value:.1f}"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}"


def problems(*, readings: int | None, duplicates: int | None, rejected: int | None,
             late: int | None, completeness_pct: float | None, stuck: bool | int | None,
             score: float | None, min_score: float) -> list[str]:
    """What is wrong, worst first: "no readings" or "42 % complete", "stuck" (an hour) or
    "stuck 5 h" (a period), "17 rejected", "5 duplicates", "3 late"; a score below `min_score`
    with none of these (a formula's detail) as "score 72 below 80". Empty when nothing is."""
    out = []
    if not readings:
        out.append("no readings accepted" if rejected else "no readings")
    elif completeness_pct is not None and completeness_pct < 100:
        out.append(f"{pct_text(completeness_pct)} % complete")
    if stuck is True:
        out.append("stuck")
    elif stuck:
        out.append(f"stuck {stuck:,} h")
    if rejected:
        out.append(_count(rejected, "rejected"))
    if duplicates:
        out.append(_count(duplicates, "duplicate" if duplicates == 1 else "duplicates"))
    if late:
        out.append(_count(late, "late"))
    if not out and score is not None and score < min_score:
        out.append(f"score {pct_text(score)} below {min_score:g}")
    return out
