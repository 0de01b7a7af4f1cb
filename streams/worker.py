"""The worker as an object: `Worker` holds what the agents, timers and rebalance hooks share,
and Faust calls its methods (streams/app.py builds the Faust app and says which calls which).

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

The worker reaches Faust only through `Host` (its tables, topics and consumer) and its other
collaborators (engines, alert publisher, range reader, clock, memory release) are constructor
arguments with production defaults, so tests build it with fakes. This module imports Faust
only when a timer first reads a table: `citystream --help` imports `WorkerOptions` from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from kpi.alerts import AlertRules, AlertSettings
from kpi.engine import Held
from kpi.quality import add_rejected, rejected_hour
from models import kinds
from models.city import City
from models.deadletter import DeadLetter, sink_dead_letter
from models.quality import HOUR_MS, SensorQuality
from models.readings import BaseReading
from models.records import Alert, Kpi, PipelineCounters, Record, record_to_json
from models.settings import Settings
from streams.lease import restart_in_place
from streams.mqtt_alerts import AlertPublisher
from streams.offsets import (
    APPLIED_PREFIX,
    KafkaRangeReader,
    OffsetLookupError,
    RangeReader,
    catch_up,
    mark_applied,
    rewind_to,
)

if TYPE_CHECKING:
    from faust.types import TP

    from kpi.engine import Outcome
    from streams.sink import InfluxSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flag:
    """How a `WorkerOptions` field appears on `citystream worker`: its flag, help and lower
    bound. The env var is `CITYSTREAM_WORKER_<FIELD NAME>`."""

    name: str
    help: str
    min: float | None = None


def _flag(name: str, help: str, *, min: float | None = None) -> dict[str, Flag]:
    return {"flag": Flag(name, help, min)}


@dataclass
class WorkerOptions:
    """How the worker runs, and the one place of every option's default. The fields with a
    `Flag` in their metadata are the options of `citystream worker` (streams/cli.py)."""

    instance: str = field(default="0", metadata=_flag(
        "--instance", "Name of this worker; keeps its state directory apart."))
    data_dir: Path = field(default=Path("~/.local/state/citystream/worker"), metadata=_flag(
        "--data-dir", "Where the RocksDB table stores live (one sub-directory per instance)."))
    store: str = field(default="rocksdb://", metadata=_flag(
        "--store", "Faust table store: rocksdb:// (durable, fast restarts) or memory:// "
                   "(state rebuilt from the changelog at every start)."))
    quiet_s: float = field(default=10.0, metadata=_flag(
        "--quiet", "Seconds without readings after which an entity's open windows are "
                   "written anyway (wall-clock close)."))
    sink: bool = field(default=True, metadata=_flag(
        "--sink/--no-sink", "Also run the InfluxDB sink (KPIs, alerts, raw readings, "
                            "counters)."))
    session_timeout_s: float = field(default=30.0, metadata=_flag(
        "--session-timeout", "Seconds before Kafka gives a silent worker's partitions to the "
                             "others; also how long a send may wait for Kafka's answer "
                             "before the worker restarts in place.", min=3))
    table_memory_mb: float = field(default=4.0, metadata=_flag(
        "--table-memory-mb", "RocksDB memory per table partition (memtables and block cache). "
                             "A worker opens 8 x the partitions it owns (8 tables); all 8 "
                             "partitions: 64 x this.", min=0.25))
    standby_replicas: int = field(default=0, metadata=_flag(
        "--standby-replicas", "Other workers that keep a copy of each table partition up to "
                              "date from its changelog, so a worker taking a partition over "
                              "replays only its tail (costs their CPU and memory).", min=0))
    timer_interval_s: float = 2.0  # how often the quiet windows are looked for
    counters_interval_s: float = 5.0  # how often `pipeline` counters are published and logged
    commit_interval_s: float = 1.0  # Faust's offset commit interval
    rewind_check_s: float = 5.0  # how often idle partitions are looked at
    rewind_idle_s: float = 30.0  # idle this long, a partition is checked for skipped records
    rewinds_before_restart: int = 3  # rewinds in a row that delivered nothing, then a restart
    recovery_check_s: float = 5.0  # how often a stalled table recovery is looked for
    recovery_stall_s: float = 120.0  # a changelog partition silent this long in recovery:
    # restart (longer than the consumer's 90 s request timeout, which a fetch from a broker
    # that is cut off but still running waits out before the partition moves)
    lease_check_s: float = 0.25  # how often a lapsed group lease is looked for

    @property
    def state_dir(self) -> Path:
        """`<data_dir>/<instance>`: this worker's local table stores."""
        return self.data_dir.expanduser() / self.instance


