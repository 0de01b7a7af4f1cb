"""streams/store.py: a table store (real RocksDB, through Faust's store) that is always a
prefix of its changelog, so that replaying the changelog past its persisted offset after any
crash gives the changelog's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import TP
from faust.types.tuples import FutureMessage, PendingMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.app import rocksdb_options
from streams.store import ChangelogPrefixStore, ChangelogPrefixTable, PendingWrites

PARTITIONS = 2


@contextlib.contextmanager
def event_of(partition: int | None) -> Iterator[None]:
    """Faust's current event, as while an agent processes a record of `partition`."""
    event = None if partition is None else SimpleNamespace(
        message=SimpleNamespace(partition=partition))
    token = _current_event.set(None if event is None else lambda: event)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class Changelog:
    """A table's store with its changelog modelled: changes are sent, then Kafka acknowledges
    them in order per partition, or the send fails (Faust then calls no callback)."""

    def __init__(self, datadir: Path) -> None:
        self.app = faust.App("store-test", store="rocksdb://", datadir=str(datadir))
        self.table = ChangelogPrefixTable(
            self.app, name="state", key_type=bytes, value_type=bytes, partitions=PARTITIONS,
            beacon=self.app.tables.beacon, options=rocksdb_options(1.0))
        self.store: ChangelogPrefixStore = self.table.data  # type: ignore[assignment]
        self.records: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(2)}
        self.in_flight: dict[int, list[FutureMessage]] = {p: [] for p in range(2)}

    def change(self, partition: int, key: bytes, value: bytes | None) -> None:
        """What `Table.__setitem__` / `__delitem__` do: send, then write to the store."""
        fut = FutureMessage(PendingMessage(
            channel=None, key=key, value=value, partition=partition, timestamp=None,  # type: ignore[arg-type]
            headers=None, key_serializer="raw", value_serializer="raw", callback=None))
        with event_of(partition):
            self.store.expect(fut)
            if value is None:
                del self.store[key]
            else:
                self.store[key] = value
        self.in_flight[partition].append(fut)

    def ack(self, partition: int) -> None:
        fut = self.in_flight[partition].pop(0)
        self.records[partition].append((bytes(fut.message.key), fut.message.value))  # type: ignore[arg-type]
        fut.set_result(SimpleNamespace(offset=len(self.records[partition]) - 1))  # type: ignore[arg-type]
        self.store.on_changelog_sent(fut)

    def fail(self, partition: int) -> None:
        self.in_flight[partition].pop(0).set_exception(TimeoutError("not acknowledged"))

    def tp(self, partition: int) -> TP:
        return TP(self.table.changelog_topic_name, partition)

    def stored(self, partition: int) -> dict[bytes, bytes]:
        db = self.store._db_for_partition(partition)
        return {bytes(k): bytes(v) for k, v in db.items() if k != self.store.offset_key}

    def recovered(self, partition: int) -> dict[bytes, bytes]:
        """What Faust's recovery makes of the store after a crash now: the store, then the
        changelog's records after its persisted offset."""
        state = self.stored(partition)
        persisted = self.store.persisted_offset(self.tp(partition))
        for key, value in self.records[partition][(-1 if persisted is None else persisted) + 1:]:
            _apply(state, key, value)
        return state

    def truth(self, partition: int) -> dict[bytes, bytes]:
        """The changelog's state: every record in order."""
        state: dict[bytes, bytes] = {}
        for key, value in self.records[partition]:
            _apply(state, key, value)
        return state


def _apply(state: dict[bytes, bytes], key: bytes, value: bytes | None) -> None:
    if value is None:
        state.pop(key, None)
    else:
        state[key] = value


def run(body: Any) -> None:
    async def main() -> None:
        body()
    asyncio.run(main())


OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, PARTITIONS - 1), st.sampled_from(b"abcd"),
              st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("del"), st.integers(0, PARTITIONS - 1), st.sampled_from(b"abcd"),
              st.none()),
    st.tuples(st.sampled_from(["ack", "ack", "fail"]), st.integers(0, PARTITIONS - 1),
              st.none(), st.none())), max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_a_crash_at_any_point_recovers_the_changelogs_state(tmp_path_factory: Any,
                                                             ops: list[Any]) -> None:
    """Changes sent, acknowledged or failed in any order across two partitions: reads see the
    newest change at once, the store never holds a change the changelog lacks, and a crash
    at the end followed by Faust's replay gives exactly the changelog's state."""
    log = Changelog(tmp_path_factory.mktemp("store"))
    newest: dict[int, dict[bytes, bytes]] = {p: {} for p in range(PARTITIONS)}

    def body() -> None:
        for op, partition, key, value in ops:
            if op in ("set", "del"):
                log.change(partition, bytes([key]), value)
                _apply(newest[partition], bytes([key]), value)
            elif log.in_flight[partition]:
                (log.ack if op == "ack" else log.fail)(partition)
            for p in range(PARTITIONS):
                with event_of(p):
                    seen = {bytes([k]): log.store.get(bytes([k])) for k in b"abcd"}
                assert {k: v for k, v in seen.items() if v is not None} == newest[p]
                assert log.stored(p).items() <= _ever_written(log, p)
        for p in range(PARTITIONS):
            assert log.recovered(p) == log.truth(p)
    run(body)


