"""Flux for the dashboard and the shaping of its answers: pure functions, no I/O.

Three queries, all on the `kpi` bucket (contract section 2):

- `latest_query`: the newest point of every KPI series and of the `pipeline` counters
  (`last()` per series, which InfluxDB answers from its index without scanning the range);
- `alerts_query`: the newest point of every (kind, entity, rule) alert; those with `active` true
  are the active alerts;
- `history_query`: the small charts' series over the last hours: the rolling 24 h savings per
  district, the congestion index and its baseline per junction (averaged to 15 minutes) and the
  shuttle route's occupancy, punctuality and battery.

InfluxDB answers with one row per (series, field); `Row` is such a row as a plain dict with
`_measurement`, `_field`, `_value`, `time_ms` and the tags. `newest_points` and `series` turn
rows into what the views need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Final

Row = Mapping[str, Any]
FieldValue = float | int | bool | str

KPI_MEASUREMENTS: Final = ("water_kpi", "energy_kpi", "traffic_kpi", "shuttle_kpi")
# The tag that names a point's entity, per measurement.
ENTITY_TAG: Final[dict[str, str]] = {
    "water_kpi": "district", "energy_kpi": "district", "traffic_kpi": "junction",
    "shuttle_kpi": "route", "alert": "entity", "pipeline": "component"}

HISTORY_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "water_kpi": ("saving_pct_24h",),
    "energy_kpi": ("saving_pct_24h",),
    "traffic_kpi": ("congestion_index", "baseline_congestion_index"),
    "shuttle_kpi": ("occupancy_pct", "on_time_pct", "mean_battery_pct"),
}
# Traffic windows are 5 minutes: 288 a day per junction is more than a small chart can show.
HISTORY_EVERY: Final[dict[str, str]] = {"traffic_kpi": "15m"}
_KEEP: Final = '["_time", "_value", "_field", "_measurement", "district", "junction", "route"]'


def flux_string(text: str) -> str:
    """A Flux string literal (quotes and backslashes escaped, `${` kept literal)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def _any_of(column: str, values: Iterable[str]) -> str:
    return " or ".join(f"r.{column} == {flux_string(v)}" for v in values)


def latest_query(bucket: str, lookback_d: int) -> str:
    """The newest point of each KPI and `pipeline` series of the last `lookback_d` days."""
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: -{int(lookback_d)}d)\n"
            f"  |> filter(fn: (r) => {_any_of('_measurement', (*KPI_MEASUREMENTS, 'pipeline'))})\n"
            "  |> last()")


def alerts_query(bucket: str, lookback_d: int) -> str:
    """The newest point of each alert series (kind, entity, rule) of the last `lookback_d` days."""
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: -{int(lookback_d)}d)\n"
            '  |> filter(fn: (r) => r._measurement == "alert")\n'
            "  |> last()")


def history_query(bucket: str, hours: int) -> str:
    """The small charts' series (`HISTORY_FIELDS`) over the last `hours`."""
    parts = []
    for i, (measurement, fields) in enumerate(HISTORY_FIELDS.items()):
        every = HISTORY_EVERY.get(measurement)
        step = (f"\n  |> aggregateWindow(every: {every}, fn: mean, createEmpty: false)"
                if every else "")
        parts.append(f"t{i} = from(bucket: {flux_string(bucket)})\n"
                     f"  |> range(start: -{int(hours)}h)\n"
                     f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and "
                     f"({_any_of('_field', fields)})){step}")
    names = ", ".join(f"t{i}" for i in range(len(parts)))
    return "\n".join(parts) + f"\nunion(tables: [{names}])\n  |> keep(columns: {_KEEP})"


@dataclass(frozen=True)
class LatestPoint:
    """The newest point of one entity in one measurement: its time (ms), tags and fields."""

    measurement: str
    entity: str
    time_ms: int
    tags: dict[str, str]
    fields: dict[str, FieldValue]


def _tags(row: Row) -> dict[str, str]:
    return {k: str(v) for k, v in row.items()
            if not k.startswith("_") and k not in ("result", "table", "time_ms")}


def newest_points(rows: Iterable[Row]) -> dict[tuple[str, str], LatestPoint]:
    """Group `last()` rows by (measurement, entity); keep the fields of the newest timestamp.

    Every KPI field is written in every point (contract decision), so the newest timestamp
    carries a complete point; fields only seen at older timestamps belong to older points and
    are left out. Rows without the entity tag are ignored. `pipeline` points are keyed by
    ``component/instance``.
    """
    grouped: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        measurement = str(row.get("_measurement", ""))
        tag = ENTITY_TAG.get(measurement)
        if tag is None or row.get(tag) in (None, ""):
            continue
        entity = str(row[tag])
        if measurement == "pipeline":
            entity = f"{entity}/{row.get('instance', '')}"
        elif measurement == "alert":
            entity = f"{row.get('kind', '')}/{entity}/{row.get('rule', '')}"
        grouped.setdefault((measurement, entity), []).append(row)
    out: dict[tuple[str, str], LatestPoint] = {}
    for (measurement, entity), group in grouped.items():
        newest = max(int(r["time_ms"]) for r in group)
        at = [r for r in group if int(r["time_ms"]) == newest]
        out[(measurement, entity)] = LatestPoint(
            measurement, entity, newest, _tags(at[0]),
            {str(r["_field"]): r["_value"] for r in at if r.get("_value") is not None})
    return out


@dataclass
class Series:
    """One small chart's line: `t` (ms) and `v`, sorted by time."""

    measurement: str
    entity: str
    field: str
    t: list[int] = dataclass_field(default_factory=list)
    v: list[float] = dataclass_field(default_factory=list)


def series(rows: Iterable[Row]) -> list[Series]:
    """History rows as one `Series` per (measurement, entity, field), in a stable order."""
    points: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for row in rows:
        measurement = str(row.get("_measurement", ""))
        tag = ENTITY_TAG.get(measurement)
        value = row.get("_value")
        if tag is None or row.get(tag) in (None, "") or isinstance(value, bool):
            continue
        if not isinstance(value, int | float):
            continue
        key = (measurement, str(row[tag]), str(row.get("_field", "")))
        points.setdefault(key, []).append((int(row["time_ms"]), float(value)))
    out = []
    for key in sorted(points):
        ordered = sorted(points[key])
        out.append(Series(*key, t=[t for t, _ in ordered], v=[v for _, v in ordered]))
    return out
