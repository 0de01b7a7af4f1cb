"""`citystream erase` against a real InfluxDB 2.7: two water meters' raw readings, hourly
quality points and silent alerts; one meter erased (all time, then a period), the other and the
district's KPI windows intact; the delete made with a write-only token (what `citystream env`
gives), the counts with a read-only one; the audit line."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from analysis.erase import rfc3339
from citystream.cli import main
from connectors.influxdb.admin import find_bucket
from connectors.influxdb.lineproto import reading_line, to_line_protocol
from deploy.influxdb.provision import read_authorization, write_authorization
from deploy.local.stack import Stack
from kinds.water import WaterKpi
from models.quality import SensorQuality
from models.records import Alert
from tests.integration.influx import HOUR_MS, Influx, influx_for_test

pytestmark = pytest.mark.influxdb

ERASED, KEPT = "wm-erase-a", "wm-keep-b"
READINGS = 48  # one per 30 minutes over the last day
QUALITY_HOURS = 6


@pytest.fixture
def influx(stack: Stack) -> Iterator[Influx]:
    made = influx_for_test(stack)
    yield made
    made.admin.call("DELETE", f"/api/v2/tasks/{made.task_id}")


def write(influx: Influx, bucket: str, lines: list[str]) -> None:
    query = urllib.parse.urlencode({"org": influx.org, "bucket": bucket, "precision": "ms"})
    req = urllib.request.Request(f"{influx.url}/api/v2/write?{query}",
                                 data="\n".join(lines).encode(), method="POST")
    req.add_header("Authorization", f"Token {influx.token}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 204


@pytest.fixture
def seeded(influx: Influx) -> int:
    """Both meters' points (raw readings every 30 minutes up to the last full hour, six hourly
    quality points, a silent alert) and the district's water KPI windows; returns the newest
    reading's time."""
    newest = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    raw, kpi = [], []
    for n, sensor in enumerate((ERASED, KEPT)):
        for k in range(READINGS):
            raw.append(reading_line({"sensor_id": sensor, "district": "bletchley",
                                     "ts_ms": newest - k * 1_800_000,
                                     "volume_m3": 100.0 + n - k / 100, "flow_l_min": 2.5,
                                     "seq": READINGS - k}, "water"))
        for k in range(QUALITY_HOURS):
            kpi.append(to_line_protocol(SensorQuality(
                kind="water", district="bletchley", sensor_id=sensor,
                hour_end_ms=newest - k * HOUR_MS, readings=2, duplicates=0, late=0,
                completeness_pct=100.0, stuck=False, score=100.0)))
        kpi.append(to_line_protocol(Alert(kind="water", entity=sensor, rule="silent",
                                          ts_ms=newest - 3 * HOUR_MS, value=9000.0,
                                          threshold=9000.0, message="no reading", active=True)))
    for k in range(8):
        kpi.append(to_line_protocol(WaterKpi.model_validate({
            "district": "bletchley", "window_end_ms": newest - k * 900_000,
            "consumption_l": 30.0, "baseline_l": 40.0, "saving_pct": 25.0,
            "saving_pct_24h": 25.0, "target_pct": 20.0, "on_track": True,
            "meters_reporting": 2})))
    write(influx, influx.plan.telemetry.name, raw)
    write(influx, influx.kpi, kpi)
    return newest


