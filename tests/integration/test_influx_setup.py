"""InfluxDB as operators and analysts meet it: onboarding (retention, InfluxQL mappings, the
roll-up task), every Grafana and InfluxDB-template query run against seeded KPI points, and the
roll-up task's output equal to hourly aggregates computed here."""

from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from statistics import fmean
from typing import Any

import pytest

from connectors.influxdb.admin import InfluxAdmin, find_bucket
from deploy import dashboards
from deploy.influxdb.provision import Bucket, Plan, provision, task_name
from deploy.local.stack import Stack
from models.feeds import FeedSpec, kpi_model
from models.records import Alert, Record
from tests.integration import kpi_seed
from tests.integration.influx import HOUR_MS, Influx, hour_floor, influx_for_test
from tests.unit.deploy.test_dashboards import grafana_queries

pytestmark = pytest.mark.influxdb

NOW_MS = int(time.time() * 1000)
HOUR = hour_floor(NOW_MS)
SEED_START = HOUR - 30 * HOUR_MS

# the shipped city's feeds (air_quality, car_park, bus_occupancy), which the committed dashboards
# show; their entities are none of the built-in kinds', so a feed panel that filtered by a
# built-in variable (or the wrong measurement) would find no rows
FEEDS = dashboards.shipped_feeds()
FEED_ENTITIES = {"air_quality": ("wolverton", "newport-pagnell"),
                 "car_park": ("cp-station", "cp-theatre"), "bus_occupancy": ("300", "41")}


def feed_entities(feed: FeedSpec) -> tuple[str, str]:
    return FEED_ENTITIES.get(feed.kind, (f"{feed.kind.replace('_', '-')}-a",
                                         f"{feed.kind.replace('_', '-')}-b"))


