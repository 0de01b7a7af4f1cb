"""The InfluxDB sink: Kafka -> line protocol -> InfluxDB, committing offsets only after the write.

Topics (consumer group `citystream-sink`; `CITYSTREAM_KAFKA__TOPIC_PREFIX` prefixes both) and
where their points go:

    telemetry.<kind>   JSON array of readings (`Reading.to_json`)  -> raw points, telemetry bucket
    kpi.records        one KPI / alert record (format below)      -> kpi bucket
    pipeline.counters  one component's counters                   -> `pipeline` points, kpi bucket

A `kpi.records` value is one record as `models.records.record_to_json` writes it,
``{"measurement": "water_kpi", "district": ..., "window_end_ms": ..., "consumption_l": ...}``;
the sink reads it back with `record_from_json`, so field types are the contract's whatever the
producer wrote, and renders it with `to_line_protocol`. A `pipeline.counters` value is either
that form of a `PipelineCounters` or ingest's counters object; the contract's counters present
in it become the fields (`pipeline_line`). Both, and `reading_line` for readings, are in
`connectors.influxdb.lineproto`; the HTTP writes go through `connectors.influxdb.write`.

Delivery is at least once and idempotent: a point's identity is (measurement, tags, timestamp),
so writing a record again overwrites the same point. The loop, one batch at a time:
fetch until about `max_points` points are held, convert, write them bucket by bucket in requests of
`batch_points` lines, and only then commit the batch's offsets. While InfluxDB is unavailable
(`SinkBackpressure`) the batch is held and retried with capped exponential backoff; nothing is
committed and nothing more is consumed (Kafka keeps the backlog). A stop during an outage leaves
the batch uncommitted, to be consumed again.

A rebalance ends the held batch. The sink's rebalance listener waits for a write under way to
finish (so revocation never overlaps a write), then marks the batch stale; a stale batch is
dropped, never written or committed. Without that, a sink that held an older batch through an
InfluxDB outage could write it after the partitions' new owner had written newer values of the
same points (a zombie write, seen as stale KPI windows). The records are consumed again, in
order, by whichever member owns them now: a new assignment starts at the committed offsets, and
on partitions this sink keeps it seeks back to the dropped batch's first records (a rejoin may
keep the positions). Offsets are committed only for partitions still assigned.

A rebalance the sink does not hear of ends the batch too: a sink cut off Kafka does not learn
that the group gave its partitions away, so it holds a lease (streams/lease.py), renewed by
every heartbeat the group coordinator answers. Once it has lapsed nothing more of the batch is
written (it is dropped as a stale one) and nothing is consumed until the coordinator answers
again: a batch held through an InfluxDB outage is never written after the partitions' new
owner wrote newer values, however long the network stays cut.

Bad data is never retried forever and never dropped silently: a record or reading that cannot be
decoded, and a line InfluxDB refuses (`PointsRejected`), goes to the `sink.deadletter` topic with
the reason and is counted as rejected. InfluxDB 2.7 answers 400 when a line does not parse (then
nothing of the request is written) and 422 for a partial write (field type conflict, outside the
bucket's retention: the other points ARE written; the message ends with `dropped=N`). Either way
the sink bisects the request until each refused line stands alone; rewriting the accepted points
on the way is harmless. A `sink.deadletter` value is a JSON object: `reason` (`undecodable` or
`rejected_by_influxdb`), `detail` (for the latter the server's message), the source `topic`,
`partition` and `offset`, `received_at_ms`, and either `raw` (base64 of the record, or of the
reading at `index` in its array) or the refused `line` and its `bucket`
(`models.deadletter.sink_dead_letter`). The worker writes the same shape for a
`telemetry.<kind>` record its KPI engine cannot take (`undecodable`, or `engine_error` for a
bug), then goes on with the next record.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from connectors.influxdb.lineproto import pipeline_line, reading_line, to_line_protocol
from connectors.influxdb.write import (
    InfluxWriter,
    PointWriter,
    SinkBackpressure,
    write_isolating,
)
from connectors.kafka import KafkaSink, OutRecord, Sink
from models import kinds
from models.deadletter import sink_dead_letter
from models.errors import RecordError
from models.records import record_from_json
from models.settings import KafkaSettings, Settings
from models.topics import DEFAULT, Topics
from streams import lease

log = logging.getLogger(__name__)

GROUP_ID: Final = "citystream-sink"
REBALANCE_TIMEOUT_MS: Final = 120_000


def sink_topics(topics: Topics = DEFAULT) -> list[str]:
    """The topics the sink consumes."""
    return [*topics.telemetry.values(), topics.kpi_records, topics.pipeline_counters]


def kpi_line(value: bytes) -> str:
    """The point for a `kpi.records` value (`models.records.record_to_json` output)."""
    try:
        record = record_from_json(value, kinds.record_types())
    except (ValueError, AttributeError, TypeError) as exc:  # JSON, validation, not an object
        raise RecordError(f"not a kpi record: {exc}".replace("\n", " ")) from None
    return to_line_protocol(record, "ms")


# -- the service ------------------------------------------------------------------------------


class Consumer(Protocol):
    """The part of `AIOKafkaConsumer` the sink uses (the sink subscribes it before `start`)."""

    def subscribe(self, topics: Any = (), pattern: Any = None, listener: Any = None) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(self, *partitions: Any, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[Any, list[Any]]: ...

    async def commit(self, offsets: Any = None) -> None: ...

    def assignment(self) -> set[Any]: ...

    def seek(self, partition: Any, offset: int) -> None: ...

    def highwater(self, partition: Any) -> int | None: ...


def kafka_consumer(settings: KafkaSettings, *, group_id: str | None = None,
                   client_id: str = "citystream-sink") -> AIOKafkaConsumer:
    """The sink's consumer (`InfluxSink.start` subscribes it to `sink_topics`): its own group
    (`<prefix>citystream-sink` unless given), manual commits, from the earliest offset."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=group_id or f"{settings.topic_prefix}{GROUP_ID}", client_id=client_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        # an InfluxDB outage holds the batch without polling; stay in the group meanwhile
        max_poll_interval_ms=3_600_000,
        # revocation waits for a write under way (InfluxWriter's timeouts: 5 s + 30 s)
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS)


