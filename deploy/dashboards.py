"""The operator dashboards, defined once and written for Grafana and for InfluxDB's own UI.

    python -m deploy.dashboards                    # rewrite the generated files
    python -m deploy.dashboards --check            # exit 1 if a generated file is out of date
    python -m deploy.dashboards --city my-city.toml --out build/   # a city's own feeds

Writes deploy/grafana/dashboards/<uid>.json (provisioned by
deploy/grafana/provisioning/dashboards/citystream.yml) and
deploy/influxdb/templates/citystream.json (an `influx apply` template), from the shipped city
file unless `--city` names another. The definition (`Dashboard`, `Row`, `Panel`, `Variable`)
covers the four built-in kinds, the alerts and the pipeline, and for every feed declared in the
city file (CONTRACT section 5) a row: each KPI per entity as a time series, with a target its
rolling 24 h figure against the target line and an on-track stat per entity, and its alerts.
Grafana's side is built with Grafana's typed builders (`grafana-foundation-sdk`, pinned to the
Grafana version of deploy/compose), InfluxDB's template from plain resources.

Every query is Flux over the `kpi` bucket with the macros both UIs define (`v.timeRangeStart`,
`v.timeRangeStop`, `v.windowPeriod`). A `{select:<tag>}` line (or `{select:<tag>:<variable>}`)
becomes a filter on Grafana's multi-value variable of that tag (`r.district =~
/^${district:regex}$/`, a predicate InfluxDB pushes down to storage, unlike `contains()`, which
runs per row) and is dropped for InfluxDB, whose dashboards show every entity. For the same
reason fields are picked with `==` chains, not `contains()`. Names in queries are Flux string
literals (`connectors.influxdb.flux`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import bargauge as gbargauge
from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gdashboard
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import statetimeline as gstatetimeline
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import timeseries as gtimeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon_model
from grafana_foundation_sdk.models import dashboard as gmodel

from connectors.influxdb.flux import flux_any_of, flux_string
from models.city import DEFAULT_CITY_FILE, parse_city
from models.feeds import FeedSpec, KpiSpec
from models.records import PIPELINE_COUNTERS

DEPLOY = Path(__file__).resolve().parent
GRAFANA_DIR = DEPLOY / "grafana" / "dashboards"
TEMPLATE_FILE = DEPLOY / "influxdb" / "templates" / "citystream.json"
DATASOURCE = {"type": "influxdb", "uid": "citystream-influxdb"}
BUCKET = "kpi"
GRID_WIDTH = 24
SELECT = re.compile(r"^[ \t]*\{select:([a-z_][a-z0-9_]*)(?::([a-z_][a-z0-9_]*))?\}[ \t]*\n",
                    re.M)

PanelKind = Literal["timeseries", "bars", "state", "table", "stat"]


@dataclass(frozen=True)
class Panel:
    """One chart: a Flux query and how to show it. `legend` is the tag naming each series;
    `target` draws a threshold (a KPI target) in the chart, green at or above it, or below it
    with `good_below` (an `at_most` target); `on_off` shows 1 / 0 as on / off track."""

    title: str
    kind: PanelKind
    query: str
    description: str = ""
    unit: str = ""
    legend: str = ""
    target: float | None = None
    width: int = 8
    height: int = 8
    good_below: bool = False
    on_off: bool = False


@dataclass(frozen=True)
class Variable:
    """A Grafana multi-value variable listing the values of `tag` in `measurement`; named
    after the tag unless `name` says otherwise (a feed's entity variable)."""

    tag: str
    measurement: str
    label: str
    name: str = ""

    @property
    def var(self) -> str:
        """The variable's name, as `${<var>:regex}` uses it."""
        return self.name or self.tag

    @property
    def query(self) -> str:
        return (f'import "influxdata/influxdb/schema"\n\n'
                f"schema.tagValues(bucket: {flux_string(BUCKET)}, tag: {flux_string(self.tag)}, "
                f"predicate: (r) => r._measurement == {flux_string(self.measurement)}, "
                f"start: -30d)")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = field(default=())


def _kpi_filter(measurement: str, fld: str, window: str | None) -> str:
    """`r._measurement == "m" and r._field == "f"` (and, for a feed, its window's series)."""
    where = f"r._measurement == {flux_string(measurement)} and r._field == {flux_string(fld)}"
    return where + (f" and r.window == {flux_string(window)}" if window else "")


def _select(tag: str, var: str) -> str:
    return f"{{select:{tag}}}" if var == tag else f"{{select:{tag}:{var}}}"


def _keep(tag: str) -> str:
    return f'|> keep(columns: ["_time", "_value", "_field", "_measurement", {flux_string(tag)}])'


def _series(measurement: str, fld: str, tag: str, fn: str = "mean", window: str | None = None,
            var: str = "") -> str:
    """A KPI field per entity, aggregated to the dashboard's resolution."""
    return f"""from(bucket: {flux_string(BUCKET)})
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => {_kpi_filter(measurement, fld, window)})
  {_select(tag, var or tag)}
  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)
  {_keep(tag)}"""


def _latest(measurement: str, fld: str, tag: str) -> str:
    """The newest value of a KPI field per entity."""
    return f"""from(bucket: {flux_string(BUCKET)})
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => {_kpi_filter(measurement, fld, None)})
  {_select(tag, tag)}
  |> last()
  {_keep(tag)}"""


def _on_track(measurement: str, tag: str) -> str:
    return f"""from(bucket: {flux_string(BUCKET)})
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => {_kpi_filter(measurement, "on_track", None)})
  {_select(tag, tag)}
  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)
  |> map(fn: (r) => ({{r with _value: if r._value then 1 else 0}}))
  {_keep(tag)}"""


def _saving_row(kind: str, measurement: str, target: float) -> Row:
    name = kind.capitalize()
    return Row(name, (
        Panel(f"{name} saving over 24 h (target {target:g} %)", "bars",
              _latest(measurement, "saving_pct_24h", "district"),
              f"Each district's rolling 24 h {kind} saving against its baseline, newest window; "
              f"green at or above the {target:g} % target.",
              unit="percent", legend="district", target=target),
        Panel(f"{name} saving over 24 h", "timeseries",
              _series(measurement, "saving_pct_24h", "district"),
              f"saving_pct_24h per district; the line is the {target:g} % target.",
              unit="percent", legend="district", target=target),
        Panel(f"{name}: on track", "state", _on_track(measurement, "district"),
              "on_track (rolling 24 h saving >= target) per district over time.",
              legend="district"),
    ))


CONGESTION_VS_BASELINE = f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "traffic_kpi"
      and (r._field == "congestion_index" or r._field == "baseline_congestion_index"))
  {{select:junction}}
  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> map(fn: (r) => ({{_time: r._time, _measurement: r._measurement, junction: r.junction,
      _field: "congestion_vs_baseline",
      _value: if r.baseline_congestion_index > 0.0
          then r.congestion_index / r.baseline_congestion_index else 0.0}}))
  |> group(columns: ["_measurement", "junction", "_field"])"""

ACTIVE_ALERTS = f"""from(bucket: "{BUCKET}")
  |> range(start: 0)
  |> filter(fn: (r) => r._measurement == "alert")
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group(columns: ["kind", "entity", "rule"])
  |> last(column: "_time")
  |> filter(fn: (r) => r.active)
  |> group()
  |> keep(columns: ["_time", "kind", "entity", "rule", "value", "threshold", "message"])
  |> sort(columns: ["_time"], desc: true)"""

ALERT_HISTORY = f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "alert")
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> keep(columns: ["_time", "kind", "entity", "rule", "active", "value", "threshold",
      "message"])
  |> sort(columns: ["_time"], desc: true)"""

