"""The InfluxDB sink with fakes: offsets committed only after the write, backpressure, bad data
dead-lettered, rebalances (`InfluxWriter` itself: tests/unit/connectors/influxdb/test_write.py)."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from connectors.influxdb.write import MemoryWriter, PointsRejected, SinkBackpressure
from connectors.kafka import MemorySink
from kinds.water import WaterKpi
from models.errors import RecordError
from models.records import Alert, record_to_json
from models.settings import KafkaSettings, Settings
from models.topics import KPI_RECORDS, PIPELINE_COUNTERS, SINK_DEADLETTER, TELEMETRY, Topics
from streams import lease
from streams.sink import InfluxSink, SinkOptions, kpi_line, write_isolating

TS = 1_795_241_700_000
WATER = TELEMETRY["water"]
SHUTTLE = TELEMETRY["shuttle"]


def water(sensor: str, ts: int = TS, volume: float = 10.0) -> dict[str, Any]:
    return {"district": "central-mk", "sensor_id": sensor, "ts_ms": ts, "kind": "water",
            "volume_m3": volume}


def readings(*items: dict[str, Any]) -> bytes:
    return orjson.dumps(list(items))


WATER_KPI = WaterKpi(district="central-mk", window_end_ms=TS, consumption_l=1200.5,
                     baseline_l=1500.0, saving_pct=19.97, saving_pct_24h=None, on_track=True,
                     meters_reporting=40)


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


@dataclass
class FakeConsumer:
    """An in-memory consumer group member: records per partition, positions, commits."""

    log: dict[TopicPartition, list[Rec]] = field(default_factory=dict)
    position: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    assigned: set[TopicPartition] = field(default_factory=set)
    polls: int = 0
    fail_commit: KafkaError | None = None
    stopped: bool = False
    listener: Any = None
    subscribed: tuple[str, ...] = ()

    def subscribe(self, topics: Any = (), pattern: Any = None, listener: Any = None) -> None:
        self.subscribed = tuple(topics)
        self.listener = listener

    async def rebalance(self, keep: set[TopicPartition]) -> None:
        """What aiokafka does in a rebalance: the listener's revocation, then the new
        assignment, whose positions restart at the committed offsets."""
        await self.listener.on_partitions_revoked(set(self.assigned))
        self.assigned = set(keep)
        self.position = {}
        await self.listener.on_partitions_assigned(set(keep))

    def produce(self, topic: str, value: bytes | None, partition: int = 0) -> None:
        tp = TopicPartition(topic, partition)
        records = self.log.setdefault(tp, [])
        records.append(Rec(topic, partition, len(records), value))
        self.assigned.add(tp)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(self, *partitions: Any, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Rec]]:
        self.polls += 1
        out: dict[TopicPartition, list[Rec]] = {}
        budget = max_records or 10**9
        for tp in sorted(self.assigned):
            start = self.position.get(tp, self.committed.get(tp, 0))
            records = self.log.get(tp, [])[start:start + budget]
            if records:
                out[tp] = records
                budget -= len(records)
                self.position[tp] = start + len(records)
        if not out:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        assert offsets is not None
        if self.fail_commit is not None:
            raise self.fail_commit
        for tp in offsets:
            if tp not in self.assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.committed.update(offsets)
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.log.get(partition, []))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self.assigned:
            raise IllegalStateError(f"Partition {partition} is not assigned")
        self.position[partition] = offset


OPTIONS = SinkOptions(batch_points=5000, poll_timeout_ms=10, retry_initial_s=0.01,
                      retry_max_s=0.05)


def make(consumer: FakeConsumer, writer: MemoryWriter | None = None,
         options: SinkOptions = OPTIONS) -> tuple[InfluxSink, MemoryWriter, MemorySink]:
    writer = writer if writer is not None else MemoryWriter()
    deadletters = MemorySink()
    return InfluxSink(consumer, writer, deadletters, options=options), writer, deadletters


def step(sink: InfluxSink) -> bool:
    return asyncio.run(sink.step(asyncio.Event()))


def dead(deadletters: MemorySink) -> list[dict[str, Any]]:
    assert all(r.topic == SINK_DEADLETTER for r in deadletters.records)
    return [orjson.loads(r.value) for r in deadletters.records]


class TestHappyPath:
    def test_points_per_bucket_then_commit(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a"), water("b"), water("c")))
        consumer.produce(KPI_RECORDS, record_to_json(WATER_KPI))
        consumer.produce(PIPELINE_COUNTERS, orjson.dumps(
            {"component": "ingest", "instance": "0", "ts_ms": TS, "received": 3,
             "accepted": 3, "rejected": 0, "messages": 1}))
        sink, writer, deadletters = make(consumer)
        assert step(sink)
        assert writer.lines["telemetry"] == [
            f"water,district=central-mk,sensor_id={s} volume_m3=10.0 {TS}" for s in "abc"]
        assert writer.lines["kpi"] == [
            "water_kpi,district=central-mk,window=15m consumption_l=1200.5,baseline_l=1500.0,"
            f"saving_pct=19.97,target_pct=20.0,on_track=true,meters_reporting=40i {TS}",
            f"pipeline,component=ingest,instance=0 received=3i,accepted=3i,rejected=0i {TS}"]
        assert consumer.commits == [{TopicPartition(WATER, 0): 1,
                                     TopicPartition(KPI_RECORDS, 0): 1,
                                     TopicPartition(PIPELINE_COUNTERS, 0): 1}]
        assert sink.counters() == {"received": 5, "written": 5, "rejected": 0}
        assert deadletters.records == []

    def test_topic_prefix(self) -> None:
        topics = Topics("city2.")
        consumer = FakeConsumer()
        consumer.produce("city2.telemetry.water", readings(water("a")))
        consumer.produce("city2.telemetry.water", b"[1]")
        consumer.produce("city2.pipeline.counters", orjson.dumps(
            {"component": "sink", "instance": "0", "ts_ms": TS, "written": 1}))
        writer, deadletters = MemoryWriter(), MemorySink()
        sink = InfluxSink(consumer, writer, deadletters, topics=topics, options=OPTIONS)
        step(sink)
        assert writer.lines == {
            "telemetry": [f"water,district=central-mk,sensor_id=a volume_m3=10.0 {TS}"],
            "kpi": [f"pipeline,component=sink,instance=0 written=1i {TS}"]}
        assert [r.topic for r in deadletters.records] == ["city2.sink.deadletter"]

    def test_nothing_to_do(self) -> None:
        consumer = FakeConsumer()
        sink, writer, _ = make(consumer)
        assert not step(sink)
        assert writer.calls == 0 and consumer.commits == []

    def test_alert_record(self) -> None:
        consumer = FakeConsumer()
        alert = Alert(kind="water", entity="central-mk", rule="night_flow", ts_ms=TS,
                      value=3.5, threshold=2.0, message='flow "high"', active=True)
        consumer.produce(KPI_RECORDS, record_to_json(alert))
        sink, writer, _ = make(consumer)
        step(sink)
        assert writer.lines["kpi"] == [
            "alert,entity=central-mk,kind=water,rule=night_flow value=3.5,threshold=2.0,"
            f'message="flow \\"high\\"",active=true {TS}']

    def test_requests_hold_at_most_batch_points(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(*(water(f"s{i}") for i in range(12))))
        sizes: list[int] = []

        class Recording(MemoryWriter):
            def write(self, bucket: str, lines: list[str]) -> None:
                sizes.append(len(lines))
                super().write(bucket, lines)

        sink, writer, _ = make(consumer, Recording(),
                               SinkOptions(batch_points=5, poll_timeout_ms=10))
        step(sink)
        assert sizes == [5, 5, 2]
        assert len(writer.lines["telemetry"]) == 12

    def test_fetch_stops_at_max_points(self) -> None:
        consumer = FakeConsumer()
        for i in range(10):
            consumer.produce(WATER, readings(water(f"s{i}"), water(f"t{i}")))
        sink, writer, _ = make(consumer, options=SinkOptions(
            max_points=6, fetch_records=1, poll_timeout_ms=10))
        step(sink)
        assert len(writer.lines["telemetry"]) == 6
        assert consumer.commits == [{TopicPartition(WATER, 0): 3}]


class TestOutage:
    def test_no_commit_and_no_consumption_while_the_writer_fails(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        consumer.produce(WATER, readings(water("b")), partition=1)

        polls: list[int] = []

        class Checking(MemoryWriter):
            def write(self, bucket: str, lines: list[str]) -> None:
                polls.append(consumer.polls)
                if self.fail_next:
                    assert consumer.commits == [], "committed before the write succeeded"
                super().write(bucket, lines)

        writer = Checking(fail_next=4)
        sink, _, _ = make(consumer, writer)
        assert step(sink)
        assert writer.calls == 5
        assert len(set(polls)) == 1, "consumed more while InfluxDB was down"
        assert writer.lines["telemetry"] == [
            f"water,district=central-mk,sensor_id={s} volume_m3=10.0 {TS}" for s in "ab"]
        assert consumer.commits == [{TopicPartition(WATER, 0): 1, TopicPartition(WATER, 1): 1}]
        assert sink.counters()["written"] == 2

    def test_stop_during_outage_commits_nothing(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        sink, writer, _ = make(consumer, MemoryWriter(fail_next=10**9))

        async def scenario() -> int:
            stop = asyncio.Event()
            task = asyncio.create_task(sink.run(stop))
            while writer.calls == 0:
                await asyncio.sleep(0.01)
            polls = consumer.polls
            await asyncio.sleep(0.3)
            assert consumer.polls == polls, "consumed more while InfluxDB was down"
            stop.set()
            await asyncio.wait_for(task, 5)
            return polls

        asyncio.run(scenario())
        assert writer.calls > 3  # it kept retrying
        assert consumer.commits == []
        assert sink.counters()["written"] == 0
        # A restarted sink consumes the same records again from the committed offset.
        consumer.position.clear()
        again, writer2, _ = make(consumer)
        assert step(again)
        assert writer2.lines["telemetry"] == [
            f"water,district=central-mk,sensor_id=a volume_m3=10.0 {TS}"]

    def test_retry_after_is_honoured(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        times: list[float] = []

        class Busy(MemoryWriter):
            def write(self, bucket: str, lines: list[str]) -> None:
                times.append(time.monotonic())
                if len(times) == 1:
                    raise SinkBackpressure("HTTP 429", 0.3)
                super().write(bucket, lines)

        sink, writer, _ = make(consumer, Busy())
        step(sink)
        assert times[1] - times[0] >= 0.29
        assert writer.lines["telemetry"]

    def test_resumes_after_the_chunks_already_written(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(*(water(f"s{i}") for i in range(7))))

        class FailSecond(MemoryWriter):
            def write(self, bucket: str, lines: list[str]) -> None:
                if self.calls == 1:
                    self.calls += 1
                    raise SinkBackpressure("blip", 0.0)
                super().write(bucket, lines)

        sink, writer, _ = make(consumer, FailSecond(),
                               SinkOptions(batch_points=3, poll_timeout_ms=10,
                                           retry_initial_s=0.01))
        step(sink)
        assert writer.lines["telemetry"] == [
            f"water,district=central-mk,sensor_id=s{i} volume_m3=10.0 {TS}" for i in range(7)]

    def test_dead_letter_producer_failure_is_retried_too(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, b"not json")
        consumer.produce(WATER, readings(water("a")))
        sink, writer, deadletters = make(consumer)
        deadletters.fail_next = 2
        assert step(sink)
        assert len(dead(deadletters)) == 1
        assert writer.lines["telemetry"] == [
            f"water,district=central-mk,sensor_id=a volume_m3=10.0 {TS}"]
        assert consumer.commits == [{TopicPartition(WATER, 0): 2}]


class TestBadData:
    def test_undecodable_input_is_dead_lettered_and_the_rest_written(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, b"{not json")
        consumer.produce(WATER, orjson.dumps([water("a"), {**water("b"), "volume_m3": "x"},
                                              water("c"), 7]))
        consumer.produce(WATER, orjson.dumps("a string"))
        consumer.produce(SHUTTLE, readings(water("d")))
        consumer.produce(KPI_RECORDS, orjson.dumps({"measurement": "gas_kpi"}))
        consumer.produce(KPI_RECORDS, orjson.dumps([1, 2]))
        consumer.produce(KPI_RECORDS, orjson.dumps({"measurement": "water_kpi"}))
        consumer.produce(PIPELINE_COUNTERS, orjson.dumps({"component": "x y"}))
        consumer.produce(PIPELINE_COUNTERS, None)
        sink, writer, deadletters = make(consumer)
        assert step(sink)
        assert writer.lines == {"telemetry": [
            f"water,district=central-mk,sensor_id={s} volume_m3=10.0 {TS}" for s in "ac"]}
        letters = sorted(dead(deadletters),
                         key=lambda d: (d["topic"], d["offset"], d.get("index", -1)))
        assert [(d["topic"], d["offset"], d.get("index")) for d in letters] == [
            (KPI_RECORDS, 0, None), (KPI_RECORDS, 1, None), (KPI_RECORDS, 2, None),
            (PIPELINE_COUNTERS, 0, None), (PIPELINE_COUNTERS, 1, None),
            (SHUTTLE, 0, 0), (WATER, 0, None), (WATER, 1, 1), (WATER, 1, 3), (WATER, 2, None)]
        assert {d["reason"] for d in letters} == {"undecodable"}
        assert orjson.loads(base64.b64decode(letters[7]["raw"]))["volume_m3"] == "x"
        assert "volume_m3" in letters[7]["detail"]
        assert "water" in letters[5]["detail"]  # a water reading on the shuttle topic
        assert base64.b64decode(letters[6]["raw"]) == b"{not json"
        assert sink.counters() == {"received": 12, "written": 2, "rejected": 10}
        assert consumer.commits[-1][TopicPartition(WATER, 0)] == 3

    def test_lines_refused_by_influxdb_are_isolated_and_dead_lettered(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(*(water(f"s{i}") for i in range(5))))
        consumer.produce(WATER, readings(water("bad1"), water("s5"), water("bad2")))
        writer = MemoryWriter(reject=("sensor_id=bad",))
        sink, _, deadletters = make(consumer, writer)
        assert step(sink)
        assert sorted(writer.lines["telemetry"]) == sorted(
            f"water,district=central-mk,sensor_id=s{i} volume_m3=10.0 {TS}" for i in range(6))
        letters = dead(deadletters)
        assert [(d["reason"], d["offset"], d["bucket"]) for d in letters] == [
            ("rejected_by_influxdb", 1, "telemetry")] * 2
        assert [d["line"] for d in letters] == [
            f"water,district=central-mk,sensor_id={s} volume_m3=10.0 {TS}"
            for s in ("bad1", "bad2")]
        assert "unable to parse" in letters[0]["detail"]
        assert sink.counters() == {"received": 8, "written": 6, "rejected": 2}
        assert consumer.commits == [{TopicPartition(WATER, 0): 2}]

    def test_write_isolating_bisects(self) -> None:
        writer = MemoryWriter(reject=("x",))
        lines = ["a", "b", "x1", "c", "d", "e", "x2", "f"]
        assert write_isolating(writer, "b", lines) == [
            (2, "unable to parse 'x1': simulated"), (6, "unable to parse 'x2': simulated")]
        assert sorted(writer.lines["b"]) == ["a", "b", "c", "d", "e", "f"]

    def test_write_isolating_trusts_dropped_all(self) -> None:
        calls: list[int] = []

        class Retention(MemoryWriter):
            def write(self, bucket: str, lines: list[str]) -> None:
                calls.append(len(lines))
                raise PointsRejected("points beyond retention policy dropped=4", 422, 4)

        assert [i for i, _ in write_isolating(Retention(), "b", ["1", "2", "3", "4"])] == [
            0, 1, 2, 3]
        assert calls == [4]


@dataclass
class SlowWriter(MemoryWriter):
    """A writer whose every request waits until `release` is set (`entered` says one began)."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def write(self, bucket: str, lines: list[str]) -> None:
        self.entered.set()
        self.release.wait(5)
        super().write(bucket, lines)


