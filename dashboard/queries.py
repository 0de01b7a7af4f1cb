"""Flux for the dashboard and the shaping of its answers: pure functions, no I/O.

Three queries, all on the `kpi` bucket (contract section 2):

- `latest_query`: the newest point of every KPI series (the built-in kinds' and the city's
  declared feeds' `<kind>_kpi`) and of the `pipeline` counters (`last()` per series, which
  InfluxDB answers from its index without scanning the range);
- `alerts_query`: the newest point of every (kind, entity, rule) alert; those with `active` true
  are the active alerts;
- `history_query`: the small charts' series over the last hours: the rolling 24 h savings per
  district, the congestion index and its baseline per junction (averaged to 15 minutes), the
  shuttle route's occupancy, punctuality and battery, and per declared feed its chart KPI
  (`chart_field`: the target's KPI, else the first), averaged to 15 minutes when its windows are
  shorter.

Measurement, field and tag names of feeds come from the city file: every name goes into the
Flux through `flux_string`, like the bucket.

InfluxDB answers with one row per (series, field); `Row` is such a row as a plain dict with
`_measurement`, `_field`, `_value`, `time_ms` and the tags. `newest_points` and `series` turn
rows into what the views need; they are given the feeds' entity tags (`entity_tags`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Final

from models.feeds import FeedSpec

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
# A feed's chart is thinned to this when its windows are shorter.
FEED_CHART_EVERY_S: Final = 900
_KEEP: Final = ("_time", "_value", "_field", "_measurement", "district", "junction", "route")


def flux_string(text: str) -> str:
    """A Flux string literal (quotes and backslashes escaped, `${` kept literal)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def _any_of(column: str, values: Iterable[str]) -> str:
    return " or ".join(f"r.{column} == {flux_string(v)}" for v in values)


def chart_field(feed: FeedSpec) -> str:
    """The KPI a feed's small chart shows: its target's KPI, else its first KPI."""
    return feed.target.kpi if feed.target is not None else feed.kpis[0].name


def entity_tags(feeds: Iterable[FeedSpec] = ()) -> dict[str, str]:
    """The entity tag per measurement: the built-in ones and each feed's (`district` or its
    entity field's name)."""
    return {**ENTITY_TAG, **{feed.measurement: feed.entity for feed in feeds}}


def latest_query(bucket: str, lookback_d: int, feeds: Sequence[FeedSpec] = ()) -> str:
    """The newest point of each KPI (built-in and `feeds`) and `pipeline` series of the last
    `lookback_d` days."""
    measurements = (*KPI_MEASUREMENTS, *(f.measurement for f in feeds), "pipeline")
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: -{int(lookback_d)}d)\n"
            f"  |> filter(fn: (r) => {_any_of('_measurement', measurements)})\n"
            "  |> last()")


def alerts_query(bucket: str, lookback_d: int) -> str:
    """The newest point of each alert series (kind, entity, rule) of the last `lookback_d` days."""
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: -{int(lookback_d)}d)\n"
            '  |> filter(fn: (r) => r._measurement == "alert")\n'
            "  |> last()")


def _feed_every(feed: FeedSpec) -> str | None:
    return f"{FEED_CHART_EVERY_S // 60}m" if feed.window_s < FEED_CHART_EVERY_S else None


def history_query(bucket: str, hours: int, feeds: Sequence[FeedSpec] = ()) -> str:
    """The small charts' series over the last `hours`: `HISTORY_FIELDS` and each feed's
    `chart_field` (15-minute means when its windows are shorter)."""
    charts: list[tuple[str, tuple[str, ...], str | None]] = [
        (m, fields, HISTORY_EVERY.get(m)) for m, fields in HISTORY_FIELDS.items()]
    charts += [(f.measurement, (chart_field(f),), _feed_every(f)) for f in feeds]
    parts = []
    for i, (measurement, fields, every) in enumerate(charts):
        step = (f"\n  |> aggregateWindow(every: {every}, fn: mean, createEmpty: false)"
                if every else "")
        parts.append(f"t{i} = from(bucket: {flux_string(bucket)})\n"
                     f"  |> range(start: -{int(hours)}h)\n"
                     f"  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and "
                     f"({_any_of('_field', fields)})){step}")
    names = ", ".join(f"t{i}" for i in range(len(parts)))
    keep = ", ".join(flux_string(c) for c in dict.fromkeys((*_KEEP, *(f.entity for f in feeds))))
    return "\n".join(parts) + f"\nunion(tables: [{names}])\n  |> keep(columns: [{keep}])"


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


def newest_points(rows: Iterable[Row], tags: Mapping[str, str] = ENTITY_TAG,
                  ) -> dict[tuple[str, str], LatestPoint]:
    """Group `last()` rows by (measurement, entity); keep the fields of the newest timestamp.

    `tags` names the entity tag per measurement (`entity_tags(city.feeds)` to include the
    feeds); rows of other measurements are ignored.

    Every KPI field is written in every point (contract decision), so the newest timestamp
    carries a complete point; fields only seen at older timestamps belong to older points and
    are left out. Rows without the entity tag are ignored. `pipeline` points are keyed by
    ``component/instance``.
    """
    grouped: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        measurement = str(row.get("_measurement", ""))
        tag = tags.get(measurement)
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


def series(rows: Iterable[Row], tags: Mapping[str, str] = ENTITY_TAG) -> list[Series]:
    """History rows as one `Series` per (measurement, entity, field), in a stable order
    (`tags` as for `newest_points`)."""
    points: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for row in rows:
        measurement = str(row.get("_measurement", ""))
        tag = tags.get(measurement)
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