ALERTS_RAISED = f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "alert" and r._field == "active" and r._value)
  |> group(columns: ["_measurement", "_field", "rule"])
  |> aggregateWindow(every: 1h, fn: count, createEmpty: false)"""


def _any_field(fields: tuple[str, ...] | list[str]) -> str:
    return f"({flux_any_of('_field', fields)})"


def _pipeline_rate(fields: tuple[str, ...], unit: str) -> str:
    return f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "pipeline" and {_any_field(fields)})
  |> derivative(unit: {unit}, nonNegative: true)
  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)
  |> keep(columns: ["_time", "_value", "_field", "_measurement", "component", "instance"])"""


PIPELINE_TOTALS = f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "pipeline"
      and {_any_field(PIPELINE_COUNTERS)})
  |> last()
  |> group(columns: ["component", "_field"])
  |> sum()
  |> pivot(rowKey: ["component"], columnKey: ["_field"], valueColumn: "_value")
  |> group()"""

# -- declared feeds (CONTRACT section 5) ------------------------------------------------------

_UNITS = {"_pct": "percent", "_ugm3": "conμgm3", "_kwh": "kwatth", "_db": "dB", "_s": "s"}
_AGG_TEXT = {
    "count": "readings in the window", "sensors": "distinct sensors in the window",
    "sum": "sum of {field}", "mean": "mean of {field}", "min": "minimum of {field}",
    "max": "maximum of {field}", "delta": "register deltas of {field}, summed",
    "increase": "increases of {field}, summed",
    "count_above": "readings with {field} above {threshold:g}",
    "share_between": "share of readings with {min:g} <= {field} <= {max:g}",
    "ratio_pct": "100 x sum of {field} / sum of {of}",
}


def _unit(name: str) -> str:
    """A Grafana unit from the unit a feed's names end with (`_pct`, `_ugm3` ...)."""
    return next((unit for suffix, unit in _UNITS.items() if name.endswith(suffix)), "")


