"""Benchmark of the InfluxDB sink's two costs: building lines and writing them.

    CITYSTREAM_INFLUX__URL=... CITYSTREAM_INFLUX__TOKEN=... .venv/bin/python -m bench.sink_bench

1. Line building, µs per point (best of several runs, CPU time): `reading_line`
   (connectors.influxdb.lineproto) per reading kind, against influxdb-client's
   `Point(...).to_line_protocol()`.
2. Write throughput to the real InfluxDB (settings from `CITYSTREAM_INFLUX__*`), points/s for each
   batch size, for `InfluxWriter` (plain HTTP) and influxdb-client's synchronous `WriteApi`
   (optionally gzip), with the client-side CPU cost per point. Points go to measurement `sink_bench`
   (tagged with a fresh district) in the telemetry bucket unless `--bucket` says otherwise.
3. With `--e2e N`: N readings through Kafka and the whole `InfluxSink`, points/s until committed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from connectors.influxdb.lineproto import reading_line
from connectors.influxdb.write import InfluxWriter, PointWriter
from models.settings import InfluxSettings, Settings

NOW_MS = int(time.time() * 1000) // 1000 * 1000
SAMPLES: dict[str, dict[str, Any]] = {
    "water": {"district": "central-mk", "sensor_id": "wm-0001", "ts_ms": NOW_MS, "seq": 12,
              "kind": "water", "volume_m3": 1234.567, "flow_l_min": 12.5,
              "pressure_bar": 3.2},
    "energy": {"district": "central-mk", "sensor_id": "em-0001", "ts_ms": NOW_MS,
               "kind": "energy", "energy_kwh": 98765.4321, "power_kw": 3.25},
    "traffic": {"district": "central-mk", "sensor_id": "tc-01", "ts_ms": NOW_MS,
                "kind": "traffic", "junction": "j-h6-v7", "vehicle_count": 17,
                "interval_s": 60.0, "mean_speed_kmh": 41.2, "occupancy_pct": 12.5},
    "shuttle": {"district": "central-mk", "sensor_id": "sh-01", "ts_ms": NOW_MS, "seq": 12,
                "kind": "shuttle", "route_id": "r1", "lat": 52.04123, "lon": -0.75981,
                "speed_kmh": 21.5, "passengers": 5, "capacity": 12, "battery_pct": 77.5,
                "status": "in_service", "stop_id": "stop-4", "delay_s": 12.0,
                "disengaged": False},
}


def _point(reading: dict[str, Any]) -> str:
    point = Point(reading["kind"]).time(reading["ts_ms"], WritePrecision.MS)  # type: ignore[no-untyped-call]
    for key in ("district", "sensor_id", "junction", "route_id"):
        if key in reading:
            point.tag(key, reading[key])
    for key, value in reading.items():
        if key not in ("district", "sensor_id", "junction", "route_id", "ts_ms", "kind"):
            point.field(key, value)
    return str(point.to_line_protocol())


def per_point_us(builders: list[Callable[[dict[str, Any]], str]], reading: dict[str, Any],
                 n: int = 1000, rounds: int = 9) -> list[float]:
    """CPU µs per point of each builder, best of interleaved rounds (fair on a busy host)."""
    readings = [dict(reading, ts_ms=reading["ts_ms"] + i) for i in range(n)]
    best = [float("inf")] * len(builders)
    for _ in range(rounds):
        for i, build in enumerate(builders):
            t0 = time.process_time()
            for r in readings:
                build(r)
            best[i] = min(best[i], (time.process_time() - t0) / n * 1e6)
    return best


class ClientWriter:
    """influxdb-client's synchronous WriteApi, for comparison."""

    def __init__(self, settings: InfluxSettings, gzip: bool = False) -> None:
        token = settings.token.get_secret_value() if settings.token else ""
        self.client = InfluxDBClient(url=settings.url, token=token, org=settings.org,
                                     enable_gzip=gzip, timeout=30_000)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, bucket: str, lines: list[str]) -> None:
        self.api.write(bucket=bucket, record=lines,
                       write_precision=WritePrecision.MS)  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def bench_lines(run: str, points: int) -> list[str]:
    """`points` distinct water points as the sink would write them, measurement `sink_bench`."""
    sensors = 1000
    out = []
    for i in range(points):
        reading = dict(SAMPLES["water"], district=f"bench-{run}",
                       sensor_id=f"wm-{i % sensors:04d}",
                       ts_ms=NOW_MS - 86_400_000 + (i // sensors) * 1000,
                       volume_m3=1000.0 + i * 0.001, seq=i)
        out.append("sink_bench" + reading_line(reading)[len("water"):])
    return out


def throughput(writer: PointWriter, bucket: str, lines: list[str], batch: int
               ) -> tuple[float, float]:
    """(points/s, client CPU µs/point) writing `lines` in requests of `batch`."""
    writer.write(bucket, lines[:batch])  # warm up the connection
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(lines), batch):
        writer.write(bucket, lines[i:i + batch])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(lines) / wall, cpu / len(lines) * 1e6


