"""`citystream report` and `citystream baseline learn` against a real InfluxDB with seeded KPI
windows, the built-in kinds and the shipped city's declared feeds; the answers are computed here
from the seeded records, independently of the code. The Flux example for feeds in
docs/analysts.md is run here too."""

from __future__ import annotations

import csv
import io
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from click.testing import CliRunner

from citystream.cli import main
from deploy.local.stack import Stack
from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.city import DEFAULT_CITY_FILE, HOURS_PER_WEEK, load_city, parse_city
from models.feeds import FeedSpec, KpiSpec, kpi_model
from models.records import Record
from tests.flux_vocabulary import Schema, check, contract_schema
from tests.integration import kpi_seed
from tests.integration.influx import HOUR_MS, Influx, influx_for_test

pytestmark = pytest.mark.influxdb

P0 = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday
P1 = datetime(2026, 10, 7, tzinfo=UTC)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@pytest.fixture(scope="module")
def influx(stack: Stack) -> Iterator[Influx]:
    stack.ensure("influxdb")
    made = influx_for_test(stack, kpi_retention_s=0)
    yield made
    made.admin.call("DELETE", f"/api/v2/tasks/{made.task_id}")


@pytest.fixture
def env(influx: Influx, monkeypatch: pytest.MonkeyPatch) -> Influx:
    for name, value in {"URL": influx.url, "ORG": influx.org, "TOKEN": influx.token,
                        "BUCKET_KPI": influx.kpi}.items():
        monkeypatch.setenv(f"CITYSTREAM_INFLUX__{name}", value)
    monkeypatch.delenv("CITYSTREAM_CITY__FILE", raising=False)
    return influx


# the shipped city's (air_quality, car_park, bus_occupancy), which the report reads by default
FEEDS = parse_city(DEFAULT_CITY_FILE.read_text(encoding="utf-8")).feeds
FEED_ENTITIES = {"district": kpi_seed.DISTRICTS, "car_park": ("cp-station", "cp-theatre"),
                 "route": ("300", "41")}


