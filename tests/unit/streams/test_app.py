"""The worker's Faust app as built (no broker needed): its tables' RocksDB memory is bounded,
and a revocation empties the engines' caches."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

import streams.app
from bench.worker_bench import rss_mb
from citystream.settings import Settings
from models import kinds
from models.city import load_city
from models.kinds import reading_types
from streams.app import WorkerOptions, create_app, release_freed_memory, rocksdb_options
from streams.kpi.engine import KindEngine, engines_for


def test_rocksdb_options_split_the_budget() -> None:
    assert rocksdb_options(4) == {"write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
                                  "block_cache_size": 2 << 20}


def test_every_table_partition_stays_within_its_memory(tmp_path: Path) -> None:
    """Faust's defaults let each table partition hold 3 x 64 MiB of memtables: the worker's RSS
    grew with every write. With the app's options, writing 40 MB into one table partition
    leaves at most the two memtables of the budget in memory."""
    app = create_app(Settings(), load_city(), WorkerOptions(data_dir=tmp_path, store="rocksdb://",
                                                            table_memory_mb=4),
                     with_sink=False)
    tables = list(app.tables.values())
    assert len(tables) == 2 * len(kinds.names())  # entities and state, per kind and feed
    for table in tables:
        assert table.data.rocksdb_options.write_buffer_size == 1 << 20  # type: ignore[attr-defined]
    db = tables[0].data.rocksdb_options.open(tmp_path / "db")  # type: ignore[attr-defined]
    value = os.urandom(4000)
    for n in range(10_000):
        db[f"entity-{n % 200}".encode()] = value
    assert db.property_int_value("rocksdb.cur-size-all-mem-tables") <= 2 * (1 << 20) * 1.1
    db.close()


def test_a_revocation_drops_the_engines_cached_entities(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that lost partitions must not keep their entities in memory (a soak's RSS
    stepped up at every rebalance): the revocation signal empties the engines' caches."""
    built: list[dict[str, KindEngine]] = []

    def capture(*args: Any, **kwargs: Any) -> dict[str, KindEngine]:
        built.append(engines_for(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(streams.app, "engines_for", capture)
    settings = Settings()
    app = create_app(settings, load_city(), WorkerOptions(data_dir=tmp_path, store="memory://"),
                     with_sink=False)
    engine = built[0]["water"]
    store: dict[str, bytes] = {}
    reading = reading_types()["water"].model_validate(
        {"district": "bletchley", "kind": "water", "sensor_id": "wm-1", "ts_ms": 1_795_219_200_000,
         "volume_m3": 1.0})
    engine.process([reading], store)
    assert engine._entities

    async def revoke(topic: str) -> None:
        await app.on_partitions_revoked.send({TP(topic, 0)})

    asyncio.run(revoke(settings.kafka.topics.kpi_records))
    assert engine._entities, "a revocation of other topics keeps the cache"
    asyncio.run(revoke(settings.kafka.topics.telemetry["energy"]))
    assert not engine._entities
    assert engine.process([reading], store).duplicates == 1  # read back from the store


def test_freed_memory_goes_back_to_the_os() -> None:
    """glibc keeps freed heap pages (here pinned under a live allocation) until malloc_trim."""
    blocks = [bytes(2048) for _ in range(100_000)]  # ~200 MB of malloc'd (not pymalloc) blocks
    pin = bytes(2048)
    del blocks
    held = rss_mb(os.getpid())
    release_freed_memory()
    assert held - rss_mb(os.getpid()) > 100, (held, rss_mb(os.getpid()))
    assert len(pin) == 2048


def test_every_rebalance_releases_freed_memory(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(streams.app, "release_freed_memory", lambda: calls.append(1))
    app = create_app(Settings(), load_city(), WorkerOptions(data_dir=tmp_path, store="memory://"),
                     with_sink=False)

    async def rebalance() -> None:
        await app.on_partitions_assigned.send(set())
        await app.on_rebalance_complete.send()

    asyncio.run(rebalance())
    assert len(calls) == 2