def _kpi_text(kpi: KpiSpec) -> str:
    return _AGG_TEXT[kpi.agg].format(**{k: v for k, v in kpi.model_dump().items()
                                        if v is not None})


def feed_variable(feed: FeedSpec) -> Variable:
    """The variable selecting a feed's entities: its own, named `<kind>_entity`, so that a
    feed per district or per route lists its own entities, not the built-in kinds'."""
    return Variable(feed.entity, feed.measurement, f"{feed.title} ({feed.entity})",
                    f"{feed.kind}_entity")


def _feed_on_track(feed: FeedSpec, var: str) -> str:
    """The newest on_track of each entity in the time range, as 1 / 0."""
    return f"""from(bucket: {flux_string(BUCKET)})
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => {_kpi_filter(feed.measurement, "on_track", feed.window_tag)})
  {_select(feed.entity, var)}
  |> last()
  |> map(fn: (r) => ({{r with _value: if r._value then 1 else 0}}))
  {_keep(feed.entity)}"""


def _feed_alerts(feed: FeedSpec, var: str) -> str:
    """The feed's alert points (raised and cleared) in the time range, newest first."""
    return f"""from(bucket: {flux_string(BUCKET)})
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "alert" and r.kind == {flux_string(feed.kind)})
  {_select("entity", var)}
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> keep(columns: ["_time", "entity", "rule", "active", "value", "threshold", "message"])
  |> sort(columns: ["_time"], desc: true)"""


