"""The worker's Faust app: its configuration, tables and topics (`FaustHost`), and which
`Worker` method each agent, timer and signal calls (`create_app`). The worker's logic is in
streams/worker.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, NoReturn

import faust
from aiokafka import TopicPartition as AIOKafkaTP
from aiokafka.errors import KafkaError
from faust.assignor.client_assignment import ClientAssignment
from faust.exceptions import ConsistencyError, ProducerSendError
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode import Service

from models.city import City
from models.settings import Settings
from streams import lease
from streams.offsets import OffsetLookupError
from streams.store import ChangelogPrefixTable
from streams.worker import (
    PREFIX_MARK,
    REJECTED_TABLE,
    Host,
    Output,
    TableMemory,
    Worker,
    WorkerOptions,
)

__all__ = ["CrashExitingWorker", "DrainingBuffer", "FaustHost", "RecoveryWatch", "SendFailures",
           "WorkerFactory", "create_app", "exit_if_crashed", "forget_stores_ahead_of_changelog",
           "handled", "rocksdb_options", "table_memory", "worker_group", "worker_topics"]

log = logging.getLogger(__name__)

WorkerFactory = Callable[[Settings, City, WorkerOptions, Host], Worker]


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


def worker_group(settings: Settings) -> str:
    """The workers' Faust app id: their consumer group, and the prefix of their changelogs."""
    return f"{settings.kafka.topic_prefix}citystream-worker"


def worker_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic the worker reads or writes, with its config: created before Faust starts,
    so the changelog topics exist with the source topics' partition count (Faust otherwise
    races its own metadata and fails with PartitionsMismatch on a fresh cluster), and, like
    every topic `ensure_topics` creates, with CITYSTREAM_KAFKA__REPLICATION_FACTOR copies and
    its `min.insync.replicas`."""
    topics = settings.kafka.topics
    app_id = worker_group(settings)
    plain: dict[str, str] = {}
    out = {t: plain for t in [*topics.telemetry.values(), topics.deadletter, topics.kpi_records,
                              topics.pipeline_counters, topics.sink_deadletter]}
    tables = [f"{kind}-{table}" for kind in topics.telemetry for table in ("entities", "state")]
    for table in [*tables, REJECTED_TABLE]:
        out[f"{app_id}-{table}-changelog"] = {"cleanup.policy": "compact"}
    return out


class FaustHost:
    """The `Host` of a worker: a Faust app (consumer group `<prefix>citystream-worker`) and the
    tables and topics the worker asks for."""

    def __init__(self, settings: Settings, options: WorkerOptions) -> None:
        data_dir = options.state_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.app = faust.App(
            worker_group(settings),
            broker=f"kafka://{settings.kafka.bootstrap.replace(',', ';kafka://')}",
            store=options.store,
            datadir=str(data_dir),
            topic_partitions=settings.kafka.partitions,
            topic_replication_factor=settings.kafka.replication_factor,
            table_standby_replicas=options.standby_replicas,
            producer_acks=-1,
            broker_commit_interval=options.commit_interval_s,
            broker_session_timeout=options.session_timeout_s,
            broker_heartbeat_interval=max(1.0, options.session_timeout_s / 10),
            producer_request_timeout=options.session_timeout_s,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
        )
        self.store_options = (rocksdb_options(options.table_memory_mb)
                              if options.store.startswith("rocksdb") else None)
        DrainingBuffer.install(self.app.producer)

    def table(self, name: str) -> MutableMapping[bytes, bytes]:
        table = ChangelogPrefixTable(
            self.app, name=name, key_type=bytes, value_type=bytes,
            beacon=self.app.tables.beacon, partitions=self.settings.kafka.partitions,
            options=self.store_options)
        self.app.tables.add(table)
        return table

    def topic(self, name: str, *, partitions: int | None = None) -> Output:
        return self.app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions)

    def settled(self) -> bool:
        return (not self.app.rebalancing and not self.app.in_recovery
                and self.app.flow_control.is_active() and not self.app.should_stop)

    def lease_lapsed_s(self) -> float | None:
        return lease.lapsed(self.app.conf.id)

    def undelivered(self) -> int:
        producer = self.app.producer
        buffer: Any = producer.buffer  # a DrainingBuffer
        count: int = buffer.pending.qsize() + buffer.in_flight
        inner: Any = getattr(producer, "_producer", None)  # aiokafka's, once it sent
        if inner is not None:
            batches = inner._message_accumulator
            count += sum(map(len, batches._batches.values())) + len(batches._pending_batches)
        return count

    def generation(self) -> int:
        return self.app.consumer_generation_id

    def assignment(self) -> set[TP]:
        return set(self.app.consumer.assignment())

    async def highwaters(self, tps: list[TP]) -> Mapping[TP, int]:
        return await _looked_up(self.app.consumer.highwaters(*tps), "end")

    async def earliest_offsets(self, tps: list[TP]) -> Mapping[TP, int]:
        return await _looked_up(self.app.consumer.earliest_offsets(*tps), "first")

    async def seek(self, tp: TP, offset: int) -> None:
        await self.app.consumer.seek_wait({tp: offset})

    def fetch_state(self, tp: TP) -> str:
        return _described(lambda: _fetch_state(self.app.consumer, tp))

    def consumer_state(self) -> str:
        return _described(lambda: _consumer_state(self.app.consumer))

    def recovery_waiting(self) -> dict[TP, float]:
        recovery: Any = self.app.tables.recovery  # type: ignore[attr-defined]
        started = recovery._recovery_started_at
        if not self.app.in_recovery or started is None or self.app.should_stop:
            return {}
        now, received = time.monotonic(), recovery._active_events_received_at
        return {tp: now - received.get(tp, started)
                for tp, left in recovery.active_remaining().items() if left > 0}

    def table_memory(self) -> TableMemory:
        return table_memory(self.app.tables.values())


ROCKSDB_MEMORY = ("rocksdb.cur-size-all-mem-tables", "rocksdb.block-cache-usage",
                  "rocksdb.estimate-table-readers-mem")


def table_memory(tables: Iterable[Any]) -> TableMemory:
    """RocksDB's memory properties summed over the open partitions of Faust `tables`."""
    partitions, used = 0, [0, 0, 0]
    for table in tables:
        for db in list(getattr(table.data, "_dbs", {}).values()):
            partitions += 1
            for i, name in enumerate(ROCKSDB_MEMORY):
                used[i] += db.property_int_value(name) or 0
    return TableMemory(partitions, *used)


