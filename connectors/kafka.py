"""Kafka producing: durable, idempotent produce of record batches, and topic creation.

`Sink` is the interface: `KafkaSink` (aiokafka) for production, `MemorySink` the fake for tests
and benchmarks. `KafkaSink.send` returns only when Kafka acknowledged every record (acks=all,
idempotent producer, PITFALLS.md), so ingest may then acknowledge the MQTT messages behind them;
the InfluxDB sink sends its dead letters and counters through one too. `ensure_topics` creates
missing topics with the configured partitions, replication factor and `min.insync.replicas`.

Every call is bounded in time: aiokafka's producer can wait forever when the broker goes away
(its idempotent start-up loops for a producer id without a deadline, and a send can wait for
metadata that never comes), which once left ingest stuck after a 60 s Kafka outage even when
Kafka was back. A start or send that takes longer than `timeout_s` fails like any other error,
and the producer behind it is torn down (tasks cancelled, connections closed) and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

from models.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes
    value: bytes


class Sink(Protocol):
    """Where records go to Kafka. `send` returns once all records are durable, else raises."""

    async def start(self) -> None: ...

    async def send(self, records: list[OutRecord]) -> None: ...

    async def close(self) -> None: ...


class KafkaSink:
    """aiokafka producer with acks=all and idempotence."""

    def __init__(self, settings: KafkaSettings, *, client_id: str = "citystream-ingest",
                 linger_ms: int = 5, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        await self._restart()

    async def _restart(self) -> None:
        if self._producer is not None:
            old, self._producer = self._producer, None
            await _discard(old)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap, client_id=self.client_id,
            acks="all", enable_idempotence=True, linger_ms=self.linger_ms,
            max_batch_size=1 << 20, max_request_size=4 << 20, request_timeout_ms=15000)
        try:
            await asyncio.wait_for(producer.start(), min(self.timeout_s, 10.0))
        except BaseException:
            await _discard(producer)
            raise
        self._producer = producer

    async def send(self, records: list[OutRecord]) -> None:
        """Return once Kafka has every record; raise (KafkaError, OSError, TimeoutError) if
        not within `timeout_s`, and start a new producer for the next call."""
        if self._producer is None:
            await self._restart()
        producer = self._producer
        assert producer is not None
        try:
            await asyncio.wait_for(self._send(producer, records), self.timeout_s)
        except (KafkaError, OSError, TimeoutError):
            # The idempotent producer's sequence state may now be unusable; start afresh.
            self._producer = None
            await _discard(producer)
            raise

    @staticmethod
    async def _send(producer: AIOKafkaProducer, records: list[OutRecord]) -> None:
        futures = [await producer.send(r.topic, value=r.value, key=r.key) for r in records]
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await _discard(producer, timeout_s=self.timeout_s)


async def _discard(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a producer, by force if a clean stop (which flushes) does not finish in time: a
    producer left running keeps retrying in the background, spinning and logging."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
        return
    except Exception:  # broken or unreachable: tear it down below
        log.debug("stopping a Kafka producer cleanly failed; closing it by force", exc_info=True)
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
    client = getattr(producer, "client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5.0)


async def ensure_topics(settings: KafkaSettings,
                        topics: list[str] | dict[str, dict[str, str]]) -> None:
    """Create missing topics with the configured partition count, replication factor and
    `min.insync.replicas` (`KafkaSettings.topic_config`), plus each topic's own config.

    Kafka never changes the replication factor of an existing topic by itself: one created
    with fewer copies than configured (say by a single-node development run) is logged as a
    warning naming it, and stays as it is."""
    configs = topics if isinstance(topics, dict) else {t: {} for t in topics}
    replicas = settings.replication_factor
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in configs if t not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(t, settings.partitions, replicas,
                         topic_configs={**settings.topic_config(), **configs[t]})
                for t in missing])
            _raise_refusal(response.topic_errors, replicas)
            log.info("created Kafka topics %s (%d partitions, %d replicas, min.insync.replicas "
                     "%d)", missing, settings.partitions, replicas, settings.min_insync_replicas)
        present = [t for t in configs if t in existing]
        if present and replicas > 1:
            for topic in await admin.describe_topics(present):
                fewer = min((len(p["replicas"]) for p in topic["partitions"]), default=replicas)
                if fewer < replicas:
                    log.warning("Kafka topic %s has partitions with %d replicas, fewer than "
                                "CITYSTREAM_KAFKA__REPLICATION_FACTOR=%d; Kafka does not add "
                                "replicas by itself (kafka-reassign-partitions.sh does)",
                                topic["topic"], fewer, replicas)
    finally:
        await admin.close()


def _raise_refusal(topic_errors: list[tuple[Any, ...]], replicas: int) -> None:
    """The first per-topic refusal of a CreateTopics answer as its `KafkaError` (aiokafka
    returns them without raising; a topic that already exists is no refusal)."""
    for topic, code, *message in topic_errors:
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        hint = (" (lower CITYSTREAM_KAFKA__REPLICATION_FACTOR, or add brokers)"
                if code == InvalidReplicationFactorError.errno else "")
        detail = f": {message[0]}" if message and message[0] else ""
        raise for_code(code)(f"Kafka refused to create topic {topic} with {replicas} "
                             f"replicas{detail}{hint}")


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
