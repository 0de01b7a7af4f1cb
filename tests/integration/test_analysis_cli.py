"""`citystream report` and `citystream baseline learn` against a real InfluxDB with seeded KPI
windows; the answers are computed here from the seeded records, independently of the code."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean

import pytest
from click.testing import CliRunner

from citystream.cli import main
from deploy.local.stack import Stack
from models.city import HOURS_PER_WEEK, load_city, parse_city
from models.records import EnergyKpi, Record, ShuttleKpi, TrafficKpi, WaterKpi
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


@pytest.fixture(scope="module")
def report_records(influx: Influx) -> list[Record]:
    records = kpi_seed.kpi_records(ms(P0) - 2 * HOUR_MS, ms(P1) + 2 * HOUR_MS, seed=3)
    influx.write(influx.kpi, records)
    return records


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
            for r in csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8"))}
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
    assert got == [("water", "bletchley"), ("energy", "bletchley"),
                   ("traffic", "j-bletcham-way-v7")]
    code, out, _ = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                          "--kind", "traffic", "--exit-code")
    statuses = [("off track" in line) for line in out.splitlines() if line.startswith("traffic ")]
    assert code == (3 if any(statuses) else 0)


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
