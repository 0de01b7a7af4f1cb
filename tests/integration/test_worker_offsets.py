"""The worker does not trust the consumer group's committed offset: when it runs ahead of what
the engine applied (as faust-streaming's acks of events skipped at a rebalance make it do), the
skipped records are read back from Kafka and applied, and the KPIs still equal the oracle."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from models.settings import KafkaSettings
from models.topics import Topics
from tests.integration.helpers import Lane, oracle_points, start_of_run
from tests.support import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]

SIM = ["--speed", "0", "--gateways", "4", "--count", "6000"]


def commit_ahead(lane: Lane, fraction: float) -> int:
    """Commit the worker group's offset of every telemetry partition `fraction` of the way from
    its committed offset (or the start) to its end, as if those records had been processed.
    Returns how many records that skips."""
    bootstrap = lane.stack.client_info()["kafka"]["bootstrap"]
    group = f"{lane.prefix}citystream-worker"
    topics = list(Topics(lane.prefix).telemetry.values())

    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(KafkaSettings().partitions)]
            consumer.assign(tps)
            # The broker acknowledged the simulator's messages on receipt; wait until ingest
            # has forwarded them all (the topics stop growing).
            ends = await consumer.end_offsets(tps)
            while True:
                await asyncio.sleep(3)
                again = await consumer.end_offsets(tps)
                if again == ends:
                    break
                ends = again
            starts = await consumer.beginning_offsets(tps)
            offsets: dict[Any, int] = {}
            for tp in tps:
                committed = await consumer.committed(tp)
                base = starts[tp] if committed is None else committed
                offsets[tp] = base + int((ends[tp] - base) * fraction)
            deadline = time.monotonic() + 60
            while True:  # the stopped worker's group may still be settling
                try:
                    await consumer.commit(offsets)
                    break
                except KafkaError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(2)
            after = {tp: await consumer.committed(tp) for tp in tps}
            assert after == offsets, f"commit did not take: {after} != {offsets}"
            print(f"committed {fraction:.0%} ahead:",
                  {f"{tp.topic.rsplit('.', 1)[1]}[{tp.partition}]": o for tp, o in after.items()})
            return sum(offsets[tp] - starts[tp] for tp in tps)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_records_the_group_committed_but_never_applied_are_caught_up(lane: Lane,
                                                                    tmp_path: Path) -> None:
    lane.ingest()
    recordings: list[Path] = []

    def simulate(seed: int, hours_back: float) -> None:
        recordings.append(tmp_path / f"sim-{seed}.jsonl")
        lane.simulate("--seed", str(seed), *SIM, "--start", start_of_run(hours_back),
                      record=recordings[-1])

    def away(worker: WorkerProcess, seed: int, hours_back: float) -> tuple[WorkerProcess, int]:
        """Stop the worker, publish, let the group commit everything, start it again."""
        worker.stop()
        lane.processes.remove(worker)
        logged = worker.log.stat().st_size
        simulate(seed, hours_back)
        commit_ahead(lane, 1.0)
        return lane.worker(), logged

    def want() -> dict[Any, Any]:
        return oracle_points([json.loads(line) for path in recordings
                              for line in path.read_text().splitlines()])

    # 1. Nothing applied yet and the group's offsets already half way: the worker still starts
    #    from the oldest record (catch-up at its first record).
    simulate(7, 20)
    assert commit_ahead(lane, 0.5) > 0
    worker, logged = lane.worker(), 0
    lane.wait_equal(want(), timeout=300)
    assert "never delivered to the agent" in worker.log.read_text()[logged:]

    # 2. Records "processed" while the worker was away and nothing after them: the idle
    #    partitions' consumers are rewound.
    worker, logged = away(worker, 8, 14)
    lane.wait_equal(want(), timeout=300)
    log = worker.log.read_text()[logged:]
    assert "rewinding the consumer" in log
    held = r"consumer: Faust (active|paused|not active), read offset .*; aiokafka "
    assert re.search(held, log), "the rewind's log says how Faust and aiokafka hold the partition"

    # 3. The same, then new records arrive: caught up at the next record of each partition.
    worker, logged = away(worker, 9, 8)
    simulate(10, 4)
    lane.wait_equal(want(), timeout=300)
    assert "never delivered to the agent" in worker.log.read_text()[logged:]
