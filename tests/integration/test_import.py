"""`citystream import` against a real InfluxDB: a recorded period of the simulated city with
faults gives exactly the oracle's points, also imported twice and after a SIGKILL halfway; the
same readings published live give the import's points; a CSV export with bad rows of every
contract reason has every row accounted for; baselines learned from an imported period and a
report over it use its points.

The long run (a month of the city) is marked `slow`."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.backfill.state import partition_positions
from models.city import load_city
from tests.history_data import (
    CITY_FILE,
    EXPORT_HEADER,
    EXPORT_MAPPING,
    MONDAY,
    expected_points,
    export_readings,
    export_rows,
    record,
)
from tests.integration.helpers import Lane, compare_points, start_of_run
from tests.oracle import compute_from_readings, read_recording
from tests.oracle import load_city as oracle_city
from tests.support import KPI_MEASUREMENTS, ROOT, create_bucket, influx_points

pytestmark = pytest.mark.influxdb

HOURS = 8


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "city.jsonl", HOURS, seed=21)


@pytest.fixture(scope="module")
def oracle(recording: Path) -> dict[Any, dict[str, Any]]:
    return expected_points(read_recording(recording))


def measurements() -> tuple[str, ...]:
    return (*KPI_MEASUREMENTS, *(f"{f.kind}_kpi" for f in load_city(CITY_FILE).feeds))


def env_of(lane: Lane) -> dict[str, str]:
    """The lane's settings, its state dir, and the operator token to read (report, learn)."""
    return {**os.environ, **lane.stack.service_env(), **lane.env,
            "CITYSTREAM_CITY__FILE": str(CITY_FILE),
            "CITYSTREAM_IMPORT_STATE_DIR": str(lane.dir / "imports"),
            "CITYSTREAM_INFLUX__READ_TOKEN": lane.influx.client_info()["influxdb"]["token"]}