def feed_kpis(feed: FeedSpec, start_ms: int, end_ms: int, seed: int) -> list[Record]:
    """Every window of `feed` ending in (start_ms, end_ms] for its two entities, every KPI
    set (counts integer), with a target also its rolling figure and on_track."""
    rng = random.Random(seed)
    cls = kpi_model(feed)
    window_ms = feed.window_s * 1000
    out: list[Record] = []
    for entity in feed_entities(feed):
        for end in range((start_ms // window_ms + 1) * window_ms, end_ms + 1, window_ms):
            data: dict[str, Any] = {feed.entity: entity, "window_end_ms": end}
            for kpi in feed.kpis:
                if kpi.is_integer:
                    data[kpi.name] = rng.randint(0, 30)
                elif feed.target is not None and kpi.name == feed.target.kpi:
                    data[kpi.name] = feed.target.limit * rng.uniform(0.5, 1.5)
                else:
                    data[kpi.name] = rng.uniform(0.0, 100.0)
            if feed.target is not None:
                rolling = feed.target.limit * rng.uniform(0.7, 1.3)
                data[f"{feed.target.kpi}_24h"] = rolling
                data["on_track"] = feed.target.met(rolling)
            out.append(cls.model_validate(data))
    return out


def feed_alerts(feed: FeedSpec, at_ms: int) -> list[Record]:
    """The feed's first alert rule raised and cleared on its first entity, its last rule
    raised (and still active) on its second."""
    first, second = feed_entities(feed)
    out: list[Record] = []
    for entity, rule, ts_ms, active in (
            (first, feed.alerts[0], at_ms, True), (first, feed.alerts[0], at_ms + 600_000, False),
            (second, feed.alerts[-1], at_ms + 1_200_000, True)):
        beyond = 1.0 if rule.above is not None else -1.0
        out.append(kpi_seed.alert(entity, rule.rule, ts_ms, active, kind=feed.kind,
                                  value=rule.threshold + beyond, threshold=rule.threshold))
    return out


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Iterator[tuple[Influx, list[Record]]]:
    stack.ensure("influxdb")
    influx = influx_for_test(stack)
    records: list[Record] = kpi_seed.kpi_records(SEED_START, HOUR)
    records += [
        kpi_seed.alert("bletchley", "leak", HOUR - 5 * HOUR_MS, True),
        kpi_seed.alert("bletchley", "leak", HOUR - 4 * HOUR_MS, False),
        kpi_seed.alert("central-mk", "leak", HOUR - 3 * HOUR_MS, True),
        kpi_seed.alert("j-portway-h5", "congestion", HOUR - 2 * HOUR_MS, True, kind="traffic",
                       value=1.2, threshold=0.8),
    ]
    for n, feed in enumerate(FEEDS):
        records += feed_kpis(feed, SEED_START, HOUR, seed=10 + n)
        if feed.alerts:
            records += feed_alerts(feed, HOUR - (12 - n) * HOUR_MS)
    records += kpi_seed.counters("ingest", "0", HOUR - 2 * HOUR_MS, 30)
    records += kpi_seed.counters("ingest", "1", HOUR - 2 * HOUR_MS, 20)
    records += kpi_seed.counters("worker", "0", HOUR - 2 * HOUR_MS, 25)
    influx.write(influx.kpi, records)
    yield influx, records
    influx.admin.call("DELETE", f"/api/v2/tasks/{influx.task_id}")


VARIABLE_VALUES = {"district": list(kpi_seed.DISTRICTS), "junction": list(kpi_seed.JUNCTIONS),
                   "route": list(kpi_seed.ROUTES),
                   **{dashboards.feed_variable(feed).var: list(feed_entities(feed))
                      for feed in FEEDS}}


def runnable(query: str, bucket: str) -> str:
    """A dashboard query as Grafana or InfluxDB would send it: macros defined, variables set,
    and the test's bucket instead of `kpi`."""
    query = re.sub(r"\$\{(\w+):regex\}",
                   lambda m: "(" + "|".join(map(re.escape, VARIABLE_VALUES[m.group(1)])) + ")",
                   query)
    query = query.replace(f'bucket: "{dashboards.BUCKET}"', f'bucket: "{bucket}"')
    start = datetime.fromtimestamp((SEED_START - HOUR_MS) / 1000, UTC).isoformat()
    option = (f"option v = {{timeRangeStart: {start.replace('+00:00', 'Z')}, "
              f"timeRangeStop: now(), windowPeriod: 15m}}\n")
    imports = re.match(r"(?:\s*import [^\n]*\n)*", query)
    head = imports.group(0) if imports else ""
    return head + option + query[len(head):]


# -- onboarding -------------------------------------------------------------------------------


def test_onboarding_provisions_the_stack(stack: Stack) -> None:
    stack.ensure("influxdb")
    info = stack.client_info()["influxdb"]
    admin = InfluxAdmin(info["url"], info["token"])
    org_id = admin.org_id(info["org"])
    want = stack.s.influx_plan()
    buckets = {w.name: find_bucket(admin, org_id, w.name) or {} for w in want.buckets}
    for bucket in want.buckets:
        rules = buckets[bucket.name]["retentionRules"]
        assert sum(r["everySeconds"] for r in rules) == bucket.retention_s, bucket.name
        mapped = admin.call("GET", "/api/v2/dbrps", orgID=org_id, db=bucket.name)["content"]
        assert [(m["bucketID"], m["retention_policy"]) for m in mapped
                if not m["virtual"]] == [(buckets[bucket.name]["id"], "autogen")]
    tasks = admin.call("GET", "/api/v2/tasks", orgID=org_id, name=task_name("kpi_1h"))["tasks"]
    assert [t["status"] for t in tasks] == ["active"]
    assert 'src = "kpi"' in tasks[0]["flux"] and 'dst = "kpi_1h"' in tasks[0]["flux"]


def test_provision_is_idempotent_and_applies_changed_retention(stack: Stack) -> None:
    stack.ensure("influxdb")
    influx = influx_for_test(stack)
    try:
        admin = influx.admin
        shorter = Plan(influx.org, influx.plan.telemetry, Bucket(influx.kpi, 30 * 86400),
                       influx.plan.kpi_1h)
        assert provision(admin, shorter) == influx.task_id
        assert provision(admin, shorter) == influx.task_id
        org_id = admin.org_id(influx.org)
        (kpi,) = admin.call("GET", "/api/v2/buckets", orgID=org_id, name=influx.kpi)["buckets"]
        assert kpi["retentionRules"][0]["everySeconds"] == 30 * 86400
        mapped = admin.call("GET", "/api/v2/dbrps", orgID=org_id, db=influx.kpi)["content"]
        assert len([m for m in mapped if not m["virtual"]]) == 1
        tasks = admin.call("GET", "/api/v2/tasks", orgID=org_id,
                           name=task_name(influx.plan.kpi_1h.name))["tasks"]
        assert [t["id"] for t in tasks] == [influx.task_id]
    finally:
        influx.admin.call("DELETE", f"/api/v2/tasks/{influx.task_id}")


# -- dashboards -------------------------------------------------------------------------------


@pytest.mark.parametrize("where,query,_need_field", grafana_queries(),
                         ids=[q[0] for q in grafana_queries()])
def test_grafana_query_runs(seeded: tuple[Influx, list[Record]], where: str, query: str,
                            _need_field: bool) -> None:
    influx, _ = seeded
    rows = influx.flux(runnable(query, influx.kpi))
    assert rows, f"{where}: no rows from the seeded bucket"


def _latest(records: list[Record], measurement: str, tag: str, fld: str) -> dict[str, Any]:
    newest: dict[str, Record] = {}
    for r in records:
        if r.measurement == measurement:
            key = r.tags()[tag]
            if key not in newest or r.time_ms > newest[key].time_ms:
                newest[key] = r
    return {k: r.fields()[fld] for k, r in newest.items()}


def _panel(title: str) -> dashboards.Panel:
    return next(p for d in dashboards.DASHBOARDS for row in d.rows for p in row.panels
                if p.title == title)


@pytest.mark.parametrize("title,measurement,tag", [
    ("Water saving over 24 h (target 20 %)", "water_kpi", "district"),
    ("Energy saving over 24 h (target 3 %)", "energy_kpi", "district"),
    ("Congestion reduction over 24 h (target 50 %)", "traffic_kpi", "junction")])
def test_bar_panels_show_each_entitys_newest_figure(seeded: tuple[Influx, list[Record]],
                                                    title: str, measurement: str,
                                                    tag: str) -> None:
    influx, records = seeded
    panel = _panel(title)
    rows = influx.flux(runnable(dashboards.render_query(panel.query, True), influx.kpi))
    field = "reduction_pct_24h" if tag == "junction" else "saving_pct_24h"
    assert {r[tag]: r["_value"] for r in rows} == _latest(records, measurement, tag, field)


def test_active_alerts_panel(seeded: tuple[Influx, list[Record]]) -> None:
    influx, _ = seeded
    rows = influx.flux(runnable(dashboards.ACTIVE_ALERTS, influx.kpi))
    # the feeds' alerts are older than the built-in kinds', the later feed's the newer
    feeds = [(f.kind, feed_entities(f)[1], f.alerts[-1].rule) for f in reversed(FEEDS)
             if f.alerts]
    assert [(r["kind"], r["entity"], r["rule"]) for r in rows] == [
        ("traffic", "j-portway-h5", "congestion"), ("water", "central-mk", "leak"), *feeds]
    assert rows[0]["value"] == 1.2 and rows[0]["message"] == "congestion on j-portway-h5"


def test_variables_list_the_seeded_entities(seeded: tuple[Influx, list[Record]]) -> None:
    influx, _ = seeded
    variables = [v for d in dashboards.DASHBOARDS for v in d.variables]
    assert {v.var for v in variables} == set(VARIABLE_VALUES)
    for variable in variables:
        rows = influx.flux(runnable(variable.query, influx.kpi))
        assert sorted(r["_value"] for r in rows) == sorted(VARIABLE_VALUES[variable.var]), \
            variable.var


@pytest.mark.parametrize("feed", [f for f in FEEDS if f.target is not None],
                         ids=lambda f: f.kind)
def test_feed_on_track_panel_shows_each_entitys_newest(seeded: tuple[Influx, list[Record]],
                                                       feed: FeedSpec) -> None:
    influx, records = seeded
    panel = _panel(f"{feed.title}: on track")
    rows = influx.flux(runnable(dashboards.render_query(panel.query, True), influx.kpi))
    want = _latest(records, feed.measurement, feed.entity, "on_track")
    assert len(want) == 2
    assert {r[feed.entity]: r["_value"] for r in rows} == {k: int(v) for k, v in want.items()}


@pytest.mark.parametrize("feed", [f for f in FEEDS if f.alerts], ids=lambda f: f.kind)
def test_feed_alerts_panel_lists_the_feeds_alerts(seeded: tuple[Influx, list[Record]],
                                                  feed: FeedSpec) -> None:
    influx, records = seeded
    panel = _panel(f"{feed.title}: alerts")
    rows = influx.flux(runnable(dashboards.render_query(panel.query, True), influx.kpi))
    mine = sorted((r for r in records if isinstance(r, Alert) and r.kind == feed.kind),
                  key=lambda r: r.ts_ms, reverse=True)
    assert len(mine) == 3
    assert [(r["entity"], r["rule"], r["active"], r["value"], r["threshold"]) for r in rows] == [
        (a.entity, a.rule, a.active, a.value, a.threshold) for a in mine]


def test_pipeline_counters_panel(seeded: tuple[Influx, list[Record]]) -> None:
    influx, _ = seeded
    rows = {r["component"]: r for r in influx.flux(runnable(dashboards.PIPELINE_TOTALS,
                                                            influx.kpi))}
    assert rows["ingest"]["received"] == 1000 * (29 + 19)
    assert rows["worker"]["written"] == 980 * 24
    assert rows["ingest"]["rejected"] == 10 * (29 + 19)


def test_influxdb_template_applies_and_its_queries_run(
        seeded: tuple[Influx, list[Record]]) -> None:
    influx, _ = seeded
    admin = influx.admin
    org_id = admin.org_id(influx.org)
    template = json.loads(dashboards.TEMPLATE_FILE.read_text())
    applied = admin.call("POST", "/api/v2/templates/apply", {
        "orgID": org_id, "dryRun": False, "template": {"contentType": "json",
                                                        "contents": template}})
    # the summary gives ids as numbers; the API wants 16 hex digits
    created = [{**d, "id": f"{int(d['id']):016x}" if isinstance(d["id"], int) else d["id"]}
               for d in applied["summary"]["dashboards"]]
    try:
        assert sorted(d["name"] for d in created) == sorted(d.title for d in dashboards.DASHBOARDS)
        queries = []
        for board in created:
            full = admin.call("GET", f"/api/v2/dashboards/{board['id']}", include="properties")
            for cell in full["cells"]:
                queries += [q["text"] for q in cell["properties"]["queries"]]
        assert len(queries) == sum(len(r.panels) for d in dashboards.DASHBOARDS for r in d.rows)
        for query in queries:
            assert influx.flux(runnable(query, influx.kpi)), query
    finally:
        for board in created:
            admin.call("DELETE", f"/api/v2/dashboards/{board['id']}")


# -- the roll-up task -------------------------------------------------------------------------

SUM = {"consumption_l", "baseline_l", "energy_kwh", "baseline_kwh", "vehicles", "boardings",
       "disengagements"}
MAX = {"peak_kw", "meters_reporting", "vehicles_reporting"}
LAST = {"saving_pct_24h", "reduction_pct_24h", "target_pct", "on_track"}
RATIO = {"water_kpi": ("saving_pct", "consumption_l", "baseline_l"),
         "energy_kpi": ("saving_pct", "energy_kwh", "baseline_kwh"),
         "traffic_kpi": ("reduction_pct", "congestion_index", "baseline_congestion_index")}

Key = tuple[str, tuple[tuple[str, str], ...], int]


def expected_rollup(records: list[Record], first_hour_end: int,
                    last_hour_end: int) -> dict[Key, dict[str, Any]]:
    """Hourly roll-up of the KPI records whose window lies in an hour ending in
    [first_hour_end, last_hour_end], computed without Flux."""
    groups: dict[Key, list[Record]] = defaultdict(list)
    for r in records:
        if r.measurement not in kpi_seed.WINDOW_MS:
            continue
        hour_end = hour_floor(r.time_ms - 1) + HOUR_MS
        if first_hour_end <= hour_end <= last_hour_end:
            tags = tuple(sorted((k, v) for k, v in r.tags().items() if k != "window"))
            groups[(r.measurement, (*tags, ("window", "1h")), hour_end)].append(r)
    out: dict[Key, dict[str, Any]] = {}
    for key, rows in groups.items():
        rows.sort(key=lambda r: r.time_ms)
        values: dict[str, Any] = {}
        for name in rows[0].fields():
            series = [r.fields()[name] for r in rows]
            if name in SUM:
                values[name] = sum(series)
            elif name in MAX:
                values[name] = max(series)
            elif name in LAST:
                values[name] = series[-1]
            elif name not in ("saving_pct", "reduction_pct"):
                values[name] = fmean(series)
        if key[0] in RATIO:
            name, actual, base = RATIO[key[0]]
            values[name] = 100.0 * (1.0 - values[actual] / values[base])
        out[key] = values
    return out


def test_rollup_task_writes_hourly_aggregates(seeded: tuple[Influx, list[Record]]) -> None:
    influx, records = seeded
    state = influx.run_task(HOUR + 5 * 60_000)
    assert state["status"] == "success", state
    want = expected_rollup(records, HOUR - 25 * HOUR_MS, HOUR)
    assert len(want) == 26 * 7  # hours x (2 districts x 2 + 2 junctions + 1 route)
    rows = influx.flux(f'from(bucket: "{influx.plan.kpi_1h.name}") |> range(start: 0)')
    got: dict[Key, dict[str, Any]] = defaultdict(dict)
    for row in rows:
        tags = tuple(sorted((k, v) for k, v in row.items()
                            if not k.startswith("_") and k not in ("result", "table")))
        ms = int(row["_time"].timestamp() * 1000)
        got[(row["_measurement"], tags, ms)][row["_field"]] = row["_value"]
    assert set(got) == set(want)
    for key, fields in want.items():
        assert set(got[key]) == set(fields), key
        for name, value in fields.items():
            have = got[key][name]
            assert type(have) is type(value), (key, name, have, value)
            assert have == pytest.approx(value, rel=1e-9), (key, name)
