"""The backfill lane: past readings through the KPI engine, offline, into InfluxDB.

`citystream import` runs the same decoder (`ingest.decode`) and the same engine (`kpi`, the
kinds) as the live pipeline, without MQTT, Kafka or the worker, so live processing is never
disturbed: nothing is published, no Kafka topic or consumer group is touched, alerts go to the
`kpi` bucket only (never to MQTT: they are history). KPI points, `sensor_quality` points,
alerts and (with `raw`) raw readings are encoded by `connectors.influxdb.lineproto` and written
by `connectors.influxdb.write.InfluxWriter`, as the sink writes them.

Windows are final by event time as in the worker (newest reading past end + grace) and, at the
end of the input, every window still open is final: the import says so, not a wall-clock timer
(the worker's quiet-window timer); the hours of `sensor_quality` likewise.

Parallel partitions: the input is read by `workers` processes, each owning the KPI entities
of some units (`ingest.history.Partitioner`) and reading every line but decoding only its own.
Each partition is a complete lane of its own: its engine state, its position in the input,
its counters, its rejects; no partition waits for another.

State and resume: an import has a directory (`<state dir>/<id>`) with `import.json` (the
inputs, options, partition plan) and per partition a SQLite file holding the engine's store
(`kpi.state`'s str -> bytes keys), the input position, the counters, the windows written and
the `rejected` counts per sensor and hour. A partition processes messages in batches of
`batch` messages of the input (numbered from the import's start, so a resumed import makes the
same batches) and checkpoints every `checkpoint_s` at a batch boundary: first every point
produced so far is written to InfluxDB, then the store's changes, the position and the counters
are committed in one SQLite transaction. Killed at any moment, an import resumes at its last
checkpoint and produces again, from the same state and the same input, the same points (a point
is its measurement, tags and time: rewriting it changes nothing).

Running a finished import again reads its input again against its final state: readings whose
window is still in the state are duplicates, older ones are beyond the late-data horizon; no
KPI changes. `--fresh` starts over from an empty state. The same `--id` with other files
continues that state (files in time order, one after the other).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import heapq
import json
import logging
import os
import queue
import resource
import shutil
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

import orjson

from connectors.influxdb.lineproto import reading_line, to_line_protocol
from connectors.influxdb.write import (
    InfluxWriter,
    PointWriter,
    SinkBackpressure,
    write_isolating,
)
from ingest.csvmap import CsvMapping
from ingest.decode import decode
from ingest.history import (
    HistoryError,
    InputFile,
    Inputs,
    Item,
    Partitioner,
    Position,
    plan_assignment,
)
from kpi.alerts import AlertKey, AlertRules, AlertSettings
from kpi.engine import KindEngine, Outcome
from kpi.quality import judge, rejected_hour
from kpi.state import Entity
from models import kinds
from models.city import City
from models.deadletter import DeadLetter
from models.errors import RecordError
from models.quality import HOUR_MS, SensorQuality
from models.readings import BaseReading
from models.records import PipelineCounters, Record
from models.settings import InfluxSettings, QualitySettings

log = logging.getLogger(__name__)

NO_AGE_LIMIT_S: Final = 10**10
"""The horizon for a message without a receipt time: none (about 300 years)."""
MANIFEST: Final = "import.json"
FORMAT_VERSION: Final = 1


# -- options, plan ----------------------------------------------------------------------------


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
        return self.influx.bucket_kpi, self.influx.bucket_telemetry

    def writer(self) -> PointWriter:
        """A partition's writer (made in the partition's process): InfluxDB, `writers` when
        given, a counting fake for a dry run."""
        if self.writers is not None:
            return self.writers()
        return CountingWriter() if self.dry_run else InfluxWriter(self.influx)


def default_state_dir() -> Path:
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
    one run again (module docstring). `HistoryError` when the state belongs to something else.
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
    _write_json(manifest_path, manifest)
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def set_status(job: Job, status: str) -> None:
    path = job.dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["status"] = status
    _write_json(path, manifest)


@contextlib.contextmanager
def locked(job: Job) -> Iterator[None]:
    """Hold the import's lock: one run of an import at a time."""
    with (job.dir / "lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HistoryError(f"import {job.id} is running already ({job.dir})") from None
        yield


# -- counters ---------------------------------------------------------------------------------


@dataclass
class Counts:
    """What a partition (or, summed, the import) did in this run."""

    messages: int = 0
    readings: int = 0  # accepted + rejected
    accepted: int = 0  # valid, duplicates and late ones included (as ingest counts)
    rejected: dict[str, int] = field(default_factory=dict)  # by contract reason
    duplicates: int = 0
    late: int = 0  # accepted after their window was final: it was corrected
    beyond_horizon: int = 0  # older than the late-data horizon before their entity's newest
    engine_errors: int = 0
    kpi_points: int = 0  # KPI point writes, rewrites of a corrected window included
    quality_points: int = 0
    alerts: int = 0
    raw_points: int = 0
    refused: int = 0  # lines InfluxDB refused (refused.jsonl)
    first_ts: int | None = None
    last_ts: int | None = None

    def add(self, other: Counts) -> None:
        for name in ("messages", "readings", "accepted", "duplicates", "late", "beyond_horizon",
                     "engine_errors", "kpi_points", "quality_points", "alerts", "raw_points",
                     "refused"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n
        if other.first_ts is not None:
            self.first_ts = (other.first_ts if self.first_ts is None
                             else min(self.first_ts, other.first_ts))
        if other.last_ts is not None:
            self.last_ts = (other.last_ts if self.last_ts is None
                            else max(self.last_ts, other.last_ts))

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counts:
        return cls(**data)


# -- the partition's state --------------------------------------------------------------------


class CheckpointStore(MutableMapping[str, bytes]):
    """An engine store in memory that remembers which keys changed since the last checkpoint."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data
        self.dirty: set[str] = set()

    def __getitem__(self, key: str) -> bytes:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.data[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def changes(self) -> tuple[list[tuple[str, bytes]], list[str]]:
        """(key, value) to write and keys to delete since the last call."""
        data = self.data
        upserts = [(k, data[k]) for k in self.dirty if k in data]
        deletes = [k for k in self.dirty if k not in data]
        self.dirty = set()
        return upserts, deletes


class PartitionDb:
    """A partition's SQLite file: the engine stores (`kv`), `meta` (run, position, counters,
    part-file sizes), the windows written in this run and the `rejected` counts."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS kv (kind TEXT, key TEXT, value BLOB,
                                           PRIMARY KEY (kind, key)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS windows (measurement TEXT, point TEXT,
                                                PRIMARY KEY (measurement, point)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS rejected (sensor TEXT, hour INTEGER, n INTEGER,
                                                 PRIMARY KEY (sensor, hour)) WITHOUT ROWID;
        """)

    def meta(self) -> dict[str, Any]:
        return {name: json.loads(value)
                for name, value in self.db.execute("SELECT name, value FROM meta")}

    def store(self, kind: str) -> dict[str, bytes]:
        return {key: bytes(value) for key, value in
                self.db.execute("SELECT key, value FROM kv WHERE kind = ?", (kind,))}

    def rejected(self) -> dict[tuple[str, int], int]:
        return {(sensor, hour): n for sensor, hour, n in
                self.db.execute("SELECT sensor, hour, n FROM rejected")}

    def windows(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT measurement, count(*) FROM windows GROUP BY measurement"))

    def commit(self, stores: dict[str, CheckpointStore], meta: dict[str, Any],
               windows: set[tuple[str, str]], rejected: dict[tuple[str, int], int],
               new_run: bool = False) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            if new_run:
                db.execute("DELETE FROM windows")
            for kind, store in stores.items():
                upserts, deletes = store.changes()
                db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)",
                               [(kind, k, v) for k, v in upserts])
                db.executemany("DELETE FROM kv WHERE kind = ? AND key = ?",
                               [(kind, k) for k in deletes])
            db.executemany("INSERT OR IGNORE INTO windows VALUES (?, ?)", windows)
            db.executemany("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?)",
                           [(s, h, n) for (s, h), n in rejected.items()])
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in meta.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


def partition_positions(directory: Path) -> dict[int, int]:
    """Each partition's checkpointed message index (for progress and tests): partition -> the
    index of the next message it would read."""
    out = {}
    for path in sorted(directory.glob("partition-*.sqlite")):
        k = int(path.stem.split("-")[1])
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            try:
                row = db.execute("SELECT value FROM meta WHERE name = 'position'").fetchone()
            except sqlite3.OperationalError:
                continue
        if row is not None:
            out[k] = Position.from_json(json.loads(row[0])).index
    return out


class PartFile:
    """A partition's append-only JSON-lines file, truncated on resume to its size at the last
    checkpoint (what was written after it is written again)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.f: IO[bytes] = path.open("ab" if path.exists() else "wb")
        self.f.truncate(size)
        self.f.seek(size)

    def write(self, line: bytes) -> None:
        self.f.write(line)

    def checkpoint(self) -> int:
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


# -- writing ----------------------------------------------------------------------------------


@dataclass
class CountingWriter:
    """A `PointWriter` that stores nothing and counts lines (dry runs, benchmarks)."""

    lines: dict[str, int] = field(default_factory=dict)

    def write(self, bucket: str, lines: list[str]) -> None:
        self.lines[bucket] = self.lines.get(bucket, 0) + len(lines)

    def close(self) -> None:
        return None


class PointOut:
    """Lines to InfluxDB in requests of `batch_points`, written by a thread of their own so
    that the engine goes on meanwhile. `flush` returns once every line added is written (or
    refused: `take_refused`). While InfluxDB is unavailable a request is retried with backoff
    for up to `retry_for_s` (or until `stopped`), then `flush` raises `HistoryError`."""

    def __init__(self, writer: PointWriter, batch_points: int, retry_for_s: float,
                 stopped: Callable[[], bool] = lambda: False) -> None:
        self.writer = writer
        self.batch_points = batch_points
        self.retry_for_s = retry_for_s
        self.stopped = stopped  # asked to stop: no more retrying
        self.pending: dict[str, list[str]] = {}
        self.refused: list[tuple[str, str, str]] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, list[str]] | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="import-writer", daemon=True)
        self._thread.start()

    def add(self, bucket: str, line: str) -> None:
        lines = self.pending.get(bucket)
        if lines is None:
            lines = self.pending[bucket] = []
        lines.append(line)
        if len(lines) >= self.batch_points:
            self._send(bucket)

    def _send(self, bucket: str) -> None:
        self._check()
        self._queue.put((bucket, self.pending.pop(bucket)))

    def flush(self) -> None:
        for bucket in list(self.pending):
            self._send(bucket)
        self._queue.join()
        self._check()

    def take_refused(self) -> list[tuple[str, str, str]]:
        with self._lock:
            refused, self.refused = self.refused, []
        return refused

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        self.writer.close()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    self._write(*item)
            except BaseException as exc:  # handed to the partition at its next flush
                self.error = exc
            finally:
                self._queue.task_done()

    def _write(self, bucket: str, lines: list[str]) -> None:
        delay, since = 0.5, None
        while True:
            try:
                refused = write_isolating(self.writer, bucket, lines)
            except SinkBackpressure as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                    log.warning("InfluxDB cannot take the import's points (%s); retrying for "
                                "up to %.0f s", exc, self.retry_for_s)
                if now - since >= self.retry_for_s or self.stopped():
                    raise HistoryError(
                        f"InfluxDB has not taken the import's points for {now - since:.0f} s "
                        f"({exc}); the import stopped at its last checkpoint: run the same "
                        "command again to resume") from None
                time.sleep(max(delay, min(exc.retry_after_s, 30.0)))
                delay = min(delay * 2, 30.0)
                continue
            if since is not None:
                log.warning("InfluxDB takes the import's points again")
            if refused:
                with self._lock:
                    self.refused.extend((bucket, lines[i], message) for i, message in refused)
            return