def _described(describe: Callable[[], str]) -> str:
    """A diagnostic for the log: it never fails the check that logs it."""
    try:
        return describe()
    except Exception as exc:
        return f"unknown ({exc!r})"


def _fetch_state(consumer: Any, tp: TP) -> str:
    """Faust's and aiokafka's view of `tp`: paused or not, read offset, position, last fetch,
    records fetched and not consumed; and its leader, whether a request to it is in flight and
    which of its partitions have no position (aiokafka fetches nothing from a broker while a
    request to it is in flight or one of its partitions, paused or not, waits for a position)."""
    faust_view = ("paused" if tp in consumer._paused_partitions else
                  "active" if tp in consumer._active_partitions else "not active")
    fetcher = consumer._thread._ensure_consumer()._fetcher
    assignment = fetcher._subscriptions.subscription.assignment
    ours = AIOKafkaTP(tp.topic, tp.partition)
    state = assignment.state_value(ours)
    if state is None:
        return f"Faust {faust_view}, not in aiokafka's assignment"
    fetched = ("never" if state.timestamp is None
               else f"{time.time() - state.timestamp / 1000:.0f} s ago")
    leader_of = fetcher._client.cluster.leader_for_partition
    leader = leader_of(ours)
    unplaced = [f"{other.topic}[{other.partition}]: {_position(assignment.state_value(other))}"
                for other in sorted(assignment.tps) if leader_of(other) == leader
                and not assignment.state_value(other).has_valid_position]
    return (f"Faust {faust_view}, read offset {consumer._read_offset.get(tp)}; aiokafka "
            f"{'paused' if state.paused else 'fetching'}, position {_position(state)}, "
            f"highwater {state.highwater}, last fetch {fetched}, "
            f"{'records' if ours in fetcher._records else 'nothing'} fetched and not consumed; "
            f"leader {leader}: {'a' if leader in fetcher._in_flight else 'no'} request in "
            f"flight, {len(unplaced)} of its partitions without a position"
            + (f" ({', '.join(unplaced[:3])}{', ...' if len(unplaced) > 3 else ''})"
               if unplaced else ""))