async def step_through_outage(sink: InfluxSink, writer: MemoryWriter,
                              during: Callable[[], Awaitable[None]]) -> bool:
    """Start `sink` and step it while `writer` fails; after two failed writes run `during`,
    bring the writer back, and return the step's result."""
    await sink.start()
    task = asyncio.create_task(sink.step(asyncio.Event()))
    while writer.calls < 2:
        await asyncio.sleep(0.005)
    await during()
    writer.fail_next = 0
    return await asyncio.wait_for(task, 5)


class TestRebalance:
    def test_revoked_partition_is_not_committed(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        consumer.produce(WATER, readings(water("b")), partition=1)

        class Revoking(MemoryWriter):
            def write(self, bucket: str, lines: list[str]) -> None:
                consumer.assigned.discard(TopicPartition(WATER, 1))  # rebalance mid-write
                super().write(bucket, lines)

        sink, _, _ = make(consumer, Revoking())
        assert step(sink)
        assert consumer.commits == [{TopicPartition(WATER, 0): 1}]

    def test_start_subscribes_the_sink_topics_with_its_listener(self) -> None:
        consumer = FakeConsumer()
        sink, _, _ = make(consumer)
        asyncio.run(sink.start())
        assert set(consumer.subscribed) == {*Topics().telemetry.values(), KPI_RECORDS,
                                            PIPELINE_COUNTERS}
        assert consumer.listener is not None

    def test_batch_held_through_an_outage_is_dropped_after_a_rebalance(self) -> None:
        """The zombie write: a batch held while InfluxDB is down must not be written once a
        rebalance may have given its partitions to another member."""
        consumer = FakeConsumer()
        consumer.produce(KPI_RECORDS, record_to_json(WATER_KPI))
        writer = MemoryWriter(fail_next=10**9)
        sink, _, _ = make(consumer, writer)

        async def rebalance() -> None:
            await consumer.rebalance(keep=set())   # KPI_RECORDS/0 now belongs to another sink

        assert asyncio.run(step_through_outage(sink, writer, rebalance)) is False
        assert writer.lines == {}
        assert consumer.commits == []
        assert sink.dropped_batches == 1

    def test_after_a_rebalance_the_records_are_consumed_again_and_written_in_order(
            self) -> None:
        consumer = FakeConsumer()
        older = WATER_KPI.model_copy(update={"consumption_l": 1.0})
        consumer.produce(KPI_RECORDS, record_to_json(older))
        writer = MemoryWriter(fail_next=10**9)
        sink, _, _ = make(consumer, writer)
        kpi = TopicPartition(KPI_RECORDS, 0)

        async def rebalance() -> None:
            consumer.produce(KPI_RECORDS, record_to_json(WATER_KPI))  # the newer value
            await consumer.rebalance(keep={kpi})

        async def scenario() -> None:
            assert await step_through_outage(sink, writer, rebalance) is False
            assert await sink.step(asyncio.Event())

        asyncio.run(scenario())
        assert [line.split(" ")[1].split(",")[0] for line in writer.lines["kpi"]] == [
            "consumption_l=1.0", "consumption_l=1200.5"]
        assert consumer.commits == [{kpi: 2}]

    def test_a_dropped_batch_is_consumed_again_when_the_rejoin_keeps_the_positions(
            self) -> None:
        """A rejoin (e.g. after the coordinator moved) runs the revocation but may keep the
        assignment and its positions: the dropped records must not be skipped."""
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        writer = MemoryWriter(fail_next=10**9)
        sink, _, _ = make(consumer, writer)
        tp = TopicPartition(WATER, 0)

        async def rejoin() -> None:
            await consumer.listener.on_partitions_revoked(set(consumer.assigned))
            consumer.produce(WATER, readings(water("b")))

        async def scenario() -> None:
            assert await step_through_outage(sink, writer, rejoin) is False
            assert await sink.step(asyncio.Event())

        asyncio.run(scenario())
        assert [line.split(",")[2].split(" ")[0] for line in writer.lines["telemetry"]] == [
            "sensor_id=a", "sensor_id=b"]
        assert consumer.commits == [{tp: 2}]

    def test_a_batch_held_through_an_outage_is_dropped_once_the_group_lease_lapsed(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """Cut off Kafka, the sink hears of no rebalance: its lease says when the partitions
        may be another sink's, and then nothing is written or consumed until it is renewed."""
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        writer = MemoryWriter(fail_next=10**9)
        lapsed: list[float | None] = [None]
        sink = InfluxSink(consumer, writer, MemorySink(), options=OPTIONS,
                          lease_lapsed=lambda: lapsed[0])
        tp = TopicPartition(WATER, 0)

        async def cut_off() -> None:
            lapsed[0] = 12.5
            consumer.produce(WATER, readings(water("b")))

        async def scenario() -> None:
            with caplog.at_level(logging.WARNING, logger="streams.sink"):
                assert await step_through_outage(sink, writer, cut_off) is False
            polls = consumer.polls
            assert await sink.step(asyncio.Event()) is False
            assert consumer.polls == polls, "consumed while the lease had lapsed"
            lapsed[0] = None  # the coordinator answers again
            assert await sink.step(asyncio.Event())

        asyncio.run(scenario())
        assert "last answered 12.5 s ago" in caplog.text
        assert sink.dropped_batches == 1
        assert [line.split(",")[2].split(" ")[0] for line in writer.lines["telemetry"]] == [
            "sensor_id=a", "sensor_id=b"]
        assert consumer.commits == [{tp: 2}]

    def test_the_production_sink_holds_a_lease_on_its_own_group(self) -> None:
        async def build() -> InfluxSink:
            sink = InfluxSink.from_settings(Settings(kafka=KafkaSettings(topic_prefix="t1.")))
            await sink.close()
            return sink

        lapsed = asyncio.run(build()).lease_lapsed
        assert isinstance(lapsed, functools.partial)
        assert (lapsed.func, lapsed.args) == (lease.lapsed, ("t1.citystream-sink",))
        assert GroupCoordinator._citystream_lease, "installed before the consumer starts"

    def test_revocation_waits_for_a_write_under_way(self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a")))
        writer = SlowWriter()
        entered, release = writer.entered, writer.release
        sink, _, _ = make(consumer, writer)

        async def scenario() -> list[str]:
            await sink.start()
            events = []
            task = asyncio.create_task(sink.step(asyncio.Event()))
            await asyncio.to_thread(entered.wait, 5)
            revoking = asyncio.create_task(consumer.listener.on_partitions_revoked(
                set(consumer.assigned)))
            await asyncio.sleep(0.05)
            events.append("revoked" if revoking.done() else "revocation waits")
            release.set()
            await asyncio.wait_for(revoking, 5)
            events.append(f"written {len(writer.lines.get('telemetry', []))}, "
                          f"commits {len(consumer.commits)}")
            assert await task
            return events

        assert asyncio.run(scenario()) == ["revocation waits", "written 1, commits 1"]

    def test_a_write_under_way_stops_at_its_next_request_when_a_rebalance_begins(
            self) -> None:
        consumer = FakeConsumer()
        consumer.produce(WATER, readings(water("a"), water("b"), water("c")))
        writer = SlowWriter()
        entered, release = writer.entered, writer.release
        sink, _, _ = make(consumer, writer, replace(OPTIONS, batch_points=1))

        async def scenario() -> bool:
            await sink.start()
            task = asyncio.create_task(sink.step(asyncio.Event()))
            await asyncio.to_thread(entered.wait, 5)
            revoking = asyncio.create_task(consumer.listener.on_partitions_revoked(
                set(consumer.assigned)))
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.wait_for(revoking, 5)
            return await asyncio.wait_for(task, 5)

        assert asyncio.run(scenario()) is False
        assert len(writer.lines["telemetry"]) == 1  # the request under way, not the other two
        assert consumer.commits == []

    @pytest.mark.parametrize("error", [CommitFailedError("rebalanced"),
                                       IllegalStateError("No partitions assigned")])
    def test_failed_commit_is_logged_not_fatal(self, error: KafkaError,
                                               caplog: pytest.LogCaptureFixture) -> None:
        consumer = FakeConsumer(fail_commit=error)
        consumer.produce(WATER, readings(water("a")))
        sink, writer, _ = make(consumer)
        assert step(sink)
        assert writer.lines["telemetry"]
        assert "offset commit failed" in caplog.text


class TestKpiLine:
    def test_int_for_a_float_field_becomes_a_float(self) -> None:
        value = orjson.loads(record_to_json(WATER_KPI))
        value["consumption_l"] = 1200
        assert "consumption_l=1200.0," in kpi_line(orjson.dumps(value))

    @pytest.mark.parametrize("value", [
        b"", b"[]", b"{}", b'{"measurement": "water_kpi"}', b'{"measurement": ["x"]}',
        orjson.dumps({**orjson.loads(record_to_json(WATER_KPI)), "colour": "blue"})])
    def test_bad_values(self, value: bytes) -> None:
        with pytest.raises(RecordError):
            kpi_line(value)
