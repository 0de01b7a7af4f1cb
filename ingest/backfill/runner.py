"""Running an import: its partitions in this process (one) or forked (several), stopped
together, their results merged into a `Summary`, `report.json`, `rejects.jsonl` and
`refused.jsonl`."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from connectors.influxdb.lineproto import to_line_protocol
from ingest.backfill.job import Job, set_status, write_json
from ingest.backfill.output import PointOut
from ingest.backfill.partition import Partition
from ingest.backfill.state import Counts, PartitionDb
from ingest.history import HistoryError, Inputs
from models.records import PipelineCounters

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """The import as a whole, from its partitions' reports."""

    total_bytes: int
    started: float = field(default_factory=time.monotonic)
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)
    partitions: int = 1

    def update(self, report: dict[str, Any]) -> None:
        """Take a partition's progress report (after each of its batches)."""
        self.parts[int(report["k"])] = report

    def fraction(self) -> float:
        """How much of the input every partition has read (0 until all have reported)."""
        if len(self.parts) < self.partitions:
            return 0.0
        done = min(p["bytes"] for p in self.parts.values())
        return min(1.0, done / self.total_bytes) if self.total_bytes else 1.0

    def readings(self) -> int:
        """Readings read so far, all partitions."""
        return sum(int(p["readings"]) for p in self.parts.values())

    def rate(self) -> float:
        """Readings per second since the run started."""
        return self.readings() / max(time.monotonic() - self.started, 1e-9)

    def eta_s(self) -> float | None:
        """Seconds still to go at the rate so far; None in the first second or before every
        partition has reported."""
        fraction = self.fraction()
        elapsed = time.monotonic() - self.started
        if fraction <= 0.0 or elapsed < 1.0:
            return None
        return elapsed * (1.0 - fraction) / fraction


@dataclass(frozen=True)
class PartResult:
    """What one partition's run did: its counters, whether it reached the end of the input,
    its peak RSS and how long it ran."""

    counts: Counts
    done: bool
    rss_mb: float
    seconds: float


@dataclass
class Summary:
    """What a run of an import did."""

    job: Job
    status: str  # done, interrupted, failed
    counts: Counts
    windows: dict[str, int]
    seconds: float
    peak_rss_mb: float
    error: str | None = None
    parts: list[PartResult] = field(default_factory=list)

    @property
    def readings_per_s(self) -> float:
        return self.counts.readings / max(self.seconds, 1e-9)

    @property
    def report_path(self) -> Path:
        return self.job.dir / "report.json"

    @property
    def rejects_path(self) -> Path:
        return self.job.dir / "rejects.jsonl"

    @property
    def refused_path(self) -> Path:
        return self.job.dir / "refused.jsonl"

    def to_json(self) -> dict[str, Any]:
        job = self.job
        return {"id": job.id, "status": self.status, "run": job.run, "replay": job.replay,
                "dry_run": job.dry_run, "inputs": [str(f.path) for f in job.files],
                "seconds": round(self.seconds, 3),
                "readings_per_s": round(self.readings_per_s),
                "peak_rss_mb": round(self.peak_rss_mb, 1), "partitions": job.workers,
                "counts": self.counts.to_json(), "windows": self.windows,
                "partitions_detail": [{"messages": p.counts.messages,
                                       "readings": p.counts.readings,
                                       "seconds": round(p.seconds, 3),
                                       "peak_rss_mb": round(p.rss_mb, 1)} for p in self.parts],
                "raw": job.raw, "rejects": str(self.rejects_path),
                "refused": str(self.refused_path), "error": self.error,
                "notes": job.notes}