CLEAN_MARK = ".clean-shutdown"
PREFIX_MARK = ".changelog-prefix"
"""Marks a state directory whose stores hold only what their changelogs have (streams/store.py);
stores written before that may hold writes the changelog never got."""
REJECTED_TABLE = "quality-rejected"
"""The table of `rejected` counts: `<kind>|<district>|<sensor_id>` -> its last 48 hours."""


def recover_state_dir(options: WorkerOptions) -> None:
    """The crash-recovery rule. Called once at start, before the Faust app is built, with
    `mark_clean_shutdown` called when the worker has stopped.

    The stores are kept after any stop: each is a prefix of its changelog (streams/store.py),
    and Faust replays the rest. Only a directory written by an earlier version (no
    `.changelog-prefix` mark) that did not stop cleanly (no `.clean-shutdown` mark) may hold
    writes that never reached the changelog: it is deleted and Faust rebuilds the tables from
    the changelogs. On return the directory exists with the prefix mark and without the clean
    mark, so that an earlier version started on it after a crash of this run rebuilds."""
    state_dir = options.state_dir
    clean_mark, prefix_mark = state_dir / CLEAN_MARK, state_dir / PREFIX_MARK
    crashed = state_dir.exists() and not clean_mark.exists() and any(state_dir.iterdir())
    if crashed and not prefix_mark.exists():
        log.warning("worker %s did not shut down cleanly and its stores may hold what their "
                    "changelogs lack (written by an earlier version, or found ahead of a "
                    "recreated changelog): rebuilding its state from the Kafka changelogs",
                    options.instance)
        shutil.rmtree(state_dir)
    elif crashed:
        log.warning("worker %s did not shut down cleanly: keeping its stores, which hold only "
                    "what the changelogs have; Faust replays the changelogs past them",
                    options.instance)
    state_dir.mkdir(parents=True, exist_ok=True)
    prefix_mark.touch()
    clean_mark.unlink(missing_ok=True)


def mark_clean_shutdown(options: WorkerOptions) -> None:
    """Called when the Faust worker has returned or raised (never after a kill -9): Faust
    stopped its tables in order, so an earlier version started next keeps the stores too. The
    prefix mark goes: that version's writes could get ahead of the changelog."""
    if options.state_dir.exists():
        (options.state_dir / CLEAN_MARK).touch()
        (options.state_dir / PREFIX_MARK).unlink(missing_ok=True)


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


class Output(Protocol):
    """A Kafka topic the worker sends to."""

    async def send(self, *, key: bytes, value: bytes, force: bool = False) -> Any:
        """Send one record. Inside an agent's event, unless `force`, the record is attached to
        the event's offset: published before that offset is committed."""
        ...


