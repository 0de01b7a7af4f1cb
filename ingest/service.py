"""The ingest pump: MQTT deliveries -> decode -> Kafka records -> MQTT acks.

One loop, one batch at a time: poll what the MQTT thread received, decode it (pure, never
raises), group valid readings by Kafka topic and key into one record per group, dead-letter the
rest, send everything to Kafka and wait until it is durable, then acknowledge the batch to the
broker. If Kafka fails, the batch is retried with backoff and nothing is acknowledged, so the
broker stops delivering once `receive_maximum` messages are unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from connectors.kafka import OutRecord, Sink
from ingest.decode import decode
from ingest.mqtt_source import Delivery, Source
from models.topics import DEFAULT, Topics

log = logging.getLogger(__name__)


@dataclass
class IngestCounters:
    """Cumulative counts for this process; received = accepted + rejected (readings)."""

    messages: int = 0
    accepted: int = 0
    rejected: int = 0
    redelivered: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return self.accepted + self.rejected

    def as_record(self, instance: str) -> dict[str, object]:
        return {"component": "ingest", "instance": instance, "ts_ms": int(time.time() * 1000),
                "received": self.received, "accepted": self.accepted,
                "rejected": self.rejected, "duplicates": self.redelivered,
                "messages": self.messages,
                "rejected_by_reason": dict(self.rejected_by_reason)}


@dataclass
class IngestOptions:
    batch_max: int = 5000
    readings_per_record: int = 500
    record_max_bytes: int = 512 * 1024  # well under Kafka's default 1 MB message limit
    horizon_s: int = 86400
    counters_interval_s: float = 10.0
    idle_sleep_s: float = 0.002
    # a round keeps gathering messages this long after its first: records of more readings
    # cost ingest, Kafka and the worker less per reading (docs/performance.md)
    batch_wait_s: float = 0.05
    retry_max_s: float = 10.0


def _chunks(items: list[bytes], most: int, max_bytes: int) -> list[list[bytes]]:
    """Consecutive runs of at most `most` items and about `max_bytes` bytes (an item larger
    than that alone). Kafka refuses a record over its size limit for good: retrying it would
    stop ingest, so records stay small whatever the payloads (a reading is under 64 KiB)."""
    out: list[list[bytes]] = []
    chunk: list[bytes] = []
    size = 0
    for item in items:
        if chunk and (len(chunk) >= most or size + len(item) + 1 > max_bytes):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        out.append(chunk)
    return out


class Ingest:
    """Moves deliveries from a `Source` to a `Sink`; see the module docstring."""

    def __init__(self, source: Source, sink: Sink, instance: str,
                 options: IngestOptions | None = None, topics: Topics = DEFAULT) -> None:
        self.topics = topics
        self.source = source
        self.sink = sink
        self.instance = instance
        self.options = options or IngestOptions()
        self.counters = IngestCounters()
        self._last_counters = time.monotonic()

    def encode(self, batch: list[Delivery]) -> list[OutRecord]:
        """Decode a batch into Kafka records and count it. Pure apart from counters.

        Records: the batch's dead letters, then one record per (kind, key) group of valid
        readings (split by `_chunks`), groups in order of first appearance."""
        opts = self.options
        horizon_s = opts.horizon_s
        groups: dict[tuple[str, str], list[bytes]] = {}
        records: list[OutRecord] = []
        c = self.counters
        accepted = 0
        for d in batch:
            result = decode(d.topic, d.payload, d.received_at_ms, horizon_s=horizon_s)
            readings = result.readings
            for reading in readings:
                where = (reading.kind, reading.partition_key)
                group = groups.get(where)
                if group is None:
                    group = groups[where] = []
                group.append(reading.to_json())
            accepted += len(readings)
            if result.dead_letters:
                for dead in result.dead_letters:
                    records.append(OutRecord(self.topics.deadletter,
                                             d.topic.encode("utf-8", "replace"), dead.to_json()))
                    c.rejected_by_reason[str(dead.reason)] += 1
                c.rejected += len(result.dead_letters)
            if d.redelivered:
                c.redelivered += 1
        c.messages += len(batch)
        c.accepted += accepted
        telemetry = self.topics.telemetry
        for (kind, key), items in groups.items():
            topic, key_bytes = telemetry[kind], key.encode()
            for chunk in _chunks(items, opts.readings_per_record, opts.record_max_bytes):
                records.append(OutRecord(topic, key_bytes, b"[" + b",".join(chunk) + b"]"))
        return records

    async def deliver(self, records: list[OutRecord], stop: asyncio.Event) -> bool:
        """Send until Kafka confirms; False if asked to stop first (nothing is acked then)."""
        delay = 0.25
        failed_since: float | None = None
        while not stop.is_set():
            try:
                await self.sink.send(records)
            except Exception as exc:  # any failure: keep the batch, back off, retry
                if failed_since is None:
                    failed_since = time.monotonic()
                    log.warning("Kafka produce failed (%s); holding %d records unacknowledged "
                                "and retrying (the MQTT broker keeps the messages)", exc,
                                len(records))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, self.options.retry_max_s)
                continue
            if failed_since is not None:
                log.warning("Kafka produce recovered after %.1fs", time.monotonic() - failed_since)
            return True
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Pump until `stop` is set. A batch whose send succeeds is acknowledged; one still
        failing at stop is left unacknowledged for the broker to redeliver."""
        opts = self.options
        while not stop.is_set():
            if not await self.step(stop):
                await self._maybe_report(stop)
                await asyncio.sleep(opts.idle_sleep_s)
        await self._report(stop)

    async def step(self, stop: asyncio.Event) -> bool:
        """Move one batch; False when there was nothing to move (or it could not be sent)."""
        batch = await self._gather(stop)
        if not batch:
            return False
        records = self.encode(batch)
        if not await self.deliver(records, stop):
            return False
        self.source.ack(batch)
        await self._maybe_report(stop)
        return True

    async def _gather(self, stop: asyncio.Event) -> list[Delivery]:
        """What arrived, and when that is less than a full batch, what arrives within
        `batch_wait_s` after it (a backlog fills a batch at once and does not wait)."""
        opts = self.options
        batch = self.source.poll(opts.batch_max)
        if batch and len(batch) < opts.batch_max and opts.batch_wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.batch_wait_s)
            batch += self.source.poll(opts.batch_max - len(batch))
        return batch

    async def drain(self, quiet_s: float = 1.0, limit_s: float = 30.0) -> bool:
        """Leave the shared group: unsubscribe, move what still arrives until `quiet_s` passes
        with nothing new, so no message stays queued in a session nobody will resume. True if
        so; False if `limit_s` passed first (Kafka unreachable, say): what was not sent stays
        unacknowledged, and the caller must then keep the session for the broker to redeliver
        it."""
        self.source.unsubscribe()
        give_up = asyncio.Event()
        timer = asyncio.get_running_loop().call_later(limit_s, give_up.set)
        try:
            quiet_since = time.monotonic()
            while not give_up.is_set() and time.monotonic() - quiet_since < quiet_s:
                if await self.step(give_up):
                    quiet_since = time.monotonic()
                else:
                    await asyncio.sleep(0.05)
            drained = not give_up.is_set()
            await self._report(give_up)
            return drained
        finally:
            timer.cancel()

    async def _maybe_report(self, stop: asyncio.Event) -> None:
        if time.monotonic() - self._last_counters >= self.options.counters_interval_s:
            await self._report(stop)

    async def _report(self, stop: asyncio.Event) -> None:
        self._last_counters = time.monotonic()
        c = self.counters
        log.info("ingest %s: %d messages, %d readings accepted, %d rejected %s, %d redelivered",
                 self.instance, c.messages, c.accepted, c.rejected,
                 dict(c.rejected_by_reason), c.redelivered)
        record = OutRecord(self.topics.pipeline_counters, f"ingest/{self.instance}".encode(),
                           orjson.dumps(c.as_record(self.instance)))
        try:
            await asyncio.wait_for(self.sink.send([record]), timeout=5)
        except Exception as exc:  # counters are best effort; readings are not
            log.debug("could not publish counters: %s", exc)
