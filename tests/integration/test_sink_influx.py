"""The InfluxDB sink against the real Kafka and InfluxDB 2.7: exact points, idempotent replays,
an InfluxDB outage with nothing lost and no offset committed ahead of the write, how the
server's 400 / 422 refusals end up in the dead-letter topic, and a sink cut off its group that
drops what it held rather than write it over the new owner's values."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from influxdb_client.client.influxdb_client import InfluxDBClient
from pydantic import SecretStr

from connectors.influxdb.write import InfluxWriter, PointWriter, SinkBackpressure
from connectors.kafka import KafkaSink, ensure_topics
from deploy.local.stack import Stack
from kinds.shuttle import ShuttleReading
from kinds.traffic import TrafficReading
from kinds.water import WaterKpi, WaterReading
from models.records import Alert, record_to_json
from models.settings import InfluxSettings, KafkaSettings
from models.topics import Topics
from streams import lease
from streams.sink import (
    GROUP_ID,
    Buckets,
    InfluxSink,
    SinkOptions,
    kafka_consumer,
    sink_topics,
)
from tests.integration.helpers import read_kafka

pytestmark = [pytest.mark.kafka, pytest.mark.influxdb]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Key = tuple[str, tuple[tuple[str, str], ...], int]  # measurement, sorted tags, ts_ms
Points = dict[Key, dict[str, Any]]
Sent = list[tuple[str, bytes, bytes]]  # topic, key, value


@dataclass
class Env:
    stack: Stack
    kafka: KafkaSettings
    influx: InfluxSettings
    run: str

    @property
    def district(self) -> str:
        return f"it-{self.run}"

    @property
    def topics(self) -> Topics:
        return self.kafka.topics

    @property
    def group(self) -> str:
        return f"{self.kafka.topic_prefix}{GROUP_ID}"


@pytest.fixture
def env(stack: Stack) -> Env:
    """Settings for one test: its own topic prefix (so its own topics and sink group) and its
    own district, so tests sharing the session's stack never see each other's data."""
    info = stack.client_info()
    influx = info["influxdb"]
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap=info["kafka"]["bootstrap"], topic_prefix=f"it-{run}.")
    asyncio.run(ensure_topics(kafka, [*sink_topics(kafka.topics),
                                      kafka.topics.sink_deadletter]))
    return Env(stack, kafka,
               InfluxSettings(url=influx["url"], org=influx["org"],
                              token=SecretStr(influx["token"]),
                              bucket_telemetry=influx["buckets"]["telemetry"],
                              bucket_kpi=influx["buckets"]["kpi"]),
               run)


# -- Kafka helpers ----------------------------------------------------------------------------

async def partitions(bootstrap: str, topics: list[str]) -> list[TopicPartition]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # topics created a moment ago take a while to show in the metadata
            await consumer._client.force_metadata_update()
            known = {t: consumer.partitions_for_topic(t) for t in topics}
            if all(known.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert all(known.values()), f"topics without metadata: {known}"
        return [TopicPartition(t, p) for t in topics for p in sorted(known[t] or ())]
    finally:
        await consumer.stop()


async def committed(e: Env) -> dict[TopicPartition, int]:
    """The group's committed offsets, read from outside the group."""
    tps = await partitions(e.kafka.bootstrap, sink_topics(e.topics))
    consumer = AIOKafkaConsumer(bootstrap_servers=e.kafka.bootstrap, group_id=e.group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: offset for tp in tps
                if (offset := await consumer.committed(tp)) is not None}
    finally:
        await consumer.stop()