class Host(Protocol):
    """The stream processor the worker runs in, as the worker sees it: Faust in production
    (`streams.app.FaustHost`), a fake in tests."""

    def table(self, name: str) -> MutableMapping[bytes, bytes]:
        """A changelog-backed table partitioned like the source topics; called while the worker
        is built."""
        ...

    def topic(self, name: str, *, partitions: int | None = None) -> Output:
        """A topic to send to; called while the worker is built."""
        ...

    def settled(self) -> bool:
        """No rebalance or table recovery under way, the consumer not paused and the app not
        stopping: the assignment is what it says."""
        ...

    def generation(self) -> int:
        """The consumer group generation; it changes with every rebalance."""
        ...

    def lease_lapsed_s(self) -> float | None:
        """Seconds since the group coordinator last answered this worker, once that is long
        enough that the group may have given its partitions to another (streams/lease.py);
        else None."""
        ...

    def undelivered(self) -> int:
        """Records sent (or written to a table) that Kafka has not acknowledged yet."""
        ...

    def assignment(self) -> set[TP]:
        """The partitions this worker consumes now."""
        ...

    async def highwaters(self, tps: list[TP]) -> Mapping[TP, int]:
        """The offset after each partition's newest record; `OffsetLookupError` when Kafka
        does not answer."""
        ...

    async def earliest_offsets(self, tps: list[TP]) -> Mapping[TP, int]:
        """The offset of each partition's oldest record; `OffsetLookupError` when Kafka does
        not answer."""
        ...

    async def seek(self, tp: TP, offset: int) -> None:
        """Make the consumer deliver `tp` again from `offset`."""
        ...

    def fetch_state(self, tp: TP) -> str:
        """How the consumer holds `tp` (paused, fetching, its position), for the log."""
        ...

    def consumer_state(self) -> str:
        """The consumer's fetching as a whole (requests in flight, pending work), for the
        log."""
        ...

    def recovery_waiting(self) -> Mapping[TP, float]:
        """The changelog partitions the table recovery under way still needs records from,
        each with the seconds since it last delivered one to the recovery (or since the
        recovery started); empty when no recovery is under way."""
        ...

    def table_memory(self) -> TableMemory:
        """What the open table partitions hold in memory, by their stores' own accounting;
        called with the counters (an error is logged, never raised to the app)."""
        ...


@dataclass(frozen=True)
class TableMemory:
    """Bytes the table stores hold in memory (RocksDB's properties; 0 for memory:// stores):
    memtables and block cache are bounded by `--table-memory-mb` per partition, the readers'
    index and filter blocks grow with the data on disk."""

    partitions: int = 0
    memtables: int = 0
    block_cache: int = 0
    readers: int = 0

    @property
    def total(self) -> int:
        return self.memtables + self.block_cache + self.readers


def process_rss() -> int:
    """This process's resident memory in bytes (0 where /proc is not there)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class Engine(Protocol):
    """What the worker calls on a kind's KPI engine (`kpi.engine.KindEngine`)."""

    def entity(self, reading: Any) -> str: ...

    def process(self, readings: Iterable[BaseReading], store: MutableMapping[str, bytes],
                offset: int | None = None) -> Outcome: ...

    def version(self, entity: str, store: MutableMapping[str, bytes]) -> int | None: ...

    def due(self, entity: str, store: MutableMapping[str, bytes]) -> list[Kpi]: ...

    def forget_all(self) -> None: ...

    def held(self) -> Held: ...


class Alerts(Protocol):
    """Where alert transitions go besides `kpi.records` (MQTT: `AlertPublisher`)."""

    def start(self) -> None: ...

    def publish(self, alert: Alert) -> None: ...


class Reader(RangeReader, Protocol):
    """A `RangeReader` the worker closes when it shuts down."""

    async def close(self) -> None: ...


class TableStore(MutableMapping[str, bytes]):
    """A table with bytes keys (a Faust table; a dict in tests) seen as a `str -> bytes` store
    for the engine."""

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
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
    from faust.streams import _current_event

    token = _current_event.set(None)
    try:
        yield
    finally:
        _current_event.reset(token)


@dataclass(frozen=True)
class KindTables:
    """A kind's source topic and tables: `entities` (entity -> `p<source partition>`) and the
    engine's `state`."""

    topic: str
    entities: TableStore
    state: TableStore


def _partition_of(where: bytes) -> int | None:
    """The source partition recorded for an entity (`p<n>`; older values say nothing)."""
    return int(where[1:]) if where[:1] == b"p" and where[1:].isdigit() else None


def _key_of(record: Record) -> bytes:
    return "/".join([record.measurement, *record.tags().values()]).encode()


