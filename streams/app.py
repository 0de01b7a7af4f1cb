"""The Faust worker: thin agents that move readings through the pure KPI engine.

Per reading kind, one agent consumes `telemetry.<kind>` (records = JSON arrays of readings that
share a key) and two changelog-backed tables hold the engine's state (`<kind>-state`, laid out
as docs/streams.md describes, and `<kind>-entities`, the names the timer visits with their
source partition; RocksDB via rocksdict in production). Tables are written only while an event is
being processed, so their changelog partitions follow the source partitions and a partition's
state moves with it on rebalance. KPI records go to `kpi.records`, attached to the source
offset: Faust publishes them and flushes the changelog before it commits that offset.

A timer closes the windows of entities that went quiet (wall clock), so dashboards do not wait
for the next reading. Windows are plain table entries with our own bookkeeping, not Faust's
windowed tables (faust-streaming issues 193, 250, 385).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import functools
import gc
import logging
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import TP, TableT
from pydantic import TypeAdapter

from citystream.settings import Settings
from models import kinds
from models.city import City
from models.readings import BaseReading
from models.records import Kpi, PipelineCounters, record_to_json
from streams.kpi.alerts import AlertRules, AlertSettings
from streams.kpi.engine import KindEngine, engines_for
from streams.mqtt_alerts import AlertPublisher
from streams.offsets import (
    APPLIED_PREFIX,
    KafkaRangeReader,
    RangeReader,
    catch_up,
    mark_applied,
    rewind_to,
)

log = logging.getLogger(__name__)


class TableStore(MutableMapping[str, bytes]):
    """A Faust table with bytes keys seen as a `str -> bytes` store for the engine."""

    def __init__(self, table: TableT[bytes, bytes]) -> None:
        self.table = table

    def __getitem__(self, key: str) -> bytes:
        value = self.table.get(key.encode())
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.table.get(key.encode())
        return default if value is None else bytes(value)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self.table)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.encode() in self.table

    def __len__(self) -> int:
        return len(self.table)

    def get_outside_event(self, key: str) -> bytes | None:
        """Read a key from a timer (see `no_current_event`)."""
        with no_current_event():
            value = self.table.get(key.encode())
        return None if value is None else bytes(value)

    def items_outside_event(self) -> list[tuple[str, bytes]]:
        """Every key and value of the partitions this worker owns, from a timer."""
        with no_current_event():
            return [(k.decode(), bytes(v)) for k, v in self.table.items()]


@contextlib.contextmanager
def no_current_event() -> Iterator[None]:
    """Faust's RocksDB store reads only the partition of the current event when there is one,
    and a timer task can see a stale one (an event of another, maybe revoked, partition): then
    a read finds nothing, or old data. Without one it looks in every partition it holds."""
    token = _current_event.set(None)
    try:
        yield
    finally:
        _current_event.reset(token)


def _partition_of(where: bytes) -> int | None:
    """The source partition recorded for an entity (`p<n>`; older values say nothing)."""
    return int(where[1:]) if where[:1] == b"p" and where[1:].isdigit() else None


@dataclass
class WorkerOptions:
    """How the worker runs; see `citystream worker --help`."""

    instance: str = "0"
    data_dir: Path = Path("~/.local/state/citystream/worker")
    store: str = "rocksdb://"
    quiet_s: float = 10.0
    timer_interval_s: float = 2.0
    counters_interval_s: float = 5.0
    commit_interval_s: float = 1.0
    session_timeout_s: float = 30.0
    rewind_check_s: float = 5.0
    rewind_idle_s: float = 30.0
    table_memory_mb: float = 4.0


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the memory of closed table partitions and finished recoveries back to the OS.

    glibc keeps freed heap pages in the process: after a rebalance took partitions away (and
    Faust closed their RocksDB instances) a worker's RSS stayed at its high-water mark (a soak
    saw +40 MB per takeover). Called after every rebalance; a no-op where libc is not glibc."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def rocksdb_options(table_memory_mb: float) -> dict[str, int]:
    """RocksDB options for one table partition within `table_memory_mb`: two memtables of a
    quarter each, a block cache of half.

    Faust opens one RocksDB per table partition (here 2 tables per kind x 4 kinds x the
    partitions a worker owns) and its defaults allow each 3 memtables of 64 MiB and a 2 GiB
    block cache: a worker's RSS then grows with every write until those fill, gigabytes in
    all (the soak found it as a steady climb)."""
    size = int(table_memory_mb * 2**20)
    return {"write_buffer_size": max(size // 4, 64 * 1024), "max_write_buffer_number": 2,
            "block_cache_size": max(size // 2, 64 * 1024)}


@dataclass
class WorkerCounters:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: int = 0
    emitted: int = 0
    caught_up: int = 0
    rewinds: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def worker_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic the worker reads or writes, with its config: created before Faust starts,
    so the changelog topics exist with the source topics' partition count (Faust otherwise
    races its own metadata and fails with PartitionsMismatch on a fresh cluster)."""
    topics = settings.kafka.topics
    app_id = f"{settings.kafka.topic_prefix}citystream-worker"
    plain: dict[str, str] = {}
    out = {t: plain for t in [*topics.telemetry.values(), topics.kpi_records,
                              topics.pipeline_counters, topics.sink_deadletter]}
    for kind in topics.telemetry:
        for table in ("entities", "state"):
            out[f"{app_id}-{kind}-{table}-changelog"] = {"cleanup.policy": "compact"}
    return out


