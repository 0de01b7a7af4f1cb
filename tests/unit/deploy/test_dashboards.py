"""Grafana dashboards, the InfluxDB template and the roll-up task, checked statically: generated
files are current, every query names only what the contract defines (sections 2 and 5: the
shipped city's feeds too), every feed has its row, and the wiring matches."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import dashboards
from deploy.influxdb.provision import downsampling_flux
from models import kinds
from models.city import DEFAULT_CITY_FILE
from models.feeds import FeedSpec, kpi_model
from models.kinds import record_types
from tests.flux_vocabulary import Schema, check, contract_schema, names

FEEDS = dashboards.shipped_feeds()


def feed_schema(feeds: tuple[FeedSpec, ...] = FEEDS) -> dict[str, Schema]:
    """The contract's schema plus the `<kind>_kpi` measurements of the declared feeds."""
    schema = contract_schema()
    for feed in feeds:
        model = kpi_model(feed)
        schema[feed.measurement] = Schema(frozenset(model.tag_names),
                                          frozenset(model.field_names()))
    return schema

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"


def grafana_files() -> list[Path]:
    return sorted((GRAFANA / "dashboards").glob("*.json"))


def grafana_queries() -> list[tuple[str, str, bool]]:
    """(where, query, needs a field) for every panel and variable of the shipped dashboards."""
    out = []
    for path in grafana_files():
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["query"], True))
        for var in board["templating"]["list"]:
            out.append((f"{path.name}: variable {var['name']}", var["query"], False))
    return out


def template_queries() -> list[tuple[str, str]]:
    template = json.loads(dashboards.TEMPLATE_FILE.read_text())
    return [(f"{res['metadata']['name']}: {chart['name']}", q["query"])
            for res in template for chart in res["spec"]["charts"] for q in chart["queries"]]


def test_generated_files_are_current() -> None:
    assert dashboards.main(["--check"]) == 0, "run python -m deploy.dashboards"
    assert {p.name for p in grafana_files()} == {f"{d.uid}.json" for d in dashboards.DASHBOARDS}


@pytest.mark.parametrize("where,query,need_field", grafana_queries(),
                         ids=[q[0] for q in grafana_queries()])
def test_grafana_query_names_contract_schema(where: str, query: str, need_field: bool) -> None:
    assert check(query, need_field=need_field, schema=feed_schema()) == [], f"{where}:\n{query}"


@pytest.mark.parametrize("where,query", template_queries(), ids=[q[0] for q in template_queries()])
def test_template_query_names_contract_schema(where: str, query: str) -> None:
    assert check(query, schema=feed_schema()) == [], f"{where}:\n{query}"
    assert "${" not in query, "Grafana variables do not exist in InfluxDB's UI"


def test_downsampling_task_names_contract_schema() -> None:
    flux = downsampling_flux()
    assert check(flux) == []
    kpis = {"water_kpi", "energy_kpi", "traffic_kpi", "shuttle_kpi"}
    rolled = names(flux).fields
    for measurement in kpis:
        fields = set(record_types()[measurement].field_names())
        # every numeric or flag field is rolled up; saving_pct / reduction_pct are recomputed
        assert fields <= rolled | {"saving_pct", "reduction_pct"}, measurement


def test_downsampling_flux_renders_bucket_names() -> None:
    flux = downsampling_flux("kpi-a", "kpi-b")
    assert 'src = "kpi-a"' in flux and 'dst = "kpi-b"' in flux
    assert 'name: "citystream-kpi-b"' in flux
    assert downsampling_flux().count('"kpi"') == 1


def test_checker_catches_wrong_names() -> None:
    bad = ('from(bucket: "kpi") |> range(start: -1h) |> filter(fn: (r) => '
           'r._measurement == "water_kpi" and r._field == "savings_pct") '
           '|> group(columns: ["distrct"])')
    problems = check(bad)
    assert "field 'savings_pct' is not a field of ['water_kpi']" in problems
    assert "column 'distrct' is no tag or field of ['water_kpi']" in problems
    assert "unknown measurement 'water'" not in check(bad.replace("water_kpi", "water"))
    assert "unknown measurement 'waterkpi'" in check(bad.replace("water_kpi", "waterkpi"))


def _ticked(cell: str) -> set[str]:
    """`a`, `b` (15m), `c` -> {a, b, c}: the name that opens each comma-separated part."""
    return {m.group(1) for part in cell.split(",")
            if (m := re.match(r"`([a-z_0-9]+)`", part.strip()))}