def decode_record(kind: str, value: bytes) -> list[BaseReading]:
    """The readings of a `telemetry.<kind>` record (a JSON array), validated again: the topic
    may hold records that did not come from our ingest."""
    model = kinds.reading_type(kind)
    if model is None:
        raise ValueError(f"{kind!r} is not a registered kind")
    return kinds.list_adapter(model).validate_json(value)


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


class Worker:
    """The KPI worker: one engine and two tables per reading kind, the counters, and the
    bookkeeping its timers share with its agents. Built once per process, before Faust starts;
    the constructor opens nothing (the alert publisher starts in `start`)."""

    def __init__(self, settings: Settings, city: City, options: WorkerOptions, host: Host, *,
                 engines: Mapping[str, Engine] | None = None, alerts: Alerts | None = None,
                 reader: Reader | None = None,
                 release_memory: Callable[[], None] = release_freed_memory,
                 restart: Callable[[str], NoReturn] = restart_in_place,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.options = options
        self.host = host
        self.engines: Mapping[str, Engine] = engines if engines is not None else kinds.engines_for(
            city, rules=AlertRules(AlertSettings(
                timezone=city.timezone, quality_min_score=settings.quality.min_score,
                quality_alert_hours=settings.quality.alert_hours)))
        self.horizon_ms = city.windows.horizon_s * 1000
        self.alerts: Alerts = alerts if alerts is not None else AlertPublisher(
            settings.mqtt, f"citystream-worker-{options.instance}")
        self.reader: Reader = reader if reader is not None else KafkaRangeReader(
            settings.kafka.bootstrap)
        self.release_memory = release_memory
        self.restart = restart
        self.clock = clock
        self.answering_since: float | None = None  # since when the group lease held
        self.counters = WorkerCounters()
        topics = settings.kafka.topics
        self.kpi_topic = host.topic(topics.kpi_records, partitions=settings.kafka.partitions)
        self.counters_topic = host.topic(topics.pipeline_counters)
        self.deadletters = host.topic(topics.sink_deadletter)
        self.tables = {kind: KindTables(topics.telemetry[kind],
                                        TableStore(host.table(f"{kind}-entities")),
                                        TableStore(host.table(f"{kind}-state")))
                       for kind in self.engines}
        self.kind_of_topic = {tables.topic: kind for kind, tables in self.tables.items()}
        self.rejected = TableStore(host.table(REJECTED_TABLE))
        self.activity: dict[tuple[str, str], float] = {}  # (kind, entity) -> last reading
        self.timer_done: dict[tuple[str, str], int] = {}  # (kind, entity) -> version closed
        self.seen: dict[tuple[str, int], float] = {}  # (topic, partition) -> last record
        # (topic, partition) -> (applied offset, when records after it were first seen in Kafka)
        self.pending: dict[tuple[str, int], tuple[int | None, float]] = {}
        self.pending_generation: int | None = None
        # (topic, partition) -> (applied offset when last rewound, rewinds in a row since,
        # readings received when the first of them was made)
        self.rewound: dict[tuple[str, int], tuple[int | None, int, int]] = {}
        self.sinks: list[InfluxSink] = []

    # -- agents ------------------------------------------------------------------------------

    async def handle(self, kind: str, topic: str, partition: int, offset: int,
                     value: bytes) -> None:
        """Called by the kind's agent with every record, in partition order. Applies first the
        records between the partition's last applied offset and this one that never reached
        the agent (read back from Kafka), then this one: each record is applied once."""
        self.restart_if_cut_off("a record arrived")
        self.seen[(topic, partition)] = self.clock()
        self.counters.caught_up += await catch_up(
            self.tables[kind].state, self.reader, topic, partition, offset,
            functools.partial(self.apply, kind, topic, partition))
        await self.apply(kind, topic, partition, offset, value)

    async def apply(self, kind: str, topic: str, partition: int, offset: int,
                    value: bytes) -> None:
        """Apply one `telemetry.<kind>` record (or dead-letter it) and mark it applied."""
        engine, tables = self.engines[kind], self.tables[kind]
        try:
            readings = decode_record(kind, value)
        except Exception as exc:  # not from our ingest: count it, never crash the agent
            self.counters.rejected += 1
            await self.dead_letter(topic, partition, offset, value, "undecodable", exc)
            mark_applied(tables.state, partition, offset)
            return
        self.counters.received += len(readings)
        try:
            outcome = engine.process(readings, tables.state, offset=offset)
        except Exception as exc:  # a bug must not stop the kind: keep the record, go on
            self.counters.rejected += len(readings)
            await self.dead_letter(topic, partition, offset, value, "engine_error", exc)
            mark_applied(tables.state, partition, offset)
            return
        try:
            mark_applied(tables.state, partition, offset)
            self.counters.accepted += outcome.accepted
            self.counters.duplicates += outcome.duplicates
            self.counters.late += outcome.late + outcome.beyond_horizon
            now = self.clock()
            where = f"p{partition}".encode()
            for entity in {engine.entity(reading) for reading in readings}:
                self.activity[(kind, entity)] = now
                if tables.entities.get(entity) != where:
                    tables.entities[entity] = where
            for record in [*outcome.records, *outcome.quality, *outcome.alerts]:
                await self.kpi_topic.send(key=_key_of(record), value=record_to_json(record))
        except BaseException:
            engine.forget_all()  # what it sent again for a redelivered record may not have left
            raise
        self.counters.emitted += len(outcome.records) + len(outcome.quality)
        for alert in outcome.alerts:
            self.alerts.publish(alert)

    async def count_rejected(self, offset: int, value: bytes) -> None:
        """Called by the dead-letter agent with every record of ingest's `telemetry.deadletter`,
        in partition order (a topic's letters share a partition). A letter whose topic names a
        sensor of a registered kind adds one to that sensor's `rejected` in its hour
        (`kpi.quality.rejected_hour`); the hour's count goes to `kpi.records` as a
        `sensor_quality` point with only `rejected`. Counted once per letter; a redelivered
        letter sends the count again."""
        self.restart_if_cut_off("a dead letter arrived")
        try:
            letter = DeadLetter.from_json(value)
        except Exception:  # not ingest's: nothing to attribute
            return
        where = kinds.parse_topic(letter.topic)
        if where is None:
            return
        district, kind, sensor_id = where
        key = f"{kind}|{district}|{sensor_id}"
        hour = rejected_hour(letter.raw, letter.received_at_ms, self.horizon_ms)
        stored, count = add_rejected(self.rejected.get(key), offset, hour)
        if stored is not None:
            self.rejected[key] = stored
        record = SensorQuality(kind=kind, district=district, sensor_id=sensor_id,
                               hour_end_ms=hour + HOUR_MS, rejected=count)
        await self.kpi_topic.send(key=_key_of(record), value=record_to_json(record))

    async def dead_letter(self, topic: str, partition: int, offset: int, value: bytes,
                          reason: str, exc: Exception) -> None:
        """Keep a record the engine could not take on `sink.deadletter`, with the reason (the
        engine's state is unchanged by it: the engine forgets a batch that raised)."""
        log.error("%s record on %s[%s]@%s, kept on %s: %r", reason, topic, partition, offset,
                  self.settings.kafka.topics.sink_deadletter, exc)
        await self.deadletters.send(key=topic.encode(), value=sink_dead_letter(
            reason, repr(exc)[:500], topic, partition, offset, raw=value))

    # -- timers ------------------------------------------------------------------------------

    async def close_quiet_windows(self) -> None:
        """Called by a timer every `timer_interval_s`: emit the open windows of entities quiet
        for `quiet_s`, once per change of the entity. Only for partitions this worker owns,
        and never across a rebalance: a worker that lost a partition would otherwise send
        windows from its stale state after the new owner sent the true ones, nor while it is cut
        off its group (when an entity only looks quiet)."""
        if not self.host.settled() or self.host.lease_lapsed_s() is not None:
            return
        generation = self.host.generation()
        owned = {(tp.topic, tp.partition) for tp in self.host.assignment()}
        now = self.clock()
        for kind, engine in self.engines.items():
            tables = self.tables[kind]
            for entity, where in tables.entities.items_outside_event():
                partition = _partition_of(where)
                if partition is not None and (tables.topic, partition) not in owned:
                    continue
                key = (kind, entity)
                if now - self.activity.setdefault(key, now) < self.options.quiet_s:
                    continue
                with no_current_event():
                    version = engine.version(entity, tables.state)
                    if version is None or self.timer_done.get(key) == version:
                        continue
                    records = engine.due(entity, tables.state)
                for record in records:
                    if (self.host.generation() != generation or not self.host.settled()
                            or self.host.lease_lapsed_s() is not None):
                        return
                    await self.kpi_topic.send(key=_key_of(record), value=record_to_json(record),
                                              force=True)
                    self.counters.emitted += 1
                self.timer_done[key] = version

    async def rewind_skipped_tails(self) -> None:
        """Called by a timer every `rewind_check_s`. Records skipped with nothing after them
        are never caught up by `handle` (it notices a gap at the next record): rewind the
        consumer of a partition with records after the applied offset that Faust has not
        delivered for `rewind_idle_s`: the agent got nothing from it for that long, and those
        records have been in Kafka, with the applied offset unchanged, for that long too.

        The second clock starts when the records are first seen past the applied offset, not
        at the partition's last delivery: a partition quiet for longer (a cut ingest, a sparse
        sensor) would otherwise be rewound as soon as its next record reached Kafka, while
        Faust still held it in its stream buffer. The seek resets Faust's read offset, so the
        buffered copy and the fetched one would both reach the agent (counted twice). Nothing
        is sought once the group has rebalanced or the app is stopping (its tables then read
        as empty: a seek to the partition's first record).

        A seek cannot help a partition the consumer does not fetch at all (faust-streaming
        leaves one unfetched after some rebalances, its issue 629): after
        `rewinds_before_restart` rewinds in a row with nothing applied since, the worker
        restarts in place rather than stall the partition until the next rebalance; only while
        other partitions delivered readings meanwhile (a worker that gets nothing at all is
        slow or blocked, which a restart does not cure)."""
        if not self.host.settled():
            return
        generation = self.host.generation()
        if generation != self.pending_generation:
            self.pending.clear()
            self.rewound.clear()
            self.pending_generation = generation
        tps = [tp for tp in self.host.assignment() if tp.topic in self.kind_of_topic]
        if not tps:
            self.pending.clear()
            return
        try:
            ends = await self.host.highwaters(tps)
            firsts = await self.host.earliest_offsets(tps)
        except OffsetLookupError as exc:  # a broker down or cut off: the next round asks again
            log.warning("worker %s: no rewind check this round: %s", self.options.instance, exc)
            return
        now = self.clock()
        owned = {(tp.topic, tp.partition) for tp in tps}
        for by_partition in (self.pending, self.rewound):
            for key in [key for key in by_partition if key not in owned]:
                del by_partition[key]
        for tp in tps:
            if not self.host.settled() or self.host.generation() != generation:
                return
            key = (tp.topic, tp.partition)
            state = self.tables[self.kind_of_topic[tp.topic]].state
            value = state.get_outside_event(f"{APPLIED_PREFIX}{tp.partition}")
            applied = None if value is None else int(value)
            target = rewind_to(applied, firsts.get(tp) or 0, ends.get(tp) or 0)
            if target is None:
                self.pending.pop(key, None)
                self.rewound.pop(key, None)
                continue
            was_applied, since = self.pending.get(key, (None, None))
            if since is None or was_applied != applied:
                self.pending[key] = (applied, now)
                since = now
            if (now - since < self.options.rewind_idle_s
                    or now - self.seen.setdefault(key, since) < self.options.rewind_idle_s):
                continue
            was_rewound_at, in_a_row, received = self.rewound.get(key, (None, 0, 0))
            if not in_a_row or was_rewound_at != applied:
                in_a_row, received = 0, self.counters.received
            in_a_row += 1
            if (in_a_row > self.options.rewinds_before_restart
                    and self.counters.received > received):
                self.restart(f"worker {self.options.instance}: {tp.topic}[{tp.partition}]: "
                             f"{in_a_row - 1} rewinds to {target} delivered nothing (consumer: "
                             f"{self.host.fetch_state(tp)}); the consumer is not fetching the "
                             "partition")
            log.warning("%s[%d]: records %d-%d were never delivered to the agent (last applied: "
                        "%s) and nothing came after them; rewinding the consumer to %d (rewind "
                        "%d in a row; consumer: %s)", tp.topic, tp.partition, target,
                        ends[tp] - 1, applied, target, in_a_row, self.host.fetch_state(tp))
            self.rewound[key] = (applied, in_a_row, received)
            self.seen[key] = now
            self.pending.pop(key, None)
            self.counters.rewinds += 1
            await self.host.seek(tp, target)

    async def publish_counters(self) -> None:
        """Called by a timer every `counters_interval_s`: a `pipeline` record (component
        `worker`) to `pipeline.counters` (not while cut off the group: nothing is sent then),
        and the counters and the worker's memory in the log."""
        counters = self.counters
        record = PipelineCounters(component="worker", instance=self.options.instance,
                                  ts_ms=int(time.time() * 1000), received=counters.received,
                                  accepted=counters.accepted, rejected=counters.rejected,
                                  late=counters.late, duplicates=counters.duplicates,
                                  written=sum(s.counters()["written"] for s in self.sinks))
        if self.host.lease_lapsed_s() is None:
            await self.counters_topic.send(key=f"worker/{self.options.instance}".encode(),
                                           value=record_to_json(record), force=True)
        log.info("worker %s: %d readings received, %d accepted, %d duplicates, %d late, "
                 "%d rejected, %d KPI records emitted, %d points written, %d skipped records "
                 "caught up, %d rewinds", self.options.instance, counters.received,
                 counters.accepted, counters.duplicates, counters.late, counters.rejected,
                 counters.emitted, record.written, counters.caught_up, counters.rewinds)
        try:
            self.log_memory()
        except Exception as exc:  # a diagnostic: it never crashes the app
            log.warning("worker %s: could not measure its memory: %r", self.options.instance, exc)

    def log_memory(self) -> None:
        """Called with the counters: where the worker's memory is (RSS, the table stores'
        share by RocksDB's own accounting, small Python allocations, the engines' state)."""
        memory, mb = self.host.table_memory(), 2**20
        held = sum((e.held() for e in self.engines.values()), Held())
        log.info("worker %s memory: RSS %.0f MB, of which table stores %.0f MB in %d partitions "
                 "(memtables %.0f, block cache %.0f: at most %.0f; index and filter blocks %.0f); "
                 "%d pymalloc blocks; engines hold %d entities with %d windows and %d sensors, "
                 "and %d (sensor, time) pairs of %d windows to tell duplicates",
                 self.options.instance, process_rss() / mb, memory.total / mb, memory.partitions,
                 memory.memtables / mb, memory.block_cache / mb,
                 memory.partitions * self.options.table_memory_mb, memory.readers / mb,
                 sys.getallocatedblocks(), held.entities, held.windows, held.sensors,
                 held.dedupe_pairs, held.dedupe_windows)

    def restart_if_cut_off(self, why: str) -> None:
        """Called before anything that sends: a worker whose group lease lapsed may no longer
        own its partitions, so rather than send it restarts (`restart`, in production
        `streams.lease.restart_in_place`)."""
        lapsed = self.host.lease_lapsed_s()
        if lapsed is not None:
            self.restart(f"worker {self.options.instance}: {why} {lapsed:.1f} s after Kafka's "
                         "group coordinator last answered")

    def on_send_failed(self, error: BaseException) -> NoReturn:
        """Called when Kafka did not take a record the worker sent or wrote to a table (its
        leader unreachable or under `min.insync.replicas` for longer than the send timeout).
        The offset it belongs to may be committed next, so rather than go on without it the
        worker restarts in place: the tables are brought up to date from the changelogs and the
        records after the last commit are read again."""
        self.restart(f"worker {self.options.instance}: Kafka did not take a record: {error!r}")

    def check_recovery(self) -> None:
        """Called every `recovery_check_s` from the app's start, its first table recovery
        included. Faust replays every changelog partition a worker takes over up to its end
        before the worker processes anything; one the consumer does not fetch holds the worker
        there, all its partitions unprocessed, until the next rebalance (seen on the cluster:
        every changelog partition led by one broker got nothing for minutes while the others
        were replayed). When one has delivered nothing for `recovery_stall_s`, all that time
        with the group lease holding (Kafka's coordinator answering) and no rebalance under
        way, the worker restarts in place: a new consumer fetches it."""
        now = self.clock()
        if self.host.lease_lapsed_s() is not None:
            self.answering_since = None
            return
        if self.answering_since is None:
            self.answering_since = now
        answering = now - self.answering_since
        stalled = sorted((tp for tp, silent in self.host.recovery_waiting().items()
                          if min(silent, answering) >= self.options.recovery_stall_s),
                         key=lambda tp: (tp.topic, tp.partition))
        if stalled:
            shown = "; ".join(f"{tp.topic}[{tp.partition}]: {self.host.fetch_state(tp)}"
                              for tp in stalled[:4])
            more = f" and {len(stalled) - 4} more" if len(stalled) > 4 else ""
            self.restart(f"worker {self.options.instance}: table recovery got nothing from "
                         f"{len(stalled)} changelog partitions for "
                         f"{self.options.recovery_stall_s:.0f} s while Kafka answered ({shown}"
                         f"{more}; {self.host.consumer_state()})")

    def fence_if_cut_off(self) -> None:
        """Called by a timer every `lease_check_s`. Once the group lease lapsed nothing more is
        sent; what the producer still holds would be delivered when the network heals, maybe
        after the new owner's writes: then the worker restarts before the group can give its
        partitions away (streams/lease.py). Nothing held: it waits for the network."""
        lapsed = self.host.lease_lapsed_s()
        if lapsed is None:
            return
        held = self.host.undelivered()
        if held:
            self.restart(f"worker {self.options.instance}: no answer from Kafka's group "
                         f"coordinator for {lapsed:.1f} s and {held} records not delivered")

    # -- rebalances --------------------------------------------------------------------------

    def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Called when partitions are taken from this worker. The entities of revoked source
        partitions are another worker's now: the engines' caches are emptied (those of kept
        partitions are read back from the tables when next needed)."""
        self.answering_since = None  # a recovery's silence counts again from the join
        if any(tp.topic in self.kind_of_topic for tp in revoked):
            for engine in self.engines.values():
                engine.forget_all()

    def on_partitions_assigned(self) -> None:
        """Called after each rebalance's assignment, when Faust has closed the table
        partitions of its revocations: their memory goes back to the OS."""
        self.answering_since = None
        self.release_memory()

    def on_rebalance_complete(self) -> None:
        """Called when table recovery from the changelogs is over: its buffers are garbage
        now, and their memory goes back to the OS."""
        self.release_memory()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Called once when Faust has started the app: starts the alert publisher and logs
        that the worker is running (the line tests and operators wait for)."""
        logging.getLogger("streams").setLevel(logging.INFO)
        self.alerts.start()
        log.info("worker %s running; Ctrl-C or SIGTERM stops it", self.options.instance)

    async def serve_sink(self) -> None:
        """Called once at start when `options.sink`: runs the InfluxDB sink in this process
        until the worker stops (its points count as `written` in the counters)."""
        from streams.sink import InfluxSink, serve

        self.sinks.append(InfluxSink.from_settings(self.settings))
        await serve(self.sinks[-1], asyncio.Event())

    async def close(self) -> None:
        """Called before Faust shuts down: closes the range reader's Kafka consumer."""
        await self.reader.close()