def citystream(lane: Lane, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citystream", *args], env=env_of(lane),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def report_of(lane: Lane) -> dict[str, Any]:
    """The report of the last import run in the lane."""
    latest = max((lane.dir / "imports").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    return dict(json.loads(latest.read_text()))


def no_differences(lane: Lane, want: dict[Any, dict[str, Any]], *, ties: bool = False) -> None:
    """InfluxDB's points equal `want`. With `ties`, an `on_track` judged the other way for a
    24 h figure equal to its target up to float rounding is let through (the engine and the
    oracle sum the windows in different orders: 94.99999999999999 against 95.0)."""
    got = influx_points(lane.influx, lane.kpi_bucket, measurements())
    problems = compare_points(got, want)
    if ties:
        problems = [p for p in problems if not _tie(p, got, want)]
    assert not problems, f"{len(problems)} differences, e.g.:\n" + "\n".join(problems[:10])


def _tie(problem: str, got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> bool:
    for key, fields in want.items():
        if problem.startswith(f"{key} on_track:") and "target" in fields:
            rolling = [v for name, v in fields.items() if name.endswith("_24h")]
            return any(abs(v - fields["target"]) < 1e-9 for v in rolling)
    return False


def test_a_recorded_period_imports_to_the_oracles_points_and_again(
        lane: Lane, recording: Path, oracle: dict[Any, dict[str, Any]]) -> None:
    done = citystream(lane, "import", str(recording), "--workers", "2")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "windows written" in done.stdout and "rejected" in done.stdout
    no_differences(lane, oracle)
    first = report_of(lane)["counts"]
    want = {"readings", "accepted", "rejected"}
    rows = read_recording(recording)
    assert first["readings"] == sum(len(r["expected"]) for r in rows)
    assert want <= set(first)

    again = citystream(lane, "import", str(recording), "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert "finished before" in again.stderr
    no_differences(lane, oracle)
    second = report_of(lane)["counts"]
    assert second["readings"] == first["readings"] and second["rejected"] == first["rejected"]
    assert second["duplicates"] + second["beyond_horizon"] == first["accepted"]


@pytest.mark.mqtt
@pytest.mark.kafka
def test_the_same_readings_published_live_give_the_imports_points(lane: Lane,
                                                                  tmp_path: Path) -> None:
    """A slice of the city with faults published live (MQTT, ingest, Kafka, the worker) and
    its recording imported into a bucket of its own: the same KPI points, none missing or
    extra."""
    lane.ingest()
    lane.worker()
    live = tmp_path / "live.jsonl"
    lane.simulate("--seed", "4", "--speed", "0", "--gateways", "2", "--faults", "0.004",
                  "--fault", "duplicate=0.02", "--fault", "reorder=0.02", "--start",
                  start_of_run(), "--count", "15000", record=live)
    bucket = f"imported-{lane.prefix.strip('.')}"
    create_bucket(lane.influx, bucket)
    operator = lane.influx.client_info()["influxdb"]["token"]
    done = subprocess.run(
        [sys.executable, "-m", "citystream", "import", str(live), "--workers", "2"],
        env={**env_of(lane), "CITYSTREAM_INFLUX__BUCKET_KPI": bucket,
             "CITYSTREAM_INFLUX__TOKEN": operator},
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    imported = influx_points(lane.influx, bucket, measurements())
    assert len(imported) > 100
    deadline = time.monotonic() + 240
    while True:
        problems = compare_points(influx_points(lane.influx, lane.kpi_bucket, measurements()),
                                  imported)
        if not problems:
            break
        assert time.monotonic() < deadline, (
            f"{len(problems)} differences between live and imported points, e.g.:\n"
            + "\n".join(problems[:10]))
        time.sleep(3)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_halfway_the_import_resumes_to_the_same_points(
        lane: Lane, recording: Path, oracle: dict[Any, dict[str, Any]]) -> None:
    messages = len(read_recording(recording))
    args = ["import", str(recording), "--workers", "2", "--batch", "1000",
            "--checkpoint", "0.05"]
    proc = subprocess.Popen([sys.executable, "-m", "citystream", *args], env=env_of(lane),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        def halfway() -> bool:
            dirs = list((lane.dir / "imports").glob("*"))
            positions = partition_positions(dirs[0]) if dirs else {}
            return len(positions) == 2 and min(positions.values()) >= messages * 0.3

        _wait(halfway, 60, "the import to checkpoint 30 % of the input")
        children = _children(proc.pid)
        assert len(children) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: its partitions must follow
        proc.wait(10)
        _wait(lambda: not any(_alive(c) for c in children), 10, "the partitions to die")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    [state] = list((lane.dir / "imports").glob("*"))
    assert max(partition_positions(state).values()) < messages, "finished before the kill"
    resumed = citystream(lane, *args)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resuming import" in resumed.stderr
    no_differences(lane, oracle)
    counts = report_of(lane)["counts"]
    assert counts["readings"] == sum(len(r["expected"]) for r in read_recording(recording))


def test_a_csv_export_with_bad_rows_has_every_row_accounted_for(lane: Lane) -> None:
    rows = export_rows()
    export = lane.dir / "export.csv"
    export.write_text("\n".join([EXPORT_HEADER, *(row for row, _ in rows)]) + "\n")
    mapping = lane.dir / "export.toml"
    mapping.write_text(EXPORT_MAPPING)
    done = citystream(lane, "import", str(export), "--mapping", str(mapping))
    assert done.returncode == 0, done.stderr + done.stdout
    counts = report_of(lane)["counts"]
    reasons: dict[str, int] = {}
    for _row, reason in rows:
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    assert counts["rejected"] == reasons
    assert counts["readings"] == len(rows) == counts["accepted"] + sum(reasons.values())
    [state] = list((lane.dir / "imports").glob("*"))
    rejects = (state / "rejects.jsonl").read_text().splitlines()
    assert [json.loads(r)["reason"] for r in rejects] == [r for _, r in rows if r]
    valid = export_readings(rows)
    want = compute_from_readings(valid, oracle_city(CITY_FILE)).points
    got = influx_points(lane.influx, lane.kpi_bucket)
    assert not compare_points(got, want)


def test_baselines_learned_from_an_imported_period_and_a_report_over_it(
        lane: Lane, recording: Path) -> None:
    """Learned from the period and imported again against them, the period's saving is 0 %."""
    assert citystream(lane, "import", str(recording)).returncode == 0
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MONDAY / 1000))
    stop = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MONDAY / 1000 + (HOURS + 1) * 3600))
    learned = lane.dir / "city-learned.toml"
    done = citystream(lane, "baseline", "learn", "--from", start, "--to", stop,
                      "--out", str(learned))
    assert done.returncode == 0, done.stderr
    before, after = load_city(CITY_FILE), load_city(learned)
    for old, new in zip(before.districts, after.districts, strict=True):
        assert new.water_baseline_l_h[HOURS + 2:] == old.water_baseline_l_h[HOURS + 2:]
        assert new.water_baseline_l_h[:HOURS] != old.water_baseline_l_h[:HOURS]
    again = citystream(lane, "import", str(recording), "--city", str(learned))
    assert again.returncode == 0, again.stderr
    shown = citystream(lane, "report", "--from", start, "--to", stop, "--city", str(learned),
                       "--csv", "-")
    assert shown.returncode == 0, shown.stderr
    table = list(csv.DictReader(io.StringIO(shown.stdout)))
    savings = {(r["kind"], r["entity"]): float(r["figure_pct"]) for r in table
               if r["kind"] in ("water", "energy")}
    assert len(savings) == 2 * len(after.districts)
    assert all(abs(v) < 0.05 for v in savings.values()), savings


@pytest.mark.slow
def test_a_month_of_the_city_imports_to_the_oracles_points(lane: Lane, tmp_path: Path) -> None:
    month = record(tmp_path / "month.jsonl", 24 * 30, seed=31, size=0.1)
    done = citystream(lane, "import", str(month), timeout=3600)
    assert done.returncode == 0, done.stderr + done.stdout
    no_differences(lane, expected_points(read_recording(month)), ties=True)