def _consumer_state(consumer: Any) -> str:
    """aiokafka's fetcher and group coordinator as a whole: the brokers with a request in
    flight, what its pending tasks wait in (a position update waits without a timeout for the
    committed offsets the coordinator's refresh task fetches), and that task's state."""
    inner = consumer._thread._ensure_consumer()
    fetcher = inner._fetcher
    tasks = []
    for task in list(fetcher._pending_tasks):
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        tasks.append(f"{coro.__qualname__.rsplit('.', 1)[-1]}"
                     f"{f' at line {frame.f_lineno}' if frame is not None else ''}"
                     f"{' (done)' if task.done() else ''}")
    refresh = getattr(inner._coordinator, "_commit_refresh_task", None)
    refreshing = ("none" if refresh is None else "running" if not refresh.done()
                  else "cancelled" if refresh.cancelled() else f"ended ({refresh.exception()!r})")
    waiting = fetcher._subscriptions.subscription.assignment.requesting_committed()
    return (f"aiokafka: requests in flight to brokers {sorted(fetcher._in_flight)}, pending "
            f"tasks [{', '.join(sorted(tasks))}]; committed-offset refresh task {refreshing}, "
            f"{len(waiting)} partitions waiting for their committed offset")


def _position(state: Any) -> object:
    """An aiokafka partition state's position, or why it has none."""
    return (state.position if state.has_valid_position
            else "awaiting reset" if state.awaiting_reset
            else "none, waiting for its committed offset" if state._committed_futs
            else "none")


async def _looked_up(lookup: Awaitable[Mapping[TP, int]], which: str) -> Mapping[TP, int]:
    """An offset look-up of Faust's consumer, its Kafka errors as `OffsetLookupError` (a timer
    that let them through would crash the app)."""
    try:
        return await lookup
    except (KafkaError, TimeoutError) as exc:
        raise OffsetLookupError(f"Kafka did not answer the look-up of {which} offsets: "
                                f"{exc!r}") from exc


class DrainingBuffer(ProducerBuffer):
    """Faust's buffer of table writes (changelog records), whose full flush waits until every
    write it was given is in aiokafka's hands.

    Faust's consumer flushes the producer before it commits offsets, so that their table
    writes are in Kafka first; Faust's own flush returns once no write left the buffer for
    0.1 s, although writes may still wait in it (aiokafka's accumulator full, a leader slow),
    and the write just taken off the queue is not counted. A process that died after such a
    commit lost those writes with the offsets that made them marked done. Partial flushes
    (Faust's back-pressure on a full buffer) are unchanged."""

    in_flight = 0

    @classmethod
    def install(cls, producer: Any) -> None:
        """Called once when the app is built, before the producer starts: replaces its
        buffer."""
        assert not producer.app.conf.producer_threaded, "a threaded producer has its own queue"
        buffer = cls(loop=producer.loop, beacon=producer.beacon)
        buffer.app = producer.app
        producer.buffer = buffer

    async def _send_pending(self, fut: Any) -> None:
        self.in_flight += 1  # taken off the queue in this same step: never counted twice
        try:
            await super()._send_pending(fut)
        finally:
            self.in_flight -= 1

    async def flush_atmost(self, max_messages: int | None) -> int:
        if max_messages is not None:
            return await super().flush_atmost(max_messages)
        sent = 0
        while True:
            if self.crashed:  # a write failed: the commit waiting on this must not go on
                raise RuntimeError(f"Cannot flush: the buffer crashed ({self.crash_reason!r})")
            if not (self.size or self.in_flight):
                return sent
            if self.state != "running" and self.size:
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
                sent += 1
            except TimeoutError:
                continue


class SendFailures(faust.Sensor):
    """Hands every record Kafka did not take to `on_failed` (`Worker.on_send_failed`), or to
    `on_failed_stopping` once the app is stopping.

    Faust only logs such a failure, and commits the offsets the record belonged to once its
    producer is flushed: a table write lost that way is gone from the state a rebalance or
    restart rebuilds. aiokafka fails a record not delivered within the producer's request
    timeout (`producer_request_timeout`, 1200 s unless set); it sets the record's future, whose
    callback calls this, right after the batch's, whose waiter resumes the flush: so the
    handler runs before the flush returns, and before the commit (`DrainingBuffer` makes the
    flush wait for the table writes still in Faust's own buffer)."""

    def __init__(self, app: faust.App, on_failed: Callable[[BaseException], None],
                 on_failed_stopping: Callable[[str], NoReturn]) -> None:
        super().__init__()
        self.app = app
        self.on_failed = on_failed
        self.on_failed_stopping = on_failed_stopping

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        if self.app.should_stop:
            self.on_failed_stopping(f"Kafka did not take a record while stopping: {exc!r}")
        else:
            self.on_failed(exc)