def feed_row(feed: FeedSpec) -> Row:
    """A feed's row: each KPI per entity as a time series (the target KPI with its target
    line); with a target, the rolling 24 h figure against it and the newest on_track per
    entity; with alert rules, its alerts."""
    var = feed_variable(feed).var
    target = feed.target
    good_below = target is not None and target.at_most is not None
    rule = "at most" if good_below else "at least"
    per = f"per {feed.entity}, {feed.window_tag} windows"
    panels = []
    for kpi in feed.kpis:
        judged = target is not None and target.kpi == kpi.name
        note = f"; the line is the target ({rule} {target.limit:g})" if target and judged else ""
        panels.append(Panel(
            f"{feed.title}: {kpi.name}", "timeseries",
            _series(feed.measurement, kpi.name, feed.entity, window=feed.window_tag, var=var),
            f"{kpi.name} {per}: {_kpi_text(kpi)}{note}.", unit=_unit(kpi.name),
            legend=feed.entity, target=target.limit if target and judged else None,
            good_below=good_below))
    if target is not None:
        rolling = f"{target.kpi}_24h"
        panels.append(Panel(
            f"{feed.title}: {rolling} (target {rule} {target.limit:g})", "timeseries",
            _series(feed.measurement, rolling, feed.entity, window=feed.window_tag, var=var),
            f"{rolling} {per}: the mean of {target.kpi} over the entity's windows of the 24 h "
            f"ending at each window's end, which on_track judges; the line is the target.",
            unit=_unit(target.kpi), legend=feed.entity, target=target.limit,
            good_below=good_below))
        panels.append(Panel(
            f"{feed.title}: on track", "stat", _feed_on_track(feed, var),
            f"The newest on_track per {feed.entity} in the time range ({rolling} {rule} "
            f"{target.limit:g}).", legend=feed.entity, on_off=True))
    if feed.alerts:
        rules = "; ".join(f"{a.rule}: {a.kpi} {'above' if a.above is not None else 'below'} "
                          f"{a.threshold:g}" for a in feed.alerts)
        panels.append(Panel(
            f"{feed.title}: alerts", "table", _feed_alerts(feed, var),
            f"Alerts of kind {feed.kind} raised (active true) and cleared in the time range, "
            f"newest first. Rules: {rules}.", width=GRID_WIDTH - 8 * (len(panels) % 3)))
    return Row(feed.title, tuple(panels))


def kpis_dashboard(feeds: Sequence[FeedSpec] = ()) -> Dashboard:
    """The city KPIs: the built-in kinds, then a row per declared feed."""
    return Dashboard(
        "citystream-kpis", "citystream: city KPIs",
        "Water and energy savings against target per district, congestion against baseline "
        "per junction, the shuttle routes' service (contract section 2) and the feeds declared "
        "in the city file (contract section 5); bucket kpi.",
        (*_BUILTIN_ROWS, *(feed_row(feed) for feed in feeds)),
        (*_BUILTIN_VARIABLES, *(feed_variable(feed) for feed in feeds)),
    )


_BUILTIN_ROWS = (
    _saving_row("water", "water_kpi", 20.0),
    _saving_row("energy", "energy_kpi", 3.0),
    Row("Traffic", (
        Panel("Congestion reduction over 24 h (target 50 %)", "bars",
              _latest("traffic_kpi", "reduction_pct_24h", "junction"),
              "Each junction's rolling 24 h congestion reduction against its baseline.",
              unit="percent", legend="junction", target=50.0),
        Panel("Congestion vs baseline", "timeseries", CONGESTION_VS_BASELINE,
              "congestion_index / baseline_congestion_index: 1 is the baseline, the "
              "line at 0.5 is the target (half the congestion).",
              legend="junction", target=0.5),
        Panel("Traffic: on track", "state", _on_track("traffic_kpi", "junction"),
              "on_track (rolling 24 h reduction >= target) per junction.",
              legend="junction"),
    )),
    Row("Shuttle", (
        Panel("Occupancy", "timeseries", _series("shuttle_kpi", "occupancy_pct", "route"),
              "Passengers / seats of in-service shuttles per route.",
              unit="percent", legend="route", width=6),
        Panel("On time", "timeseries", _series("shuttle_kpi", "on_time_pct", "route"),
              "Share of stop arrivals between 60 s early and 180 s late.",
              unit="percent", legend="route", width=6),
        Panel("Battery", "timeseries", _series("shuttle_kpi", "mean_battery_pct", "route"),
              "Mean battery of the route's shuttles; the line is the low-battery alert.",
              unit="percent", legend="route", target=20.0, width=6),
        Panel("Availability", "timeseries",
              _series("shuttle_kpi", "availability_pct", "route"),
              "Share of the configured fleet in service.",
              unit="percent", legend="route", width=6),
    )),
)
_BUILTIN_VARIABLES = (Variable("district", "water_kpi", "District"),
                      Variable("junction", "traffic_kpi", "Junction"),
                      Variable("route", "shuttle_kpi", "Route"))

