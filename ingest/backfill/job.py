"""An import's job: its options, its directory and manifest (`import.json`), and the lock that
lets one run of it go at a time. `prepare` decides whether a run starts, resumes or repeats an
import (the package docstring)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from connectors.influxdb.write import InfluxWriter, PointWriter
from ingest.backfill.output import CountingWriter
from ingest.csvmap import CsvMapping
from ingest.history import HistoryError, InputFile, Inputs, plan_assignment
from models.city import City
from models.settings import InfluxSettings, QualitySettings

MANIFEST: Final = "import.json"
FORMAT_VERSION: Final = 1


@dataclass(frozen=True)
class ImportOptions:
    """How an import runs (`citystream import --help` explains each)."""

    state_dir: Path
    name: str | None = None
    raw: bool = False
    workers: int = 0  # 0: one per CPU
    batch: int = 20_000
    checkpoint_s: float = 10.0
    retry_for_s: float = 300.0
    batch_points: int = 5_000
    fresh: bool = False
    dry_run: bool = False


@dataclass
class Job:
    """One run of an import: everything its partitions need (they are forked with it)."""

    id: str
    dir: Path
    files: list[InputFile]
    mapping: CsvMapping | None
    city: City
    influx: InfluxSettings
    quality: QualitySettings
    raw: bool
    workers: int
    batch: int
    checkpoint_s: float
    retry_for_s: float
    batch_points: int
    received_at_ms: int  # the import's "now": receipt of messages that carry no receipt time
    assignment: dict[str, int]
    run: int
    dry_run: bool
    notes: list[str] = field(default_factory=list)
    replay: bool = False  # the same input again, against the state it left
    writers: Callable[[], PointWriter] | None = None  # tests and benchmarks: instead of InfluxDB

    @property
    def buckets(self) -> tuple[str, str]:
        """The `kpi` and the `telemetry` bucket the import writes to."""
        return self.influx.bucket_kpi, self.influx.bucket_telemetry

    def writer(self) -> PointWriter:
        """A partition's writer (made in the partition's process): InfluxDB, `writers` when
        given, a counting fake for a dry run."""
        if self.writers is not None:
            return self.writers()
        return CountingWriter() if self.dry_run else InfluxWriter(self.influx)


def default_state_dir() -> Path:
    """Where imports keep their state unless `--state-dir` says otherwise."""
    from models.settings import default_stack_home

    return default_stack_home() / "imports"


def import_id(files: list[InputFile], mapping_text: str, city_text: str,
              influx: InfluxSettings, raw: bool) -> str:
    """The default id: the same files, mapping, city and target give the same import."""
    digest = hashlib.sha256(orjson.dumps({
        "inputs": [f.fingerprint for f in files],
        "mapping": hashlib.sha256(mapping_text.encode()).hexdigest(),
        "city": hashlib.sha256(city_text.encode()).hexdigest(),
        "target": [influx.url.rstrip("/"), influx.org, influx.bucket_kpi,
                   influx.bucket_telemetry], "raw": raw}))
    return digest.hexdigest()[:12]


def prepare(files: list[InputFile], mapping: CsvMapping | None, mapping_text: str,
            city: City, city_text: str, influx: InfluxSettings, quality: QualitySettings,
            options: ImportOptions, *, now_ms: int | None = None) -> Job:
    """The job for this run: a new import, the resumption of an interrupted one, or a finished
    one run again (package docstring); called once per run, it writes that run's manifest.
    `HistoryError` when the state belongs to something else.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ident = options.name or import_id(files, mapping_text, city_text, influx, options.raw)
    if options.dry_run:
        ident += "-dry-run"
    directory = options.state_dir.expanduser() / ident
    if options.fresh or options.dry_run:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    target = {"url": influx.url.rstrip("/"), "org": influx.org, "kpi": influx.bucket_kpi,
              "telemetry": influx.bucket_telemetry}
    inputs = [f.to_json() for f in files]
    manifest_path = directory / MANIFEST
    notes: list[str] = []
    workers = options.workers or os.cpu_count() or 1
    if not manifest_path.exists():
        assignment = plan_assignment(Inputs(files, mapping), workers) if workers > 1 else {}
        manifest: dict[str, Any] = {
            "version": FORMAT_VERSION, "id": ident, "created_ms": now_ms, "run": 1,
            "status": "running", "inputs": inputs, "target": target, "raw": options.raw,
            "workers": workers, "batch": options.batch, "assignment": assignment,
            "received_at_ms": now_ms, "replay": False}
    else:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != FORMAT_VERSION:
            raise HistoryError(f"{directory} was written by another version of citystream; "
                               "use --fresh to start this import over")
        if manifest["target"] != target:
            raise HistoryError(
                f"import {ident} wrote to {_target(manifest['target'])}; this run would write "
                f"to {_target(target)}: use another --id, or --fresh to start over")
        if bool(manifest["raw"]) != options.raw:
            how = "with" if manifest["raw"] else "without"
            raise HistoryError(f"import {ident} was started {how} --raw; run it the same way, "
                               "or --fresh to start over")
        same = [i["fingerprint"] for i in manifest["inputs"]] == [f.fingerprint for f in files]
        if manifest["status"] != "done":
            if not same:
                raise HistoryError(
                    f"import {ident} was interrupted while reading "
                    f"{', '.join(i['path'] for i in manifest['inputs'])}: run it with the same "
                    "files to resume it, or --fresh to start over")
            notes.append(f"resuming import {ident} where it stopped")
        else:
            manifest["run"] += 1
            manifest["replay"] = same
            if same:
                notes.append(f"import {ident} was finished before: its readings are read again "
                             "against the state it left (duplicates, and beyond the horizon "
                             "when older than it keeps; no KPI changes); --fresh recomputes "
                             "and rewrites every point instead")
            else:
                manifest["received_at_ms"] = now_ms
                notes.append(f"continuing import {ident} with new files, from the state the "
                             "last ones left")
            manifest["inputs"] = inputs
            manifest["status"] = "running"
        if options.workers and options.workers != manifest["workers"]:
            notes.append(f"import {ident} keeps the {manifest['workers']} partitions it started "
                         f"with (--workers {options.workers} ignored)")
    write_json(manifest_path, manifest)
    return Job(
        id=ident, dir=directory, files=files, mapping=mapping, city=city, influx=influx,
        quality=quality, raw=options.raw, workers=int(manifest["workers"]),
        batch=int(manifest["batch"]), checkpoint_s=options.checkpoint_s,
        retry_for_s=options.retry_for_s, batch_points=options.batch_points,
        received_at_ms=int(manifest["received_at_ms"]), assignment=manifest["assignment"],
        run=int(manifest["run"]), dry_run=options.dry_run, notes=notes,
        replay=bool(manifest.get("replay")))


def _target(target: dict[str, str]) -> str:
    return f"{target['url']} (org {target['org']}, buckets {target['kpi']}, {target['telemetry']})"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` atomically: a reader sees the old file or the new one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def set_status(job: Job, status: str) -> None:
    """Record in the manifest how the run ended (`done` or `interrupted`)."""
    path = job.dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["status"] = status
    write_json(path, manifest)


@contextlib.contextmanager
def locked(job: Job) -> Iterator[None]:
    """Hold the import's lock: one run of an import at a time."""
    with (job.dir / "lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HistoryError(f"import {job.id} is running already ({job.dir})") from None
        yield