async def produce(e: Env, records: Sent) -> dict[TopicPartition, int]:
    """Send with acks=all; returns the next offset after ours, per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=e.kafka.bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in records]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    ends: dict[TopicPartition, int] = {}
    for meta in metas:
        tp = TopicPartition(meta.topic, meta.partition)
        ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    return ends


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def _true(value: bool) -> bool:
    return value


def caught_up(e: Env, ends: dict[TopicPartition, int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        done = await committed(e)
        return all(done.get(tp, 0) >= end for tp, end in ends.items())
    return check


def make_sink(e: Env, writer: PointWriter | None = None,
              lease_lapsed: Callable[[], float | None] = lambda: None,
              **options: Any) -> InfluxSink:
    return InfluxSink(
        kafka_consumer(e.kafka), writer or InfluxWriter(e.influx),
        KafkaSink(e.kafka, client_id="citystream-sink-it"),
        buckets=Buckets(e.influx.bucket_telemetry, e.influx.bucket_kpi), topics=e.topics,
        options=SinkOptions(poll_timeout_ms=200, retry_initial_s=0.2, retry_max_s=1.0,
                            **options), lease_lapsed=lease_lapsed)


class Running:
    """The sink as an asyncio task in this process."""

    def __init__(self, sink: InfluxSink) -> None:
        self.sink = sink
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InfluxSink:
        await self.sink.start()
        self.task = asyncio.create_task(self.sink.run(self.stop))
        return self.sink

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        try:
            if self.task is not None:
                await asyncio.wait_for(self.task, 30)
        finally:
            await self.sink.close()


# -- InfluxDB helpers -------------------------------------------------------------------------

def query(e: Env, bucket: str, start: str = "-3h", stop: str = "now()") -> Points:
    """Every point of this test's run in `bucket`, with typed field values."""
    d = e.district
    flux = (f'from(bucket: "{bucket}") |> range(start: {start}, stop: {stop}) '
            f'|> filter(fn: (r) => r.district == "{d}" or r.entity == "{d}" '
            f'or r.instance == "{d}")')
    token = e.influx.token.get_secret_value() if e.influx.token else ""
    out: Points = {}
    with InfluxDBClient(url=e.influx.url, token=token, org=e.influx.org) as client:
        for table in client.query_api().query(flux):
            for rec in table.records:
                tags = tuple(sorted((k, v) for k, v in rec.values.items()
                                    if not k.startswith("_") and k not in ("result", "table")))
                ts = (rec.get_time() - EPOCH) // timedelta(milliseconds=1)
                out.setdefault((rec.get_measurement(), tags, ts), {})[rec.get_field()] = (
                    rec.get_value())
    return out


def counts(e: Env, bucket: str) -> dict[str, int]:
    """Stored values per field over the run's points (1 each if nothing was doubled)."""
    d = e.district
    flux = (f'from(bucket: "{bucket}") |> range(start: -3h) '
            f'|> filter(fn: (r) => r.district == "{d}") |> count()')
    token = e.influx.token.get_secret_value() if e.influx.token else ""
    with InfluxDBClient(url=e.influx.url, token=token, org=e.influx.org) as client:
        tables = client.query_api().query(flux)
    return {f"{rec.get_measurement()}.{rec.values['sensor_id']}.{rec.get_field()}":
            rec.get_value() for table in tables for rec in table.records}


def typed(points: Points) -> dict[Key, dict[str, tuple[type, Any]]]:
    return {k: {f: (type(v), v) for f, v in fields.items()} for k, fields in points.items()}


# -- the data ---------------------------------------------------------------------------------