OPERATIONS = Dashboard(
    "citystream-operations", "citystream: alerts and pipeline",
    "Alerts raised and cleared by the KPI workers, and the pipeline's own counters.",
    (
        Row("Alerts", (
            Panel("Active alerts", "table", ACTIVE_ALERTS,
                  "Every (kind, entity, rule) whose latest alert point is active, newest first.",
                  width=12, height=9),
            Panel("Alert history", "table", ALERT_HISTORY,
                  "Alerts raised (active true) and cleared in the time range.",
                  width=12, height=9),
            Panel("Alerts raised per hour", "timeseries", ALERTS_RAISED,
                  "Count of alerts raised per hour, by rule.", legend="rule", width=24,
                  height=7),
        )),
        Row("Pipeline", (
            Panel("Throughput", "timeseries",
                  _pipeline_rate(("received", "accepted", "written"), "1s"),
                  "Readings received and accepted by ingest, points written by the sink, "
                  "per second.", unit="reqps", legend="component", width=12),
            Panel("Rejected, late and duplicate", "timeseries",
                  _pipeline_rate(("rejected", "late", "duplicates"), "1m"),
                  "Dead-lettered, late and duplicate readings per minute.",
                  legend="component", width=12),
            Panel("Counters", "table", PIPELINE_TOTALS,
                  "Each component's counters summed over its instances (since they started).",
                  width=24, height=6),
        )),
    ),
)



def dashboards_for(feeds: Sequence[FeedSpec]) -> tuple[Dashboard, ...]:
    """Every dashboard, for a city with these declared feeds."""
    return kpis_dashboard(feeds), OPERATIONS


def shipped_feeds() -> tuple[FeedSpec, ...]:
    """The feeds of the shipped city file (read without changing the process's kinds)."""
    return tuple(parse_city(DEFAULT_CITY_FILE.read_text(encoding="utf-8"),
                            str(DEFAULT_CITY_FILE)).feeds)


DASHBOARDS = dashboards_for(shipped_feeds())
"""The dashboards of the shipped city: what the committed files hold."""


def render_query(query: str, grafana: bool) -> str:
    """The query for Grafana (variable filters) or InfluxDB (no filters)."""
    def repl(match: re.Match[str]) -> str:
        tag, var = match.group(1), match.group(2) or match.group(1)
        return (f"  |> filter(fn: (r) => r.{tag} =~ /^${{{var}:regex}}$/)\n"
                if grafana else "")
    return SELECT.sub(repl, query)


def _layout(dashboard: Dashboard) -> list[tuple[Row | Panel, dict[str, int]]]:
    placed: list[tuple[Row | Panel, dict[str, int]]] = []
    y = 0
    for row in dashboard.rows:
        placed.append((row, {"x": 0, "y": y, "w": GRID_WIDTH, "h": 1}))
        y += 1
        x, line_h = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_h = 0, y + line_h, 0
            placed.append((panel, {"x": x, "y": y, "w": panel.width, "h": panel.height}))
            x += panel.width
            line_h = max(line_h, panel.height)
        y += line_h
    return placed


# -- Grafana, with Grafana's typed builders (grafana-foundation-sdk) --------------------------


