"""`citystream report`: "are we on track?" for a period, from KPI windows (pure functions).

A period holds the windows whose END lies in (start, stop] (a KPI point is stamped at its
window's end). Per entity:

- water, energy (district): saving = 100 × (1 − Σ use / Σ baseline) over the period's windows;
- traffic (junction): reduction = 100 × (1 − mean index / mean baseline index) over the windows
  with traffic (vehicles > 0), as the rolling 24 h figure is computed;
- on track when the saving or reduction reaches the target of the period's last window;
  `windows_on_track_pct` is the share of windows whose rolling 24 h flag `on_track` was set;
- shuttle (route): no target in the contract, so no status; the period's means of occupancy,
  on-time share, availability and battery, and the sums of boardings and disengagements.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Literal, TextIO

from models.records import EnergyKpi, Kpi, ShuttleKpi, TrafficKpi, WaterKpi

Kind = Literal["water", "energy", "traffic", "shuttle"]
KINDS: tuple[Kind, ...] = ("water", "energy", "traffic", "shuttle")
Status = Literal["on track", "off track", "no baseline", "no target"]


@dataclass(frozen=True)
class Period:
    """Windows ending in (start_ms, stop_ms]."""

    start_ms: int
    stop_ms: int

    def __post_init__(self) -> None:
        if self.stop_ms <= self.start_ms:
            raise ValueError(f"the period must end after it starts ({_iso(self.start_ms)} .. "
                             f"{_iso(self.stop_ms)})")

    def holds(self, window_end_ms: int) -> bool:
        return self.start_ms < window_end_ms <= self.stop_ms

    def describe(self) -> str:
        days = (self.stop_ms - self.start_ms) / 86_400_000
        span = f"{days:g} days" if days >= 1 else f"{days * 24:g} hours"
        return f"{_iso(self.start_ms)} to {_iso(self.stop_ms)} UTC ({span})"


def rfc3339(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC, with milliseconds only when there are any."""
    spec = "milliseconds" if ms % 1000 else "seconds"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Selection:
    """Which entities to report; empty sets select everything of that sort. A district also
    selects its junctions."""

    kinds: frozenset[Kind] = frozenset(KINDS)
    districts: frozenset[str] = frozenset()
    junctions: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()

    @property
    def narrowed(self) -> bool:
        return bool(self.districts or self.junctions or self.routes)

    def tag_filter(self, kind: Kind) -> dict[str, frozenset[str]]:
        """Tag values a query for `kind` can be narrowed to (a superset of `wants`)."""
        if not self.narrowed:
            return {}
        if kind in ("water", "energy"):
            return {"district": self.districts}
        if kind == "shuttle":
            return {"route": self.routes}
        if self.junctions and not self.districts:
            return {"junction": self.junctions}
        if self.districts and not self.junctions:
            return {"district": self.districts}
        return {}

    def wants(self, record: Kpi) -> bool:
        kind = kind_of(record)
        if kind not in self.kinds:
            return False
        if not self.narrowed:
            return True
        if isinstance(record, WaterKpi | EnergyKpi):
            return record.district in self.districts
        if isinstance(record, TrafficKpi):
            return record.junction in self.junctions or record.district in self.districts
        if isinstance(record, ShuttleKpi):
            return record.route in self.routes
        return False


@dataclass(frozen=True)
class ReportRow:
    """One entity's figures for the period; None where a figure does not apply."""

    kind: Kind
    entity: str
    district: str
    windows: int
    actual: float | None
    baseline: float | None
    unit: str
    figure_pct: float | None
    target_pct: float | None
    status: Status
    windows_on_track_pct: float | None
    occupancy_pct: float | None = None
    on_time_pct: float | None = None
    availability_pct: float | None = None
    mean_battery_pct: float | None = None
    boardings: int | None = None
    disengagements: int | None = None

    @property
    def on_track(self) -> bool | None:
        return {"on track": True, "off track": False}.get(self.status)


_KIND_OF: dict[str, Kind] = {f"{kind}_kpi": kind for kind in KINDS}


def kind_of(record: Kpi) -> Kind:
    return _KIND_OF[record.measurement]


def _entity(record: Kpi) -> tuple[str, str]:
    """(entity, district) of a record."""
    if isinstance(record, WaterKpi | EnergyKpi):
        return record.district, record.district
    if isinstance(record, TrafficKpi):
        return record.junction, record.district
    if isinstance(record, ShuttleKpi):
        return record.route, ""
    raise TypeError(f"not a KPI record: {record!r}")


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _status(figure: float | None, target: float) -> Status:
    if figure is None:
        return "no baseline"
    return "on track" if figure >= target else "off track"


def _share_on_track(rows: Sequence[WaterKpi | EnergyKpi | TrafficKpi]) -> float:
    return 100.0 * sum(r.on_track for r in rows) / len(rows)


def _saving_row(kind: Kind, entity: str, rows: Sequence[WaterKpi | EnergyKpi]) -> ReportRow:
    if isinstance(rows[0], WaterKpi):
        pairs = [(r.consumption_l, r.baseline_l) for r in rows if isinstance(r, WaterKpi)]
        unit = "L"
    else:
        pairs = [(r.energy_kwh, r.baseline_kwh) for r in rows if isinstance(r, EnergyKpi)]
        unit = "kWh"
    actual, baseline = math.fsum(a for a, _ in pairs), math.fsum(b for _, b in pairs)
    figure = 100.0 * (1.0 - actual / baseline) if baseline > 0 else None
    target = rows[-1].target_pct
    return ReportRow(kind, entity, entity, len(rows), actual, baseline, unit, figure, target,
                     _status(figure, target), _share_on_track(rows))