class CrashExitingWorker(faust.Worker):
    """Faust's worker (the process's event loop and signals), except that a crash ends the
    process with `lease.EXIT_CRASHED` rather than Faust's clean stop, which commits offsets and
    leaves the clean-shutdown mark: also one during start-up or the first table recovery, before
    `exit_if_crashed` runs."""

    exit_now: Callable[[str], NoReturn] = staticmethod(lease.exit_crashed)

    def on_worker_shutdown(self) -> None:
        """Called by Faust when the worker's start returned (stopped or crashed), before it
        stops the app."""
        reason = self.crash_reason or self.app.crash_reason
        if reason is not None:
            forget_stores_ahead_of_changelog(self.app, reason)
            self.exit_now(f"the Faust app crashed: {reason!r}")
        super().on_worker_shutdown()


async def exit_if_crashed(app: faust.Service, exit_now: Callable[[str], NoReturn]) -> None:
    """Run as a task of `app` (Faust starts those once the first table recovery is over):
    returns when the app stops, and calls `exit_now` if it crashed. A crashed Faust app stops
    consuming, but its process may run on (its in-process sink did) or stop cleanly, committing;
    ended at once, its supervisor starts a fresh one. The app is marked crashed before Faust's
    worker acts on it, so this runs first."""
    await app.wait_until_stopped()
    if app.crashed:
        forget_stores_ahead_of_changelog(app, app.crash_reason)
        exit_now(f"the Faust app crashed: {app.crash_reason!r}")


def forget_stores_ahead_of_changelog(app: Any, reason: BaseException | None) -> None:
    """Called before a crash exit. Faust's recovery raises `ConsistencyError` when a store's
    persisted offset is past its changelog's end: the changelog topic was recreated or lost
    records. The stores must not be trusted then: without the `.changelog-prefix` mark the
    next start deletes them and rebuilds the tables from the changelogs."""
    conf = getattr(app, "conf", None)
    if isinstance(reason, ConsistencyError) and conf is not None:
        log.error("a table store is ahead of its changelog (was the topic recreated?): the "
                  "next start rebuilds the worker's tables from the changelogs")
        (Path(conf.datadir) / PREFIX_MARK).unlink(missing_ok=True)


class RecoveryWatch(Service):
    """Calls `Worker.check_recovery` every `interval` seconds from the app's start. Faust's
    timers start once the first table recovery is over, so they cannot watch that one (nor the
    first after a restart in place)."""

    def __init__(self, check: Callable[[], None], interval: float, **kwargs: Any) -> None:
        self.check = check
        self.interval = interval
        super().__init__(**kwargs)

    @Service.task
    async def _watch(self) -> None:
        failed = False
        while True:
            await self.sleep(self.interval)
            if self.should_stop:
                return
            try:
                self.check()
            except Exception as exc:  # a watchdog: it never crashes the app
                if not failed:
                    log.warning("could not check the table recovery (logged once until a "
                                "check works again): %r", exc)
                failed = True
            else:
                failed = False


ASSIGNMENT_FILE = "last-assignment.json"
"""In a worker's state directory: the partitions it owned last (Faust's `ClientAssignment`)."""


def remember_assignment(app: Any) -> None:
    """Called after each rebalance's assignment: keeps the partitions this worker now owns in
    its state directory, for `claim_last_assignment` at its next start. Best effort: a file it
    cannot write only costs the next start its claim."""
    path = Path(app.conf.datadir) / ASSIGNMENT_FILE
    spare = path.with_suffix(".tmp")
    try:
        spare.write_bytes(app.assignor._assignment.dumps())
        spare.replace(path)
    except OSError as exc:
        log.warning("cannot keep this worker's partitions in %s (%r): its next start will not "
                    "claim them", path, exc)


