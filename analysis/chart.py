"""The report as a PNG: one panel per kind, a bar per entity against its target (matplotlib,
Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from analysis.report import Period, ReportRow

GREEN, RED, GREY = "#2e9e5b", "#d64541", "#8a8f98"
TITLES = {"water": "Water saving", "energy": "Energy saving",
          "traffic": "Congestion reduction", "shuttle": "Shuttle on-time share"}


def _value(row: ReportRow) -> float:
    figure = row.on_time_pct if row.kind == "shuttle" else row.figure_pct
    return figure if figure is not None else 0.0


def _colour(row: ReportRow) -> str:
    return {"on track": GREEN, "off track": RED}.get(row.status, GREY)


def plot(rows: Sequence[ReportRow], period: Period, path: Path) -> None:
    """Write the chart to `path` (PNG). Raises ValueError when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in TITLES if any(r.kind == k for r in rows)]
    if not kinds:
        raise ValueError("no KPI windows in this period for the selection: nothing to chart")
    heights = [max(1.6, 0.45 * sum(r.kind == k for r in rows) + 1.0) for k in kinds]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        mine = [r for r in rows if r.kind == kind]
        names = [r.entity for r in mine]
        values = [_value(r) for r in mine]
        ax.barh(names, values, color=[_colour(r) for r in mine], height=0.6)
        for i, row in enumerate(mine):
            if row.target_pct is not None:
                ax.plot([row.target_pct] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
            label = "no baseline" if row.status == "no baseline" else f"{values[i]:.1f} %"
            ax.annotate(label, (values[i], i), xytext=(4 if values[i] >= 0 else -4, 0),
                        textcoords="offset points", va="center",
                        ha="left" if values[i] >= 0 else "right", fontsize=8)
        ax.axvline(0, color=GREY, linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(TITLES[kind] + (" (black: target)" if kind != "shuttle" else ""),
                     loc="left", fontsize=10)
        ax.set_xlabel("%")
        ax.grid(axis="x", alpha=0.3)
        low, high = min([0.0, *values]), max([0.0, *values,
                                              *(r.target_pct or 0.0 for r in mine)])
        pad = max(5.0, 0.15 * (high - low))
        ax.set_xlim(low - pad, high + pad)
    fig.suptitle(f"citystream: are we on track? {period.describe()}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