def feed_records(start_ms: int, end_ms: int, seed: int) -> list[Record]:
    """Every window ending in (start_ms, end_ms] of each feed and entity, with random values;
    about one KPI in ten is left out of a window (as a KPI whose field no reading carried),
    the target KPI of the first entity sits mostly below its limit, of the second above."""
    rng = random.Random(seed)
    out: list[Record] = []
    for feed in FEEDS:
        cls = kpi_model(feed)
        window_ms = feed.window_s * 1000
        for i, entity in enumerate(FEED_ENTITIES[feed.entity]):
            for end in range((start_ms // window_ms + 1) * window_ms, end_ms + 1, window_ms):
                data: dict[str, Any] = {feed.entity: entity, "window_end_ms": end}
                for kpi in feed.kpis:
                    if rng.random() < 0.1:
                        continue
                    if kpi.is_integer:
                        data[kpi.name] = rng.randint(0, 30)
                    elif feed.target is not None and kpi.name == feed.target.kpi:
                        data[kpi.name] = feed.target.limit * rng.uniform(0.5, 1.1) * (1 + i / 2)
                    else:
                        data[kpi.name] = rng.uniform(0.0, 100.0)
                if feed.target is not None and rng.random() < 0.9:
                    rolling = feed.target.limit * rng.uniform(0.7, 1.3)
                    data[f"{feed.target.kpi}_24h"] = rolling
                    data["on_track"] = feed.target.met(rolling)
                out.append(cls.model_validate(data))
    # each feed's first alert rule raised and cleared on its first entity
    for feed in FEEDS:
        entity = FEED_ENTITIES[feed.entity][0]
        for k, active in enumerate((True, False)):
            out.append(kpi_seed.alert(entity, feed.alerts[0].rule, ms(P0) + (k + 1) * HOUR_MS,
                                      active, kind=feed.kind))
    # another series of car_park (points of a window length it had before): not reported
    car_park = next(f for f in FEEDS if f.kind == "car_park")
    out += [kpi_model(car_park).model_validate({
        "car_park": "cp-station", "window": "5m", "window_end_ms": ms(P0) + k * 300_000 + 60_000,
        "occupancy_pct": 1000.0, "sensors_reporting": 99}) for k in range(3)]
    return out


@pytest.fixture(scope="module")
def report_records(influx: Influx) -> list[Record]:
    records = kpi_seed.kpi_records(ms(P0) - 2 * HOUR_MS, ms(P1) + 2 * HOUR_MS, seed=3)
    records += feed_records(ms(P0) - 2 * HOUR_MS, ms(P1) + 2 * HOUR_MS, seed=4)
    influx.write(influx.kpi, records)
    return records


BUILTIN = ("water", "energy", "traffic", "shuttle")


def in_period(records: list[Record], cls: type[Record]) -> list[Record]:
    return [r for r in records if isinstance(r, cls) and ms(P0) < r.time_ms <= ms(P1)]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_report_answers_from_influxdb(env: Influx, report_records: list[Record],
                                      tmp_path: Path) -> None:
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                            "--csv", str(tmp_path / "r.csv"), "--png", str(tmp_path / "r.png"))
    assert code == 0, err
    rows = {(r["kind"], r["entity"]): r
            for r in csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8"))
            if r["kind"] in BUILTIN}
    assert len(rows) == 2 * len(kpi_seed.DISTRICTS) + len(kpi_seed.JUNCTIONS) + 1

    for kind, cls, actual, base in (("water", WaterKpi, "consumption_l", "baseline_l"),
                                    ("energy", EnergyKpi, "energy_kwh", "baseline_kwh")):
        for district in kpi_seed.DISTRICTS:
            mine = [r for r in in_period(report_records, cls) if r.tags()["district"] == district]
            used = sum(float(r.fields()[actual]) for r in mine)
            baseline = sum(float(r.fields()[base]) for r in mine)
            saving = 100 * (1 - used / baseline)
            target = float(mine[-1].fields()["target_pct"])
            row = rows[(kind, district)]
            assert int(row["windows"]) == len(mine) == 2 * 24 * (4 if kind == "water" else 2)
            assert float(row["figure_pct"]) == pytest.approx(saving, rel=1e-9)
            assert row["status"] == ("on track" if saving >= target else "off track")
            share = 100 * sum(bool(r.fields()["on_track"]) for r in mine) / len(mine)
            assert float(row["windows_on_track_pct"]) == pytest.approx(share)
            assert f"{saving:.1f} %" in out

    for junction in kpi_seed.JUNCTIONS:
        busy = [r for r in in_period(report_records, TrafficKpi)
                if isinstance(r, TrafficKpi) and r.junction == junction and r.vehicles > 0]
        index = fmean(r.congestion_index or 0.0 for r in busy)
        base = fmean(r.baseline_congestion_index or 0.0 for r in busy)
        row = rows[("traffic", junction)]
        assert float(row["actual"]) == pytest.approx(index)
        assert float(row["figure_pct"]) == pytest.approx(100 * (1 - index / base))

    shuttles = [r for r in in_period(report_records, ShuttleKpi) if isinstance(r, ShuttleKpi)]
    row = rows[("shuttle", "station-centre")]
    assert float(row["on_time_pct"]) == pytest.approx(fmean(r.on_time_pct or 0 for r in shuttles))
    assert int(row["boardings"]) == sum(r.boardings for r in shuttles)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    for kind in ("water", "energy"):
        on = sum(r["status"] == "on track" for (k, _), r in rows.items() if k == kind)
        assert f"{kind}: {on} of {len(kpi_seed.DISTRICTS)} districts on track" in out


def test_report_selection_and_exit_code(env: Influx, report_records: list[Record]) -> None:
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                            "--district", "bletchley", "--csv", "-")
    assert code == 0, err
    got = [(r["kind"], r["entity"]) for r in csv.DictReader(io.StringIO(out))]
    air_quality = next(f for f in FEEDS if f.kind == "air_quality")
    assert got == [("water", "bletchley"), ("energy", "bletchley"),
                   ("traffic", "j-bletcham-way-v7"),
                   *[("air_quality", "bletchley")] * len(air_quality.kpis)]
    code, out, _ = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                          "--kind", "traffic", "--exit-code")
    statuses = [("off track" in line) for line in out.splitlines() if line.startswith("traffic ")]
    assert code == (3 if any(statuses) else 0)