def claim_last_assignment(app: Any, partitions: int) -> None:
    """Called once at start, before the worker joins its group. Faust's assignor is sticky: it
    keeps each member's partitions as the member reports them when it joins. A restarted
    worker reports none and is handed partitions afresh, so it replays whole changelog
    partitions another worker wrote meanwhile while the store of one it owned lies idle
    (docs/operations.md, "Soak"). Reporting the partitions it owned last gets them back when
    no one else holds them; a claim another member also makes is settled by the assignor as
    any conflict (one owner per partition), so a stale claim costs nothing."""
    path = Path(app.conf.datadir) / ASSIGNMENT_FILE

    def kept(owned: Mapping[str, list[int]]) -> dict[str, list[int]]:
        return {str(topic): [p for p in numbers if type(p) is int and 0 <= p < partitions]
                for topic, numbers in owned.items()}

    try:
        last = ClientAssignment.loads(path.read_bytes())
        claim = ClientAssignment(actives=kept(last.actives), standbys=kept(last.standbys))
    except FileNotFoundError:
        return
    except Exception as exc:  # a torn or foreign file: join as a new member
        log.warning("ignoring %s (%r): the worker joins without claiming its partitions", path,
                    exc)
        return
    app.assignor._assignment = claim


def create_app(settings: Settings, city: City, options: WorkerOptions, *,
               make_worker: WorkerFactory = Worker) -> faust.App:
    """Build the Faust app of a `Worker` (made by `make_worker`, to inject its collaborators):
    one agent and two tables per reading kind, its timers, tasks and rebalance hooks. Installs
    the group leases of streams/lease.py first."""
    lease.install()
    host = FaustHost(settings, options)
    app = host.app
    claim_last_assignment(app, settings.kafka.partitions)
    worker = make_worker(settings, city, options, host)
    app.sensors.add(SendFailures(app, worker.on_send_failed, lease.exit_crashed))
    for kind, tables in worker.tables.items():
        source = app.topic(tables.topic, key_type=bytes, value_type=bytes,
                           partitions=settings.kafka.partitions)
        app.agent(source, name=f"citystream.{kind}_kpis", concurrency=1)(_agent(worker, kind))
    letters = app.topic(settings.kafka.topics.deadletter, key_type=bytes, value_type=bytes,
                        partitions=settings.kafka.partitions)

    @app.agent(letters, name="citystream.rejected_counts", concurrency=1)
    async def rejected_counts(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await handled(worker, worker.count_rejected(event.message.offset, event.value))

    @app.on_partitions_revoked.connect
    async def forget_cached_entities(sender: Any, /, *args: Any, signal: Any, **kwargs: Any,
                                     ) -> None:
        worker.on_partitions_revoked(args[0] if args else set())

    @app.on_partitions_assigned.connect
    async def after_assignment(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        worker.on_partitions_assigned()
        remember_assignment(app)

    @app.on_rebalance_complete.connect
    async def release_memory_after_recovery(sender: Any, /, *args: Any, signal: Any,
                                            **kwargs: Any) -> None:
        worker.on_rebalance_complete()

    @app.timer(interval=options.timer_interval_s)
    async def close_quiet_windows() -> None:
        await worker.close_quiet_windows()

    @app.timer(interval=options.rewind_check_s)
    async def rewind_skipped_tails() -> None:
        await worker.rewind_skipped_tails()

    @app.task
    async def start_alert_publisher() -> None:
        await worker.start()

    @app.task
    async def exit_when_crashed() -> None:
        await exit_if_crashed(app, lease.exit_crashed)

    app.add_dependency(RecoveryWatch(worker.check_recovery, options.recovery_check_s,
                                     beacon=app.beacon))

    @app.timer(interval=options.lease_check_s)
    async def fence_if_cut_off() -> None:
        worker.fence_if_cut_off()

    if options.sink:

        @app.task
        async def sink() -> None:
            await worker.serve_sink()

    @app.timer(interval=options.counters_interval_s)
    async def publish_counters() -> None:
        await worker.publish_counters()

    async def close_reader(sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        await worker.close()

    app.on_before_shutdown.connect(close_reader)
    return app


async def handled(worker: Worker, work: Awaitable[None]) -> None:
    """Await an agent's `work` on one event; a send that raised (Faust's buffer or aiokafka
    gave up on it) goes to `Worker.on_send_failed`. Let through, Faust would log the error,
    commit the event's offset and restart the agent: the record would be lost."""
    try:
        await work
    except (ProducerSendError, KafkaError) as exc:
        worker.on_send_failed(exc)


def _agent(worker: Worker, kind: str) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
    async def agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            await handled(worker, worker.handle(kind, msg.topic, msg.partition, msg.offset,
                                                event.value))

    agent.__name__ = agent.__qualname__ = f"{kind}_kpis"
    return agent
