"""The operator dashboards, defined once and written for Grafana and for InfluxDB's own UI.

    python -m deploy.dashboards            # rewrite the generated files
    python -m deploy.dashboards --check    # exit 1 if a generated file is out of date

Writes deploy/grafana/dashboards/<uid>.json (provisioned by
deploy/grafana/provisioning/dashboards/citystream.yml) and
deploy/influxdb/templates/citystream.json (an `influx apply` template). Every query is Flux over
the `kpi` bucket with the macros both UIs define (`v.timeRangeStart`, `v.timeRangeStop`,
`v.windowPeriod`). A `{select:<tag>}` line becomes a filter on Grafana's multi-value variable of
that tag (`r.district =~ /^${district:regex}$/`, a predicate InfluxDB pushes down to storage,
unlike `contains()`, which runs per row) and is dropped for InfluxDB, whose dashboards show
every entity. For the same reason fields are picked with `==` chains, not `contains()`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streams.lineproto import PIPELINE_COUNTERS

DEPLOY = Path(__file__).resolve().parent
GRAFANA_DIR = DEPLOY / "grafana" / "dashboards"
TEMPLATE_FILE = DEPLOY / "influxdb" / "templates" / "citystream.json"
DATASOURCE = {"type": "influxdb", "uid": "citystream-influxdb"}
BUCKET = "kpi"
GRID_WIDTH = 24
SELECT = re.compile(r"^[ \t]*\{select:([a-z_]+)\}[ \t]*\n", re.M)

PanelKind = Literal["timeseries", "bars", "state", "table", "stat"]


@dataclass(frozen=True)
class Panel:
    """One chart: a Flux query and how to show it. `legend` is the tag naming each series;
    `target` draws a threshold (a KPI target) in the chart."""

    title: str
    kind: PanelKind
    query: str
    description: str = ""
    unit: str = ""
    legend: str = ""
    target: float | None = None
    width: int = 8
    height: int = 8


@dataclass(frozen=True)
class Variable:
    """A Grafana multi-value variable listing the values of `tag` in `measurement`."""

    tag: str
    measurement: str
    label: str

    @property
    def query(self) -> str:
        return (f'import "influxdata/influxdb/schema"\n\n'
                f'schema.tagValues(bucket: "{BUCKET}", tag: "{self.tag}", '
                f'predicate: (r) => r._measurement == "{self.measurement}", start: -30d)')


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


def _series(measurement: str, fld: str, tag: str, fn: str = "mean") -> str:
    """A KPI field per entity, aggregated to the dashboard's resolution."""
    return f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "{fld}")
  {{select:{tag}}}
  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)
  |> keep(columns: ["_time", "_value", "_field", "_measurement", "{tag}"])"""


def _latest(measurement: str, fld: str, tag: str) -> str:
    """The newest value of a KPI field per entity."""
    return f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "{fld}")
  {{select:{tag}}}
  |> last()
  |> keep(columns: ["_time", "_value", "_field", "_measurement", "{tag}"])"""


def _on_track(measurement: str, tag: str) -> str:
    return f"""from(bucket: "{BUCKET}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "on_track")
  {{select:{tag}}}
  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)
  |> map(fn: (r) => ({{r with _value: if r._value then 1 else 0}}))
  |> keep(columns: ["_time", "_value", "_field", "_measurement", "{tag}"])"""


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
    return "(" + " or ".join(f'r._field == "{f}"' for f in fields) + ")"


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

KPIS = Dashboard(
    "citystream-kpis", "citystream: city KPIs",
    "Water and energy savings against target per district, congestion against baseline per "
    "junction, and the shuttle routes' service (contract section 2, bucket kpi).",
    (
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
    ),
    (Variable("district", "water_kpi", "District"),
     Variable("junction", "traffic_kpi", "Junction"),
     Variable("route", "shuttle_kpi", "Route")),
)

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

DASHBOARDS = (KPIS, OPERATIONS)