def run_import(job: Job, on_progress: Callable[[Progress], None] | None = None,
               stop: threading.Event | None = None) -> Summary:
    """Run the job's partitions (in this process for one, else forked) to the end of the
    input or until `stop` is set; merge their rejects and write `report.json`. Called with
    the job's lock held (`job.locked`). `on_progress` is called in this thread whenever a
    partition reports. Never raises for a partition's failure: the summary's status is
    `failed` with the error, and the import resumes from its checkpoints when run again."""
    stop = stop or threading.Event()
    started = time.monotonic()
    inputs = Inputs(job.files, job.mapping)
    progress = Progress(inputs.total_bytes, partitions=job.workers)
    results: dict[int, PartResult] = {}
    error: str | None = None

    def report(data: dict[str, Any]) -> None:
        progress.update(data)
        if on_progress is not None:
            on_progress(progress)

    if job.workers == 1:
        try:
            t0 = time.monotonic()
            counts, done = Partition(job, 0, report, stop.is_set).run()
            results[0] = PartResult(counts, done, _rss_mb(), time.monotonic() - t0)
        except Exception as exc:
            error = _describe(exc)
            log.debug("import partition failed", exc_info=True)
    else:
        error = _run_forked(job, report, stop, results)
    total = Counts()
    for part in results.values():
        total.add(part.counts)
    finished = len(results) == job.workers and all(p.done for p in results.values())
    status = "failed" if error else ("done" if finished else "interrupted")
    windows: dict[str, int] = {}
    for path in sorted(job.dir.glob("partition-*.sqlite")):
        db = PartitionDb(path)
        for measurement, n in db.windows().items():
            windows[measurement] = windows.get(measurement, 0) + n
        db.close()
    peak = _rss_mb() + sum(p.rss_mb for p in results.values()) if job.workers > 1 \
        else max([_rss_mb(), *(p.rss_mb for p in results.values())])
    summary = Summary(job, status, total, windows, time.monotonic() - started, peak, error,
                      [results[k] for k in sorted(results)])
    if status == "done":
        _merge_parts(job, "rejects", sort=True)
        _merge_parts(job, "refused", sort=False)
        if not job.dry_run:
            _write_counters(job, total)
    set_status(job, "done" if status == "done" else "interrupted")
    write_json(summary.report_path, summary.to_json())
    if job.dry_run and status == "done":
        for path in job.dir.glob("partition-*.sqlite*"):
            path.unlink()
    return summary


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HistoryError) else f"{type(exc).__name__}: {exc}"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_forked(job: Job, report: Callable[[dict[str, Any]], None], stop: threading.Event,
                results: dict[int, PartResult]) -> str | None:
    import multiprocessing
    from multiprocessing.connection import Connection, wait

    context = multiprocessing.get_context("fork")
    processes = []
    conns: dict[Any, int] = {}
    for k in range(job.workers):
        mine, theirs = context.Pipe()
        proc = context.Process(target=_child, args=(job, k, theirs), name=f"import-{k}",
                               daemon=True)
        proc.start()
        theirs.close()
        processes.append(proc)
        conns[mine] = k
    error: str | None = None
    told = False
    while conns:
        if (stop.is_set() or error) and not told:
            told = True
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send("stop")
        for ready in wait(list(conns), timeout=0.5):
            conn = cast(Connection, ready)
            k = conns[conn]
            try:
                what, data = conn.recv()
            except (EOFError, OSError):
                del conns[conn]
                processes[k].join(5)
                if k not in results and error is None:
                    error = (f"import partition {k} died (exit status "
                             f"{processes[k].exitcode}); run the same command again to resume")
                continue
            if what == "progress":
                report(data)
            elif what == "done":
                counts, done, rss, seconds = data
                results[k] = PartResult(Counts.from_json(counts), done, rss, seconds)
            elif what == "error" and error is None:
                error = data
    for proc in processes:
        proc.join(10)
    return error


def _child(job: Job, k: int, conn: Any) -> None:
    """A forked partition: dies with its parent, stops at the next batch on "stop" or SIGTERM
    (Ctrl-C is the parent's to handle), reports progress and its result over `conn`."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def listen() -> None:  # "stop" from the parent, or the parent gone: stop
        with contextlib.suppress(EOFError, OSError):
            while conn.recv() != "stop":
                pass
        stopping.set()

    threading.Thread(target=listen, name="import-stop", daemon=True).start()

    def report(data: dict[str, Any]) -> None:
        conn.send(("progress", data))

    try:
        t0 = time.monotonic()
        counts, done = Partition(job, k, report, stopping.is_set).run()
        conn.send(("done", (counts.to_json(), done, _rss_mb(), time.monotonic() - t0)))
    except Exception as exc:
        log.debug("import partition %d failed", k, exc_info=True)
        with contextlib.suppress(OSError):
            conn.send(("error", _describe(exc) if isinstance(exc, HistoryError)
                       else f"partition {k}: {_describe(exc)}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed import leaves no
    partition running); elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _merge_parts(job: Job, name: str, sort: bool) -> None:
    """The partitions' part files as one file in input order (`sort`: by the 12-digit message
    index each line starts with, dropped here)."""
    parts = sorted(job.dir.glob(f"{name}-*.jsonl"))
    target = job.dir / f"{name}.jsonl"
    files = [path.open("rb") for path in parts]
    try:
        with target.open("wb") as out:
            lines = heapq.merge(*files) if sort else (line for f in files for line in f)
            for line in lines:
                out.write(line[13:] if sort else line)
    finally:
        for f in files:
            f.close()
    for path in parts:
        path.unlink()


def _write_counters(job: Job, counts: Counts) -> None:
    """One `pipeline` point (component `import`, instance = the import id) with the run's
    counters, as the live components write theirs."""
    point = PipelineCounters(
        component="import", instance=job.id, ts_ms=int(time.time() * 1000),
        received=counts.readings, accepted=counts.accepted, rejected=counts.rejected_total,
        late=counts.late + counts.beyond_horizon, duplicates=counts.duplicates,
        written=counts.kpi_points + counts.quality_points + counts.alerts + counts.raw_points)
    out = PointOut(job.writer(), 1, job.retry_for_s)
    try:
        out.add(job.influx.bucket_kpi, to_line_protocol(point, "ms"))
        out.flush()
    except HistoryError as exc:
        log.warning("could not write the import's pipeline counters: %s", exc)
    finally:
        out.close()