@functools.lru_cache(maxsize=256)
def _record_adapter(model: type[BaseReading]) -> TypeAdapter[list[BaseReading]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def decode_record(kind: str, value: bytes) -> list[BaseReading]:
    """The readings of a `telemetry.<kind>` record (a JSON array), validated again: the topic
    may hold records that did not come from our ingest."""
    model = kinds.reading_type(kind)
    if model is None:
        raise ValueError(f"{kind!r} is not a registered kind")
    return _record_adapter(model).validate_json(value)


def create_app(settings: Settings, city: City, options: WorkerOptions, *,
               with_sink: bool = True) -> faust.App:
    """Build the Faust app with one agent and two tables per reading kind."""
    data_dir = options.data_dir.expanduser() / options.instance
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.kafka.topic_prefix}citystream-worker",
        broker=f"kafka://{settings.kafka.bootstrap.replace(',', ';kafka://')}",
        store=options.store,
        datadir=str(data_dir),
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        producer_acks=-1,
        broker_commit_interval=options.commit_interval_s,
        broker_session_timeout=options.session_timeout_s,
        broker_heartbeat_interval=max(1.0, options.session_timeout_s / 10),
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
    )
    engines = engines_for(city, rules=AlertRules(AlertSettings(timezone=city.timezone)))
    alert_publisher = AlertPublisher(settings.mqtt, f"citystream-worker-{options.instance}")
    counters = WorkerCounters()
    topics = settings.kafka.topics
    kpi_topic = app.topic(topics.kpi_records, key_type=bytes, value_type=bytes,
                          partitions=settings.kafka.partitions)
    counters_topic = app.topic(topics.pipeline_counters, key_type=bytes, value_type=bytes)
    deadletters = app.topic(topics.sink_deadletter, key_type=bytes, value_type=bytes)
    activity: dict[tuple[str, str], float] = {}
    timer_done: dict[tuple[str, str], int] = {}
    stores: dict[str, tuple[TableStore, TableStore]] = {}  # kind -> (entities, state)
    reader = KafkaRangeReader(settings.kafka.bootstrap)
    seen: dict[tuple[str, int], float] = {}  # (topic, partition) -> last record (monotonic)

    def key_of(record: Kpi) -> bytes:
        return "/".join([record.measurement, *record.tags().values()]).encode()

    store_options = (rocksdb_options(options.table_memory_mb)
                     if options.store.startswith("rocksdb") else None)
    for kind, engine in engines.items():
        entities = TableStore(app.Table(f"{kind}-entities", key_type=bytes, value_type=bytes,
                                        partitions=settings.kafka.partitions,
                                        options=store_options))
        state = TableStore(app.Table(f"{kind}-state", key_type=bytes, value_type=bytes,
                                     partitions=settings.kafka.partitions,
                                     options=store_options))
        stores[kind] = (entities, state)
        source = app.topic(topics.telemetry[kind], key_type=bytes, value_type=bytes,
                           partitions=settings.kafka.partitions)
        _make_agent(app, kind, engine, source, entities, state, kpi_topic, counters, activity,
                    key_of, alert_publisher, deadletters, reader, seen)

    source_kinds = {topics.telemetry[kind]: kind for kind in engines}

    @app.on_partitions_revoked.connect
    async def forget_cached_entities(sender: Any, /, *args: Any, signal: Any, **kwargs: Any,
                                     ) -> None:
        """The entities of revoked partitions are another worker's now: drop the engines'
        caches (those of kept partitions are read back from the tables when next needed)."""
        revoked: set[TP] = args[0] if args else set()
        if any(tp.topic in source_kinds for tp in revoked):
            for engine in engines.values():
                engine.forget_all()

    @app.on_partitions_assigned.connect
    async def release_memory_after_rebalance(sender: Any, /, *args: Any, signal: Any,
                                             **kwargs: Any) -> None:
        """Faust has closed the table partitions of this rebalance's revocations by now."""
        release_freed_memory()

    @app.on_rebalance_complete.connect
    async def release_memory_after_recovery(sender: Any, /, *args: Any, signal: Any,
                                            **kwargs: Any) -> None:
        """Table recovery from the changelogs is over: its buffers are garbage now."""
        release_freed_memory()

    def settled() -> bool:
        """No rebalance or table recovery under way: the assignment is what it says."""
        return (not app.rebalancing and not app.in_recovery
                and app.flow_control.is_active())

    @app.timer(interval=options.timer_interval_s)
    async def close_quiet_windows() -> None:
        """Emit the open windows of entities that went quiet. Only for partitions this worker
        owns, and never across a rebalance: a worker that lost a partition would otherwise
        send windows from its stale state after the new owner sent the true ones."""
        if not settled():
            return
        generation = app.consumer_generation_id
        owned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
        now = time.monotonic()
        for kind, engine in engines.items():
            entities, state = stores[kind]
            topic = topics.telemetry[kind]
            for entity, where in entities.items_outside_event():
                partition = _partition_of(where)
                if partition is not None and (topic, partition) not in owned:
                    continue
                key = (kind, entity)
                if now - activity.setdefault(key, now) < options.quiet_s:
                    continue
                with no_current_event():
                    version = engine.version(entity, state)
                    if version is None or timer_done.get(key) == version:
                        continue
                    records = engine.due(entity, state)
                for record in records:
                    if app.consumer_generation_id != generation or not settled():
                        return
                    await kpi_topic.send(key=key_of(record), value=record_to_json(record),
                                         force=True)
                    counters.emitted += 1
                timer_done[key] = version

    @app.timer(interval=options.rewind_check_s)
    async def rewind_skipped_tails() -> None:
        """Records skipped with nothing after them are never caught up by the agent (it
        notices a gap at the next record): rewind the consumer of a partition that has been
        idle with records after the applied offset."""
        if app.rebalancing or app.in_recovery or not app.flow_control.is_active():
            return
        tps = [tp for tp in app.consumer.assignment() if tp.topic in source_kinds]
        if not tps:
            return
        now = time.monotonic()
        idle = [tp for tp in tps if now - seen.setdefault((tp.topic, tp.partition), now)
                >= options.rewind_idle_s]
        if not idle:
            return
        ends = await app.consumer.highwaters(*idle)
        firsts = await app.consumer.earliest_offsets(*idle)
        for tp in idle:
            state = stores[source_kinds[tp.topic]][1]
            value = state.get_outside_event(f"{APPLIED_PREFIX}{tp.partition}")
            applied = None if value is None else int(value)
            target = rewind_to(applied, firsts.get(tp) or 0, ends.get(tp) or 0)
            if target is None:
                continue
            log.warning("%s[%d]: records %d-%d were never delivered to the agent (last applied: "
                        "%s) and nothing came after them; rewinding the consumer to %d",
                        tp.topic, tp.partition, target, ends[tp] - 1, applied, target)
            seen[(tp.topic, tp.partition)] = now
            counters.rewinds += 1
            await app.consumer.seek_wait({tp: target})

    @app.task
    async def start_alert_publisher() -> None:
        logging.getLogger("streams").setLevel(logging.INFO)
        alert_publisher.start()
        log.info("worker %s running; Ctrl-C or SIGTERM stops it", options.instance)

    sinks: list[Any] = []
    if with_sink:

        @app.task
        async def sink() -> None:
            from streams.sink import InfluxSink, serve

            sinks.append(InfluxSink.from_settings(settings))
            await serve(sinks[-1], asyncio.Event())

    @app.timer(interval=options.counters_interval_s)
    async def publish_counters() -> None:
        record = PipelineCounters(component="worker", instance=options.instance,
                                  ts_ms=int(time.time() * 1000), received=counters.received,
                                  accepted=counters.accepted, rejected=counters.rejected,
                                  late=counters.late, duplicates=counters.duplicates,
                                  written=sum(s.counters()["written"] for s in sinks))
        await counters_topic.send(key=f"worker/{options.instance}".encode(),
                                  value=record_to_json(record), force=True)
        log.info("worker %s: %d readings received, %d accepted, %d duplicates, %d late, "
                 "%d rejected, %d KPI records emitted, %d points written, %d skipped records "
                 "caught up, %d rewinds", options.instance, counters.received,
                 counters.accepted, counters.duplicates, counters.late, counters.rejected,
                 counters.emitted, record.written, counters.caught_up, counters.rewinds)

    async def close_reader(sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        await reader.close()

    app.on_before_shutdown.connect(close_reader)

    return app


def _make_agent(app: faust.App, kind: str, engine: KindEngine, source: faust.TopicT,
                entities: TableStore, state: TableStore, kpi_topic: faust.TopicT,
                counters: WorkerCounters, activity: dict[tuple[str, str], float],
                key_of: Any, alerts: AlertPublisher, deadletters: faust.TopicT,
                reader: RangeReader, seen: dict[tuple[str, int], float]) -> None:
    async def dead_letter(topic: str, partition: int, offset: int, value: bytes, reason: str,
                          exc: Exception) -> None:
        """Keep a record the engine could not take on `sink.deadletter`, with the reason (the
        engine's state is unchanged by it: the engine forgets a batch that raised)."""
        log.error("%s record on %s[%s]@%s, kept on %s: %r", reason, topic, partition, offset,
                  deadletters.get_topic_name(), exc)
        await deadletters.send(key=topic.encode(), value=orjson.dumps({
            "reason": reason, "detail": repr(exc)[:500], "topic": topic,
            "partition": partition, "offset": offset,
            "received_at_ms": int(time.time() * 1000),
            "raw": base64.b64encode(value).decode()}))

    async def apply(topic: str, partition: int, offset: int, value: bytes) -> None:
        """Apply one `telemetry.<kind>` record (or dead-letter it) and mark it applied."""
        try:
            readings = decode_record(kind, value)
        except Exception as exc:  # not from our ingest: count it, never crash the agent
            counters.rejected += 1
            await dead_letter(topic, partition, offset, value, "undecodable", exc)
            mark_applied(state, partition, offset)
            return
        counters.received += len(readings)
        try:
            outcome = engine.process(readings, state, offset=offset)
        except Exception as exc:  # a bug must not stop the kind: keep the record, go on
            counters.rejected += len(readings)
            await dead_letter(topic, partition, offset, value, "engine_error", exc)
            mark_applied(state, partition, offset)
            return
        mark_applied(state, partition, offset)
        counters.accepted += outcome.accepted
        counters.duplicates += outcome.duplicates
        counters.late += outcome.late + outcome.beyond_horizon
        now = time.monotonic()
        where = f"p{partition}".encode()
        for entity in {engine.entity(reading) for reading in readings}:
            activity[(kind, entity)] = now
            if entities.get(entity) != where:
                entities[entity] = where
        for record in [*outcome.records, *outcome.alerts]:
            await kpi_topic.send(key=key_of(record), value=record_to_json(record))
        counters.emitted += len(outcome.records)
        for alert in outcome.alerts:
            alerts.publish(alert)

    async def agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            seen[(msg.topic, msg.partition)] = time.monotonic()

            async def skipped(offset: int, value: bytes, msg: Any = msg) -> None:
                await apply(msg.topic, msg.partition, offset, value)

            counters.caught_up += await catch_up(state, reader, msg.topic, msg.partition,
                                                 msg.offset, skipped)
            await apply(msg.topic, msg.partition, msg.offset, event.value)

    agent.__name__ = agent.__qualname__ = f"{kind}_kpis"
    app.agent(source, name=f"citystream.{kind}_kpis", concurrency=1)(agent)

