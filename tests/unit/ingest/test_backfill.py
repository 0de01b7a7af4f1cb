"""The backfill lane (`citystream import`) without InfluxDB: a recorded period of the simulated
city with faults, imported, gives exactly the oracle's KPI points (tests/oracle), also with
two partitions, when imported twice, when stopped and resumed, after a crash, and when
continued with later files; every rejected reading is in the rejects with its reason."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.backfill.job import ImportOptions, Job, prepare
from ingest.backfill.runner import Progress, Summary, run_import
from ingest.backfill.state import partition_positions
from ingest.history import HistoryError, describe_inputs
from models.city import load_city
from models.settings import InfluxSettings, QualitySettings
from tests.history_data import CITY_FILE, Points, expected_points, record
from tests.oracle import compute_kpis, read_recording

HOURS = 3
INFLUX = InfluxSettings(url="http://influx.invalid:8086", bucket_kpi="kpi",
                        bucket_telemetry="telemetry")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "city.jsonl", HOURS)


@pytest.fixture(scope="module")
def oracle(recording: Path) -> Points:
    return expected_points(read_recording(recording))


class FileWriter:
    """A `PointWriter` appending lines to one file, from any process (one write per
    request, O_APPEND): the test reads the points back in the order they were written."""

    path: Path

    def write(self, bucket: str, lines: list[str]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, "".join(f"{bucket} {line}\n" for line in lines).encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        return None


_FIELD = re.compile(r'([^,=]+)=("(?:[^"\\]|\\.)*"|[^,]+)')


def written(path: Path, bucket: str = "kpi", measurements: tuple[str, ...] | None = None
            ) -> Points:
    """Every point as InfluxDB keeps it: a point is its measurement, tags and time, and a
    field written again takes the last value written."""
    points: Points = {}
    if not path.exists():
        return points
    for row in path.read_text().splitlines():
        where, line = row.split(" ", 1)
        head, rest = line.split(" ", 1)
        fields_text, ts = rest.rsplit(" ", 1)
        measurement, *tags = head.split(",")
        if where != bucket or (measurements is not None and measurement not in measurements):
            continue
        fields: dict[str, Any] = {}
        for name, value in _FIELD.findall(fields_text):
            if value.startswith('"'):
                fields[name] = value[1:-1]
            elif value.endswith("i"):
                fields[name] = int(value[:-1])
            elif value in ("true", "false"):
                fields[name] = value == "true"
            else:
                fields[name] = float(value)
        key = (measurement, tuple(sorted(tuple(t.split("=", 1)) for t in tags)), int(ts))
        points.setdefault(key, {}).update(fields)  # type: ignore[arg-type]
    return points


def kpi_points(path: Path) -> Points:
    return {k: v for k, v in written(path).items()
            if k[0].endswith("_kpi") and k[0] != "sensor_quality"}


def differences(got: Points, want: Points) -> list[str]:
    problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
    problems += [f"extra {k}" for k in sorted(set(got) - set(want))]
    for key in sorted(set(want) & set(got)):
        if set(got[key]) != set(want[key]):
            problems.append(f"{key}: fields {sorted(got[key])} != {sorted(want[key])}")
            continue
        for name, value in want[key].items():
            have = got[key][name]
            if isinstance(value, bool | int):
                ok = type(have) is type(value) and have == value
            else:
                ok = abs(have - value) <= 1e-6 * max(1.0, abs(value))
            if not ok:
                problems.append(f"{key} {name}: {have!r} != {value!r}")
    return problems


@pytest.fixture
def lane(tmp_path: Path) -> Callable[..., Job]:
    """A job factory for `tmp_path`: its points go to `tmp_path/points.lp`."""
    city = load_city(CITY_FILE)

    def make(paths: list[Path], **options: Any) -> Job:
        files = describe_inputs(paths, None)
        opts = ImportOptions(state_dir=tmp_path / "state", **{"checkpoint_s": 0.0, **options})
        job = prepare(files, None, "", city, CITY_FILE.read_text(), INFLUX, QualitySettings(),
                      opts)
        writer = FileWriter()
        writer.path = tmp_path / "points.lp"
        job.writers = lambda: writer
        return job

    return make


def run(job: Job, stop_at: float | None = None) -> Summary:
    stop = threading.Event()

    def progress(p: Progress) -> None:
        if stop_at is not None and p.fraction() >= stop_at:
            stop.set()

    return run_import(job, progress, stop)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_recorded_period_with_faults_equals_the_oracle(
        recording: Path, oracle: Points, lane: Callable[..., Job], tmp_path: Path,
        workers: int) -> None:
    summary = run(lane([recording], workers=workers, batch=3000))
    assert summary.status == "done", summary.error
    assert not differences(kpi_points(tmp_path / "points.lp"), oracle)
    want = compute_kpis(read_recording(recording), CITY_FILE)
    c = summary.counts
    assert (c.readings, c.accepted, c.rejected) == (want.readings, want.accepted,
                                                   dict(want.rejected))
    assert c.duplicates >= want.duplicates > 0  # the oracle counts the built-in kinds only
    assert c.messages == want.messages
    assert sum(summary.windows.values()) == len(oracle)
    rejects = [json.loads(line) for line in summary.rejects_path.read_text().splitlines()]
    assert len(rejects) == c.rejected_total
    assert [(r["file"], r["line"]) for r in rejects] == sorted(
        (r["file"], r["line"]) for r in rejects)
    assert {r["reason"] for r in rejects} == set(want.rejected)
    quality = written(tmp_path / "points.lp", measurements=("sensor_quality",))
    assert any("readings" in f for f in quality.values())
    assert any(f.get("rejected") for f in quality.values())


def test_importing_twice_writes_the_same_points_and_counts_duplicates(
        recording: Path, oracle: Points, lane: Callable[..., Job], tmp_path: Path) -> None:
    first = run(lane([recording], workers=2, batch=3000))
    assert first.status == "done"
    rejected = {k: f["rejected"] for k, f in written(
        tmp_path / "points.lp", measurements=("sensor_quality",)).items() if "rejected" in f}
    assert rejected
    second = run(lane([recording], workers=2, batch=3000))
    assert second.status == "done" and second.job.replay
    assert not differences(kpi_points(tmp_path / "points.lp"), oracle)
    c1, c2 = first.counts, second.counts
    assert c2.readings == c1.readings and c2.rejected == c1.rejected
    assert c2.duplicates + c2.beyond_horizon == c1.accepted  # every reading seen before
    assert c2.late == 0
    assert {k: f["rejected"] for k, f in written(  # rejects are not counted twice either
        tmp_path / "points.lp", measurements=("sensor_quality",)).items()
        if "rejected" in f} == rejected


def test_stopped_and_resumed_gives_the_same_points(
        recording: Path, oracle: Points, lane: Callable[..., Job], tmp_path: Path) -> None:
    whole = run(lane([recording], workers=1, batch=1000, name="whole"))
    stopped = run(lane([recording], workers=2, batch=1000), stop_at=0.4)
    assert stopped.status == "interrupted"
    positions = partition_positions(stopped.job.dir)
    assert 0 < min(positions.values()) < whole.counts.messages
    resumed = run(lane([recording], workers=2, batch=1000))
    assert resumed.status == "done" and not resumed.job.replay
    assert not differences(kpi_points(tmp_path / "points.lp"), oracle)
    for name in ("readings", "accepted", "rejected", "duplicates", "late", "beyond_horizon",
                 "messages"):
        assert getattr(resumed.counts, name) == getattr(whole.counts, name), name
    assert resumed.windows == whole.windows


class Crash(Exception):
    pass


def test_a_crash_resumes_from_the_last_checkpoint(
        recording: Path, oracle: Points, lane: Callable[..., Job], tmp_path: Path) -> None:
    job = lane([recording], workers=1, batch=1000, batch_points=200)
    inner = job.writers
    assert inner is not None
    calls = {"n": 0}

    class Crashing:
        def write(self, bucket: str, lines: list[str]) -> None:
            calls["n"] += 1
            if calls["n"] == 12:
                raise Crash("the machine went down mid-write")
            inner().write(bucket, lines)

        def close(self) -> None:
            return None

    job.writers = Crashing
    crashed = run_import(job)
    assert crashed.status == "failed" and "Crash" in (crashed.error or "")
    assert partition_positions(job.dir)[0] > 0
    resumed = run(lane([recording], workers=1, batch=1000))
    assert resumed.status == "done"
    assert not differences(kpi_points(tmp_path / "points.lp"), oracle)
    want = compute_kpis(read_recording(recording), CITY_FILE)
    assert resumed.counts.readings == want.readings
    assert resumed.counts.rejected == dict(want.rejected)


def test_later_files_continue_the_same_state(
        recording: Path, oracle: Points, lane: Callable[..., Job], tmp_path: Path) -> None:
    lines = recording.read_bytes().splitlines(keepends=True)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(b"".join(lines[:len(lines) // 2]))
    second.write_bytes(b"".join(lines[len(lines) // 2:]))
    assert run(lane([first], workers=2, name="city")).status == "done"
    summary = run(lane([second], workers=2, name="city"))
    assert summary.status == "done" and not summary.job.replay
    assert not differences(kpi_points(tmp_path / "points.lp"), oracle)


def test_raw_readings_only_when_asked(recording: Path, lane: Callable[..., Job],
                                      tmp_path: Path) -> None:
    summary = run(lane([recording], workers=1, raw=True))
    raw = written(tmp_path / "points.lp", bucket="telemetry")
    assert summary.counts.raw_points == summary.counts.accepted
    valid = {(r["sensor_id"], r["ts"]) for r in _valid_readings(recording)}
    assert len(raw) == len(valid)  # a duplicate overwrites its own point
    assert {m for m, _, _ in raw} >= {"water", "energy", "traffic", "shuttle", "car_park"}


def _valid_readings(recording: Path) -> Iterator[dict[str, Any]]:
    from tests.oracle import parse_ts

    for row in read_recording(recording):
        if not any(e["valid"] for e in row["expected"]):
            continue
        body = json.loads(base64.b64decode(row["payload_b64"]))
        for obj, e in zip(body if isinstance(body, list) else [body], row["expected"],
                          strict=True):
            if e["valid"]:
                yield {**obj, "ts": parse_ts(obj["ts"])}


def test_an_interrupted_import_resumes_only_with_its_own_files(
        recording: Path, lane: Callable[..., Job], tmp_path: Path) -> None:
    stopped = run(lane([recording], workers=1, batch=1000, name="x"), stop_at=0.3)
    assert stopped.status == "interrupted"
    other = tmp_path / "other.jsonl"
    other.write_bytes(recording.read_bytes()[:5000].rsplit(b"\n", 1)[0] + b"\n")
    with pytest.raises(HistoryError, match="interrupted while reading"):
        lane([other], name="x")
    with pytest.raises(HistoryError, match="--raw"):
        lane([recording], name="x", raw=True)
    city = load_city(CITY_FILE)
    elsewhere = InfluxSettings(url="http://other:8086")
    with pytest.raises(HistoryError, match="wrote to"):
        prepare(describe_inputs([recording], None), None, "", city, "", elsewhere,
                QualitySettings(), ImportOptions(state_dir=tmp_path / "state", name="x"))
    assert run(lane([other], name="x", fresh=True)).status == "done"


def test_a_dry_run_keeps_its_report_and_no_state(recording: Path, tmp_path: Path) -> None:
    city = load_city(CITY_FILE)
    job = prepare(describe_inputs([recording], None), None, "", city, "", INFLUX,
                  QualitySettings(), ImportOptions(state_dir=tmp_path, dry_run=True,
                                                   workers=2))
    summary = run_import(job)
    assert summary.status == "done" and job.id.endswith("-dry-run")
    assert summary.report_path.exists() and summary.rejects_path.exists()
    assert not list(job.dir.glob("partition-*"))
    report = json.loads(summary.report_path.read_text())
    assert report["counts"]["readings"] == summary.counts.readings


def test_influxdb_unavailable_is_retried_then_the_import_stops_at_its_checkpoint(
        recording: Path, oracle: Points, lane: Callable[..., Job], tmp_path: Path) -> None:
    from connectors.influxdb.write import SinkBackpressure

    job = lane([recording], workers=1, batch=2000, retry_for_s=0.0)
    inner = job.writers
    assert inner is not None
    state = {"calls": 0, "down": False}

    class Flaky:
        def write(self, bucket: str, lines: list[str]) -> None:
            state["calls"] += 1
            if state["calls"] == 3:
                state["down"] = True  # and stays down: retry_for_s 0 gives up at once
            if state["down"]:
                raise SinkBackpressure("InfluxDB answered 503", 0.0)
            inner().write(bucket, lines)

        def close(self) -> None:
            return None

    job.writers = Flaky
    failed = run_import(job)
    assert failed.status == "failed"
    assert "InfluxDB has not taken the import's points" in (failed.error or "")
    assert "run the same command again to resume" in (failed.error or "")
    state.update(calls=-1_000_000, down=False)  # back up, after a blip

    class Blip(Flaky):
        def write(self, bucket: str, lines: list[str]) -> None:
            state["calls"] += 1
            if state["calls"] == -999_999:
                raise SinkBackpressure("InfluxDB answered 503", 0.0)
            inner().write(bucket, lines)

    again = lane([recording], workers=1, batch=2000)
    again.writers = Blip
    resumed = run_import(again)
    assert resumed.status == "done"
    assert not differences(kpi_points(tmp_path / "points.lp"), oracle)