@dataclass(frozen=True, slots=True)
class Buckets:
    telemetry: str = "telemetry"
    kpi: str = "kpi"


@dataclass
class SinkOptions:
    """Tuning knobs; the defaults suit a local InfluxDB."""

    batch_points: int = 5000  # lines per InfluxDB request
    max_points: int = 20000  # stop fetching once this many points are held
    fetch_records: int = 50  # Kafka records per fetch (ingest puts <= 500 readings in one)
    poll_timeout_ms: int = 500
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    report_interval_s: float = 10.0


@dataclass(frozen=True, slots=True)
class _Origin:
    topic: str
    partition: int
    offset: int


@dataclass
class _Batch:
    """Points consumed but not yet committed, with where each line came from."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    starts: dict[str, list[int]] = field(default_factory=dict)  # first line of each record
    origins: dict[str, list[_Origin]] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # lines written so far, per bucket
    dead: list[OutRecord] = field(default_factory=list)
    offsets: dict[Any, int] = field(default_factory=dict)  # TopicPartition -> next offset
    firsts: dict[Any, int] = field(default_factory=dict)  # TopicPartition -> first offset
    points: int = 0
    generation: int = 0  # the sink's rebalance count when the batch began

    def add(self, bucket: str, origin: _Origin, lines: list[str]) -> None:
        if not lines:
            return
        held = self.lines.setdefault(bucket, [])
        self.starts.setdefault(bucket, []).append(len(held))
        self.origins.setdefault(bucket, []).append(origin)
        held.extend(lines)
        self.points += len(lines)

    def origin(self, bucket: str, index: int) -> _Origin:
        i = bisect.bisect_right(self.starts[bucket], index) - 1
        return self.origins[bucket][i]

    def pending(self) -> int:
        return sum(len(lines) - self.done.get(b, 0) for b, lines in self.lines.items())


def _dead_letter(topic: str, reason: str, detail: str, origin: _Origin, *,
                 raw: bytes | None = None, line: str | None = None, bucket: str | None = None,
                 index: int | None = None) -> OutRecord:
    return OutRecord(topic, origin.topic.encode(), sink_dead_letter(
        reason, detail, origin.topic, origin.partition, origin.offset, raw=raw, index=index,
        line=line, bucket=bucket))


class InfluxSink:
    """Moves points from Kafka to InfluxDB; see the module docstring for the guarantees.

    Lifecycle: construct (no I/O), `start`, `run(stop)` until the event is set, `close`.
    """

    def __init__(self, consumer: Consumer, writer: PointWriter, deadletters: Sink, *,
                 buckets: Buckets | None = None, topics: Topics = DEFAULT,
                 options: SinkOptions | None = None,
                 lease_lapsed: Callable[[], float | None] = lambda: None) -> None:
        self.consumer = consumer
        self.lease_lapsed = lease_lapsed
        self.writer = writer
        self.deadletters = deadletters
        self.buckets = buckets or Buckets()
        self.topics = topics
        self.options = options or SinkOptions()
        self._kinds: dict[str, str] = {topic: kind for kind, topic in topics.telemetry.items()}
        self.received = 0
        self.written = 0
        self.rejected = 0
        self.dropped_batches = 0
        self._last_report = time.monotonic()
        self._generation = 0  # rebalances seen; a batch from an older one is stale
        self._writing = asyncio.Lock()  # held by a write + commit; revocation waits for it
        self._revoking = 0  # revocations waiting for the lock
        self._held = 0  # points of the batch being written or retried, for the revocation log

    @classmethod
    def from_settings(cls, settings: Settings, options: SinkOptions | None = None
                      ) -> InfluxSink:
        """The production wiring: aiokafka consumer with a group lease, `InfluxWriter`,
        Kafka dead letters."""
        lease.install()
        group = f"{settings.kafka.topic_prefix}{GROUP_ID}"
        return cls(kafka_consumer(settings.kafka), InfluxWriter(settings.influx),
                   KafkaSink(settings.kafka, client_id="citystream-sink"),
                   buckets=Buckets(settings.influx.bucket_telemetry, settings.influx.bucket_kpi),
                   topics=settings.kafka.topics, options=options,
                   lease_lapsed=functools.partial(lease.lapsed, group))

    def counters(self) -> dict[str, int]:
        """Cumulative counts since start: `received` points and undecodable items consumed,
        `written` points confirmed by InfluxDB, `rejected` items dead-lettered. A record consumed
        again after a restart or rebalance counts again."""
        return {"received": self.received, "written": self.written, "rejected": self.rejected}

    async def start(self) -> None:
        await self.deadletters.start()
        self.consumer.subscribe(sink_topics(self.topics), listener=_StaleBatchGuard(self))
        await self.consumer.start()

    async def partitions_revoked(self, revoked: set[Any]) -> None:
        """Before a rebalance: wait for a write under way, then make the held batch stale."""
        self._revoking += 1  # a write under way stops at its next request
        try:
            async with self._writing:
                self._generation += 1
                if self._held:
                    log.info("sink: rebalance while holding %d uncommitted points; dropping "
                             "them (the partitions' owner after the rebalance consumes and "
                             "writes them again, in order)", self._held)
        finally:
            self._revoking -= 1

    async def close(self) -> None:
        """Leave the group without committing anything more, then release the clients."""
        try:
            await self.consumer.stop()
        finally:
            await self.deadletters.close()
            await asyncio.to_thread(self.writer.close)

    async def run(self, stop: asyncio.Event) -> None:
        """Move batches until `stop` is set."""
        while not stop.is_set():
            await self.step(stop)
            if time.monotonic() - self._last_report >= self.options.report_interval_s:
                self._last_report = time.monotonic()
                log.info("sink: %s", self.counters())

    async def step(self, stop: asyncio.Event) -> bool:
        """Consume one batch, write it, commit it. False if there was nothing to consume or
        `stop` was set before the batch could be written (then nothing is committed)."""
        if self.lease_lapsed() is not None:  # cut off the group: wait until it answers
            await asyncio.sleep(self.options.poll_timeout_ms / 1000)
            return False
        batch = await self._fetch()
        if batch is None:
            return False
        self._held = batch.points
        try:
            return await self._deliver(batch, stop)
        finally:
            self._held = 0

    # -- consuming ----------------------------------------------------------------------------

    async def _fetch(self) -> _Batch | None:
        """Consume and convert until about `max_points` points (or dead letters) are held,
        waiting `poll_timeout_ms` for the first records only; None if nothing arrived."""
        opts = self.options
        batch = _Batch(generation=self._generation)
        timeout_ms = opts.poll_timeout_ms
        while batch.points < opts.max_points:
            got = await self.consumer.getmany(timeout_ms=timeout_ms,
                                              max_records=opts.fetch_records)
            if not got:
                break
            for tp, records in got.items():
                for record in records:
                    self._convert(record, batch)
                batch.firsts.setdefault(tp, records[0].offset)
                batch.offsets[tp] = records[-1].offset + 1
            timeout_ms = 0
        return batch if batch.offsets else None

    def _convert(self, record: Any, batch: _Batch) -> None:
        """Add one Kafka record's points to the batch; what cannot be decoded becomes a dead
        letter (never an exception)."""
        origin = _Origin(record.topic, record.partition, record.offset)
        value: bytes = record.value if record.value is not None else b""
        kind = self._kinds.get(record.topic)
        if kind is not None:
            try:
                items = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                self._undecodable(batch, origin, f"not JSON: {exc}", value)
                return
            if type(items) is dict:
                items = [items]
            elif type(items) is not list:
                self._undecodable(batch, origin, "not a JSON array", value)
                return
            lines = []
            for i, item in enumerate(items):
                try:
                    if type(item) is not dict:
                        raise RecordError("not a JSON object")
                    lines.append(reading_line(item, kind))
                except RecordError as exc:
                    self._undecodable(batch, origin, str(exc), orjson.dumps(item), i)
            self.received += len(lines)
            batch.add(self.buckets.telemetry, origin, lines)
            return
        try:
            if record.topic == self.topics.pipeline_counters:
                obj = orjson.loads(value)
                if type(obj) is not dict:
                    raise RecordError("not a JSON object")
                line = pipeline_line(obj)
            else:
                line = kpi_line(value)
        except (RecordError, orjson.JSONDecodeError) as exc:
            self._undecodable(batch, origin, str(exc), value)
            return
        self.received += 1
        batch.add(self.buckets.kpi, origin, [line])

    def _undecodable(self, batch: _Batch, origin: _Origin, detail: str, raw: bytes,
                     index: int | None = None) -> None:
        dead = _dead_letter(self.topics.sink_deadletter, "undecodable", detail, origin, raw=raw,
                            index=index)
        self.received += 1
        self.rejected += 1
        batch.dead.append(dead)
        batch.points += 1
        log.debug("sink dead letter: %s", dead.value[:500])

    # -- writing ------------------------------------------------------------------------------

    async def _deliver(self, batch: _Batch, stop: asyncio.Event) -> bool:
        """Write the batch (and its dead letters) until done, then commit it; back off while
        InfluxDB or Kafka fails. False if `stop` was set first or a rebalance made the batch
        stale (then nothing more of it is written and nothing is committed)."""
        opts = self.options
        delay = opts.retry_initial_s
        failed_since: float | None = None
        while not stop.is_set():
            try:
                async with self._writing:
                    if batch.generation != self._generation or not await self._write(batch):
                        self._drop(batch)
                        return False
                    await self._commit(batch.offsets)
            except (SinkBackpressure, KafkaError, OSError, TimeoutError) as exc:
                retry_after = exc.retry_after_s if isinstance(exc, SinkBackpressure) else 0.0
                if failed_since is None:
                    failed_since = time.monotonic()
                    log.warning(
                        "sink: write failed (%s); holding %d points uncommitted, Kafka backlog "
                        "%s more records; retrying with backoff", exc, batch.pending(),
                        self._backlog(batch))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(delay, retry_after))
                delay = min(delay * 2, opts.retry_max_s)
                continue
            if failed_since is not None:
                log.warning("sink: writes recovered after %.1fs", time.monotonic() - failed_since)
            return True
        return False

    async def _write(self, batch: _Batch) -> bool:
        """Write what is left of the batch, request by request; False if a rebalance began
        or the group lease lapsed (the rest would race the partitions' next owner: a request
        takes up to 35 s)."""
        size = self.options.batch_points
        for bucket, lines in batch.lines.items():
            while (start := batch.done.get(bucket, 0)) < len(lines):
                if self._revoking:
                    return False
                if (lapsed := self.lease_lapsed()) is not None:
                    log.warning("sink: Kafka's group coordinator last answered %.1f s ago, so "
                                "the partitions may be another sink's by now; dropping %d "
                                "points held, uncommitted (their owner writes them)", lapsed,
                                batch.pending())
                    return False
                chunk = lines[start:start + size]
                refused = await asyncio.to_thread(write_isolating, self.writer, bucket, chunk)
                for i, message in refused:
                    batch.dead.append(_dead_letter(
                        self.topics.sink_deadletter, "rejected_by_influxdb", message,
                        batch.origin(bucket, start + i), line=chunk[i], bucket=bucket))
                if refused:
                    log.warning("sink: InfluxDB refused %d of %d points for bucket %s (%s); "
                                "sent to %s", len(refused), len(chunk), bucket, refused[0][1],
                                self.topics.sink_deadletter)
                batch.done[bucket] = start + len(chunk)
                self.written += len(chunk) - len(refused)
                self.rejected += len(refused)
        if batch.dead:
            await self.deadletters.send(batch.dead)
            batch.dead = []
        return True

    def _drop(self, batch: _Batch) -> None:
        """Forget a stale batch and move the consumer back to its first records on the
        partitions still assigned here: a rejoin that keeps the same assignment need not reset
        the positions, and those records must be consumed again, not skipped."""
        self.dropped_batches += 1
        assigned = self.consumer.assignment()
        for tp, first in batch.firsts.items():
            if tp in assigned:
                try:
                    self.consumer.seek(tp, first)
                except Exception as exc:  # reassigned meanwhile: the new owner reads them
                    log.info("sink: could not rewind %s to %d (%s)", tp, first, exc)

    async def _commit(self, offsets: dict[Any, int]) -> None:
        assigned = self.consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if len(mine) < len(offsets):
            log.info("sink: not committing %d partitions revoked meanwhile (their new owner "
                     "writes the records again, which is idempotent)", len(offsets) - len(mine))
        if not mine:
            return
        try:
            await self.consumer.commit(mine)
        except KafkaError as exc:
            log.warning("sink: offset commit failed (%s); the written records will be consumed "
                        "and written again (idempotent)", exc)

    def _backlog(self, batch: _Batch) -> int | None:
        try:
            behind = 0
            for tp, next_offset in batch.offsets.items():
                highwater = self.consumer.highwater(tp)
                if highwater is not None:
                    behind += max(0, highwater - next_offset)
            return behind
        except Exception:  # best effort: only for a log line
            return None


class _StaleBatchGuard(ConsumerRebalanceListener):  # type: ignore[misc]
    """The sink's rebalance listener (aiokafka awaits it before rejoining the group)."""

    def __init__(self, sink: InfluxSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self.sink.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        return None


async def serve(sink: InfluxSink, stop: asyncio.Event) -> None:
    """Start `sink`, run it until `stop` (or cancellation), close it."""
    await sink.start()
    try:
        await sink.run(stop)
    finally:
        await sink.close()

