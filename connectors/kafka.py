"""Kafka producing: durable, idempotent produce of record batches, and topic creation.

`Sink` is the interface: `LibrdkafkaSink` (librdkafka through confluent-kafka) for ingest,
`KafkaSink` (aiokafka) for the InfluxDB sink's dead letters and counters, `MemorySink` the fake
for tests and benchmarks. `send` returns only when Kafka acknowledged every record (acks=all,
idempotent producer, PITFALLS.md), so ingest may then acknowledge the MQTT messages behind them.
Ingest uses librdkafka for its CPU: per 1,000 single-reading MQTT messages it spent 6 % less
than with aiokafka (docs/performance.md). `ensure_topics` creates missing topics with the
configured partitions, replication factor and `min.insync.replicas`.

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
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaConnectionError,
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


class _Replaceable:
    """A `Sink` around one producer that is replaced after any failure: its idempotence
    state (sequence numbers) may be unusable then. Subclasses say how a producer is opened
    (`_open`, bounded in time), delivers (`_deliver`), is dropped (`_drop`: unsent records
    are lost, they were never acknowledged) and closed (`_close`: flushed)."""

    def __init__(self, settings: KafkaSettings, *, client_id: str = "citystream-ingest",
                 linger_ms: int = 5, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.client_id = client_id
        self.linger_ms = linger_ms
        self.timeout_s = timeout_s
        self._producer: Any = None

    async def _open(self) -> Any:
        raise NotImplementedError

    async def _deliver(self, producer: Any, records: list[OutRecord]) -> None:
        raise NotImplementedError

    async def _drop(self, producer: Any) -> None:
        raise NotImplementedError

    async def _close(self, producer: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self._restart()

    async def _restart(self) -> None:
        if self._producer is not None:
            old, self._producer = self._producer, None
            await self._drop(old)
        self._producer = await self._open()

    async def send(self, records: list[OutRecord]) -> None:
        """Return once Kafka has every record; raise (KafkaError, OSError, TimeoutError) if
        not within `timeout_s`, and start a new producer for the next call."""
        if self._producer is None:
            await self._restart()
        producer = self._producer
        try:
            await asyncio.wait_for(self._deliver(producer, records), self.timeout_s)
        except TimeoutError:
            self._producer = None
            await self._drop(producer)
            raise TimeoutError(f"Kafka did not acknowledge {len(records)} records within "
                               f"{self.timeout_s:.0f} s") from None
        except (KafkaError, OSError):
            self._producer = None
            await self._drop(producer)
            raise

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._close(producer)


class KafkaSink(_Replaceable):
    """aiokafka producer with acks=all and idempotence."""

    _producer: AIOKafkaProducer | None

    async def _open(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap, client_id=self.client_id,
            acks="all", enable_idempotence=True, linger_ms=self.linger_ms,
            max_batch_size=1 << 20, max_request_size=4 << 20, request_timeout_ms=15000)
        try:
            await asyncio.wait_for(producer.start(), min(self.timeout_s, 10.0))
        except BaseException:
            await _discard(producer)
            raise
        return producer

    async def _deliver(self, producer: AIOKafkaProducer, records: list[OutRecord]) -> None:
        futures = [await producer.send(r.topic, value=r.value, key=r.key) for r in records]
        await asyncio.gather(*futures)

    async def _drop(self, producer: AIOKafkaProducer) -> None:
        await _discard(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
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


class LibrdkafkaSink(_Replaceable):
    """librdkafka's producer (confluent-kafka) with acks=all and idempotence: `KafkaSink`'s
    guarantees for less CPU per record (batching, framing and compression in C threads).

    `send` produces every record and returns once librdkafka reported each delivered, which
    with acks=all is after every in-sync replica has it; a delivery error, or no answer within
    `timeout_s`, raises `KafkaError` or `TimeoutError` and the producer is replaced (its
    idempotence state may be unusable). A thread of its own serves the delivery reports."""

    _producer: _Librdkafka | None

    def _config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.settings.bootstrap, "client.id": self.client_id,
                # the Java client's (and aiokafka's) key -> partition: librdkafka's default
                # (CRC32) would move every key, and with it an entity's state, to another
                # partition than the one its earlier records and the worker's tables are on
                "partitioner": "murmur2_random",
                "acks": "all", "enable.idempotence": True, "linger.ms": self.linger_ms,
                "batch.size": 1 << 20, "message.max.bytes": 4 << 20,
                "request.timeout.ms": 15000,
                "message.timeout.ms": max(1000, int(self.timeout_s * 1000)),
                "logger": log, "error_cb": _librdkafka_error}

    async def _open(self) -> _Librdkafka:
        producer = _Librdkafka(self._config())
        wait_s = min(self.timeout_s, 10.0)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                None, producer.probe, wait_s), wait_s + 1)
        except BaseException:
            producer.discard()
            raise
        return producer

    async def _deliver(self, producer: _Librdkafka, records: list[OutRecord]) -> None:
        await producer.send(records)

    async def _drop(self, producer: _Librdkafka) -> None:
        producer.discard()

    async def _close(self, producer: _Librdkafka) -> None:
        await asyncio.get_running_loop().run_in_executor(None, producer.close, self.timeout_s)


def _librdkafka_error(err: Any) -> None:
    """librdkafka's client-wide errors (all brokers down, a failed connection): what they
    cost a `send` reaches its caller, which says so; here only at DEBUG."""
    log.debug("librdkafka: %s", err)


class _Librdkafka:
    """One confluent-kafka `Producer` and the thread that serves its delivery reports."""

    def __init__(self, config: dict[str, Any]) -> None:
        import confluent_kafka  # only where this producer is used

        self.producer = confluent_kafka.Producer(config)
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            self.producer.poll(0.1)

    def probe(self, timeout_s: float) -> None:
        """Raise unless a broker answers a metadata request within `timeout_s`."""
        import confluent_kafka

        try:
            self.producer.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise TimeoutError(f"no Kafka broker answered within {timeout_s:.0f}s: "
                               f"{exc.args[0].str() if exc.args else exc}") from None

    async def send(self, records: list[OutRecord]) -> None:
        if not records:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        left = len(records)
        failures: list[str] = []

        def settle() -> None:
            if not done.done():
                if failures:
                    done.set_exception(KafkaError(f"Kafka did not take {len(failures)} of "
                                                  f"{len(records)} records: {failures[0]}"))
                else:
                    done.set_result(None)

        def delivered(err: Any, _msg: Any) -> None:  # on the delivery thread
            nonlocal left
            left -= 1
            if err is not None:
                failures.append(f"{err.name()}: {err.str()}")
            if left == 0:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(settle)

        import confluent_kafka

        produce = self.producer.produce
        for r in records:
            while True:
                try:
                    produce(r.topic, r.value, r.key, on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    await asyncio.sleep(0.01)
                except confluent_kafka.KafkaException as exc:
                    raise KafkaError(f"Kafka refused a record for {r.topic}: "
                                     f"{exc.args[0].str() if exc.args else exc}") from None
        await done

    def discard(self) -> None:
        """Drop what is queued and stop: the records are not acknowledged anyway."""
        self._running = False
        self.producer.purge()
        self._thread.join(1.0)

    def close(self, timeout_s: float) -> None:
        self._running = False
        self._thread.join(1.0)
        self.producer.flush(timeout_s)


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


async def group_coordinator_answers(settings: KafkaSettings, group: str) -> None:
    """Return once the coordinator of consumer group `group` answered a DescribeGroups
    request; raise (a `KafkaError`, `OSError`) if the group has no live coordinator, e.g. the
    cluster lost the majority that would elect one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        code = response.groups[0][0]
        if code:
            raise KafkaError(f"group {group}: {type(for_code(code)()).__name__}")
    finally:
        await admin.close()


async def brokers_answer(settings: KafkaSettings) -> None:
    """Return once every broker Kafka's metadata lists accepted a connection; raise
    `KafkaConnectionError` naming the first that did not. Faust's start asks the first broker
    listed for the controller and gives up if it is down; a dead broker stays listed until the
    controllers fence it, and for as long as they have no majority to do so."""
    client = AIOKafkaClient(bootstrap_servers=settings.bootstrap)
    await client.bootstrap()
    try:
        for broker in client.cluster.brokers():
            if not await client.ready(broker.nodeId):
                raise KafkaConnectionError(f"Kafka node {broker.nodeId} ({broker.host}:"
                                           f"{broker.port}) is listed but does not answer")
    finally:
        await client.close()


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
