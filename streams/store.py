"""Table stores that are never ahead of their changelogs, so a worker that crashed keeps them.

Faust's RocksDB store writes a table change to RocksDB when it is made and sends it to the
changelog at the same time: a crash between the two leaves the store holding writes the
changelog never got, so a worker that had not stopped cleanly had to delete its stores and
rebuild every table from the changelogs, minutes once they hold millions of readings (the soak
at 7,680 msg/s, docs/operations.md). Here a change waits in memory (`PendingWrites`, which
reads see) until Kafka acknowledged its changelog record, and is then written to RocksDB with
that record's offset in one write batch, in the order the changes were made. A partition's
store is therefore always its changelog up to the persisted offset, and Faust's recovery,
which replays the changelog from there, brings it up to date after any stop or crash.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import faust
import rocksdict
from faust.stores.rocksdb import Store as RocksDBStore
from faust.streams import current_event
from faust.types import TP, EventT, StoreT
from faust.types.tuples import FutureMessage
from yarl import URL

from streams import lease

__all__ = ["ChangelogPrefixStore", "ChangelogPrefixTable", "PendingWrites", "Write"]


@dataclass(eq=False)
class Write:
    """One table change sent to the changelog: a value, or None for a deletion."""

    key: bytes
    value: bytes | None
    offset: int | None = None  # the changelog record's, once Kafka acknowledged it
    dropped: bool = False  # its partition was revoked before it was stored


class PendingWrites:
    """Per partition, the table changes sent to the changelog that are not in the store yet,
    in the order they were made. Pure bookkeeping: the store calls it."""

    def __init__(self) -> None:
        self._queues: dict[int, deque[Write]] = {}
        self._newest: dict[int, dict[bytes, Write]] = {}

    def sent(self, partition: int, key: bytes, value: bytes | None) -> Write:
        """Called when a change is sent to the changelog: reads see it from now on."""
        write = Write(key, value)
        self._queues.setdefault(partition, deque()).append(write)
        self._newest.setdefault(partition, {})[key] = write
        return write

    def acked(self, partition: int, write: Write, offset: int) -> list[Write]:
        """Called when Kafka acknowledged `write`'s record at `offset`. Returns the writes now
        due for the store, oldest first: those acknowledged with no unacknowledged one before
        them; they stay pending (and seen by reads) until `stored`. A write that is never
        acknowledged (its send failed) holds back every later write of its partition, so the
        store stays a prefix of the changelog."""
        write.offset = offset
        due: list[Write] = []
        for queued in self._queues.get(partition, ()):
            if queued.offset is None:
                break
            due.append(queued)
        return due

    def stored(self, partition: int, count: int) -> None:
        """Called when the first `count` writes due for `partition` are in the store."""
        queue, newest = self._queues[partition], self._newest[partition]
        for _ in range(count):
            done = queue.popleft()
            if newest.get(done.key) is done:
                del newest[done.key]

    def lookup(self, partition: int | None, key: bytes) -> Write | None:
        """The newest pending change of `key` (in `partition`, or in any if None)."""
        if partition is not None:
            return self._newest.get(partition, {}).get(key)
        for newest in self._newest.values():
            if key in newest:
                return newest[key]
        return None

    def newest(self, partition: int) -> dict[bytes, Write]:
        """The newest pending change of each key of `partition`."""
        return self._newest.get(partition, {})

    def drop(self, partition: int) -> None:
        """Called when the partition is revoked: its pending changes are forgotten (the
        changelog has or lacks them; the next owner replays it)."""
        for write in self._queues.pop(partition, ()):
            write.dropped = True
        self._newest.pop(partition, None)

    def count(self) -> int:
        return sum(map(len, self._queues.values()))


def _event_partition(store: RocksDBStore) -> int | None:
    """The partition a read must look in: the current event's (as Faust's store does), or
    None for a read outside an event (every partition)."""
    event: EventT[Any] | None = current_event()
    table: Any = store.table
    if event is not None and not table.is_global and not table.use_partitioner:
        return int(event.message.partition)
    return None


class ChangelogPrefixStore(RocksDBStore):
    """Faust's RocksDB store, written only with changes Kafka acknowledged in the changelog
    (module docstring). Reads see the changes still pending."""

    on_store_failed: Callable[[str], NoReturn] = staticmethod(lease.exit_crashed)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = PendingWrites()
        self._writes: dict[FutureMessage, tuple[int, Write]] = {}

    def expect(self, fut: FutureMessage) -> None:
        """Called by the table when it sent a change to the changelog, before it writes the
        change to this store."""
        message = fut.message
        partition = message.partition
        assert partition is not None, "changelog records are sent to the event's partition"
        value = None if message.value is None else self._encode_value(message.value)
        self._writes[fut] = (partition, self.pending.sent(
            partition, self._encode_key(message.key), value))

    def on_changelog_sent(self, fut: FutureMessage) -> None:
        """Called when Kafka acknowledged a changelog record this store expected: writes the
        changes now due to RocksDB with the offset of the last, in one batch. If RocksDB fails
        (a full disk), the changes stay pending and the process ends (`on_store_failed`):
        the store is behind its changelog, which the next start replays."""
        partition, write = self._writes.pop(fut)
        if write.dropped:
            return
        due = self.pending.acked(partition, write, fut.result().offset)
        db = self._dbs.get(partition)
        if not due or db is None:
            return
        batch = self._write_batch()
        for done in due:
            if done.value is None:
                batch.delete(done.key)
            else:
                batch.put(done.key, done.value)
        batch.put(self.offset_key, str(due[-1].offset).encode())
        try:
            db.write(batch)
        except Exception as exc:
            self.on_store_failed(f"RocksDB did not take table {self.table_name!r}'s writes "
                                 f"of partition {partition}: {exc!r}")
        else:
            self.pending.stored(partition, len(due))

    def _write_batch(self) -> Any:
        assert self.use_rocksdict, "the worker's stores use rocksdict"
        return rocksdict.WriteBatch(raw_mode=True)

    def revoke_partitions(self, table: Any, tps: set[TP]) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self.pending.drop(tp.partition)
        super().revoke_partitions(table, tps)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = _event_partition(self)
        assert partition is not None, "table writes happen while an event is processed"
        self._db_for_partition(partition)
        self._key_index[key] = partition

    def _del(self, key: bytes) -> None:
        """The deletion is pending since the table sent it (`expect`)."""

    def _get(self, key: bytes) -> bytes | None:
        write = self.pending.lookup(_event_partition(self), key)
        if write is not None:
            return write.value
        value: bytes | None = super()._get(key)
        return value

    def _contains(self, key: bytes) -> bool:
        write = self.pending.lookup(_event_partition(self), key)
        if write is not None:
            return write.value is not None
        return bool(super()._contains(key))

    def _active_partitions(self) -> Iterator[tuple[int, Any]]:
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic_name  # type: ignore[attr-defined]
        for partition, db in self._dbs.items():
            if TP(topic=topic, partition=partition) in actives or self.table.is_global:
                yield partition, db

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for partition, db in self._active_partitions():
            newest = dict(self.pending.newest(partition))
            for key, write in newest.items():
                if write.value is not None:
                    yield key, write.value
            for key, value in self._visible_items(db):
                if key not in newest:
                    yield key, value

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())


class ChangelogPrefixTable(faust.Table[bytes, bytes]):
    """A Faust table whose RocksDB store is a `ChangelogPrefixStore` (other stores, such as
    memory://, are Faust's own)."""

    def _new_store_by_url(self, url: str | URL) -> StoreT[bytes, bytes]:
        if URL(str(url)).scheme != "rocksdb":
            store: StoreT[bytes, bytes] = super()._new_store_by_url(url)
            return store
        return ChangelogPrefixStore(
            url, self.app, self, table_name=self.name, key_type=self.key_type,
            key_serializer=self.key_serializer, value_serializer=self.value_serializer,
            value_type=self.value_type, loop=self.loop, options=self.options)

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        fut: FutureMessage = super().send_changelog(*args, **kwargs)
        if isinstance(self.data, ChangelogPrefixStore):
            self.data.expect(fut)
        return fut

    def _on_changelog_sent(self, fut: FutureMessage) -> None:
        if isinstance(self.data, ChangelogPrefixStore):
            assert not self.app.in_transaction, "the worker does not use Kafka transactions"
            self.data.on_changelog_sent(fut)
        else:
            super()._on_changelog_sent(fut)
