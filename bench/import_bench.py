"""`citystream import` benchmark: readings/s and peak memory; --live: live latency during an import.

    .venv/bin/python -m bench.import_bench [--hours 24] [--workers 0 1] [--raw]
        [--recording day.jsonl]
    .venv/bin/python -m bench.import_bench --live [--live-rate 1000] [--live-s 60]
        [--workers 0] [--recording day.jsonl]

A recorded day of the shipped city (the simulator's `--record` format, one reading per message,
as `citystream sim --dry-run --speed 0 --record` writes it; made once and kept with
--recording) is imported as `citystream import` does it: read, decoded by `ingest.decode`,
through the engines of every kind, windows and quality judged, KPI points encoded to line
protocol, checkpoints committed to SQLite; only the InfluxDB writes are replaced by a counter
(`ingest.backfill.output.CountingWriter`), so the figure is the import's own ceiling. One line
of JSON per case (--workers: 0 = one partition per CPU): readings/s, seconds, peak RSS summed
over the partitions' processes, the CPU time per reading (all processes: what the run costs
whatever else the machine does) and the load average around the run (other work on the machine
slows it). Figures, not assertions.

--live starts a private stack and the live lane as `python -m bench` does (bench/suite.py's
`measure_live`: one ingest and one worker with its sink, a paced city feed with probe readings
whose publish-to-raw-point-in-InfluxDB latency a poller measures), twice: alone, then while
`citystream import` (a real one, writing its points to InfluxDB, in buckets of its own) imports
the recording again and again (`--fresh`) for the whole feed. One line of JSON per phase:
latency p50/p95/p99, probes seen of those published, the rate offered, the CPU the live
processes used per 1,000 readings; the second also the import's finished runs and their
readings/s. (The rate InfluxDB took is left out: its count of points written includes the
import's.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.backfill.job import ImportOptions, prepare
from ingest.backfill.runner import run_import
from ingest.history import describe_inputs
from models.city import DEFAULT_CITY_FILE, load_city
from models.settings import InfluxSettings, QualitySettings
from sensors_sim.generator import SimConfig, Simulation
from sensors_sim.recording import Recorder

if TYPE_CHECKING:
    from . import suite

MONDAY = 1_794_787_200_000  # 2026-11-16T00:00:00Z


def record_day(path: Path, hours: float, seed: int) -> Path:
    """`hours` of the shipped city from a Monday 00:00 UTC, single-reading messages."""
    sim = Simulation(load_city(), SimConfig(start_ms=MONDAY, seed=seed))
    with Recorder(path) as recorder:
        for message in sim.messages():
            if message.sim_time_ms >= MONDAY + hours * 3_600_000:
                break
            recorder.write(message)
    return path


def run(recording: Path, workers: int, raw: bool, batch: int) -> dict[str, Any]:
    city = load_city()
    with tempfile.TemporaryDirectory() as state:
        options = ImportOptions(state_dir=Path(state), workers=workers, raw=raw, batch=batch,
                                dry_run=True, checkpoint_s=10.0)
        job = prepare(describe_inputs([recording], None), None, "", city,
                      DEFAULT_CITY_FILE.read_text(), InfluxSettings(), QualitySettings(),
                      options)
        load_before = os.getloadavg()[0]
        cpu_before = _cpu_s()
        summary = run_import(job)
        cpu = _cpu_s() - cpu_before
        load_after = os.getloadavg()[0]
    assert summary.status == "done", summary.error
    c = summary.counts
    return {"partitions": job.workers, "raw": raw, "batch": batch,
            "input_mb": round(recording.stat().st_size / 1e6, 1), "readings": c.readings,
            "seconds": round(summary.seconds, 2),
            "partition_seconds": [round(part.seconds, 2) for part in summary.parts],
            "readings_per_s": round(summary.readings_per_s),
            "peak_rss_mb": round(summary.peak_rss_mb),
            "cpu_us_per_reading": round(cpu / max(c.readings, 1) * 1e6, 2),
            "readings_per_s_per_cpu": round(c.readings / max(cpu, 1e-9)),
            "windows": sum(summary.windows.values()),
            "sensor_quality": c.quality_points, "alerts": c.alerts,
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "cpus": os.cpu_count()}


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the forked partitions)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Imports(threading.Thread):
    """`citystream import` of `recording` as a child process, run again (`--fresh`) as soon
    as it finishes, until `stop`: an import going on for as long as a live feed lasts."""

    def __init__(self, ctx: suite.Context, recording: Path, workers: int) -> None:
        super().__init__(name="imports", daemon=True)
        self.ctx = ctx
        self.recording = recording
        self.workers = workers
        self.ns = ctx.namespace("import")  # buckets of its own
        self.state = ctx.logs / f"imports-{self.ns.tag}"
        self.stopping = threading.Event()
        self.runs: list[dict[str, Any]] = []  # each finished run's report.json
        self.error: str | None = None

    def run(self) -> None:
        from .procs import citystream

        while not self.stopping.is_set():
            child = citystream(f"import-{self.ns.tag}-{len(self.runs)}", [
                "import", str(self.recording), "--id", "bench", "--fresh",
                "--workers", str(self.workers), "--state-dir", str(self.state),
                "--no-progress"], self.ctx.stack, self.ns, self.ctx.logs)
            child.start()
            while child.running() and not self.stopping.is_set():
                time.sleep(0.1)
            if self.stopping.is_set():
                child.stop()
                return
            assert child.proc is not None
            if child.proc.returncode != 0:
                self.error = f"citystream import exited {child.proc.returncode}:\n{child.tail()}"
                return
            self.runs.append(json.loads((self.state / "bench" / "report.json").read_text()))

    def stop(self) -> dict[str, Any]:
        """Stop the import (the run under way is interrupted) and say what the finished runs
        did."""
        self.stopping.set()
        self.join(60)
        if self.error:
            raise RuntimeError(self.error)
        readings = sum(r["counts"]["readings"] for r in self.runs)
        seconds = sum(r["seconds"] for r in self.runs)
        return {"finished_runs": len(self.runs), "workers": self.workers,
                "readings_per_s": round(readings / seconds) if seconds else None,
                "peak_rss_mb": max((r["peak_rss_mb"] for r in self.runs), default=None)}


def live(recording: Path, workers: int, rate: float, seconds: float,
         sensors: int) -> list[dict[str, Any]]:
    """The live lane's publish-to-InfluxDB latency alone, then while an import runs."""
    # imported here: the harness's modules would swell the RSS the forked partitions of the
    # throughput cases inherit
    from tests.support import stop_all

    from . import suite
    from .procs import BenchStack

    work = Path(tempfile.mkdtemp(prefix="citystream-bench-import-"))
    stack = BenchStack(work / "stack", say=lambda m: print(f"[stack] {m}", file=sys.stderr))
    out = []
    try:
        stack.up()
        ctx = suite.Context(stack=stack, influx=stack.influx(), city=load_city(),
                            scale=suite.Scale(live_s=seconds), logs=work / "logs",
                            quix_venv=Path(".venv-bench"),
                            say=lambda m: print(m, file=sys.stderr))
        spec = suite.steady_spec(sensors, rate, seconds)
        for phase in ("alone", "during an import"):
            suite.settle(ctx)
            imports = Imports(ctx, recording, workers) if phase != "alone" else None
            if imports is not None:
                imports.start()
            try:
                result = suite.measure_live(ctx, "citystream", spec,
                                            f"live at {rate:,.0f} readings/s, {phase}")
            finally:
                during = imports.stop() if imports is not None else None
                stop_all()
                ctx.drop_buckets()
            lat = result["latency"]
            out.append({
                "phase": phase, "rate": rate, "sensors": sensors, "feed_s": seconds,
                "latency_p50_s": _round(lat["p50_s"]), "latency_p95_s": _round(lat["p95_s"]),
                "latency_p99_s": _round(lat["p99_s"]), "latency_max_s": _round(lat["max_s"]),
                "probes_seen": lat["n"], "probes_published": result["probes"]["published"],
                "offered_per_s": _round(result["offered_rate_per_s"]),
                "live_cpu_s_per_1k": _round(result["cpu_s_per_1k"]),
                "import": during, "load_average": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count()})
            print(json.dumps(out[-1]), flush=True)
    finally:
        stop_all()
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.import_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0,
                        help="simulated hours of the shipped city to import [a day]")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="partitions per case (0 = one per CPU) [0]")
    parser.add_argument("--raw", action="store_true",
                        help="also encode every raw reading (as --raw does)")
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--recording", type=Path,
                        help="the recording to import: made here if missing, kept for the "
                             "next run [a temporary file]")
    parser.add_argument("--live", action="store_true",
                        help="measure the live pipeline's latency alone and while the "
                             "recording is imported (a private stack; about 3 minutes)")
    parser.add_argument("--live-rate", type=float, default=1000.0,
                        help="--live: readings/s of the live feed [1000]")
    parser.add_argument("--live-sensors", type=int, default=2000,
                        help="--live: sensors of the live feed (the city mix) [2000]")
    parser.add_argument("--live-s", type=float, default=60.0,
                        help="--live: seconds of each live feed [60]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recording = args.recording or Path(tmp) / "day.jsonl"
        if not recording.exists():
            t0 = time.monotonic()
            record_day(recording, args.hours, args.seed)
            print(json.dumps({"recorded": str(recording),
                              "seconds": round(time.monotonic() - t0, 1)}), flush=True)
        if args.live:
            for workers in args.workers:
                live(recording, workers, args.live_rate, args.live_s, args.live_sensors)
            return
        for workers in args.workers:
            print(json.dumps(run(recording, workers, args.raw, args.batch)), flush=True)


if __name__ == "__main__":
    main()
