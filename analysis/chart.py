"""The report as a PNG: one panel per kind, a bar per entity against its target (matplotlib,
Agg backend: no display needed). A declared feed's panel shows its target KPI's period figure
per entity against the target (a feed without a target: its first KPI, without a mark)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.report import Period, ReportRow, feed_of, figure_text
from models import kinds as registry

GREEN, RED, GREY = "#2e9e5b", "#d64541", "#8a8f98"
TITLES = {"water": "Water saving", "energy": "Energy saving",
          "traffic": "Congestion reduction", "shuttle": "Shuttle on-time share"}


@dataclass(frozen=True)
class _Chart:
    """One panel: its title, x-axis label and the rows it draws (one bar each)."""

    title: str
    unit: str
    rows: list[ReportRow]


def _value(row: ReportRow) -> float:
    if row.kpi is not None:
        figure = None if row.value is None else float(row.value)
    else:
        figure = row.on_time_pct if row.kind == "shuttle" else row.figure_pct
    return figure if figure is not None else 0.0


def _target(row: ReportRow) -> float | None:
    return row.target if row.kpi is not None else row.target_pct


def _colour(row: ReportRow) -> str:
    return {"on track": GREEN, "off track": RED}.get(row.status, GREY)


def _charts(rows: Sequence[ReportRow]) -> list[_Chart]:
    charts = []
    for kind in registry.names():
        mine = [r for r in rows if r.kind == kind]
        feed = feed_of(kind)
        if not mine:
            continue
        if feed is None:
            title = TITLES[kind] + (" (black: target)" if kind != "shuttle" else "")
            charts.append(_Chart(title, "%", mine))
            continue
        shown = feed.target.kpi if feed.target is not None else feed.kpis[0].name
        bars = [r for r in mine if r.kpi == shown]
        title = f"{feed.title}: {shown}, {bars[0].period_agg} over the period"
        if feed.target is not None:
            rule = "at most" if feed.target.at_most is not None else "at least"
            title += f" (black: target, {rule} {feed.target.limit:g})"
        charts.append(_Chart(title, shown, bars))
    return charts


def _label(row: ReportRow, value: float) -> str:
    if row.status == "no baseline":
        return "no baseline"
    if row.status == "no data" or (row.kpi is not None and row.value is None):
        return "no data"
    return f"{value:.1f} %" if row.kpi is None else figure_text(row.value)


def plot(rows: Sequence[ReportRow], period: Period, path: Path) -> None:
    """Write the chart to `path` (PNG). Raises ValueError when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = _charts(rows)
    if not charts:
        raise ValueError("no KPI windows in this period for the selection: nothing to chart")
    heights = [max(1.6, 0.45 * len(c.rows) + 1.0) for c in charts]
    fig, axes = plt.subplots(len(charts), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, chart in zip(axes[:, 0], charts, strict=True):
        mine = chart.rows
        names = [r.entity for r in mine]
        values = [_value(r) for r in mine]
        ax.barh(names, values, color=[_colour(r) for r in mine], height=0.6)
        for i, row in enumerate(mine):
            target = _target(row)
            if target is not None:
                ax.plot([target] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
            ax.annotate(_label(row, values[i]), (values[i], i),
                        xytext=(4 if values[i] >= 0 else -4, 0), textcoords="offset points",
                        va="center", ha="left" if values[i] >= 0 else "right", fontsize=8)
        ax.axvline(0, color=GREY, linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(chart.title, loc="left", fontsize=10)
        ax.set_xlabel(chart.unit)
        ax.grid(axis="x", alpha=0.3)
        low = min([0.0, *values])
        high = max([0.0, *values, *(t for r in mine if (t := _target(r)) is not None)])
        span = high - low
        pad = max(5.0, 0.15 * span) if chart.unit == "%" else (0.15 * span or 1.0)
        ax.set_xlim(low - pad, high + pad)
    fig.suptitle(f"citystream: are we on track? {period.describe()}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
