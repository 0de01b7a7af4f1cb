"""Kafka as the benchmark uses it: readings put on the telemetry topics exactly as ingest would,
a ledger of how many readings each record holds, and the progress of a consumer group."""

from __future__ import annotations

import asyncio
import bisect
import glob
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from connectors.kafka import MemorySink, ensure_topics
from ingest.mqtt_source import Delivery
from ingest.service import Ingest, IngestOptions
from models.settings import KafkaSettings
from models.topics import Topics

from .load import Sensor
from .stats import Sample


@dataclass
class Ledger:
    """Per partition, how many items (readings or points) the records up to each offset hold;
    a topic in `unit_topics` counts one item per record."""

    offsets: dict[TopicPartition, list[int]] = field(default_factory=dict)
    cumulative: dict[TopicPartition, list[int]] = field(default_factory=dict)
    unit_topics: set[str] = field(default_factory=set)

    def add(self, tp: TopicPartition, offset: int, items: int) -> None:
        offs = self.offsets.setdefault(tp, [])
        cum = self.cumulative.setdefault(tp, [])
        offs.append(offset)
        cum.append((cum[-1] if cum else 0) + items)

    @property
    def total(self) -> int:
        return sum(c[-1] for c in self.cumulative.values() if c)

    def done(self, committed: dict[TopicPartition, int]) -> int:
        """Items in the records below the committed offsets."""
        out = 0
        for tp, next_offset in committed.items():
            if tp.topic in self.unit_topics:
                out += next_offset
                continue
            offs = self.offsets.get(tp)
            if offs:
                i = bisect.bisect_left(offs, next_offset)
                out += self.cumulative[tp][i - 1] if i else 0
        return out


def encoder(topics: Topics, horizon_s: int | None = None) -> Ingest:
    """Ingest's own decoding and grouping into Kafka records (`Ingest.encode`: up to 500
    readings of one key per record), without MQTT or Kafka; `horizon_s` widens the late-data
    horizon for recordings older than a day."""
    options = IngestOptions() if horizon_s is None else IngestOptions(horizon_s=horizon_s)
    return Ingest(None, MemorySink(), "bench", options, topics)  # type: ignore[arg-type]


async def preload(settings: KafkaSettings, messages: Iterable[tuple[Sensor, bytes, int]],
                  received_at_ms: int | None = None) -> Ledger:
    """Put `messages` on the telemetry topics of `settings`' prefix as ingest would."""
    now = received_at_ms or int(time.time() * 1000)
    return await produce(settings, (Delivery(sensor.topic, body, now, i, False)
                                    for i, (sensor, body, _) in enumerate(messages)))


async def produce(settings: KafkaSettings, deliveries: Iterable[Delivery],
                  horizon_s: int | None = None) -> Ledger:
    """Decode `deliveries` as ingest does (same code: `encoder`) and produce them to the
    telemetry topics of `settings`' prefix; raises if any of them is rejected."""
    topics = settings.topics
    await ensure_topics(settings, topics.ingest)
    pump = encoder(topics, horizon_s)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5, max_batch_size=1 << 20,
                                max_request_size=4 << 20)
    await producer.start()
    ledger = Ledger()
    try:
        chunk: list[Delivery] = []

        async def flush() -> None:
            records = pump.encode(chunk)
            chunk.clear()
            futures = [(await producer.send(r.topic, r.value, key=r.key), r) for r in records]
            for fut, record in futures:
                meta = await fut
                ledger.add(TopicPartition(meta.topic, meta.partition), meta.offset,
                           len(orjson.loads(record.value)))

        for delivery in deliveries:
            chunk.append(delivery)
            if len(chunk) >= 5000:
                await flush()
        if chunk:
            await flush()
    finally:
        await producer.stop()
    if pump.counters.rejected:
        raise RuntimeError(f"the benchmark's own input was rejected: "
                           f"{dict(pump.counters.rejected_by_reason)}")
    return ledger


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(t, p) for t in topics
                 for p in (consumer.partitions_for_topic(t) or set())]
        return dict(await consumer.end_offsets(parts)) if parts else {}
    finally:
        await consumer.stop()


