"""Each source partition's last applied offset, kept in the engine's state table, so that no
record of a partition is ever skipped.

faust-streaming 0.15.3 can skip the events it fetched before a rebalance (old consumer
generation, or flow control paused) and still ack them (faust/streams.py, `Stream._py_aiter`):
their offsets get committed and the records never reach the agent. The committed offset is
therefore only a hint. The truth is the offset the engine applied last, written to the table
(and so to its changelog, flushed before Faust commits) with every record. A record that
arrives more than one past it means records were skipped: they are read back from Kafka and
applied first, in order. A partition with nothing applied yet starts at the oldest record Kafka
holds (the worker reads from the earliest offset), so a commit that ran ahead before the first
record was applied is caught too. Our producers are idempotent and not transactional, so a
partition's offsets are contiguous; offsets that retention deleted simply do not come back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.errors import CitystreamError

log = logging.getLogger(__name__)

APPLIED_PREFIX = "o|"


def applied_offset(store: MutableMapping[str, bytes], partition: int) -> int | None:
    """The last offset of `partition` whose record was applied (or dead-lettered), if any."""
    value = store.get(f"{APPLIED_PREFIX}{partition}")
    return None if value is None else int(value)


def mark_applied(store: MutableMapping[str, bytes], partition: int, offset: int) -> None:
    """Record that the record at `offset` was applied; a redelivered older one changes
    nothing."""
    current = applied_offset(store, partition)
    if current is None or offset > current:
        store[f"{APPLIED_PREFIX}{partition}"] = str(offset).encode()


def rewind_to(applied: int | None, first: int, end: int) -> int | None:
    """Where to rewind an idle partition's consumer so that records after the last applied one
    come again (None: nothing is missing). `first` and `end` are the partition's oldest offset
    and the offset after its newest record."""
    start = first if applied is None else max(applied + 1, first)
    return start if end > start else None


class ReadBackError(CitystreamError):
    """Records the agent skipped could not be read back from Kafka in time."""


class OffsetLookupError(CitystreamError):
    """Kafka did not answer an offset look-up (a broker down, or cut off so that the request
    hangs until the client's timeout): ask again later."""


class RangeReader(Protocol):
    """Reads records of one partition back from Kafka."""

    async def read(self, topic: str, partition: int, first: int,
                   end: int) -> list[tuple[int, bytes]]:
        """The (offset, value) of the records at offsets `first` to `end - 1` that exist."""
        ...

    async def first_offset(self, topic: str, partition: int) -> int:
        """The offset of the oldest record Kafka still holds in the partition."""
        ...


Handler = Callable[[int, bytes], Awaitable[None]]


async def catch_up(store: MutableMapping[str, bytes], reader: RangeReader, topic: str,
                   partition: int, offset: int, handle: Handler) -> int:
    """Before the record at `offset` is applied, apply (with `handle`) the records between
    the partition's last applied offset and it that never arrived. Returns how many."""
    applied = applied_offset(store, partition)
    if applied is not None:
        first = applied + 1
    elif offset == 0:
        return 0
    else:  # nothing applied yet: the partition's first record is the next one
        first = await reader.first_offset(topic, partition)
    if offset <= first:
        return 0
    missing = await reader.read(topic, partition, first, offset)
    log.warning("%s[%d]: offsets %d-%d were never delivered to the agent (skipped by the "
                "consumer, e.g. at a rebalance); read %d of them back from Kafka and applying "
                "them first", topic, partition, first, offset - 1, len(missing))
    if len(missing) < offset - first:
        log.error("%s[%d]: %d records between offsets %d and %d no longer exist in Kafka "
                  "(deleted by retention before they were applied)", topic, partition,
                  offset - first - len(missing), first, offset - 1)
    for at, value in missing:
        await handle(at, value)
    return len(missing)


class KafkaRangeReader:
    """A `RangeReader` with its own aiokafka consumer (no group; assigned partitions only),
    started on first use."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 120.0) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._lock = asyncio.Lock()  # one consumer, one assignment: agents take turns

    async def _started(self) -> Any:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        client_id="citystream-worker-catch-up")
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def read(self, topic: str, partition: int, first: int,
                   end: int) -> list[tuple[int, bytes]]:
        async with self._lock:
            return await self._read(topic, partition, first, end)

    async def _read(self, topic: str, partition: int, first: int,
                    end: int) -> list[tuple[int, bytes]]:
        consumer = await self._started()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, first)
        out: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1000)
            records = batch.get(tp, [])
            out.extend((r.offset, r.value or b"") for r in records if r.offset < end)
            if not records and loop.time() > deadline:
                raise ReadBackError(
                    f"could not read {topic}[{partition}] offsets {first}-{end - 1} back from "
                    f"Kafka within {self.timeout_s:.0f}s (position "
                    f"{await consumer.position(tp)})")
        return out

    async def first_offset(self, topic: str, partition: int) -> int:
        async with self._lock:
            consumer = await self._started()
            tp = TopicPartition(topic, partition)
            return int((await consumer.beginning_offsets([tp]))[tp])

    async def close(self) -> None:
        async with self._lock:
            if self._consumer is None:
                return
            await self._consumer.stop()
            self._consumer = None


class MemoryRangeReader:
    """A `RangeReader` over in-memory partitions (`{(topic, partition): {offset: value}}`),
    for tests."""

    def __init__(self, log: dict[tuple[str, int], dict[int, bytes]]) -> None:
        self.log = log
        self.reads: list[tuple[str, int, int, int]] = []

    async def read(self, topic: str, partition: int, first: int,
                   end: int) -> list[tuple[int, bytes]]:
        self.reads.append((topic, partition, first, end))
        records = self.log.get((topic, partition), {})
        return [(at, records[at]) for at in range(first, end) if at in records]

    async def first_offset(self, topic: str, partition: int) -> int:
        return min(self.log.get((topic, partition), {}), default=0)
