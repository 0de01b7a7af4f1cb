"""The worker's Faust app as built (no broker needed): its tables' RocksDB memory is bounded."""

from __future__ import annotations

import os
from pathlib import Path

from citystream.settings import Settings
from models.city import load_city
from streams.app import WorkerOptions, create_app, rocksdb_options


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
    assert len(tables) == 8
    for table in tables:
        assert table.data.rocksdb_options.write_buffer_size == 1 << 20  # type: ignore[attr-defined]
    db = tables[0].data.rocksdb_options.open(tmp_path / "db")  # type: ignore[attr-defined]
    value = os.urandom(4000)
    for n in range(10_000):
        db[f"entity-{n % 200}".encode()] = value
    assert db.property_int_value("rocksdb.cur-size-all-mem-tables") <= 2 * (1 << 20) * 1.1
    db.close()