def sample(e: Env, ts: int) -> tuple[Sent, Points, Points]:
    """Records of every kind for the sink, and the telemetry and kpi points they must become."""
    d = e.district
    topics = e.topics
    w1 = WaterReading(district=d, sensor_id="wm-1", ts_ms=ts, seq=4, volume_m3=12.5,
                      flow_l_min=3, pressure_bar=2.75)
    w2 = WaterReading(district=d, sensor_id="wm-2", ts_ms=ts + 1, volume_m3=7.0)
    tr = TrafficReading(district=d, sensor_id="tc-1", ts_ms=ts, junction="j-1",
                        vehicle_count=17, interval_s=60.0, mean_speed_kmh=41.25)
    sh = ShuttleReading(district=d, sensor_id="sh-1", ts_ms=ts, route_id="r-1", lat=52.04,
                        lon=-0.76, speed_kmh=0.0, passengers=3, capacity=10,
                        battery_pct=80.5, status="in_service", stop_id='stop "4", east',
                        delay_s=-12.0, disengaged=True)
    energy_json = orjson.dumps([{"district": d, "sensor_id": "em-1", "ts_ms": ts,
                                 "kind": "energy", "energy_kwh": 100}])  # an int, as JSON may
    kpi = WaterKpi(district=d, window_end_ms=ts, consumption_l=1520.0, baseline_l=1900.0,
                   saving_pct=20.0, saving_pct_24h=None, on_track=True, meters_reporting=2)
    alert = Alert(kind="water", entity=d, rule="night_flow", ts_ms=ts, value=3.5,
                  threshold=2.0, message="night flow 3.5 L/min, above 2", active=True)
    counters = orjson.dumps({"component": "ingest", "instance": d, "ts_ms": ts,
                             "received": 6, "accepted": 5, "rejected": 1, "messages": 2,
                             "rejected_by_reason": {"schema": 1}})
    sent: Sent = [
        (topics.telemetry["water"], d.encode(), b"[" + w1.to_json() + b"," + w2.to_json() + b"]"),
        (topics.telemetry["energy"], d.encode(), energy_json),
        (topics.telemetry["traffic"], b"j-1", b"[" + tr.to_json() + b"]"),
        (topics.telemetry["shuttle"], b"r-1", b"[" + sh.to_json() + b"]"),
        (topics.kpi_records, d.encode(), record_to_json(kpi)),
        (topics.kpi_records, d.encode(), record_to_json(alert)),
        (topics.pipeline_counters, b"ingest/" + d.encode(), counters),
    ]
    telemetry: Points = {
        ("water", (("district", d), ("sensor_id", "wm-1")), ts):
            {"volume_m3": 12.5, "flow_l_min": 3.0, "pressure_bar": 2.75, "seq": 4},
        ("water", (("district", d), ("sensor_id", "wm-2")), ts + 1): {"volume_m3": 7.0},
        ("energy", (("district", d), ("sensor_id", "em-1")), ts): {"energy_kwh": 100.0},
        ("traffic", (("district", d), ("junction", "j-1"), ("sensor_id", "tc-1")), ts):
            {"vehicle_count": 17, "interval_s": 60.0, "mean_speed_kmh": 41.25},
        ("shuttle", (("district", d), ("route", "r-1"), ("sensor_id", "sh-1")), ts):
            {"lat": 52.04, "lon": -0.76, "speed_kmh": 0.0, "passengers": 3, "capacity": 10,
             "battery_pct": 80.5, "status": "in_service", "stop_id": 'stop "4", east',
             "delay_s": -12.0, "disengaged": True},
    }
    kpis: Points = {
        ("water_kpi", (("district", d), ("window", "15m")), ts):
            {"consumption_l": 1520.0, "baseline_l": 1900.0, "saving_pct": 20.0,
             "target_pct": 20.0, "on_track": True, "meters_reporting": 2},
        ("alert", (("entity", d), ("kind", "water"), ("rule", "night_flow")), ts):
            {"value": 3.5, "threshold": 2.0, "message": "night flow 3.5 L/min, above 2",
             "active": True},
        ("pipeline", (("component", "ingest"), ("instance", d)), ts):
            {"received": 6, "accepted": 5, "rejected": 1},
    }
    return sent, telemetry, kpis