def _contract_table() -> dict[str, tuple[set[str], set[str]]]:
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text[text.index("## 2. Output"):text.index("### 2.1")]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            (measurement,) = _ticked(cells[0])
            table[measurement] = (_ticked(cells[1]), _ticked(cells[2]))
    return table


def test_contract_doc_table_matches_the_records() -> None:
    """The schema the checker uses (models/records.py) is the one docs/contract.md states (its
    section 2: the built-in kinds; whatever feeds another test activated are left out)."""
    table = _contract_table()
    schema = contract_schema()
    declared = {feed.measurement for feed in kinds.feeds()}
    assert set(table) == set(record_types()) - declared
    for measurement, (tags, fields) in table.items():
        assert schema[measurement].tags == tags, measurement
        assert schema[measurement].fields == fields, measurement


def test_panels_use_the_provisioned_datasource() -> None:
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yml")
                            .read_text())["datasources"][0]
    for path in grafana_files():
        board: dict[str, Any] = json.loads(path.read_text())
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']} overflows"
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == source["uid"]
        for var in board["templating"]["list"]:
            assert var["datasource"]["uid"] == source["uid"]


def test_grafana_variables_are_the_ones_queries_use() -> None:
    for path in grafana_files():
        board = json.loads(path.read_text())
        declared = {v["name"] for v in board["templating"]["list"]}
        used = {m for p in board["panels"] for t in p.get("targets", [])
                for m in re.findall(r"\$\{(\w+):regex\}", t["query"])}
        assert used == declared, path.name


def test_select_placeholder_renders_per_target() -> None:
    query = 'from(bucket: "kpi")\n  {select:district}\n  |> last()'
    assert dashboards.render_query(query, grafana=False) == 'from(bucket: "kpi")\n  |> last()'
    assert ("|> filter(fn: (r) => r.district =~ /^${district:regex}$/)"
            in dashboards.render_query(query, grafana=True))


def test_queries_avoid_contains() -> None:
    """contains() is evaluated per row (measured: 6.4 s against 0.15 s for the same filter
    as == or =~ over a month of traffic windows): shipped queries use pushed-down predicates."""
    for where, query, _ in grafana_queries():
        assert "contains(" not in query, where
    for where, query in template_queries():
        assert "contains(" not in query, where


# -- declared feeds: a row each, from the city file -------------------------------------------


def kpis_board() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "citystream-kpis.json")
                                       .read_text())
    return board


