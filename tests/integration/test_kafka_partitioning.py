"""Ingest's producer (librdkafka) puts every key on the partition the Java client, aiokafka and
every earlier version of citystream put it on: an entity's records, and so its state in the
worker's tables, stay on one partition across an upgrade."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from connectors.kafka import LibrdkafkaSink, OutRecord, ensure_topics
from deploy.local.stack import Stack
from models.settings import KafkaSettings

pytestmark = [pytest.mark.kafka]


def test_librdkafka_partitions_keys_as_aiokafka_does(stack: Stack) -> None:
    settings = KafkaSettings(bootstrap=stack.client_info()["kafka"]["bootstrap"], partitions=8)
    topic = f"partitioning-{uuid.uuid4().hex[:8]}"
    keys = [f"district-{i}".encode() for i in range(40)] + [b"bletchley", b"water/wm-001"]

    async def run() -> dict[bytes, int]:
        await ensure_topics(settings, [topic])
        sink = LibrdkafkaSink(settings)
        await sink.start()
        try:
            await sink.send([OutRecord(topic, key, b"{}") for key in keys])
        finally:
            await sink.close()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            seen: dict[bytes, int] = {}
            while len(seen) < len(keys):
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    seen.update({r.key: tp.partition for r in records if r.key is not None})
            return seen
        finally:
            await consumer.stop()

    seen = asyncio.run(asyncio.wait_for(run(), 60))
    partitions = list(range(8))
    want = {key: DefaultPartitioner()(key, partitions, partitions) for key in keys}
    assert seen == want
    assert len(set(want.values())) > 1