# -- declared feeds -----------------------------------------------------------------------------

ADDITIVE = {"count", "count_above", "sum", "delta", "increase"}


def period_figure(feed: FeedSpec, kpi: KpiSpec, values: list[float]) -> float | None:
    """The report's period figure of a feed KPI, by the rule docs/analysts.md states."""
    if not values:
        return None
    if feed.target is not None and kpi.name == feed.target.kpi:
        return fmean(values)
    if kpi.agg in ADDITIVE:
        return sum(values)
    if kpi.agg in ("sensors", "max"):
        return max(values)
    return min(values) if kpi.agg == "min" else fmean(values)


def feed_rows_expected(records: list[Record], feed: FeedSpec,
                       entity: str) -> tuple[int, dict[str, tuple[float | None, float | None]]]:
    """(windows, kpi -> (period figure, share of windows on track)) of one feed entity."""
    mine = [r for r in records if r.measurement == feed.measurement
            and r.tags()["window"] == feed.window_tag and r.tags()[feed.entity] == entity
            and ms(P0) < r.time_ms <= ms(P1)]
    out: dict[str, tuple[float | None, float | None]] = {}
    for kpi in feed.kpis:
        values = [float(v) for r in mine if (v := r.fields().get(kpi.name)) is not None]
        flags = [bool(r.fields()["on_track"]) for r in mine if "on_track" in r.fields()]
        share = 100 * sum(flags) / len(flags) if feed.target and flags else None
        out[kpi.name] = (period_figure(feed, kpi, values), share)
    return len(mine), out


def test_report_covers_the_declared_feeds(env: Influx, report_records: list[Record],
                                          tmp_path: Path) -> None:
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                            "--csv", str(tmp_path / "r.csv"), "--png", str(tmp_path / "r.png"))
    assert code == 0, err
    rows = {(r["kind"], r["entity"], r["kpi"]): r
            for r in csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8"))
            if r["kind"] not in BUILTIN}
    assert len(rows) == sum(len(FEED_ENTITIES[f.entity]) * len(f.kpis) for f in FEEDS)
    for feed in FEEDS:
        assert feed.target is not None
        on = 0
        for entity in FEED_ENTITIES[feed.entity]:
            windows, want = feed_rows_expected(report_records, feed, entity)
            assert windows == 2 * 86400 // feed.window_s
            for kpi in feed.kpis:
                row = rows[(feed.kind, entity, kpi.name)]
                figure, share = want[kpi.name]
                assert int(row["windows"]) == windows
                assert figure is not None
                assert float(row["value"]) == pytest.approx(figure, rel=1e-9), (feed.kind, kpi)
                if kpi.is_integer and kpi.name != feed.target.kpi:
                    assert row["value"] == str(int(figure))  # counts stay integers
                if kpi.name == feed.target.kpi:
                    on_track = feed.target.met(figure)
                    on += on_track
                    assert row["status"] == ("on track" if on_track else "off track")
                    assert float(row["target"]) == feed.target.limit
                    assert share is not None
                    assert float(row["windows_on_track_pct"]) == pytest.approx(share)
                else:
                    assert row["status"] == "no target" and row["target"] == ""
        noun = {"district": "districts", "car_park": "car parks", "route": "routes"}
        assert (f"{feed.kind}: {on} of {len(FEED_ENTITIES[feed.entity])} "
                f"{noun[feed.entity]} on track") in out
        assert f"{feed.title} ({feed.kind}, per {feed.entity}" in out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_report_feed_selection(env: Influx, report_records: list[Record]) -> None:
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                            "--kind", "car_park", "--entity", "cp-theatre", "--csv", "-")
    assert code == 0, err
    got = [(r["kind"], r["entity"], r["kpi"]) for r in csv.DictReader(io.StringIO(out))]
    car_park = next(f for f in FEEDS if f.kind == "car_park")
    assert got == [("car_park", "cp-theatre", k.name) for k in car_park.kpis]
    code, _, err = invoke("report", "--last", "1d", "--kind", "noise")
    assert code == 2 and "'noise' is not a kind of this city" in err
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                            "--kind", "bus_occupancy", "--exit-code")
    statuses = [r for r in out.splitlines() if "off track" in r]
    assert code == (3 if statuses else 0), err


DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"


def feed_schema() -> dict[str, Schema]:
    schema = contract_schema()
    for feed in FEEDS:
        model = kpi_model(feed)
        schema[feed.measurement] = Schema(frozenset(model.tag_names),
                                          frozenset(model.field_names()))
    return schema


def test_the_feed_flux_example_of_the_analysts_page(env: Influx,
                                                    report_records: list[Record]) -> None:
    """The page's Flux example for a feed answers what the report and this test compute."""
    (query,) = [q for q in re.findall(r"^```flux\n(.*?)^```", DOC.read_text(), re.M | re.S)
                if "car_park_kpi" in q]
    assert check(query, schema=feed_schema()) == []
    rows = env.flux(query.replace('bucket: "kpi"', f'bucket: "{env.kpi}"'))
    car_park = next(f for f in FEEDS if f.kind == "car_park")
    assert car_park.target is not None and car_park.target.kpi == "occupancy_pct"
    want = {e: feed_rows_expected(report_records, car_park, e)[1]["occupancy_pct"][0]
            for e in FEED_ENTITIES["car_park"]}
    assert [r["car_park"] for r in rows] == sorted(want)
    for row in rows:
        figure = want[row["car_park"]]
        assert figure is not None
        assert row["occupancy_pct"] == pytest.approx(figure, rel=1e-9)
        assert row["on_track"] == (figure <= car_park.target.limit)


def test_feed_dashboard_queries_run_on_feed_points(env: Influx,
                                                   report_records: list[Record]) -> None:
    """The generated Grafana panels and variables of the feeds (deploy/dashboards.py) answer
    from the seeded feed points (test_influx_setup's seed has none)."""
    import json

    from deploy import dashboards

    board = json.loads((dashboards.GRAFANA_DIR / "citystream-kpis.json").read_text())
    values = {f"{feed.kind}_entity": FEED_ENTITIES[feed.entity] for feed in FEEDS}
    p0, p1 = (t.isoformat().replace("+00:00", "Z") for t in (P0, P1))
    option = (f"option now = () => {p1}\n"
              f"option v = {{timeRangeStart: {p0}, timeRangeStop: {p1}, windowPeriod: 1h}}\n")

    def run(query: str) -> list[dict[str, Any]]:
        query = re.sub(r"\$\{(\w+):regex\}", lambda m: "(" + "|".join(values[m.group(1)]) + ")",
                       query).replace('bucket: "kpi"', f'bucket: "{env.kpi}"')
        head = re.match(r"(?:\s*import [^\n]*\n)*", query)
        imports = head.group(0) if head else ""
        return env.flux(imports + option + query[len(imports):])

    titles = {f.title for f in FEEDS}
    current = ""
    ran = 0
    for panel in board["panels"]:
        current = panel["title"] if panel["type"] == "row" else current
        if panel["type"] == "row" or current not in titles:
            continue
        feed = next(f for f in FEEDS if f.title == current)
        rows = run(panel["targets"][0]["query"])
        assert rows, panel["title"]
        column = "entity" if panel["type"] == "table" else feed.entity
        assert {r[column] for r in rows} <= set(FEED_ENTITIES[feed.entity]), panel["title"]
        if panel["type"] == "stat":  # the newest on_track of each entity, as 1 / 0
            newest: dict[str, Record] = {}
            for r in report_records:
                if (r.measurement == feed.measurement and "on_track" in r.fields()
                        and r.tags()["window"] == feed.window_tag
                        and ms(P0) <= r.time_ms < ms(P1)):
                    key = r.tags()[feed.entity]
                    if key not in newest or r.time_ms > newest[key].time_ms:
                        newest[key] = r
            assert {r[feed.entity]: r["_value"] for r in rows} == {
                k: int(bool(r.fields()["on_track"])) for k, r in newest.items()}
        ran += 1
    assert ran == sum(len(f.kpis) + 3 for f in FEEDS)
    for var in board["templating"]["list"][3:]:
        assert {r["_value"] for r in run(var["query"])} == set(values[var["name"]])