async def arrivals(bootstrap: str, topics: list[str], want: int, timeout_s: float,
                   ) -> list[tuple[float, int]]:
    """(record timestamp in s, readings in it) for every record of `topics`, read from the
    start until `want` readings were seen or `timeout_s` passed (the producer's CreateTime:
    when ingest handed the record to Kafka)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", max_poll_records=5000,
                                fetch_max_bytes=64 << 20)
    await consumer.start()
    out: list[tuple[float, int]] = []
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < want and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                for r in records:
                    n = r.value.count(b'"sensor_id"')
                    out.append((r.timestamp / 1000, n))
                    seen += n
    finally:
        await consumer.stop()
    return out


def cumulative(arrived: list[tuple[float, int]]) -> list[Sample]:
    """Time-ordered (t, cumulative items) from (t, items) pairs."""
    out: list[Sample] = []
    total = 0
    for t, n in sorted(arrived):
        total += n
        out.append((t, float(total)))
    return out


class GroupWatcher(threading.Thread):
    """Samples a consumer group's committed offsets every `interval_s` and turns them into
    items done with a `Ledger`, until everything is done or `stop()`."""

    def __init__(self, bootstrap: str, group: str, ledger: Ledger,
                 interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.group = group
        self.ledger = ledger
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.total = ledger.total
        self.finished = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            while not self._halt.is_set():
                t = time.time()
                try:
                    got = await admin.list_consumer_group_offsets(self.group)
                except Exception:  # the group may not exist yet
                    got = {}
                committed = {tp: meta.offset for tp, meta in got.items() if meta.offset >= 0}
                done = self.ledger.done(committed)
                self.samples.append((t, float(done)))
                if self.total and done >= self.total:
                    self.finished.set()
                    return
                await asyncio.sleep(self.interval_s)
        finally:
            await admin.close()

    def wait(self, timeout_s: float) -> bool:
        return self.finished.wait(timeout_s)

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join(10)
        return self.samples


def ledger_for_units(ledger: Ledger, ends: dict[TopicPartition, int],
                     unit_topics: Iterable[str]) -> Ledger:
    """`ledger` plus one item per record of `unit_topics` up to `ends` (KPI and counter
    records, which the sink writes as one point each)."""
    units = set(unit_topics)
    out = Ledger(dict(ledger.offsets), dict(ledger.cumulative), set(ledger.unit_topics) | units)
    for tp, end in ends.items():
        if tp.topic in units and end > 0:
            out.offsets[tp] = [end - 1]
            out.cumulative[tp] = [end]
    return out


async def read_all(bootstrap: str, topics: list[str], idle_ms: int = 2000,
                   ) -> dict[str, list[tuple[bytes | None, bytes]]]:
    """(key, value) of every record of `topics` (read until nothing came for `idle_ms`)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: dict[str, list[tuple[bytes | None, bytes]]] = {t: [] for t in topics}
    try:
        while True:
            got = await consumer.getmany(timeout_ms=idle_ms)
            if not got:
                return out
            for tp, records in got.items():
                out[tp.topic].extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()


async def records_by_topic(bootstrap: str, prefix: str) -> dict[str, int]:
    """Records in every topic whose name starts with `prefix` (end minus first offset), for
    the cost of a measurement's Kafka traffic: readings in, changelogs, KPI records."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()
    if not topics:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in consumer.partitions_for_topic(t) or await _partitions(consumer, t)]
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    out: dict[str, int] = {}
    for tp in tps:
        name = tp.topic[len(prefix):]
        out[name] = out.get(name, 0) + ends[tp] - firsts[tp]
    return out


async def delete_topics(bootstrap: str, timeout_s: float = 120.0) -> int:
    """Delete every topic but Kafka's own (``__*``) and wait until they are gone, so that a
    measurement's brokers do not carry the partitions of the ones before it; how many."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if not t.startswith("__")]
        if topics:
            await admin.delete_topics(topics, timeout_ms=60_000)
        deadline = time.monotonic() + timeout_s
        while left := [t for t in await admin.list_topics() if not t.startswith("__")]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(left)} topics still there {timeout_s:.0f} s after "
                                   f"their deletion, e.g. {left[:3]}")
            await asyncio.sleep(1.0)
        return len(topics)
    finally:
        await admin.close()


def log_bytes_by_topic(home: Path, prefix: str) -> dict[str, int]:
    """Bytes of log segments per topic whose name starts with `prefix`, from the local
    broker's log directories under `home` (what the broker wrote: batches with their
    headers)."""
    out: dict[str, int] = {}
    for segment in home.rglob(f"{glob.escape(prefix)}*-[0-9]*/*.log"):
        topic = segment.parent.name.rpartition("-")[0][len(prefix):]
        out[topic] = out.get(topic, 0) + segment.stat().st_size
    return dict(sorted(out.items()))


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    """Whether `group` has committed the end offset of every partition of `topics` that holds
    records."""
    ends = await end_offsets(bootstrap, topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return all(end == 0 or (tp in committed and committed[tp].offset >= end)
               for tp, end in ends.items())
