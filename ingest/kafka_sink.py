"""Kafka side of ingest: durable, idempotent produce of record batches.

`KafkaSink.send` returns only when Kafka acknowledged every record (acks=all, idempotent
producer, PITFALLS.md), so the caller may then acknowledge the MQTT messages behind them.
`MemorySink` is the fake for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from citystream.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes
    value: bytes


class Sink(Protocol):
    """Where ingest puts records. `send` returns once all records are durable, else raises."""

    async def start(self) -> None: ...

    async def send(self, records: list[OutRecord]) -> None: ...

    async def close(self) -> None: ...


class KafkaSink:
    """aiokafka producer with acks=all and idempotence."""

    def __init__(self, settings: KafkaSettings, *, client_id: str = "citystream-ingest",
                 linger_ms: int = 5) -> None:
        self.settings = settings
        self.client_id = client_id
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await self._restart()

    async def _restart(self) -> None:
        if self._producer is not None:
            try:
                await self._producer.stop()
            except Exception:  # a broken producer may fail to stop; we replace it anyway
                log.debug("stopping the old Kafka producer failed", exc_info=True)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap, client_id=self.client_id,
            acks="all", enable_idempotence=True, linger_ms=self.linger_ms,
            max_batch_size=1 << 20, max_request_size=4 << 20, request_timeout_ms=15000)
        self._producer = producer
        await producer.start()

    async def send(self, records: list[OutRecord]) -> None:
        if self._producer is None:
            await self._restart()
        producer = self._producer
        assert producer is not None
        try:
            futures = [await producer.send(r.topic, value=r.value, key=r.key) for r in records]
            await asyncio.gather(*futures)
        except (KafkaError, OSError, TimeoutError):
            # The idempotent producer's sequence state may now be unusable; start afresh.
            self._producer = None
            raise

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def ensure_topics(settings: KafkaSettings, topics: list[str] | dict[str, dict[str, str]],
                        replication: int = 1) -> None:
    """Create missing topics with the configured partition count (and per-topic config)."""
    configs = topics if isinstance(topics, dict) else {t: {} for t in topics}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in configs if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([
                    NewTopic(t, settings.partitions, replication, topic_configs=configs[t])
                    for t in missing])
            log.info("created Kafka topics %s (%d partitions)", missing, settings.partitions)
    finally:
        await admin.close()


@dataclass
class MemorySink:
    """Keeps records in memory; `fail_next` makes the next N sends raise (outage tests)."""

    records: list[OutRecord] = field(default_factory=list)
    fail_next: int = 0

    async def start(self) -> None:
        return None

    async def send(self, records: list[OutRecord]) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise KafkaError("simulated outage")
        self.records.extend(records)

    async def close(self) -> None:
        return None