# -- a partition ------------------------------------------------------------------------------


def _window_key(record: Record) -> tuple[str, str]:
    return record.measurement, "|".join([*record.tags().values(), str(record.time_ms)])


class Partition:
    """One partition of an import: its share of the messages through decode and the engines,
    checkpointed (module docstring). `report` gets a progress dict now and then; `stopping`
    says to stop at the next batch boundary (after a checkpoint)."""

    def __init__(self, job: Job, k: int, report: Callable[[dict[str, Any]], None],
                 stopping: Callable[[], bool]) -> None:
        self.job = job
        self.k = k
        self.report = report
        self.stopping = stopping
        self.inputs = Inputs(job.files, job.mapping)
        self.owner = Partitioner(job.workers, job.assignment)
        rules = AlertRules(AlertSettings(
            timezone=job.city.timezone, quality_min_score=job.quality.min_score,
            quality_alert_hours=job.quality.alert_hours))
        self.engines: dict[str, KindEngine] = kinds.engines_for(job.city, rules=rules)
        self.entity = {kind: engine.entity for kind, engine in self.engines.items()}
        self.horizon_s = job.city.windows.horizon_s
        self.kpi_bucket, self.telemetry_bucket = job.buckets
        self.counts = Counts()
        self.batch: dict[tuple[str, str], list[BaseReading]] = {}
        self.windows: set[tuple[str, str]] = set()
        self.rejected: dict[tuple[str, int], int] = {}
        self.rejected_changed: set[tuple[str, int]] = set()

    def run(self) -> tuple[Counts, bool]:
        """Process the partition's messages to the end of the input, or until `stopping`;
        returns the run's counters and whether the end was reached."""
        job = self.job
        db = PartitionDb(job.dir / f"partition-{self.k}.sqlite")
        meta = db.meta()
        new_run = meta.get("run") != job.run
        if new_run:
            position, sizes = Position(), {"rejects": 0, "refused": 0}
        else:
            position = Position.from_json(meta["position"])
            self.counts = Counts.from_json(meta["counts"])
            sizes = meta["sizes"]
            if meta.get("done"):
                db.close()
                return self.counts, True
        self.stores = {kind: CheckpointStore(db.store(kind)) for kind in self.engines}
        self.rejected = db.rejected()
        self.rejects = PartFile(job.dir / f"rejects-{self.k}.jsonl", sizes["rejects"])
        self.refused = PartFile(job.dir / f"refused-{self.k}.jsonl", sizes["refused"])
        self.out = PointOut(job.writer(), job.batch_points, job.retry_for_s, self.stopping)
        self.db = db
        self._new_run = new_run
        thresholds = gc.get_threshold()
        gc.freeze()  # the city, the engines, the loaded state: never garbage, never scanned
        gc.set_threshold(50_000, 20, 100)  # readings come and go by the thousand
        try:
            done = self._loop(position)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            self.out.close()
            self.rejects.close()
            self.refused.close()
            db.close()
        return self.counts, done

    def _loop(self, start: Position) -> bool:
        job, k, counts = self.job, self.k, self.counts
        batch_size = job.batch
        owner, message, entity, batch = self.owner, self.inputs.message, self.entity, self.batch
        known = owner.known
        raw = job.raw
        now_ms, horizon_s = job.received_at_ms, self.horizon_s
        next_boundary = (start.index // batch_size + 1) * batch_size
        last_checkpoint = time.monotonic()
        first, last = counts.first_ts, counts.last_ts
        next_index = start.index
        for item in self.inputs.items(start):
            next_index = item.n + 1
            if item.n >= next_boundary:
                counts.first_ts, counts.last_ts = first, last
                self._apply_batch()
                next_boundary = (item.n // batch_size + 1) * batch_size
                stop = self.stopping()
                if stop or time.monotonic() - last_checkpoint >= job.checkpoint_s:
                    self._checkpoint(item.position)
                    last_checkpoint = time.monotonic()
                    if stop:
                        return False
                self.report(self._progress(item.position))
            mine = known.get(item.topic)
            if (owner(item.topic) if mine is None else mine) != k:
                continue
            counts.messages += 1
            got = message(item)
            if isinstance(got, tuple):
                payload, received = got
                if received is None:
                    decoded = decode(item.topic, payload, now_ms, horizon_s=NO_AGE_LIMIT_S)
                else:
                    decoded = decode(item.topic, payload, received, horizon_s=horizon_s)
                readings = decoded.readings
                if readings:
                    counts.accepted += len(readings)
                    counts.readings += len(readings)
                    for r in readings:
                        kind = r.kind
                        key = (kind, entity[kind](r))
                        held = batch.get(key)
                        if held is None:
                            batch[key] = [r]
                        else:
                            held.append(r)
                        ts = r.ts_ms
                        if first is None or ts < first:
                            first = ts
                        if last is None or ts > last:
                            last = ts
                        if raw:
                            self._raw(r)
                for letter in decoded.dead_letters:
                    self._reject(letter, item, horizon_s if received is not None
                                 else NO_AGE_LIMIT_S)
            else:
                self._reject(got.letter(item.topic, now_ms), item, NO_AGE_LIMIT_S)
        counts.first_ts, counts.last_ts = first, last
        self._apply_batch()
        self._finish()
        end = Position(len(job.files), 0, 0, next_index)
        self._checkpoint(end, done=True)
        self.report(self._progress(end))
        return True

    def _raw(self, reading: BaseReading) -> None:
        try:
            line = reading_line(reading.__dict__, reading.kind)
        except RecordError as exc:
            self._refuse(self.telemetry_bucket, repr(reading.__dict__), str(exc))
            return
        self.out.add(self.telemetry_bucket, line)
        self.counts.raw_points += 1

    def _reject(self, letter: DeadLetter, item: Item, horizon_s: int) -> None:
        counts = self.counts
        counts.readings += 1
        reason = str(letter.reason)
        counts.rejected[reason] = counts.rejected.get(reason, 0) + 1
        entry = orjson.loads(letter.to_json())
        self.rejects.write(f"{item.n:012d} ".encode() + orjson.dumps(
            {"file": str(self.job.files[item.file].path), "line": item.line, **entry}) + b"\n")
        where = kinds.parse_topic(letter.topic) if not self.job.replay else None
        if where is not None:  # (a replay's rejects were counted by the run it repeats)
            district, kind, sensor_id = where
            hour = rejected_hour(letter.raw, letter.received_at_ms, horizon_s * 1000)
            key = (f"{kind}|{district}|{sensor_id}", hour)
            self.rejected[key] = self.rejected.get(key, 0) + 1
            self.rejected_changed.add(key)

    def _refuse(self, bucket: str, line: str, message: str) -> None:
        self.counts.refused += 1
        self.refused.write(orjson.dumps({"bucket": bucket, "line": line, "detail": message})
                           + b"\n")

    def _apply_batch(self) -> None:
        for (kind, _entity), readings in self.batch.items():
            try:
                outcome = self.engines[kind].process(readings, self.stores[kind])
            except Exception as exc:  # a bug must not stop the import: keep the readings
                log.error("engine error on %d %s readings, kept in rejects: %r", len(readings),
                          kind, exc)
                self.counts.engine_errors += len(readings)
                for r in readings:
                    self.rejects.write(b"999999999999 " + orjson.dumps(
                        {"reason": "engine_error", "detail": repr(exc)[:500],
                         "topic": f"city/{r.district}/{kind}/{r.sensor_id}",
                         "reading": orjson.loads(r.to_json())}) + b"\n")
                continue
            self._emit(outcome)
        self.batch.clear()

    def _emit(self, outcome: Outcome) -> None:
        counts = self.counts
        counts.duplicates += outcome.duplicates
        counts.late += outcome.late
        counts.beyond_horizon += outcome.beyond_horizon
        for record in outcome.records:
            if self._write(record):
                self.windows.add(_window_key(record))
                counts.kpi_points += 1
        counts.quality_points += sum(self._write(point) for point in outcome.quality)
        counts.alerts += sum(self._write(alert) for alert in outcome.alerts)

    def _write(self, record: Record) -> bool:
        """Queue a record's point for the `kpi` bucket; False (and refused) if line protocol
        cannot carry it, as the sink dead-letters such a record."""
        try:
            line = to_line_protocol(record, "ms")
        except RecordError as exc:
            self._refuse(self.kpi_bucket, repr(record), str(exc))
            return False
        self.out.add(self.kpi_bucket, line)
        return True

    def _finish(self) -> None:
        """End of input: every window not yet emitted is final, and every hour of
        `sensor_quality` up to each entity's newest reading is judged (neither is kept in the
        state: a later run with more readings writes them again, completed)."""
        out = Outcome()
        for kind, engine in self.engines.items():
            store = self.stores[kind]
            for entity in engine.entities(store):
                out.records.extend(engine.due(entity, store))
                ent = Entity.read(store, entity)
                if ent.max is None:
                    continue
                active: set[AlertKey] = {(a[0], a[1], a[2]) for a in ent.alerts}
                points, alerts, _hours = judge(
                    engine.kind, ent.quality, ent.max + engine.grace_ms + HOUR_MS + 1,
                    engine.grace_ms, engine.judges_stuck, engine.rules, active, set())
                out.quality.extend(points)
                out.alerts.extend(alerts)
        self._emit(out)

    def _checkpoint(self, position: Position, done: bool = False) -> None:
        """Write every point so far, then commit state, position and counters together."""
        for key in sorted(self.rejected_changed):
            sensor, hour = key
            kind, district, sensor_id = sensor.split("|")
            self._write(SensorQuality(kind=kind, district=district, sensor_id=sensor_id,
                                      hour_end_ms=hour + HOUR_MS, rejected=self.rejected[key]))
        self.out.flush()
        for bucket, line, message in self.out.take_refused():
            self._refuse(bucket, line, message)
        changed = {key: self.rejected[key] for key in self.rejected_changed}
        meta = {"run": self.job.run, "position": position.to_json(),
                "counts": self.counts.to_json(), "done": done,
                "sizes": {"rejects": self.rejects.checkpoint(),
                          "refused": self.refused.checkpoint()}}
        self.db.commit(self.stores, meta, self.windows, changed, new_run=self._new_run)
        self._new_run = False
        self.windows = set()
        self.rejected_changed = set()

    def _progress(self, position: Position) -> dict[str, Any]:
        c = self.counts
        done = self.inputs.done_bytes(position)
        return {"k": self.k, "bytes": done, "readings": c.readings, "accepted": c.accepted,
                "rejected": c.rejected_total, "duplicates": c.duplicates}


# -- running the partitions -------------------------------------------------------------------


@dataclass
class Progress:
    """The import as a whole, from its partitions' reports."""

    total_bytes: int
    started: float = field(default_factory=time.monotonic)
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)
    partitions: int = 1

    def update(self, report: dict[str, Any]) -> None:
        self.parts[int(report["k"])] = report

    def fraction(self) -> float:
        if len(self.parts) < self.partitions:
            return 0.0
        done = min(p["bytes"] for p in self.parts.values())
        return min(1.0, done / self.total_bytes) if self.total_bytes else 1.0

    def readings(self) -> int:
        return sum(int(p["readings"]) for p in self.parts.values())

    def rate(self) -> float:
        return self.readings() / max(time.monotonic() - self.started, 1e-9)

    def eta_s(self) -> float | None:
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
    input or until `stop` is set; merge their rejects and write `report.json`."""
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
    _write_json(summary.report_path, summary.to_json())
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
