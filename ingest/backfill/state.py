"""What a partition of an import keeps between runs: its counters (`Counts`), the engine's store
in memory (`CheckpointStore`) and in its SQLite file (`PartitionDb`), and its append-only
rejects and refused files (`PartFile`). A checkpoint commits them together (package
docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ingest.history import Position


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
        """Add another partition's counters to these (the import's total)."""
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
        """Rejected readings, all reasons."""
        return sum(self.rejected.values())

    def to_json(self) -> dict[str, Any]:
        """The counters as JSON (checkpoints, `report.json`); `from_json` reads them back."""
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
        """(key, value) to write and keys to delete since the last call; called by
        `PartitionDb.commit`, so that a checkpoint writes only what the engine changed."""
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
        """The last checkpoint's run, position, counters and part-file sizes ({} before the
        first)."""
        return {name: json.loads(value)
                for name, value in self.db.execute("SELECT name, value FROM meta")}

    def store(self, kind: str) -> dict[str, bytes]:
        """A kind's engine store as of the last checkpoint."""
        return {key: bytes(value) for key, value in
                self.db.execute("SELECT key, value FROM kv WHERE kind = ?", (kind,))}

    def rejected(self) -> dict[tuple[str, int], int]:
        """Rejected readings per (`kind|district|sensor_id`, hour start)."""
        return {(sensor, hour): n for sensor, hour, n in
                self.db.execute("SELECT sensor, hour, n FROM rejected")}

    def windows(self) -> dict[str, int]:
        """How many KPI windows this run wrote, per measurement (the summary)."""
        return dict(self.db.execute(
            "SELECT measurement, count(*) FROM windows GROUP BY measurement"))

    def commit(self, stores: dict[str, CheckpointStore], meta: dict[str, Any],
               windows: set[tuple[str, str]], rejected: dict[tuple[str, int], int],
               new_run: bool = False) -> None:
        """The checkpoint: the stores' changes, `meta`, the windows and `rejected` counts
        changed, in one transaction (all or nothing); `new_run` first forgets the windows of
        the previous run. Called after the points produced so far are in InfluxDB."""
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
        """Append one line (with its newline); durable at the next `checkpoint`."""
        self.f.write(line)

    def checkpoint(self) -> int:
        """Flush and fsync; the size to truncate to if the partition resumes from here."""
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        self.f.close()