class FluxQuery(cogvariants.Dataquery):
    """A Flux query of Grafana's InfluxDB datasource (the SDK has no InfluxDB query type; its
    README's way for other datasources is a `Dataquery` of one's own)."""

    def __init__(self, query: str, ref_id: str = "A",
                 datasource: gmodel.DataSourceRef | None = None) -> None:
        self.query = query
        self.ref_id = ref_id
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {"refId": self.ref_id}
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        payload["query"] = self.query
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        source = data.get("datasource")
        return cls(str(data.get("query", "")), str(data.get("refId", "A")),
                   gmodel.DataSourceRef.from_json(source) if source else None)


class FluxQueryBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builds a `FluxQuery` on the citystream datasource."""

    def __init__(self, query: str) -> None:
        self._internal = FluxQuery(query, datasource=_datasource())

    def build(self) -> FluxQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self


class _PanelBuilder(Protocol):
    """What the SDK's panel builders (timeseries, bargauge ...) have in common."""

    def id(self, id_val: int) -> Self: ...
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def grid_pos(self, grid_pos: gmodel.GridPos) -> Self: ...
    def datasource(self, datasource: gmodel.DataSourceRef) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery]) -> Self: ...
    def thresholds(self, thresholds: cogbuilder.Builder[gmodel.ThresholdsConfig]) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def display_name(self, display_name: str) -> Self: ...
    def mappings(self, mappings: list[gmodel.ValueMapping]) -> Self: ...
    def color_scheme(self, color: cogbuilder.Builder[gmodel.FieldColor]) -> Self: ...
    def build(self) -> gmodel.Panel: ...


B = TypeVar("B", bound=_PanelBuilder)
AnyPanel = (gtimeseries.Panel | gbargauge.Panel | gstatetimeline.Panel | gstat.Panel
            | gtable.Panel)


def _grid(grid: dict[str, int]) -> gmodel.GridPos:
    return gmodel.GridPos(h=grid["h"], w=grid["w"], x=grid["x"], y=grid["y"])


def _datasource() -> gmodel.DataSourceRef:
    return gmodel.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])


def _thresholds(target: float | None, good_below: bool = False) -> gdashboard.ThresholdsConfig:
    """Red below the target and green from it (or the other way round with `good_below`);
    without a target, plain green."""
    low, high = ("green", "red") if good_below else ("red", "green")
    steps = [gmodel.Threshold(value=None, color=low if target is not None else "green")]
    if target is not None:
        steps.append(gmodel.Threshold(value=target, color=high))
    return gdashboard.ThresholdsConfig().mode(gmodel.ThresholdsMode.ABSOLUTE).steps(steps)


ON_OFF_TRACK = [gmodel.ValueMap(options={
    "1": gmodel.ValueMappingResult(text="on track", color="green"),
    "0": gmodel.ValueMappingResult(text="off track", color="red")})]


def _visual(panel: Panel) -> AnyPanel:
    """The SDK builder of the panel's visualisation, with its options."""
    last_value = gcommon.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    if panel.kind == "timeseries":
        mode = (gcommon_model.GraphThresholdsStyleMode.LINE if panel.target is not None
                else gcommon_model.GraphThresholdsStyleMode.OFF)
        return (gtimeseries.Panel()
                .thresholds_style(gcommon.GraphThresholdsStyleConfig().mode(mode))
                .legend(gcommon.VizLegendOptions()
                        .display_mode(gcommon_model.LegendDisplayMode.LIST)
                        .placement(gcommon_model.LegendPlacement.BOTTOM).show_legend(True))
                .tooltip(gcommon.VizTooltipOptions()
                         .mode(gcommon_model.TooltipDisplayMode.MULTI)
                         .sort(gcommon_model.SortOrder.NONE)))
    if panel.kind == "bars":
        return (gbargauge.Panel().orientation(gcommon_model.VizOrientation.HORIZONTAL)
                .display_mode(gcommon_model.BarGaugeDisplayMode.BASIC)
                .reduce_options(last_value))
    if panel.kind == "state":
        return (gstatetimeline.Panel().show_value(gcommon_model.VisibilityMode.NEVER)
                .merge_values(True)
                .legend(gcommon.VizLegendOptions()
                        .display_mode(gcommon_model.LegendDisplayMode.LIST)
                        .placement(gcommon_model.LegendPlacement.BOTTOM).show_legend(True))
                .tooltip(gcommon.VizTooltipOptions()
                         .mode(gcommon_model.TooltipDisplayMode.SINGLE)
                         .sort(gcommon_model.SortOrder.NONE)))
    if panel.kind == "stat":
        return (gstat.Panel().reduce_options(last_value)
                .color_mode(gcommon_model.BigValueColorMode.BACKGROUND)
                .text_mode(gcommon_model.BigValueTextMode.VALUE_AND_NAME)
                .graph_mode(gcommon_model.BigValueGraphMode.NONE))
    return gtable.Panel().show_header(True)


