"""The ingest pump with fakes: grouping, dead letters, counters, and nothing acked unsent."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import pytest

from connectors.kafka import MemorySink
from ingest.mqtt_source import Delivery
from ingest.service import Ingest, IngestOptions
from models.topics import DEADLETTER, PIPELINE_COUNTERS, TELEMETRY

NOW_MS = int(time.time() * 1000)


@dataclass
class FakeSource:
    pending: list[Delivery] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    unsubscribed: bool = False

    def start(self) -> None:
        return None

    def poll(self, max_items: int) -> list[Delivery]:
        out, self.pending = self.pending[:max_items], self.pending[max_items:]
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        self.acked.extend(d.token for d in deliveries)

    def unsubscribe(self) -> None:
        self.unsubscribed = True

    def close(self, *, end_session: bool = False) -> None:
        return None

    @property
    def connected(self) -> bool:
        return True


def delivery(token: int, topic: str, body: object, *, raw: bytes | None = None) -> Delivery:
    payload = raw if raw is not None else json.dumps(body).encode()
    return Delivery(topic, payload, NOW_MS, token, redelivered=False)


def water(sensor: str, ts: int, district: str = "bletchley") -> tuple[str, dict[str, object]]:
    return (f"city/{district}/water/{sensor}",
            {"sensor_id": sensor, "ts": ts, "volume_m3": 10.0})


def traffic(sensor: str, junction: str) -> tuple[str, dict[str, object]]:
    return (f"city/central-mk/traffic/{sensor}",
            {"sensor_id": sensor, "ts": NOW_MS - 1000, "junction": junction,
             "vehicle_count": 12, "interval_s": 60, "mean_speed_kmh": 31.5})


def run_once(source: FakeSource, sink: MemorySink, **opts: object) -> Ingest:
    pump = Ingest(source, sink, "t", IngestOptions(counters_interval_s=3600, **opts))  # type: ignore[arg-type]
    asyncio.run(pump.step(asyncio.Event()))
    return pump


def test_valid_readings_grouped_by_topic_and_key_then_acked() -> None:
    items = [water("wm-1", NOW_MS - 2000), water("wm-2", NOW_MS - 2000),
             water("wm-3", NOW_MS - 2000, district="wolverton"), traffic("tc-1", "j-h5")]
    source = FakeSource([delivery(i, t, b) for i, (t, b) in enumerate(items)])
    sink = MemorySink()
    pump = run_once(source, sink)
    by_key = {(r.topic, r.key): json.loads(r.value) for r in sink.records}
    assert set(by_key) == {(TELEMETRY["water"], b"bletchley"), (TELEMETRY["water"], b"wolverton"),
                           (TELEMETRY["traffic"], b"j-h5")}
    assert [r["sensor_id"] for r in by_key[(TELEMETRY["water"], b"bletchley")]] == ["wm-1", "wm-2"]
    assert source.acked == [0, 1, 2, 3]
    assert (pump.counters.accepted, pump.counters.rejected, pump.counters.received) == (4, 0, 4)


def test_rejections_go_to_the_dead_letter_topic_with_reason() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    spoofed = {**body, "sensor_id": "wm-9"}
    source = FakeSource([delivery(1, topic, None, raw=b"{not json"),
                         delivery(2, topic, spoofed),
                         delivery(3, "city/Bad_District/water/wm-1", body),
                         delivery(4, topic, body)])
    sink = MemorySink()
    pump = run_once(source, sink)
    dead = [json.loads(r.value) for r in sink.records if r.topic == DEADLETTER]
    assert [d["reason"] for d in dead] == ["invalid_json", "sensor_mismatch", "bad_topic"]
    assert pump.counters.rejected_by_reason == {"invalid_json": 1, "sensor_mismatch": 1,
                                                "bad_topic": 1}
    assert pump.counters.accepted == 1
    assert source.acked == [1, 2, 3, 4]


def test_batch_array_split_into_records_of_bounded_size() -> None:
    sensor = "wm-7"
    body = [{"sensor_id": sensor, "ts": NOW_MS - 60_000 + i, "volume_m3": float(i)}
            for i in range(25)]
    source = FakeSource([delivery(1, f"city/bletchley/water/{sensor}", body)])
    sink = MemorySink()
    run_once(source, sink, readings_per_record=10)
    sizes = [len(json.loads(r.value)) for r in sink.records]
    assert sizes == [10, 10, 5]


def test_records_stay_small_whatever_the_readings() -> None:
    """Free text (`stop_id`) makes readings up to ~64 KiB: many of them in one batch must not
    make a record Kafka refuses for good (that would stop ingest)."""
    route, stop = "mk-1", "S" * 60_000
    deliveries = [delivery(i, f"city/central-mk/shuttle/v{i}", {
        "sensor_id": f"v{i}", "ts": NOW_MS - 1000, "route_id": route, "lat": 52.0, "lon": -0.7,
        "speed_kmh": 10.0, "passengers": 1, "capacity": 8, "battery_pct": 50.0,
        "status": "in_service", "stop_id": stop}) for i in range(40)]
    sink = MemorySink()
    run_once(FakeSource(deliveries), sink, record_max_bytes=512 * 1024)
    shuttle = [r for r in sink.records if r.topic == TELEMETRY["shuttle"]]
    assert sum(len(json.loads(r.value)) for r in shuttle) == 40
    assert max(len(r.value) for r in shuttle) <= 512 * 1024
    assert len(shuttle) > 1


def test_a_reading_larger_than_the_record_limit_still_travels_alone() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    sink = MemorySink()
    run_once(FakeSource([delivery(1, topic, body), delivery(2, topic, {**body, "ts": NOW_MS})]),
             sink, record_max_bytes=10)
    assert [len(json.loads(r.value)) for r in sink.records if r.topic != PIPELINE_COUNTERS] \
        == [1, 1]


def test_nothing_is_acked_while_kafka_fails_and_all_after_recovery() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    source = FakeSource([delivery(1, topic, body)])
    sink = MemorySink(fail_next=3)
    pump = Ingest(source, sink, "t", IngestOptions(counters_interval_s=3600, retry_max_s=0.01))
    asyncio.run(pump.step(asyncio.Event()))
    assert sink.fail_next == 0
    assert source.acked == [1]
    assert len(sink.records) == 1


def test_stop_during_outage_leaves_the_batch_unacked() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    source = FakeSource([delivery(1, topic, body)])
    sink = MemorySink(fail_next=10**6)
    pump = Ingest(source, sink, "t", IngestOptions(counters_interval_s=3600, retry_max_s=0.01))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(pump.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert source.acked == []
    assert sink.records == []


def test_a_drain_kafka_cannot_take_gives_up_in_time_and_acks_nothing() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    source = FakeSource([delivery(1, topic, body)])
    sink = MemorySink(fail_next=10**6)
    pump = Ingest(source, sink, "t", IngestOptions(counters_interval_s=3600, retry_max_s=0.01))
    t0 = time.monotonic()
    drained = asyncio.run(asyncio.wait_for(pump.drain(limit_s=0.5), 10))
    assert drained is False and time.monotonic() - t0 < 5
    assert source.unsubscribed and source.acked == [] and sink.records == []


def test_a_drain_ends_when_nothing_more_arrives() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    source = FakeSource([delivery(1, topic, body)])
    sink = MemorySink()
    pump = Ingest(source, sink, "t", IngestOptions(counters_interval_s=3600))
    assert asyncio.run(pump.drain(quiet_s=0.2, limit_s=10)) is True
    assert source.acked == [1]


def test_counters_record_reconciles() -> None:
    topic, body = water("wm-1", NOW_MS - 2000)
    source = FakeSource([delivery(1, topic, body), delivery(2, topic, None, raw=b"\xff")])
    sink = MemorySink()
    pump = run_once(source, sink)
    asyncio.run(pump._report(asyncio.Event()))
    record = json.loads(next(r.value for r in sink.records if r.topic == PIPELINE_COUNTERS))
    assert record["received"] == record["accepted"] + record["rejected"] == 2
    assert record["rejected_by_reason"] == {"invalid_json": 1}


@pytest.mark.parametrize("ts_offset_s,reason", [(400, "future_timestamp"), (-90_000, "too_old")])
def test_time_rules_use_the_receive_time(ts_offset_s: int, reason: str) -> None:
    topic, body = water("wm-1", NOW_MS + ts_offset_s * 1000)
    source = FakeSource([delivery(1, topic, body)])
    sink = MemorySink()
    run_once(source, sink)
    assert json.loads(sink.records[0].value)["reason"] == reason


class TrickleSource(FakeSource):
    """Messages that arrive while ingest waits: one more at each poll after the first."""

    def __init__(self, arriving: list[Delivery]) -> None:
        super().__init__(arriving[:1])
        self.arriving = arriving[1:]
        self.polls = 0

    def poll(self, max_items: int) -> list[Delivery]:
        self.polls += 1
        out = super().poll(max_items)
        if self.arriving:
            self.pending.append(self.arriving.pop(0))
        return out


def test_a_round_gathers_what_arrives_within_the_batch_wait() -> None:
    topic, body = water("w-1", NOW_MS - 1000)
    arriving = [delivery(i, topic, {**body, "ts": NOW_MS - 1000 - i}) for i in range(3)]
    sink = MemorySink()
    source = TrickleSource(arriving)
    run_once(source, sink, batch_wait_s=0.01)
    assert source.acked == [0, 1] and len(sink.records) == 1  # one record of two readings
    assert len(json.loads(sink.records[0].value)) == 2
    sink, source = MemorySink(), TrickleSource(arriving)
    run_once(source, sink, batch_wait_s=0)
    assert source.acked == [0] and source.polls == 1


def test_a_full_round_does_not_wait() -> None:
    topic, body = water("w-1", NOW_MS - 1000)
    source = FakeSource([delivery(i, topic, {**body, "ts": NOW_MS - 1000 - i}) for i in range(4)])
    started = time.monotonic()
    run_once(source, MemorySink(), batch_max=4, batch_wait_s=5)
    assert time.monotonic() - started < 1 and len(source.acked) == 4
