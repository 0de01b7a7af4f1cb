"""`citystream import` benchmark: readings/s through validation and the KPI engine, and peak memory.

    .venv/bin/python -m bench.import_bench [--hours 24] [--workers 0 1] [--raw]
        [--recording day.jsonl]

A recorded day of the shipped city (the simulator's `--record` format, one reading per message,
as `citystream sim --dry-run --speed 0 --record` writes it; made once and kept with
--recording) is imported as `citystream import` does it: read, decoded by `ingest.decode`,
through the engines of every kind, windows and quality judged, KPI points encoded to line
protocol, checkpoints committed to SQLite; only the InfluxDB writes are replaced by a counter
(`ingest.backfill.CountingWriter`), so the figure is the import's own ceiling. One line of JSON
per case (--workers: 0 = one partition per CPU): readings/s, seconds, peak RSS summed over the
partitions' processes, the CPU time per reading (all processes: what the run costs whatever else
the machine does) and the load average around the run (other work on the machine slows it).
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from ingest.backfill import ImportOptions, prepare, run_import
from ingest.history import describe_inputs
from models.city import DEFAULT_CITY_FILE, load_city
from models.settings import InfluxSettings, QualitySettings
from sensors_sim.generator import SimConfig, Simulation
from sensors_sim.recording import Recorder

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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recording = args.recording or Path(tmp) / "day.jsonl"
        if not recording.exists():
            t0 = time.monotonic()
            record_day(recording, args.hours, args.seed)
            print(json.dumps({"recorded": str(recording),
                              "seconds": round(time.monotonic() - t0, 1)}), flush=True)
        for workers in args.workers:
            print(json.dumps(run(recording, workers, args.raw, args.batch)), flush=True)


if __name__ == "__main__":
    main()