def _configured(builder: B, panel: Panel, pid: int, grid: dict[str, int]) -> B:
    builder = (builder.id(pid).title(panel.title).description(panel.description)
               .grid_pos(_grid(grid)).datasource(_datasource())
               .with_target(FluxQueryBuilder(render_query(panel.query, grafana=True)))
               .thresholds(_thresholds(panel.target, panel.good_below)))
    if panel.unit:
        builder = builder.unit(panel.unit)
    if panel.legend:
        builder = builder.display_name(f"${{__field.labels.{panel.legend}}}")
    if panel.kind == "state" or panel.on_off:
        builder = (builder.mappings(list(ON_OFF_TRACK))
                   .color_scheme(gdashboard.FieldColor()
                                 .mode(gmodel.FieldColorModeId.THRESHOLDS)))
    return builder


class _FluxVariableModel(gmodel.VariableModel):
    """A query variable that also carries `definition`, the query text Grafana's variable list
    shows (the SDK's model has no such field)."""

    definition: str | None = None

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        if self.definition is not None:
            payload["definition"] = self.definition
        return payload


class FluxVariable(gdashboard.QueryVariable):
    """The SDK's query variable builder, with `definition`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._flux = _FluxVariableModel(type_val=gmodel.VariableType.QUERY, name=name)
        self._internal = self._flux

    def definition(self, definition: str) -> Self:
        self._flux.definition = definition
        return self


def _variable(variable: Variable) -> FluxVariable:
    return (FluxVariable(variable.var).label(variable.label)
            .datasource(_datasource()).query(variable.query).definition(variable.query)
            .refresh(gmodel.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True)
            .include_all(True)
            .current(gmodel.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .sort(gmodel.VariableSort.ALPHABETICAL_ASC))


def grafana_builder(dashboard: Dashboard) -> gdashboard.Dashboard:
    """The dashboard as the SDK's dashboard builder (schema 39, Grafana 11)."""
    board = (gdashboard.Dashboard(dashboard.title).uid(dashboard.uid)
             .description(dashboard.description).tags(["citystream"]).timezone("browser")
             .editable().version(1).refresh("30s").time("now-24h", "now")
             .annotations([]).variables([]))
    for pid, (item, grid) in enumerate(_layout(dashboard), start=1):
        if isinstance(item, Row):
            board = board.with_row(gdashboard.Row(item.title).id(pid)
                                   .grid_pos(_grid(grid)).collapsed(False))
        else:
            board = board.with_panel(_configured(_visual(item), item, pid, grid))
    for variable in dashboard.variables:
        board = board.with_variable(_variable(variable))
    return board


