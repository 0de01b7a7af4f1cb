"""Pure helpers of the benchmark: percentiles, rates from progress samples, medians over runs,
the printed table. No I/O; unit-tested in tests/unit/bench."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Sample = tuple[float, float]
"""(wall time in seconds, cumulative amount done by then)."""


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; None when empty.

    Nearest rank never interpolates: p99 of 100 values is the 99th smallest, a value that was
    really observed, and a tail is never flattered by averaging it with the body.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99 and max of latencies in seconds (None figures when there are none)."""
    return {"n": len(values), "p50_s": percentile(values, 50), "p95_s": percentile(values, 95),
            "p99_s": percentile(values, 99), "max_s": max(values) if values else None}


def crossing_time(samples: Sequence[Sample], level: float) -> float | None:
    """When the cumulative amount first reached `level`, linearly interpolated between the
    two samples around it; None if it never did. Samples must be in time order."""
    prev: Sample | None = None
    for t, done in samples:
        if done >= level:
            if prev is None or done == prev[1]:
                return t
            t0, d0 = prev
            return t0 + (t - t0) * (level - d0) / (done - d0)
        prev = (t, done)
    return None


def sustained_rate(samples: Sequence[Sample], total: float, lo: float = 0.1,
                   hi: float = 0.9) -> float | None:
    """Items per second between the moments `lo` and `hi` of `total` were done.

    The middle of a run: start-up (connections, group joins, table recovery) and the last
    stragglers stay out of the figure, and a poll interval matters less than with first/last.
    None if the run never got to `hi` or took no measurable time.
    """
    return measured_rate(samples, total, lo, hi)["rate_per_s"]


def measured_rate(samples: Sequence[Sample], total: float, lo: float = 0.1,
                  hi: float = 0.9) -> dict[str, float | int | None]:
    """`sustained_rate` with how it was measured: `measured_s`, the seconds between the
    moments `lo` and `hi` of `total` were done (how long the measured part of the run lasted),
    and `rate_samples`, the progress samples inside that span (0: the figure rests on the
    samples around it alone, so a sample interval near `measured_s` makes it coarse).

    For a figure in every run, the samples must start with one taken before anything was done
    (`progress` puts one first): without it a first sample already past `lo` leaves the start
    unknown and the rate None."""
    out: dict[str, float | int | None] = {"rate_per_s": None, "measured_s": None,
                                          "rate_samples": 0}
    if total <= 0:
        return out
    t_lo = crossing_time(samples, lo * total)
    t_hi = crossing_time(samples, hi * total)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return out
    out["rate_per_s"] = (hi - lo) * total / (t_hi - t_lo)
    out["measured_s"] = t_hi - t_lo
    out["rate_samples"] = sum(1 for t, _ in samples if t_lo < t < t_hi)
    return out


def progress(samples: Sequence[Sample], start: float) -> list[Sample]:
    """Progress points for `measured_rate` from polled `samples` (time-ordered): `(start,
    0.0)` first, the moment the measured process was started, then each sample after it that
    shows a new amount. A poll that repeats the last amount says nothing new; kept, it would
    place a crossing just before the next change instead of between the changes (an amount
    that grows in steps, such as committed offsets, is then read at each step)."""
    out: list[Sample] = [(start, 0.0)]
    for t, n in samples:
        if t > start and n != out[-1][1]:
            out.append((t, n))
    return out


def per_1k(cpu_s: float, items: float) -> float | None:
    """CPU seconds per 1,000 items."""
    return 1000 * cpu_s / items if items > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def merge_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One record from several runs of the same measurement: every number becomes the median of
    the runs that have it, nested dicts are merged the same way, other values come from the
    first run. The per-run values stay in the JSON next to it (`runs`)."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        numbers = [v for v in values if _is_number(v)]
        if numbers and len(numbers) == len([v for v in values if v is not None]):
            out[key] = statistics.median(numbers)
        elif values and all(isinstance(v, Mapping) for v in values):
            out[key] = merge_runs(values)
        else:
            out[key] = next((v for v in values if v is not None), None)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for the table: thousands separators, `digits` significant digits, '-' for
    missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= digits - 1:
        return f"{round(value):,}"
    decimals = digits - 1 - magnitude
    return f"{value:,.{decimals}f}"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table (also valid Markdown): first column left-aligned, others right."""
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else fmt(c) for c in row]
                                          for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