def rows_of(board: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels below it."""
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return rows


def test_the_shipped_city_declares_feeds() -> None:
    assert [f.kind for f in FEEDS] == ["air_quality", "car_park", "bus_occupancy"]


@pytest.mark.parametrize("feed", FEEDS, ids=[f.kind for f in FEEDS])
def test_every_feed_has_its_row(feed: FeedSpec) -> None:
    board = kpis_board()
    panels = rows_of(board)[feed.title]
    by_title = {p["title"]: p for p in panels}
    var = f"{feed.kind}_entity"
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == var]
    assert f'tag: "{feed.entity}"' in variable["query"]
    assert f'r._measurement == "{feed.measurement}"' in variable["query"]

    def steps(panel: dict[str, Any]) -> list[tuple[str, float | None]]:
        return [(s["color"], s["value"])
                for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]

    assert feed.target is not None
    limit = feed.target.limit
    want_steps = ([("green", None), ("red", limit)] if feed.target.at_most is not None
                  else [("red", None), ("green", limit)])
    for kpi in feed.kpis:
        panel = by_title[f"{feed.title}: {kpi.name}"]
        assert panel["type"] == "timeseries"
        (query,) = [t["query"] for t in panel["targets"]]
        assert (f'r._measurement == "{feed.measurement}" and r._field == "{kpi.name}" and '
                f'r.window == "{feed.window_tag}"') in query
        assert f"r.{feed.entity} =~ /^${{{var}:regex}}$/" in query
        assert panel["fieldConfig"]["defaults"]["displayName"] == \
            f"${{__field.labels.{feed.entity}}}"
        line = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
        if kpi.name == feed.target.kpi:
            assert line == "line" and steps(panel) == want_steps
        else:
            assert line == "off"
    rolling = next(p for p in panels if p["title"].startswith(
        f"{feed.title}: {feed.target.kpi}_24h (target"))
    assert f'r._field == "{feed.target.kpi}_24h"' in rolling["targets"][0]["query"]
    assert steps(rolling) == want_steps
    on_track = by_title[f"{feed.title}: on track"]
    assert on_track["type"] == "stat"
    assert 'r._field == "on_track"' in on_track["targets"][0]["query"]
    assert on_track["fieldConfig"]["defaults"]["mappings"][0]["options"]["1"]["text"] == \
        "on track"
    alerts = by_title[f"{feed.title}: alerts"]
    assert alerts["type"] == "table"
    assert f'r._measurement == "alert" and r.kind == "{feed.kind}"' in \
        alerts["targets"][0]["query"]
    assert all(a.rule in alerts["description"] for a in feed.alerts)
    assert len(panels) == len(feed.kpis) + 3


def test_feeds_only_add_rows_and_variables() -> None:
    """The built-in panels and variables are the same with or without declared feeds."""
    bare = dashboards.grafana_dashboard(dashboards.kpis_dashboard(()))
    full = dashboards.grafana_dashboard(dashboards.kpis_dashboard(FEEDS))
    assert full["panels"][:len(bare["panels"])] == bare["panels"]
    assert full["templating"]["list"][:3] == bare["templating"]["list"]
    assert len(full["templating"]["list"]) == 3 + len(FEEDS)
    assert [r.title for r in dashboards.DASHBOARDS[0].rows] == [
        "Water", "Energy", "Traffic", "Shuttle", *(f.title for f in FEEDS)]


def test_grafana_json_is_the_sdk_model() -> None:
    """The committed files decode as the foundation SDK's typed dashboard model and encode
    back with the same panels, queries and variables."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

    register_default_plugins()
    for path in grafana_files():
        board = json.loads(path.read_text())
        back = json.loads(JSONEncoder().encode(DashboardModel.from_json(board)))
        assert back["uid"] == board["uid"] and back["schemaVersion"] == 39

        def summary(b: dict[str, Any]) -> list[tuple[Any, ...]]:
            return [(p["id"], p["type"], p["title"], p["gridPos"],
                     [t["query"] for t in p.get("targets", [])]) for p in b["panels"]]

        assert summary(back) == summary(board), path.name
        # `definition` (the text Grafana's variable list shows) is ours: the model has none
        assert back["templating"]["list"] == [
            {k: v for k, v in var.items() if k != "definition"}
            for var in board["templating"]["list"]], path.name


NOISE = '''
[[feeds]]
kind = "noise"
title = "Noise"
window_s = 3600
entity = "site"

[feeds.fields]
site = { type = "string" }
laeq_db = { type = "number", min = 20, max = 140 }

[[feeds.kpis]]
name = "laeq_mean_db"
agg = "mean"
field = "laeq_db"
'''


def test_the_generator_takes_a_city_file(tmp_path: Path) -> None:
    city = tmp_path / "city.toml"
    city.write_text(DEFAULT_CITY_FILE.read_text() + NOISE)
    out = tmp_path / "out"
    assert dashboards.main(["--city", str(city), "--out", str(out)]) == 0
    assert dashboards.main(["--city", str(city), "--out", str(out), "--check"]) == 0
    board = json.loads((out / "grafana" / "dashboards" / "citystream-kpis.json").read_text())
    (panel,) = rows_of(board)["Noise"]  # no target, no alerts: the KPI only
    assert panel["title"] == "Noise: laeq_mean_db" and panel["fieldConfig"]["defaults"][
        "unit"] == "dB"
    assert "r.site =~ /^${noise_entity:regex}$/" in panel["targets"][0]["query"]
    assert check(panel["targets"][0]["query"], schema=feed_schema(
        (*FEEDS, *dashboards.parse_city(city.read_text()).feeds))) == []
    template = json.loads((out / "influxdb" / "templates" / "citystream.json").read_text())
    assert "Noise: laeq_mean_db" in [c["name"] for c in template[0]["spec"]["charts"]]
    # the committed files stay those of the shipped city
    assert dashboards.main(["--check"]) == 0
    assert dashboards.main(["--city", str(city), "--check"]) == 1

    city.write_text(city.read_text().replace("window_s = 3600\nentity", "window_s = 7000\nentity"))
    assert dashboards.main(["--city", str(city), "--out", str(out)]) == 2