@pytest.fixture
def env(influx: Influx, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The pipeline's kind of tokens for the test's buckets: write-only (deletes) and read-only
    (counts), as `citystream env` sets them; the audit log in the test's directory."""
    buckets = [influx.plan.telemetry.name, influx.kpi]
    org_id = influx.admin.org_id(influx.org)
    write_token = write_authorization(influx.admin, influx.org, buckets, "erase test: write")
    ids = [str(bucket["id"]) for name in buckets
           if (bucket := find_bucket(influx.admin, org_id, name)) is not None]
    read_token = read_authorization(influx.url, influx.token, org_id, ids, "erase test: read")
    for name, value in {"URL": influx.url, "ORG": influx.org, "TOKEN": write_token,
                        "READ_TOKEN": read_token, "BUCKET_TELEMETRY": buckets[0],
                        "BUCKET_KPI": buckets[1]}.items():
        monkeypatch.setenv(f"CITYSTREAM_INFLUX__{name}", value)
    log = tmp_path / "audit.log"
    monkeypatch.setenv("CITYSTREAM_AUDIT__LOG", str(log))
    return log


def points(influx: Influx, bucket: str, where: str) -> int:
    """Points (not field values) in `bucket` matching the Flux predicate `where`."""
    rows = influx.flux(f'from(bucket: "{bucket}") |> range(start: 0) |> filter(fn: (r) => {where})'
                       ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
                       ' |> map(fn: (r) => ({r with n: 1})) |> group() |> sum(column: "n")')
    return sum(int(row["n"] or 0) for row in rows)


def remaining(influx: Influx, sensor: str) -> dict[str, int]:
    return {"raw": points(influx, influx.plan.telemetry.name, f'r.sensor_id == "{sensor}"'),
            "quality": points(influx, influx.kpi, '(r._measurement == "sensor_quality" and '
                              f'r.sensor_id == "{sensor}")'),
            "alerts": points(influx, influx.kpi, f'(r._measurement == "alert" and '
                             f'r.entity == "{sensor}")')}


def erase(*args: str) -> Result:
    return CliRunner().invoke(main, ["erase", *args])


def test_erase_removes_one_sensor_and_keeps_the_other(influx: Influx, seeded: int,
                                                      env: Path) -> None:
    full = {"raw": READINGS, "quality": QUALITY_HOURS, "alerts": 1}
    assert remaining(influx, ERASED) == full == remaining(influx, KEPT)
    result = erase("--sensor", ERASED, "--yes")
    assert result.exit_code == 0, result.output
    # the counts shown before deleting are InfluxDB's points, not field values
    assert f"{READINGS:>9} raw readings" in result.output
    assert f"{QUALITY_HOURS:>9} sensor_quality points" in result.output
    assert remaining(influx, ERASED) == {"raw": 0, "quality": 0, "alerts": 0}
    assert remaining(influx, KEPT) == full
    assert points(influx, influx.kpi, 'r._measurement == "water_kpi"') == 8
    [line] = env.read_text().splitlines()
    entry = json.loads(line)
    assert entry["sensor"] == ERASED and entry["status"] == "done"
    assert entry["deleted"] == {influx.plan.telemetry.name: READINGS,
                                influx.kpi: QUALITY_HOURS + 1}
    assert entry["range"]["from"] == "1970-01-01T00:00:00.000Z"
    assert entry["operator"]
    # again: nothing left, a second line saying so
    result = erase("--sensor", ERASED, "--yes")
    assert result.exit_code == 0 and "nothing to erase" in result.output
    assert json.loads(env.read_text().splitlines()[1])["deleted"] == {
        influx.plan.telemetry.name: 0, influx.kpi: 0}


def test_erase_of_a_period_keeps_the_rest(influx: Influx, seeded: int, env: Path) -> None:
    start, stop = seeded - 5 * HOUR_MS, seeded - 2 * HOUR_MS  # both ends included
    result = erase("--sensor", ERASED, "--from", rfc3339(start), "--to", rfc3339(stop),
                   "--yes")
    assert result.exit_code == 0, result.output
    raw_inside = 7  # readings every 30 minutes over 3 hours, both ends included
    quality_inside = 4  # hour ends at -5, -4, -3 and -2 h
    assert remaining(influx, ERASED) == {"raw": READINGS - raw_inside,
                                         "quality": QUALITY_HOURS - quality_inside, "alerts": 0}
    assert remaining(influx, KEPT) == {"raw": READINGS, "quality": QUALITY_HOURS, "alerts": 1}
    entry = json.loads(env.read_text())
    assert entry["range"] == {"from": rfc3339(start), "to": rfc3339(stop)}
    assert entry["deleted"] == {influx.plan.telemetry.name: raw_inside,
                                influx.kpi: quality_inside + 1}
