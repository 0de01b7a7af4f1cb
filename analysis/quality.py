"""`citystream report --quality`: each sensor's data quality over the report's period (pure).

From the `sensor_quality` points (contract 6: one per sensor and hour, stamped at the hour's
end) whose hour ends in the period, per sensor (`kind`, `district`, `sensor_id`):

- `readings`, `duplicates`, `rejected`, `late`: totals (a count left out of a point is 0; so is
  `rejected`, written only for hours with rejected readings);
- `completeness_pct`, `score`: the means of the hours that have them; `lowest_score`, and
  `hours_below` the threshold, of the `hours` with a score; `stuck_hours`;
- `attention`: the sensor needs it when its mean score is below the threshold
  (`CITYSTREAM_QUALITY__MIN_SCORE`, default 80), it had rejected readings, or it was stuck in
  any hour (`models.attention`, the dashboard's rule for one hour), and `problems` says why in
  words ("42 % complete; stuck 5 h; 17 rejected").

Rows come worst first: those needing attention, then by mean score (none first: every reading
rejected), then by hours below the threshold.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, TextIO

from analysis.report import Period, _table, rfc3339
from models.attention import needs_attention, problems

WORST_SHOWN: Final = 10
"""Sensors the text summary lists by name; the CSV has every sensor."""


@dataclass(frozen=True)
class QualityRow:
    """One sensor's quality over the period (module doc); None where no hour had the field."""

    kind: str
    district: str
    sensor_id: str
    hours: int
    readings: int
    duplicates: int
    rejected: int
    late: int
    completeness_pct: float | None
    score: float | None
    lowest_score: float | None
    hours_below: int
    stuck_hours: int
    attention: bool
    problems: str


def _count(row: dict[str, Any], name: str) -> int:
    value = row.get(name)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _mean(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarise_quality(rows: Iterable[dict[str, Any]], min_score: float) -> list[QualityRow]:
    """One `QualityRow` per sensor from the rows of `analysis.influx.quality_query` (asked with
    the same `min_score`), worst first (module doc)."""
    out = []
    for row in rows:
        if any(not row.get(tag) for tag in ("kind", "district", "sensor_id")):
            continue
        readings, rejected = _count(row, "readings"), _count(row, "rejected")
        stuck, score = _count(row, "stuck_hours"), _mean(row, "score")
        duplicates, late = _count(row, "duplicates"), _count(row, "late")
        completeness = _mean(row, "completeness_pct")
        why = problems(readings=readings, duplicates=duplicates, rejected=rejected, late=late,
                       completeness_pct=completeness, stuck=stuck, score=score,
                       min_score=min_score)
        out.append(QualityRow(
            str(row["kind"]), str(row["district"]), str(row["sensor_id"]), _count(row, "hours"),
            readings, duplicates, rejected, late, completeness, score,
            _mean(row, "lowest_score"), _count(row, "hours_below"), stuck,
            needs_attention(score, rejected, stuck, min_score), "; ".join(why)))
    out.sort(key=lambda r: (not r.attention, -1.0 if r.score is None else r.score,
                            -r.hours_below, r.kind, r.district, r.sensor_id))
    return out


def _one_decimal(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_quality(rows: Sequence[QualityRow], min_score: float, csv_path: str | None = None,
                   shown: int = WORST_SHOWN) -> str:
    """The summary for the terminal: how many sensors, how many need attention and for which
    reasons, and the worst `shown` by name with why; `csv_path` is where the full table went."""
    out = [f"Sensor quality (hourly sensor_quality; needs attention: mean score below "
           f"{min_score:g}, rejected readings or stuck)"]
    if not rows:
        return "\n".join([*out, "no sensor_quality points in this period for the selection"]) + "\n"
    bad = [r for r in rows if r.attention]
    low = sum(r.score is not None and r.score < min_score for r in bad)
    rejected = sum(r.rejected > 0 for r in bad)
    stuck = sum(r.stuck_hours > 0 for r in bad)
    sensors = f"{len(rows):,} sensor{'s' if len(rows) != 1 else ''}"
    if not bad:
        out.append(f"{sensors}: none needs attention")
    else:
        out.append(f"{sensors}, {len(bad):,} need{'s' if len(bad) == 1 else ''} attention: "
                   f"{low:,} with a mean score below {min_score:g}, {rejected:,} with rejected "
                   f"readings, {stuck:,} stuck")
        worst = bad[:shown]
        out += _table(["kind", "district", "sensor", "hours", "score", "lowest", "hours below",
                       "why"],
                      [[r.kind, r.district, r.sensor_id, f"{r.hours:,}", _one_decimal(r.score),
                        _one_decimal(r.lowest_score), f"{r.hours_below:,}", r.problems]
                       for r in worst], right={3, 4, 5, 6})
        if len(bad) > len(worst):
            out.append(f"(the worst {len(worst)} of {len(bad):,})")
    out.append(f"every sensor's figures: {csv_path}" if csv_path else
               "every sensor's figures: add --csv PATH to write them to PATH-quality.csv")
    return "\n".join(out) + "\n"


QUALITY_COLUMNS = tuple(f.name for f in fields(QualityRow))


def quality_csv_path(csv_path: str) -> Path:
    """Where the quality table goes beside the report's CSV: `r.csv` -> `r-quality.csv`."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}-quality{path.suffix}")


def write_quality_csv(rows: Sequence[QualityRow], out: TextIO, period: Period) -> None:
    """The rows as CSV (one header line, the period first as in the report's CSV; empty cells
    where no hour had the field, booleans `true`/`false`)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["period_start", "period_stop", *QUALITY_COLUMNS])
    start, stop = (rfc3339(ms) for ms in (period.start_ms, period.stop_ms))
    for row in rows:
        cells: list[Any] = []
        for name in QUALITY_COLUMNS:
            value = getattr(row, name)
            cells.append("" if value is None else str(value).lower() if isinstance(value, bool)
                         else repr(value) if isinstance(value, float) else value)
        writer.writerow([start, stop, *cells])