def _traffic_row(entity: str, rows: Sequence[TrafficKpi]) -> ReportRow:
    busy = [r for r in rows if r.vehicles > 0]
    index = _mean([r.congestion_index or 0.0 for r in busy])
    base = _mean([r.baseline_congestion_index or 0.0 for r in busy])
    figure = None
    if index is not None and base is not None and base > 0:
        figure = 100.0 * (1.0 - index / base)
    target = rows[-1].target_pct
    return ReportRow("traffic", entity, rows[-1].district, len(rows), index, base, "index",
                     figure, target, _status(figure, target), _share_on_track(rows))


def _shuttle_row(entity: str, rows: Sequence[ShuttleKpi]) -> ReportRow:
    def mean_of(values: Iterable[float | None]) -> float | None:
        return _mean([v for v in values if v is not None])

    return ReportRow(
        "shuttle", entity, "", len(rows), None, None, "", None, None, "no target", None,
        occupancy_pct=mean_of(r.occupancy_pct for r in rows),
        on_time_pct=mean_of(r.on_time_pct for r in rows),
        availability_pct=mean_of(r.availability_pct for r in rows),
        mean_battery_pct=mean_of(r.mean_battery_pct for r in rows),
        boardings=sum(r.boardings for r in rows),
        disengagements=sum(r.disengagements for r in rows))


def summarise(records: Iterable[Kpi], period: Period,
              selection: Selection | None = None) -> list[ReportRow]:
    """One row per selected entity with windows in the period, ordered by kind then entity."""
    selection = selection or Selection()
    groups: dict[tuple[Kind, str], list[Kpi]] = {}
    for record in records:
        if period.holds(record.time_ms) and selection.wants(record):
            groups.setdefault((kind_of(record), _entity(record)[0]), []).append(record)
    rows = []
    for (kind, entity), members in sorted(groups.items(),
                                          key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
        members.sort(key=lambda r: r.time_ms)
        if kind in ("water", "energy"):
            rows.append(_saving_row(kind, entity, [m for m in members
                                                   if isinstance(m, WaterKpi | EnergyKpi)]))
        elif kind == "traffic":
            rows.append(_traffic_row(entity, [m for m in members if isinstance(m, TrafficKpi)]))
        else:
            rows.append(_shuttle_row(entity, [m for m in members if isinstance(m, ShuttleKpi)]))
    return rows


def verdict(rows: Sequence[ReportRow]) -> list[str]:
    """One line per kind with a target: how many entities are on track."""
    lines = []
    for kind in ("water", "energy", "traffic"):
        mine = [r for r in rows if r.kind == kind]
        if not mine:
            continue
        on = sum(r.status == "on track" for r in mine)
        what = "junctions" if kind == "traffic" else "districts"
        lines.append(f"{kind}: {on} of {len(mine)} {what} on track")
    return lines


# -- rendering --------------------------------------------------------------------------------

MARK = {"on track": "✓ on track", "off track": "✗ off track", "no baseline": "? no baseline",
        "no target": "-"}


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def _amount(row: ReportRow, value: float | None) -> str:
    if value is None:
        return "-"
    if row.unit == "index":
        return f"{value:.3f}"
    return f"{_num(value, 0 if row.unit == 'L' else 1)} {row.unit}"


def _table(header: list[str], body: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]


def render_table(rows: Sequence[ReportRow], period: Period) -> str:
    """The report as aligned text for a terminal."""
    out = [f"citystream report: {period.describe()}", ""]
    if not rows:
        return "\n".join([*out, "no KPI windows in this period for the selection"]) + "\n"
    targeted = [r for r in rows if r.kind != "shuttle"]
    if targeted:
        out += _table(
            ["kind", "entity", "windows", "use / index", "baseline", "saving", "target",
             "status", "windows on track"],
            [[r.kind, r.entity, _num(r.windows), _amount(r, r.actual), _amount(r, r.baseline),
              _pct(r.figure_pct), _pct(r.target_pct), MARK[r.status],
              _pct(r.windows_on_track_pct)] for r in targeted],
            right={2, 3, 4, 5, 6, 8})
        out.append("")
    shuttles = [r for r in rows if r.kind == "shuttle"]
    if shuttles:
        out += _table(
            ["route", "windows", "occupancy", "on time", "availability", "battery",
             "boardings", "disengagements"],
            [[r.entity, _num(r.windows), _pct(r.occupancy_pct), _pct(r.on_time_pct),
              _pct(r.availability_pct), _pct(r.mean_battery_pct), _num(r.boardings),
              _num(r.disengagements)] for r in shuttles],
            right={1, 2, 3, 4, 5, 6, 7})
        out.append("")
    out += verdict(rows)
    out.append("saving / reduction: 100 x (1 - use / baseline) over the period (traffic: mean "
               "congestion index of the windows with traffic); status against the target")
    return "\n".join(out) + "\n"


CSV_COLUMNS = tuple(f.name for f in fields(ReportRow))


def write_csv(rows: Sequence[ReportRow], out: TextIO, period: Period) -> None:
    """The rows as CSV (one header line; empty cells where a figure does not apply)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["period_start", "period_stop", *CSV_COLUMNS])
    start, stop = (rfc3339(ms) for ms in (period.start_ms, period.stop_ms))
    for row in rows:
        writer.writerow([start, stop, *("" if (v := getattr(row, c)) is None else
                                        repr(v) if isinstance(v, float) else v
                                        for c in CSV_COLUMNS)])


def to_csv(rows: Sequence[ReportRow], period: Period) -> str:
    buf = io.StringIO()
    write_csv(rows, buf, period)
    return buf.getvalue()
