"""The worker's own per-partition offsets: skipped records are read back and applied first,
in order, exactly once."""

from __future__ import annotations

import asyncio

from streams.offsets import (
    MemoryRangeReader,
    applied_offset,
    catch_up,
    mark_applied,
    rewind_to,
)

TOPIC = "telemetry.water"


class Agent:
    """The agent's order of work, as in `Worker.handle` and `Worker.apply` (streams/worker.py):
    catch up (`streams.offsets.catch_up`), then apply and mark."""

    def __init__(self, log: dict[int, bytes]) -> None:
        self.store: dict[str, bytes] = {}
        self.reader = MemoryRangeReader({(TOPIC, 3): log})
        self.applied: list[int] = []

    async def apply(self, offset: int, _value: bytes) -> None:
        self.applied.append(offset)
        mark_applied(self.store, 3, offset)

    def deliver(self, offset: int) -> int:
        async def run() -> int:
            n = await catch_up(self.store, self.reader, TOPIC, 3, offset, self.apply)
            await self.apply(offset, b"")
            return n
        return asyncio.run(run())


def test_mark_applied_keeps_the_highest_offset() -> None:
    store: dict[str, bytes] = {}
    assert applied_offset(store, 0) is None
    mark_applied(store, 0, 5)
    mark_applied(store, 0, 3)  # a redelivered older record
    mark_applied(store, 1, 9)
    assert (applied_offset(store, 0), applied_offset(store, 1)) == (5, 9)


def test_contiguous_delivery_reads_nothing_back() -> None:
    agent = Agent({i: b"" for i in range(10)})
    assert [agent.deliver(i) for i in range(10)] == [0] * 10
    assert agent.applied == list(range(10))
    assert agent.reader.reads == []


def test_skipped_records_are_applied_first_in_order() -> None:
    agent = Agent({i: b"" for i in range(10)})
    for i in (0, 1, 2, 6, 7):       # 3-5 skipped by the consumer (as Faust does at a rebalance)
        agent.deliver(i)
    assert agent.applied == [0, 1, 2, 3, 4, 5, 6, 7]
    assert agent.reader.reads == [(TOPIC, 3, 3, 6)]
    assert applied_offset(agent.store, 3) == 7


def test_redelivered_records_after_a_restart_read_nothing_back() -> None:
    agent = Agent({i: b"" for i in range(10)})
    for i in range(6):
        agent.deliver(i)
    for i in range(3, 8):           # restart from an older committed offset
        agent.deliver(i)
    assert agent.reader.reads == []
    assert agent.applied == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]


def test_a_committed_offset_ahead_of_the_state_is_caught_up_on_restart() -> None:
    agent = Agent({i: b"" for i in range(20)})
    for i in range(5):
        agent.deliver(i)
    agent.deliver(15)               # first record after a restart at a too-new committed offset
    assert agent.applied == list(range(16))


def test_records_deleted_by_retention_are_passed_over() -> None:
    agent = Agent({i: b"" for i in (0, 1, 8, 9)})  # 2-7 deleted
    agent.deliver(0)
    agent.deliver(1)
    assert agent.deliver(9) == 1    # only 8 still exists
    assert agent.applied == [0, 1, 8, 9]


def test_a_fresh_partition_starts_at_the_oldest_record_kafka_holds() -> None:
    agent = Agent({i: b"" for i in range(100, 110)})  # 0-99 deleted by retention
    assert agent.deliver(100) == 0
    assert agent.reader.reads == []
    fresh = Agent({i: b"" for i in range(100, 110)})
    assert fresh.deliver(104) == 4   # a commit ran ahead before anything was applied
    assert fresh.applied == list(range(100, 105))


def test_rewind_an_idle_partition_only_when_records_follow_the_applied_one() -> None:
    assert rewind_to(applied=9, first=0, end=10) is None       # all applied
    assert rewind_to(applied=9, first=0, end=15) == 10         # 10-14 skipped, nothing after
    assert rewind_to(applied=None, first=0, end=0) is None     # empty partition
    assert rewind_to(applied=None, first=3, end=8) == 3        # committed ahead, never applied
    assert rewind_to(applied=2, first=5, end=8) == 5           # 3-4 deleted by retention