def render_query(query: str, grafana: bool) -> str:
    """The query for Grafana (variable filters) or InfluxDB (no filters)."""
    def repl(match: re.Match[str]) -> str:
        tag = match.group(1)
        return (f"  |> filter(fn: (r) => r.{tag} =~ /^${{{tag}:regex}}$/)\n"
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


def _thresholds(target: float | None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "red" if target is not None else "green",
                                    "value": None}]
    if target is not None:
        steps.append({"color": "green", "value": target})
    return {"mode": "absolute", "steps": steps}


def _grafana_panel(panel: Panel, pid: int, grid: dict[str, int]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"thresholds": _thresholds(panel.target)}
    if panel.unit:
        defaults["unit"] = panel.unit
    if panel.legend:
        defaults["displayName"] = f"${{__field.labels.{panel.legend}}}"
    options: dict[str, Any] = {}
    ptype = {"timeseries": "timeseries", "bars": "bargauge", "state": "state-timeline",
             "table": "table", "stat": "stat"}[panel.kind]
    if panel.kind == "timeseries":
        defaults["custom"] = {"thresholdsStyle": {"mode": "line" if panel.target is not None
                                                  else "off"}}
        options = {"legend": {"displayMode": "list", "placement": "bottom"},
                   "tooltip": {"mode": "multi"}}
    elif panel.kind == "bars":
        options = {"orientation": "horizontal", "displayMode": "basic",
                   "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}
    elif panel.kind == "state":
        defaults["mappings"] = [{"type": "value", "options": {
            "1": {"text": "on track", "color": "green"},
            "0": {"text": "off track", "color": "red"}}}]
        defaults["color"] = {"mode": "thresholds"}
        options = {"showValue": "never", "mergeValues": True}
    elif panel.kind == "table":
        options = {"showHeader": True}
    return {
        "id": pid, "type": ptype, "title": panel.title, "description": panel.description,
        "gridPos": grid, "datasource": DATASOURCE,
        "targets": [{"refId": "A", "datasource": DATASOURCE,
                     "query": render_query(panel.query, grafana=True)}],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def grafana_dashboard(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON (schema 39, Grafana 11)."""
    panels: list[dict[str, Any]] = []
    for pid, (item, grid) in enumerate(_layout(dashboard), start=1):
        if isinstance(item, Row):
            panels.append({"id": pid, "type": "row", "title": item.title, "gridPos": grid,
                           "collapsed": False, "panels": []})
        else:
            panels.append(_grafana_panel(item, pid, grid))
    variables = [{
        "name": v.tag, "label": v.label, "type": "query", "datasource": DATASOURCE,
        "query": v.query, "definition": v.query, "refresh": 2, "multi": True,
        "includeAll": True, "current": {"selected": True, "text": ["All"],
                                        "value": ["$__all"]},
        "sort": 1,
    } for v in dashboard.variables]
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["citystream"], "timezone": "browser", "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


_INFLUX_KIND = {"timeseries": "Xy", "bars": "Table", "state": "Xy", "table": "Table",
                "stat": "Single_Stat"}


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


def influx_template() -> list[dict[str, Any]]:
    """Every dashboard as InfluxDB template resources (`influx apply -f`)."""
    resources = []
    for dashboard in DASHBOARDS:
        charts = [_influx_chart(item, grid) for item, grid in _layout(dashboard)
                  if isinstance(item, Panel)]
        resources.append({
            "apiVersion": "influxdata.com/v2alpha1", "kind": "Dashboard",
            "metadata": {"name": dashboard.uid},
            "spec": {"name": dashboard.title, "description": dashboard.description,
                     "charts": charts},
        })
    return resources


def generated_files() -> dict[Path, str]:
    """Path -> content of every generated file."""
    files = {GRAFANA_DIR / f"{d.uid}.json": _dump(grafana_dashboard(d)) for d in DASHBOARDS}
    files[TEMPLATE_FILE] = _dump(influx_template())
    return files


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a generated file differs from what would be written")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
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
