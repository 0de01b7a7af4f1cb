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

And two on its `sensor_quality` points (contract 6), read less often (they change once an hour):

- `attention_query`: for every sensor whose latest hour of the last 24 needs attention (score
  below the threshold, rejected readings, or stuck; `models.attention`), that hour's fields and
  how long the sensor has been so (`bad_for_s`, from the first hour of its current run of bad
  hours; an hour without a point does not end a run);
- `coverage_query`: per kind and district, the sensors seen in the last 24 hours (`seen`) and
  those with readings in the newest hour (`reporting`, `_time` = that hour's end).

Measurement, field and tag names of feeds come from the city file: every name goes into the
Flux through `connectors.influxdb.flux` (`flux_string`, `flux_any_of`), like the bucket.

InfluxDB answers with one row per (series, field); `Row` is such a row as a plain dict with
`_measurement`, `_field`, `_value`, `time_ms` and the tags. `newest_points` and `series` turn
rows into what the views need; they are given the feeds' entity tags (`entity_tags`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Final

from connectors.influxdb.flux import flux_any_of, flux_string
from models.feeds import FeedSpec
from models.quality import HOUR_MS

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
            f"  |> filter(fn: (r) => {flux_any_of('_measurement', measurements)})\n"
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
                     f"({flux_any_of('_field', fields)})){step}")
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


# -- sensor_quality ----------------------------------------------------------------------------

QUALITY_FIELDS: Final = ("readings", "duplicates", "rejected", "late", "completeness_pct",
                         "stuck", "score")


def attention_query(bucket: str, hours: int, min_score: float) -> str:
    """The latest hour of each sensor needing attention in the last `hours` (module doc): one
    row per sensor with its tags, the hour's fields (a field left out of the point is null:
    `rejected` when there were none) and `bad_for_s`; `_time` is the hour's end."""
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: -{int(hours)}h)\n"
            '  |> filter(fn: (r) => r._measurement == "sensor_quality" and r.window == "1h")\n'
            f"  |> filter(fn: (r) => {flux_any_of('_field', QUALITY_FIELDS)})\n"
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
            '  |> sort(columns: ["_time"])\n'
            "  |> map(fn: (r) => ({r with bad:\n"
            f"      (if exists r.score then r.score < {float(min_score):.6f} else false)\n"
            "      or (if exists r.rejected then r.rejected > 0 else false)\n"
            "      or (if exists r.stuck then r.stuck else false)}))\n"
            '  |> stateDuration(fn: (r) => r.bad, column: "bad_for_s", unit: 1s)\n'
            "  |> tail(n: 1)\n"
            "  |> filter(fn: (r) => r.bad)\n"
            '  |> drop(columns: ["_measurement", "window", "bad"])')


def coverage_query(bucket: str, hours: int) -> str:
    """Per kind and district: `seen` (sensors with a point in the last `hours`) and
    `reporting` (with readings > 0 in the newest hour, whose end is `_time`)."""
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: -{int(hours)}h)\n"
            '  |> filter(fn: (r) => r._measurement == "sensor_quality" and '
            'r._field == "readings" and r.window == "1h")\n'
            "  |> last()\n"
            '  |> group(columns: ["kind", "district"])\n'
            "  |> reduce(identity: {seen: 0, reporting: 0, newest: 0}, fn: (r, accumulator) => {\n"
            "      t = int(v: r._time)\n"
            "      up = if r._value > 0 then 1 else 0\n"
            "      return {seen: accumulator.seen + 1,\n"
            "              reporting: if t > accumulator.newest then up\n"
            "                  else if t == accumulator.newest then accumulator.reporting + up\n"
            "                  else accumulator.reporting,\n"
            "              newest: if t > accumulator.newest then t else accumulator.newest}\n"
            "  })\n"
            "  |> map(fn: (r) => ({r with _time: time(v: r.newest)}))")


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class SensorHour:
    """A sensor's latest hour of `sensor_quality` that needs attention: the hour's end, the
    start of its current run of bad hours (`since_ms`) and the hour's fields (None: not in the
    point)."""

    kind: str
    district: str
    sensor_id: str
    time_ms: int
    since_ms: int
    readings: int | None
    duplicates: int | None
    rejected: int | None
    late: int | None
    completeness_pct: float | None
    stuck: bool | None
    score: float | None


def sensor_hours(rows: Iterable[Row]) -> list[SensorHour]:
    """The rows of `attention_query` (rows without a sensor are ignored)."""
    out = []
    for row in rows:
        if any(row.get(tag) in (None, "") for tag in ("kind", "district", "sensor_id")):
            continue
        time_ms = int(row["time_ms"])
        bad_for_s = max(0, _int(row.get("bad_for_s")) or 0)
        stuck = row.get("stuck")
        out.append(SensorHour(
            str(row["kind"]), str(row["district"]), str(row["sensor_id"]), time_ms,
            time_ms - bad_for_s * 1000 - HOUR_MS,
            _int(row.get("readings")), _int(row.get("duplicates")), _int(row.get("rejected")),
            _int(row.get("late")), _number(row.get("completeness_pct")),
            stuck if isinstance(stuck, bool) else None, _number(row.get("score"))))
    return out


@dataclass(frozen=True)
class KindCoverage:
    """Sensors of one kind in one district: seen in the last 24 h, and reporting (readings >
    0) in the newest hour, which ended at `hour_ms`."""

    seen: int
    reporting: int
    hour_ms: int


def kind_coverage(rows: Iterable[Row]) -> dict[tuple[str, str], KindCoverage]:
    """The rows of `coverage_query` by (kind, district)."""
    out = {}
    for row in rows:
        seen, reporting = _int(row.get("seen")), _int(row.get("reporting"))
        if row.get("kind") in (None, "") or row.get("district") in (None, "") or seen is None:
            continue
        out[(str(row["kind"]), str(row["district"]))] = KindCoverage(
            seen, reporting or 0, int(row["time_ms"]))
    return out
