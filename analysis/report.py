"""`citystream report`: "are we on track?" for a period, from KPI windows (pure functions).

A period holds the windows whose END lies in (start, stop] (a KPI point is stamped at its
window's end). Per entity:

- water, energy (district): saving = 100 × (1 − Σ use / Σ baseline) over the period's windows;
- traffic (junction): reduction = 100 × (1 − mean index / mean baseline index) over the windows
  with traffic (vehicles > 0), as the rolling 24 h figure is computed;
- on track when the saving or reduction reaches the target of the period's last window;
  `windows_on_track_pct` is the share of windows whose rolling 24 h flag `on_track` was set;
- shuttle (route): no target in the contract, so no status; the period's means of occupancy,
  on-time share, availability and battery, and the sums of boardings and disengagements;
- a feed declared in the city file (CONTRACT section 5; per district or per its entity field):
  one row per entity and KPI with the KPI's period figure (`PERIOD_AGG`: totals for the
  additive aggregations, the maximum for `sensors`, the minimum of `min` and maximum of `max`
  KPIs, else the mean of the windows' values), each over the windows that have the KPI. The
  target KPI's figure is always the mean of its windows, the figure `on_track` judges as
  `<kpi>_24h`, and is marked on or off track against `at_most` / `at_least`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Final, Literal, TextIO

from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models import kinds as registry
from models.feeds import FeedSpec, KpiSpec
from models.records import Kpi

Kind = str
"""A registered kind: a built-in one (`models.readings.KINDS`) or a feed of the city file."""
Status = Literal["on track", "off track", "no baseline", "no target", "no data"]
PeriodAgg = Literal["sum", "max", "min", "mean"]
PERIOD_AGG: Final[dict[str, PeriodAgg]] = {
    "count": "sum", "count_above": "sum", "sum": "sum", "delta": "sum", "increase": "sum",
    "sensors": "max", "min": "min", "max": "max",
    "mean": "mean", "share_between": "mean", "ratio_pct": "mean",
}
"""How a feed KPI's windows make its period figure, by the KPI's aggregation."""


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


def feed_of(kind: Kind) -> FeedSpec | None:
    """The declared feed of a registered kind (None for a built-in or unknown kind)."""
    spec = registry.get(kind)
    return None if spec is None else spec.feed


@dataclass(frozen=True)
class Selection:
    """Which entities to report; empty sets select everything of that sort (no kinds: every
    registered kind). A district also selects its junctions and its entries of feeds per
    district; `entities` selects feed entities by value (a car park, a district ...)."""

    kinds: frozenset[Kind] = frozenset()
    districts: frozenset[str] = frozenset()
    junctions: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    entities: frozenset[str] = frozenset()

    @property
    def narrowed(self) -> bool:
        return bool(self.districts or self.junctions or self.routes or self.entities)

    def selected_kinds(self) -> tuple[Kind, ...]:
        """The selected registered kinds, in registry order (built-in, then feeds)."""
        return tuple(k for k in registry.names() if not self.kinds or k in self.kinds)

    def _feed_entities(self, feed: FeedSpec) -> frozenset[str]:
        return self.districts | self.entities if feed.entity == "district" else self.entities

    def tag_filter(self, kind: Kind) -> dict[str, frozenset[str]]:
        """Tag values a query for `kind` can be narrowed to (a superset of `wants`)."""
        feed = feed_of(kind)
        if feed is not None:
            where = {"window": frozenset({feed.window_tag})}
            if self.narrowed:
                where[feed.entity] = self._feed_entities(feed)
            return where
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
        if self.kinds and kind not in self.kinds:
            return False
        feed = feed_of(kind)
        if feed is not None:
            if getattr(record, "window", None) != feed.window_tag:
                return False  # a window length the feed had before: another series
            return not self.narrowed or getattr(record, feed.entity) in self._feed_entities(feed)
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
    kpi: str | None = None
    period_agg: PeriodAgg | None = None
    value: float | int | None = None
    target: float | None = None
    target_rule: Literal["at_most", "at_least"] | None = None

    @property
    def on_track(self) -> bool | None:
        return {"on track": True, "off track": False}.get(self.status)


def kind_of(record: Kpi) -> Kind:
    """The registered kind whose KPI measurement the record is."""
    for spec in registry.specs():
        if spec.measurement == record.measurement:
            return spec.name
    raise TypeError(f"{record.measurement} is not the KPI measurement of a registered kind")


def _entity(record: Kpi) -> tuple[str, str]:
    """(entity, district) of a record."""
    feed = feed_of(kind_of(record))
    if feed is not None:
        entity: str = getattr(record, feed.entity)
        return entity, entity if feed.entity == "district" else ""
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


def period_agg(feed: FeedSpec, kpi: KpiSpec) -> PeriodAgg:
    """How the windows' values of a feed KPI make its period figure: the target KPI is always
    the mean (as `<kpi>_24h` is), the others by `PERIOD_AGG`."""
    if feed.target is not None and feed.target.kpi == kpi.name:
        return "mean"
    return PERIOD_AGG[kpi.agg]


def _combine(how: PeriodAgg, values: Sequence[float | int],
             integer: bool) -> float | int | None:
    if not values:
        return None
    if how == "mean":
        return _mean([float(v) for v in values])
    if how == "sum":
        total = sum(values) if integer else math.fsum(values)
    else:
        total = max(values) if how == "max" else min(values)
    return int(total) if integer else float(total)


def _feed_rows(feed: FeedSpec, entity: str, district: str,
               members: Sequence[Kpi]) -> list[ReportRow]:
    """One row per KPI of the feed for one entity's windows in the period."""
    target = feed.target
    rows = []
    for kpi in feed.kpis:
        values: list[float | int] = [v for m in members
                                     if (v := getattr(m, kpi.name, None)) is not None]
        how = period_agg(feed, kpi)
        value = _combine(how, values, kpi.is_integer)
        status: Status = "no target"
        share = limit = None
        rule: Literal["at_most", "at_least"] | None = None
        if target is not None and target.kpi == kpi.name:
            limit = target.limit
            rule = "at_most" if target.at_most is not None else "at_least"
            status = ("no data" if value is None
                      else "on track" if target.met(float(value)) else "off track")
            flags = [bool(f) for m in members if (f := getattr(m, "on_track", None)) is not None]
            share = 100.0 * sum(flags) / len(flags) if flags else None
        rows.append(ReportRow(feed.kind, entity, district, len(members), None, None, "", None,
                              None, status, share, kpi=kpi.name, period_agg=how, value=value,
                              target=limit, target_rule=rule))
    return rows