def _ever_written(log: Changelog, partition: int) -> set[tuple[bytes, bytes]]:
    return {(k, v) for k, v in log.records[partition] if v is not None}


def test_a_change_is_stored_with_its_offset_once_acknowledged(tmp_path: Path) -> None:
    log = Changelog(tmp_path)

    def body() -> None:
        log.change(0, b"k", b"1")
        log.change(0, b"k", b"2")
        assert log.stored(0) == {} and log.store.persisted_offset(log.tp(0)) is None
        log.ack(0)
        assert log.stored(0) == {b"k": b"1"} and log.store.persisted_offset(log.tp(0)) == 0
        with event_of(0):
            assert log.store[b"k"] == b"2", "the newer change, still pending"
        with event_of(None):
            assert log.store[b"k"] == b"2", "seen outside an event too"
        log.ack(0)
        assert log.stored(0) == {b"k": b"2"} and log.store.persisted_offset(log.tp(0)) == 1
        assert log.store.pending.count() == 0
    run(body)


def test_a_failed_send_holds_back_the_later_changes_of_its_partition(tmp_path: Path) -> None:
    log = Changelog(tmp_path)

    def body() -> None:
        log.change(0, b"a", b"1")
        log.change(0, b"b", b"2")
        log.change(1, b"c", b"3")
        log.fail(0)
        log.ack(0)
        log.ack(1)
        assert log.stored(0) == {}, "b's record is in the changelog, but after a hole"
        assert log.stored(1) == {b"c": b"3"}
        assert log.recovered(0) == log.truth(0) == {b"b": b"2"}
    run(body)


def test_iteration_and_deletion_see_pending_changes(tmp_path: Path) -> None:
    log = Changelog(tmp_path)
    actives = {log.tp(0), log.tp(1)}
    log.app.assignor.assigned_actives = lambda: actives  # type: ignore[method-assign]

    def body() -> None:
        log.change(0, b"a", b"1")
        log.change(1, b"b", b"2")
        log.ack(0)
        log.ack(1)
        log.change(0, b"a", None)
        log.change(1, b"c", b"3")
        with event_of(None):
            assert dict(log.table.data.items()) == {b"b": b"2", b"c": b"3"}
            assert len(log.store) == 2 and b"a" not in log.store and b"c" in log.store
        log.ack(0)
        assert log.stored(0) == {}
    run(body)


def test_a_revoked_partition_forgets_its_pending_changes(tmp_path: Path) -> None:
    log = Changelog(tmp_path)

    def body() -> None:
        log.change(0, b"a", b"1")
        log.store.revoke_partitions(log.table, {log.tp(0)})
        with event_of(None):
            assert log.store.get(b"a") is None
        log.ack(0)
        assert log.stored(0) == {}, "not written after the revocation"
        assert log.recovered(0) == {b"a": b"1"}
    run(body)


def test_a_failed_rocksdb_write_keeps_the_changes_pending_and_ends_the_process(
        tmp_path: Path) -> None:
    log = Changelog(tmp_path)
    ended: list[str] = []

    def end(why: str) -> Any:
        ended.append(why)

    class Broken:
        def write(self, batch: Any) -> None:
            raise OSError("No space left on device")

    def body() -> None:
        log.change(0, b"a", b"1")
        log.store.on_store_failed = end  # type: ignore[method-assign]
        working, log.store._dbs[0] = log.store._dbs[0], Broken()
        log.ack(0)
        assert ended and "No space left" in ended[0]
        log.store._dbs[0] = working
        with event_of(0):
            assert log.store[b"a"] == b"1", "still pending: reads see it"
        assert log.stored(0) == {} and log.recovered(0) == {b"a": b"1"}
    run(body)


def test_pending_writes_are_released_in_the_order_they_were_sent() -> None:
    pending = PendingWrites()
    first, second = pending.sent(0, b"k", b"1"), pending.sent(0, b"k", b"2")
    assert pending.acked(0, second, 7) == [], "waits for the first"
    assert pending.acked(0, first, 6) == [first, second]
    assert pending.lookup(0, b"k") is second, "pending until stored"
    pending.stored(0, 2)
    assert pending.lookup(0, b"k") is None and pending.count() == 0