def water_batch(e: Env, ts: int, n: int, tag: str) -> tuple[Sent, Points]:
    """n water readings over 20 sensors, sent as records of 10 keyed by sensor group."""
    d = e.district
    topics = e.topics
    readings = [WaterReading(district=d, sensor_id=f"wm-{tag}-{i % 20:02d}",
                             ts_ms=ts + (i // 20) * 1000, volume_m3=100.0 + i)
                for i in range(n)]
    sent: Sent = [(topics.telemetry["water"], f"{d}/{i}".encode(),
                   b"[" + b",".join(r.to_json() for r in readings[i:i + 10]) + b"]")
                  for i in range(0, n, 10)]
    points: Points = {("water", (("district", d), ("sensor_id", r.sensor_id)), r.ts_ms):
                      {"volume_m3": r.volume_m3} for r in readings}
    return sent, points


def now_ms(minutes_ago: int) -> int:
    return (int(time.time()) - minutes_ago * 60) * 1000


# -- tests ------------------------------------------------------------------------------------

def test_every_kind_arrives_exactly(env: Env) -> None:
    ts = now_ms(30)
    sent, telemetry, kpis = sample(env, ts)

    async def scenario() -> None:
        ends = await produce(env, sent)
        async with Running(make_sink(env)) as sink:
            await until(caught_up(env, ends), 60, "the sink to commit past our records")
            assert sink.counters()["rejected"] == 0

    asyncio.run(scenario())
    assert typed(query(env, env.influx.bucket_telemetry)) == typed(telemetry)
    assert typed(query(env, env.influx.bucket_kpi)) == typed(kpis)


def test_replayed_records_overwrite_the_same_points(env: Env) -> None:
    ts = now_ms(40)
    sent, telemetry, _ = sample(env, ts)
    changed = [(t, k, v.replace(b'"volume_m3":7.0', b'"volume_m3":7.5')) for t, k, v in sent]
    telemetry[("water", (("district", env.district), ("sensor_id", "wm-2")), ts + 1)] = {
        "volume_m3": 7.5}

    async def scenario() -> None:
        ends = await produce(env, sent + sent + changed)  # twice, then a correction
        async with Running(make_sink(env, max_points=3, batch_points=2)):
            await until(caught_up(env, ends), 60, "the sink to commit past our records")

    asyncio.run(scenario())
    assert typed(query(env, env.influx.bucket_telemetry)) == typed(telemetry)
    assert set(counts(env, env.influx.bucket_telemetry).values()) == {1}


def test_influxdb_outage_loses_nothing_and_commits_nothing_early(env: Env) -> None:
    ts = now_ms(60)
    before, points_before = water_batch(env, ts, 400, "a")
    during, points_during = water_batch(env, ts + 3_600_000 // 2, 600, "b")

    async def scenario() -> None:
        ends = await produce(env, before)
        async with Running(make_sink(env, batch_points=100, max_points=300)) as sink:
            await until(caught_up(env, ends), 60, "the records before the outage")
            written = sink.counters()["written"]
            offsets = await committed(env)
            assert query(env, env.influx.bucket_telemetry) == points_before

            await asyncio.to_thread(env.stack.stop_service, "influxdb")
            try:
                ends_during = await produce(env, during)
                await asyncio.sleep(6)  # the sink fetches, fails, backs off, holds
                assert await committed(env) == offsets, "committed offsets ran ahead"
                assert sink.counters()["written"] == written
            finally:
                await asyncio.to_thread(env.stack.start_service, "influxdb")
            await until(caught_up(env, ends_during), 90, "the records after the outage")
            assert sink.counters()["rejected"] == 0

    asyncio.run(scenario())
    assert query(env, env.influx.bucket_telemetry) == {**points_before, **points_during}


def test_points_influxdb_refuses_go_to_the_dead_letter_topic(env: Env) -> None:
    """InfluxDB 2.7.12, for real: a field type conflict is a 422 partial write and a timestamp
    out of range a 400 for the whole request; the sink writes everything else, dead-letters
    exactly the refused lines with the server's message, and commits.

    The conflict needs a shard where `volume_m3` is an integer; it lives in a bucket of its
    own, because a query whose range spans shards with different types for a field silently
    returns incomplete results (seen on 2.7.12), which would upset every other test.
    """
    d = env.district
    topics = env.topics
    bucket = f"sink-it-{env.run}"
    token = env.influx.token.get_secret_value() if env.influx.token else ""
    with InfluxDBClient(url=env.influx.url, token=token, org=env.influx.org) as client:
        created = client.buckets_api().create_bucket(bucket_name=bucket, org=env.influx.org)
    try:
        ts = now_ms(20)
        old = int(datetime(1991, 1, 7, tzinfo=UTC).timestamp() * 1000)
        InfluxWriter(env.influx).write(bucket, [
            f"water,district={d},sensor_id=wm-int volume_m3=1i {old}"])

        def reading(sensor: str, ts_ms: int) -> dict[str, Any]:
            return {"district": d, "sensor_id": sensor, "ts_ms": ts_ms, "kind": "water",
                    "volume_m3": 5.0}

        value = orjson.dumps([reading("wm-ok1", ts), reading("wm-conflict", old + 1000),
                              reading("wm-ok2", ts), reading("wm-future", 10**16),
                              reading("wm-ok3", ts)])

        async def scenario() -> dict[str, int]:
            ends = await produce(env, [(topics.telemetry["water"], d.encode(), value)])
            sink = make_sink(env)
            sink.buckets = Buckets(bucket, env.influx.bucket_kpi)
            async with Running(sink):
                await until(caught_up(env, ends), 60, "the sink to commit past our records")
                return sink.counters()

        counters = asyncio.run(scenario())
        assert counters == {"received": 5, "written": 3, "rejected": 2}
        recent = query(env, bucket)
        assert {dict(k[1])["sensor_id"] for k in recent} == {"wm-ok1", "wm-ok2", "wm-ok3"}
        assert query(env, bucket, "1991-01-01T00:00:00Z", "1991-01-08T00:00:00Z") == {
            ("water", (("district", d), ("sensor_id", "wm-int")), old): {"volume_m3": 1}}
    finally:
        with InfluxDBClient(url=env.influx.url, token=token, org=env.influx.org) as client:
            client.buckets_api().delete_bucket(created)

    dead_topic = topics.sink_deadletter
    letters = [orjson.loads(v) for _, v in read_kafka(env.kafka.bootstrap,
                                                      [dead_topic])[dead_topic]]
    ours = {letter["line"].split("sensor_id=")[1].split(" ")[0]: letter for letter in letters}
    assert set(ours) == {"wm-conflict", "wm-future"}
    assert all(x["reason"] == "rejected_by_influxdb" and x["topic"] == topics.telemetry["water"]
               and x["bucket"] == bucket for x in ours.values())
    assert "field type conflict" in ours["wm-conflict"]["detail"]
    assert "dropped=1" in ours["wm-conflict"]["detail"]
    assert "time outside range" in ours["wm-future"]["detail"]


class CutOff:
    """A sink's InfluxDB writer across a network that can be cut (then every write fails as
    an unreachable InfluxDB does) and healed."""

    def __init__(self, writer: InfluxWriter) -> None:
        self.writer = writer
        self.cut = False

    def write(self, bucket: str, lines: list[str]) -> None:
        if self.cut:
            raise SinkBackpressure("InfluxDB unreachable (network cut)", 0.2)
        self.writer.write(bucket, lines)

    def close(self) -> None:
        self.writer.close()


def test_a_sink_cut_off_kafka_and_influxdb_never_writes_what_it_held(env: Env) -> None:
    """The zombie write the sink's group lease prevents (streams/sink.py), on a real group.
    Sink A holds a batch through an InfluxDB it cannot reach; then its group coordinator stops
    answering it (its requests made to hang, as across a network partition), the group gives
    the partitions to sink B, and B writes those records and their corrections. When A reaches
    InfluxDB again it must drop what it held: written then, it would overwrite B's newer
    values with stale ones."""
    lease.install()
    ts = now_ms(50)
    first, points_first = water_batch(env, ts, 100, "a")
    held, _ = water_batch(env, ts, 100, "a")  # the same points again: what A holds
    held = [(t, k, v.replace(b'"volume_m3":1', b'"volume_m3":2')) for t, k, v in held]
    corrected = [(t, k, v.replace(b'"volume_m3":2', b'"volume_m3":3')) for t, k, v in held]
    final = {key: {"volume_m3": fields["volume_m3"] + 200}
             for key, fields in points_first.items()}

    async def scenario() -> dict[str, Any]:
        writer = CutOff(InfluxWriter(env.influx))
        a = make_sink(env, writer, functools.partial(lease.lapsed, env.group))
        async with Running(a):
            await until(caught_up(env, await produce(env, first)), 60, "A writes the first")
            writer.cut = True
            await produce(env, held)
            await until(lambda: _true(a._held > 0), 30, "A to hold a batch it cannot write")
            written = a.counters()["written"]

            coordinator = a.consumer._coordinator  # type: ignore[attr-defined]
            send, healed = coordinator._send_req, asyncio.Event()

            async def unanswered(request: Any) -> Any:
                await healed.wait()
                return await send(request)

            coordinator._send_req = unanswered
            t0 = time.monotonic()
            await until(lambda: _true(lease.lapsed(env.group) is not None), 30, "A's lease")
            lapsed_after = time.monotonic() - t0
            try:
                async with Running(make_sink(env)):
                    ends = await produce(env, corrected)
                    await until(caught_up(env, ends), 90, "B to write the partitions' records")
                    assert query(env, env.influx.bucket_telemetry) == final
                    writer.cut = False  # A reaches InfluxDB again, still cut off Kafka
                    await asyncio.sleep(5)  # its retries come every second at most
                    zombie = a.counters()["written"] - written
                    after = query(env, env.influx.bucket_telemetry)
            finally:
                coordinator._send_req = send
                healed.set()
        return {"lapsed_after": lapsed_after, "zombie": zombie, "after": after,
                "dropped": a.dropped_batches}

    figures = asyncio.run(scenario())
    print({k: v for k, v in figures.items() if k != "after"})
    assert figures["zombie"] == 0, "A wrote what it held after B's newer values"
    assert figures["after"] == final
    assert figures["dropped"] >= 1