def grafana_dashboard(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON (schema 39, Grafana 11)."""
    board: dict[str, Any] = json.loads(JSONEncoder().encode(grafana_builder(dashboard).build()))
    return board


# -- InfluxDB's UI: template resources ---------------------------------------------------------

# A stat panel shows one value per entity: a table in InfluxDB (its single stat shows one value).
_INFLUX_KIND = {"timeseries": "Xy", "bars": "Table", "state": "Xy", "table": "Table",
                "stat": "Table"}


def _influx_chart(panel: Panel, grid: dict[str, int]) -> dict[str, Any]:
    chart: dict[str, Any] = {
        "kind": _INFLUX_KIND[panel.kind], "name": panel.title, "note": panel.description,
        "xPos": grid["x"] // 2, "yPos": grid["y"], "width": max(1, grid["w"] // 2),
        "height": max(1, grid["h"] // 2),
        "queries": [{"query": render_query(panel.query, grafana=False)}],
    }
    if chart["kind"] == "Xy":
        chart.update({"geom": "step" if panel.kind == "state" else "line",
                      "xCol": "_time", "yCol": "_value", "position": "overlaid",
                      "axes": [{"name": "x", "base": "10", "scale": "linear"},
                               {"name": "y", "base": "10", "scale": "linear",
                                "suffix": " %" if panel.unit == "percent" else ""}],
                      "colors": [{"name": "nineteen", "type": "scale", "hex": "#31C0F6"},
                                 {"name": "eighty", "type": "scale", "hex": "#A500A5"},
                                 {"name": "eightyfour", "type": "scale", "hex": "#FF7E27"}]})
    elif chart["kind"] == "Table":
        chart.update({"colors": [{"name": "base", "type": "text", "hex": "#00C9FF"}],
                      "tableOptions": {"verticalTimeAxis": True, "wrapping": "truncate"}})
    else:
        chart["colors"] = [{"name": "base", "type": "text", "hex": "#00C9FF"}]
    return chart


def influx_template(dashboards: Sequence[Dashboard] = DASHBOARDS) -> list[dict[str, Any]]:
    """Every dashboard as InfluxDB template resources (`influx apply -f`)."""
    resources = []
    for dashboard in dashboards:
        charts = [_influx_chart(item, grid) for item, grid in _layout(dashboard)
                  if isinstance(item, Panel)]
        resources.append({
            "apiVersion": "influxdata.com/v2alpha1", "kind": "Dashboard",
            "metadata": {"name": dashboard.uid},
            "spec": {"name": dashboard.title, "description": dashboard.description,
                     "charts": charts},
        })
    return resources


def generated_files(feeds: Sequence[FeedSpec] | None = None,
                    out: Path = DEPLOY) -> dict[Path, str]:
    """Path -> content of every generated file, for a city with these feeds (default: the
    shipped city's), under `out` (default: deploy/, where they are committed)."""
    dashboards = DASHBOARDS if feeds is None else dashboards_for(feeds)
    grafana_dir = out / GRAFANA_DIR.relative_to(DEPLOY)
    files = {grafana_dir / f"{d.uid}.json": _dump(grafana_dashboard(d)) for d in dashboards}
    files[out / TEMPLATE_FILE.relative_to(DEPLOY)] = _dump(influx_template(dashboards))
    return files


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a generated file differs from what would be written")
    parser.add_argument("--city", type=Path, metavar="FILE",
                        help="the city file whose declared feeds get panels [default: the "
                             "shipped one, models/cities/milton-keynes.toml]")
    parser.add_argument("--out", type=Path, default=DEPLOY, metavar="DIR",
                        help="write grafana/dashboards/*.json and "
                             "influxdb/templates/citystream.json under DIR [default: deploy/]")
    args = parser.parse_args(argv)
    feeds = None
    if args.city is not None:
        from models.errors import CityModelError

        try:
            feeds = tuple(parse_city(args.city.read_text(encoding="utf-8"),
                                     str(args.city)).feeds)
        except (OSError, UnicodeDecodeError, CityModelError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    stale = []
    for path, text in generated_files(feeds, args.out).items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    for path in stale:
        print(f"{path} is out of date: run python -m deploy.dashboards", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