async def end_to_end(settings: Settings, points: int, batch: int) -> tuple[float, dict[str, int]]:
    """Points/s through the whole sink: `points` water readings put on Kafka in records of
    500 (as ingest does), consumed by a fresh group, converted, written, committed."""
    from aiokafka import AIOKafkaProducer

    from connectors.kafka import MemorySink, ensure_topics
    from kinds.water import WaterReading
    from streams.sink import Buckets, InfluxSink, SinkOptions, kafka_consumer, sink_topics

    run = uuid.uuid4().hex[:8]
    # Fresh topics and group under a prefix of their own: only this run's records count.
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"bench-{run}."})
    await ensure_topics(kafka, sink_topics(kafka.topics))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5, max_batch_size=1 << 20,
                                max_request_size=4 << 20)
    await producer.start()
    try:
        ends: dict[Any, int] = {}
        for start in range(0, points, 500):
            key = f"bench-{run}-{start // 500 % 8}"
            body = b"[" + b",".join(
                WaterReading(district=f"bench-{run}", sensor_id=f"wm-{i % 1000:04d}",
                             ts_ms=NOW_MS - 86_400_000 + i // 1000 * 1000,
                             volume_m3=100.0 + i * 0.001, seq=i).to_json()
                for i in range(start, min(start + 500, points))) + b"]"
            meta = await producer.send_and_wait(kafka.topics.telemetry["water"], body,
                                                key=key.encode())
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        await producer.stop()
    consumer = kafka_consumer(kafka)
    sink = InfluxSink(consumer, InfluxWriter(settings.influx), MemorySink(),
                      buckets=Buckets(settings.influx.bucket_telemetry,
                                      settings.influx.bucket_kpi),
                      topics=kafka.topics,
                      options=SinkOptions(batch_points=batch, max_points=4 * batch))
    await sink.start()
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(sink.run(stop))
    try:
        while True:
            done = {tp: await consumer.committed(tp) for tp in ends}
            if all((done[tp] or 0) >= end for tp, end in ends.items()):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        await task
        await sink.close()
    return points / elapsed, sink.counters()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000, help="points per measurement")
    parser.add_argument("--batch-sizes", default="1000,5000,10000")
    parser.add_argument("--writers", default="http,client,client-gzip",
                        help="comma-separated from: http, client, client-gzip")
    parser.add_argument("--bucket", default=None, help="default: the telemetry bucket")
    parser.add_argument("--rounds", type=int, default=3, help="best of N interleaved rounds")
    parser.add_argument("--e2e", type=int, default=0, metavar="N",
                        help="also run N readings through Kafka and the whole sink "
                             "(needs CITYSTREAM_KAFKA__BOOTSTRAP; fresh topics prefixed "
                             "bench-<run>.; writes to the telemetry bucket, district "
                             "bench-<run>)")
    args = parser.parse_args()
    all_settings = Settings.load()
    settings = all_settings.influx
    bucket = args.bucket or settings.bucket_telemetry

    print("line building, µs/point (CPU time, best of 9 interleaved rounds)")
    print(f"{'kind':<10}{'reading_line':>14}{'Point':>10}{'speed-up':>10}")
    for kind, reading in SAMPLES.items():
        ours, theirs = per_point_us([reading_line, _point], reading)
        print(f"{kind:<10}{ours:>14.2f}{theirs:>10.2f}{theirs / ours:>9.1f}x")

    writers: dict[str, Callable[[], PointWriter]] = {
        "http": lambda: InfluxWriter(settings),
        "client": lambda: ClientWriter(settings),
        "client-gzip": lambda: ClientWriter(settings, gzip=True),
    }
    names = args.writers.split(",")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(f"\nwrites to {settings.url} bucket {bucket!r}, {args.points} new points per cell, "
          f"best of {args.rounds} interleaved rounds")
    best: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for name in names:
            writer = writers[name]()
            try:
                for size in sizes:
                    lines = bench_lines(uuid.uuid4().hex[:8], args.points)
                    rate, cpu_us = throughput(writer, bucket, lines, size)
                    best[name, size] = max(rate, best.get((name, size), 0.0))
                    cpu[name, size] = min(cpu_us, cpu.get((name, size), cpu_us))
            finally:
                writer.close()
    print(f"{'writer':<12}{'batch':>8}{'points/s':>12}{'ms/request':>12}{'client µs/pt':>14}")
    for name in names:
        for size in sizes:
            rate = best[name, size]
            print(f"{name:<12}{size:>8}{rate:>12,.0f}{size / rate * 1000:>12.1f}"
                  f"{cpu[name, size]:>14.2f}")

    if args.e2e:
        print(f"\nend to end (Kafka -> InfluxSink -> InfluxDB, commit), {args.e2e} readings")
        for size in sizes:
            rate, counters = asyncio.run(end_to_end(all_settings, args.e2e, size))
            print(f"batch {size:>6}: {rate:>10,.0f} points/s  {counters}")

if __name__ == "__main__":
    main()