def summarise(records: Iterable[Kpi], period: Period,
              selection: Selection | None = None) -> list[ReportRow]:
    """One row per selected entity with windows in the period (for a declared feed, one per
    entity and KPI, in the feed's KPI order), ordered by kind (registry order) then entity."""
    selection = selection or Selection()
    order = {kind: i for i, kind in enumerate(registry.names())}
    groups: dict[tuple[Kind, str], list[Kpi]] = {}
    for record in records:
        if period.holds(record.time_ms) and selection.wants(record):
            groups.setdefault((kind_of(record), _entity(record)[0]), []).append(record)
    rows: list[ReportRow] = []
    for (kind, entity), members in sorted(groups.items(),
                                          key=lambda kv: (order[kv[0][0]], kv[0][1])):
        members.sort(key=lambda r: r.time_ms)
        feed = feed_of(kind)
        if feed is not None:
            rows += _feed_rows(feed, entity, _entity(members[0])[1], members)
        elif kind in ("water", "energy"):
            rows.append(_saving_row(kind, entity, [m for m in members
                                                   if isinstance(m, WaterKpi | EnergyKpi)]))
        elif kind == "traffic":
            rows.append(_traffic_row(entity, [m for m in members if isinstance(m, TrafficKpi)]))
        else:
            rows.append(_shuttle_row(entity, [m for m in members if isinstance(m, ShuttleKpi)]))
    return rows


def _plural(entity: str) -> str:
    noun = entity.replace("_", " ")
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


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
    for feed in registry.feeds():
        if feed.target is None:
            continue
        judged = [r for r in rows if r.kind == feed.kind and r.kpi == feed.target.kpi]
        if judged:
            on = sum(r.status == "on track" for r in judged)
            lines.append(f"{feed.kind}: {on} of {len(judged)} {_plural(feed.entity)} on track")
    return lines


# -- rendering --------------------------------------------------------------------------------

MARK = {"on track": "✓ on track", "off track": "✗ off track", "no baseline": "? no baseline",
        "no target": "-", "no data": "? no data"}


def _num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def figure_text(value: float | int | None) -> str:
    """A feed KPI's figure: integers as counts, floats with one decimal (three significant
    digits below 1)."""
    if value is None or isinstance(value, int):
        return _num(value)
    if value == 0 or abs(value) >= 1:
        return f"{value:,.1f}"
    return f"{value:.3g}"


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
    targeted = [r for r in rows if r.kind in ("water", "energy", "traffic")]
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
    for feed in registry.feeds():
        mine = [r for r in rows if r.kind == feed.kind]
        if mine:
            out += _feed_table(feed, mine)
            out.append("")
    out += verdict(rows)
    if any(feed_of(r.kind) is None for r in rows):
        out.append("saving / reduction: 100 x (1 - use / baseline) over the period (traffic: "
                   "mean congestion index of the windows with traffic); status against the "
                   "target")
    if any(feed_of(r.kind) is not None for r in rows):
        out.append("feeds: each KPI over the windows that have it: the mean of the windows' "
                   "values, or as its column says (sum, max, min); the target KPI is the mean, "
                   "judged against the target as on_track judges its 24 h figure")
    return "\n".join(out) + "\n"


def _target_text(feed: FeedSpec) -> str:
    if feed.target is None:
        return ""
    rule = "at most" if feed.target.at_most is not None else "at least"
    return f"{rule} {feed.target.limit:g}"


def _feed_table(feed: FeedSpec, rows: Sequence[ReportRow]) -> list[str]:
    """One line per entity, one column per KPI."""
    target = feed.target
    heading = f"{feed.title} ({feed.kind}, per {feed.entity}, {feed.window_tag} windows)"
    if target is not None:
        heading += f": target {target.kpi} {_target_text(feed)}"
    header = [feed.entity, "windows"]
    for kpi in feed.kpis:
        how = period_agg(feed, kpi)
        header.append(kpi.name if how == "mean" else f"{kpi.name} ({how})")
    if target is not None:
        header += ["status", "windows on track"]
    body = []
    entities = sorted({r.entity for r in rows})
    for entity in entities:
        mine = {r.kpi: r for r in rows if r.entity == entity}
        first = next(iter(mine.values()))
        line = [entity, _num(first.windows)]
        line += [figure_text(mine[k.name].value) if k.name in mine else "-" for k in feed.kpis]
        if target is not None:
            judged = mine.get(target.kpi)
            line += [MARK[judged.status] if judged else "-",
                     _pct(judged.windows_on_track_pct if judged else None)]
        body.append(line)
    right = set(range(1, 2 + len(feed.kpis))) | ({len(header) - 1} if target else set())
    return [heading, *_table(header, body, right)]


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