def test_report_names_the_setting_when_influxdb_refuses(env: Influx,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_INFLUX__TOKEN", "not-a-token")
    code, _, err = invoke("report", "--last", "1d")
    assert code == 1
    assert "CITYSTREAM_INFLUX__TOKEN" in err and "HTTP 401" in err


# -- baseline learn ---------------------------------------------------------------------------

MONDAY = ms(datetime(2026, 9, 7, tzinfo=UTC))
WEEKS = 2
GAP = {26, 27, 100}  # hours of week with no water data


def l_h(how: int, week: int) -> float:
    return 200.0 + 3.0 * how + 40.0 * week


def baseline_records() -> list[Record]:
    out: list[Record] = []
    for week in range(WEEKS):
        for how in range(HOURS_PER_WEEK):
            hour = MONDAY + (week * HOURS_PER_WEEK + how) * HOUR_MS
            if how not in GAP:
                out += [WaterKpi(district="bletchley", window_end_ms=hour + (q + 1) * 900_000,
                                 consumption_l=l_h(how, week) / 4, baseline_l=1.0,
                                 saving_pct=0.0, saving_pct_24h=0.0, on_track=False,
                                 meters_reporting=5) for q in range(4)]
            out += [EnergyKpi(district="central-mk", window_end_ms=hour + (q + 1) * 1_800_000,
                              energy_kwh=(10.0 + how / 10) / 2, baseline_kwh=1.0, saving_pct=0.0,
                              saving_pct_24h=0.0, on_track=False, peak_kw=1.0,
                              meters_reporting=5) for q in range(2)]
            out += [TrafficKpi(district="central-mk", junction="j-portway-h5",
                               window_end_ms=hour + (i + 1) * 300_000,
                               vehicles=0 if i == 11 else 20, flow_veh_h=240.0,
                               space_mean_speed_kmh=40.0,
                               congestion_index=0.0 if i == 11 else 0.001 * how + 0.01 * i,
                               baseline_congestion_index=1.0, reduction_pct=0.0,
                               reduction_pct_24h=0.0, on_track=False) for i in range(12)]
    return out


def test_baseline_learn_writes_a_valid_city_file(env: Influx, tmp_path: Path) -> None:
    env.write(env.kpi, baseline_records())
    out = tmp_path / "learned.toml"
    code, stdout, err = invoke("baseline", "learn", "--from", "2026-09-07", "--to", "2026-09-21",
                               "--out", str(out))
    assert code == 0, err
    assert stdout == ""
    learned, shipped = load_city(out), load_city()
    water = learned.district("bletchley").water_baseline_l_h
    old = shipped.district("bletchley").water_baseline_l_h
    for how in range(HOURS_PER_WEEK):
        want = old[how] if how in GAP else round(fmean(l_h(how, w) for w in range(WEEKS)), 3)
        assert water[how] == want, how
    assert learned.district("central-mk").energy_baseline_kwh_h == [
        round(10.0 + how / 10, 4) for how in range(HOURS_PER_WEEK)]
    busy_means: dict[int, float] = defaultdict(float)
    for how in range(HOURS_PER_WEEK):
        busy_means[how] = round(fmean(0.001 * how + 0.01 * i for i in range(11)), 5)
    assert learned.junction("j-portway-h5").congestion_baseline == [
        busy_means[h] for h in range(HOURS_PER_WEEK)]
    # untouched: entities without data, names, targets, routes
    assert learned.district("wolverton") == shipped.district("wolverton")
    assert learned.routes == shipped.routes and learned.targets == shipped.targets
    assert "no data for 3 hours, kept the old values for Tue 02:00-04:00, Fri 04:00-05:00" in err
    assert "district wolverton water_baseline_l_h: no data in the period" in err
    assert out.read_text().startswith("# Milton Keynes: baselines learned by `citystream "
                                      "baseline learn`")

    code, stdout, err = invoke("baseline", "learn", "--from", "2026-09-07", "--to", "2026-09-21")
    assert code == 0, err
    assert parse_city(stdout) == learned
