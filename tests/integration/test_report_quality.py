"""`citystream report --quality` against a real InfluxDB with seeded `sensor_quality` points.

The points are written as the worker and the dead-letter count write them (one per sensor and
hour, stamped at the hour's end; `rejected` by a separate write, only for hours that had
rejected readings). Every per-sensor figure is computed here from the seeded points,
independently of the code, and compared with `PATH-quality.csv`; the text summary must name
the sensors needing attention and why.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean

import pytest
from click.testing import CliRunner

from citystream.cli import main
from deploy.local.stack import Stack
from models.quality import SensorQuality
from models.records import Record
from tests.integration import kpi_seed
from tests.integration.influx import HOUR_MS, Influx, influx_for_test

pytestmark = pytest.mark.influxdb

P0 = datetime(2026, 10, 5, tzinfo=UTC)
P1 = datetime(2026, 10, 7, tzinfo=UTC)
START, STOP = int(P0.timestamp() * 1000), int(P1.timestamp() * 1000)
MIN_SCORE = 80.0
SENSORS = [("water", d, f"wm-{d[:3]}-{i}") for d in kpi_seed.DISTRICTS for i in range(6)]
SENSORS += [("traffic", d, f"tc-{d[:3]}-{i}") for d in kpi_seed.DISTRICTS for i in range(3)]


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
    monkeypatch.delenv("CITYSTREAM_QUALITY__MIN_SCORE", raising=False)
    return influx


@dataclass
class Want:
    """One sensor's figures over the period, summed here from the points written."""

    hours: int = 0
    readings: int = 0
    duplicates: int = 0
    rejected: int = 0
    late: int = 0
    stuck_hours: int = 0
    hours_below: int = 0
    scores: list[float] = field(default_factory=list)
    completeness: list[float] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        return fmean(self.scores) if self.scores else None

    @property
    def attention(self) -> bool:
        score = self.score
        return ((score is not None and score < MIN_SCORE) or self.rejected > 0
                or self.stuck_hours > 0)


def seed(rng: random.Random) -> list[SensorQuality]:
    """Every hour ending in [P0 - 3 h, P1 + 3 h] for every sensor of SENSORS: mostly good, a
    few bad hours, some stuck water hours, rejected readings now and then (a point of their
    own); `*-0` sensors of bletchley go bad for the second day; `completeness_pct` is left out
    of some points (usual interval not known yet) and a few hours have no point at all."""
    out: list[SensorQuality] = []
    for kind, district, sensor in SENSORS:
        poor = sensor.endswith("-0") and district == "bletchley"
        for end in range(START - 3 * HOUR_MS, STOP + 3 * HOUR_MS + 1, HOUR_MS):
            if rng.random() < 0.03:
                continue                                   # no point this hour
            bad = (poor and end > START + 24 * HOUR_MS) or rng.random() < 0.05
            readings = rng.randint(0, 2) if bad else 4
            completeness = None if rng.random() < 0.1 else 25.0 * readings
            stuck = kind == "water" and rng.random() < 0.02
            score = (completeness if completeness is not None else 25.0 * readings) * 0.98
            out.append(SensorQuality(
                kind=kind, district=district, sensor_id=sensor, hour_end_ms=end,
                readings=readings, duplicates=rng.choice((0, 0, 0, 1, 2)),
                late=rng.choice((0, 0, 0, 0, 1)), completeness_pct=completeness,
                stuck=stuck, score=min(score, 25.0) if stuck else score))
            if rng.random() < 0.04:
                out.append(SensorQuality(kind=kind, district=district, sensor_id=sensor,
                                         hour_end_ms=end, rejected=rng.randint(1, 9)))
    return out


def expected(points: list[SensorQuality]) -> dict[str, Want]:
    """The report's figures: hours ending in (P0, P1] (module doc of analysis/quality.py)."""
    want: dict[str, Want] = {}
    for p in points:
        if not START < p.hour_end_ms <= STOP:
            continue
        w = want.setdefault(p.sensor_id, Want())
        w.readings += p.readings or 0
        w.duplicates += p.duplicates or 0
        w.rejected += p.rejected or 0
        w.late += p.late or 0
        w.stuck_hours += bool(p.stuck)
        if p.completeness_pct is not None:
            w.completeness.append(p.completeness_pct)
        if p.score is not None:
            w.hours += 1
            w.scores.append(p.score)
            w.hours_below += p.score < MIN_SCORE
    return want


@pytest.fixture(scope="module")
def seeded(influx: Influx) -> dict[str, Want]:
    points = seed(random.Random(11))
    records: list[Record] = [*kpi_seed.kpi_records(START - 2 * HOUR_MS, STOP + 2 * HOUR_MS,
                                                   seed=3), *points]
    influx.write(influx.kpi, records)
    return expected(points)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_report_quality_per_sensor(env: Influx, seeded: dict[str, Want], tmp_path: Path) -> None:
    path = tmp_path / "week.csv"
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07",
                            "--quality", "--csv", str(path))
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "week-quality.csv").open(encoding="utf-8")))
    assert {r["sensor_id"] for r in rows} == set(seeded) == {s for _, _, s in SENSORS}
    for row in rows:
        want = seeded[row["sensor_id"]]
        sensor = row["sensor_id"]
        for name in ("hours", "readings", "duplicates", "rejected", "late", "stuck_hours",
                     "hours_below"):
            assert int(row[name]) == getattr(want, name), (sensor, name)
        assert want.score is not None
        assert float(row["score"]) == pytest.approx(want.score, rel=1e-9), sensor
        assert float(row["lowest_score"]) == min(want.scores), sensor
        assert float(row["completeness_pct"]) == pytest.approx(fmean(want.completeness),
                                                               rel=1e-9), sensor
        assert row["attention"] == ("true" if want.attention else "false"), sensor
        assert (row["period_start"], row["period_stop"]) == ("2026-10-05T00:00:00Z",
                                                             "2026-10-07T00:00:00Z")
    # worst first: those needing attention, lowest mean score first
    flags = [r["attention"] == "true" for r in rows]
    assert flags == sorted(flags, reverse=True)
    bad = [r for r in rows if r["attention"] == "true"]
    assert [float(r["score"]) for r in bad] == sorted(float(r["score"]) for r in bad)
    assert "wm-ble-0" in {r["sensor_id"] for r in bad}            # a bad second day

    low = sum((w.score or 0) < MIN_SCORE for w in seeded.values() if w.attention)
    rejected = sum(w.rejected > 0 for w in seeded.values() if w.attention)
    stuck = sum(w.stuck_hours > 0 for w in seeded.values() if w.attention)
    attention = sum(w.attention for w in seeded.values())
    assert (f"{len(seeded)} sensors, {attention} need{'s' if attention == 1 else ''} "
            f"attention: {low} with a mean score below 80, {rejected} with rejected readings, "
            f"{stuck} stuck") in out
    worst = bad[0]
    line = next(x for x in out.splitlines() if f" {worst['sensor_id']} " in x)
    assert worst["problems"].split("; ")[0] in line
    assert f"every sensor's figures: {tmp_path / 'week-quality.csv'}" in out
    assert (tmp_path / "week.csv").exists()                     # the KPI rows beside it


def test_report_quality_selection_and_threshold(env: Influx, seeded: dict[str, Want],
                                                tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    code, _, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07", "--quality",
                          "--kind", "water", "--district", "bletchley", "--min-score", "10",
                          "--csv", str(path))
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "r-quality.csv").open(encoding="utf-8")))
    assert {r["sensor_id"] for r in rows} == {s for k, d, s in SENSORS
                                              if k == "water" and d == "bletchley"}
    for row in rows:
        want = seeded[row["sensor_id"]]
        below = sum(s < 10.0 for s in want.scores)
        assert int(row["hours_below"]) == below
        mean = want.score or 0.0
        assert row["attention"] == ("true" if mean < 10 or want.rejected or want.stuck_hours
                                    else "false")
    code, out, err = invoke("report", "--from", "2026-10-05", "--to", "2026-10-07", "--quality",
                            "--kind", "traffic", "--csv", "-")
    assert code == 0, err
    assert {r["kind"] for r in csv.DictReader(io.StringIO(out))} == {"traffic"}  # stdout: CSV
    assert "Sensor quality" in err and f"{len(kpi_seed.DISTRICTS) * 3} sensors" in err
