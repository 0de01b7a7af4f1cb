"""Worker benchmark: readings/s from `telemetry.*` through the Faust KPI engine and the sink into
InfluxDB, with one and two workers, and worker memory (RSS) for a city of a given size.

    .venv/bin/python bench/worker_bench.py --size 32 --count 60000 --workers 1 2

A seeded simulation (`citystream sim --dry-run`, --size 32 is about 10,000 sensors) is decoded
and grouped exactly as ingest does, produced to Kafka first, then the workers start. Two
figures, both from worker start (start-up included): readings/s until the KPI engines have
taken every reading, and until every reading is a raw point in InfluxDB.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.local.stack import Stack, StackSettings, free_port  # noqa: E402
from ingest.kafka_sink import KafkaSink, MemorySink, ensure_topics  # noqa: E402
from ingest.mqtt_source import Delivery  # noqa: E402
from ingest.service import Ingest, IngestOptions  # noqa: E402
from models.topics import Topics  # noqa: E402
from tests.integration.helpers import WorkerProcess, create_bucket  # noqa: E402


def recording(path: Path, size: float, count: int, *, seed: int = 5,
              start: int | None = None) -> None:
    """`count` messages of a city at `size`, one reading each, from `start` (epoch ms; default
    the whole hour 20 h ago)."""
    if start is None:
        start = (int(time.time()) // 3600 - 20) * 3_600_000
    subprocess.run([sys.executable, "-m", "citystream", "sim", "--dry-run", "--speed", "0",
                    "--size", str(size), "--count", str(count), "--seed", str(seed), "--start",
                    str(start), "--batch", "1", "--no-progress", "--record", str(path)],
                   check=True, cwd=ROOT, capture_output=True)


async def produce(stack: Stack, prefix: str, path: Path) -> int:
    from models.settings import KafkaSettings

    settings = KafkaSettings(bootstrap=stack.client_info()["kafka"]["bootstrap"],
                             topic_prefix=prefix)
    await ensure_topics(settings, settings.topics.ingest)
    now = int(time.time() * 1000)
    deliveries = [Delivery(row["topic"], base64.b64decode(row["payload_b64"]), now, i, False)
                  for i, row in enumerate(map(json.loads, path.read_text().splitlines()))]
    pump = Ingest(None, MemorySink(), "bench", IngestOptions(), Topics(prefix))  # type: ignore[arg-type]
    sink = KafkaSink(settings)
    await sink.start()
    total = 0
    for i in range(0, len(deliveries), 5000):
        records = pump.encode(deliveries[i:i + 5000])
        await sink.send(records)
    await sink.close()
    total = pump.counters.accepted
    return total


def influx_count(stack: Stack, bucket: str) -> int:
    from influxdb_client import InfluxDBClient

    info = stack.client_info()["influxdb"]
    query = (f'from(bucket: "{bucket}") |> range(start: 0) |> filter(fn: (r) => '
             f'r._field == "volume_m3" or r._field == "energy_kwh" or '
             f'r._field == "vehicle_count" or r._field == "battery_pct") |> group() |> count()')
    with InfluxDBClient(url=info["url"], token=info["token"], org=info["org"],
                        timeout=120_000) as client:
        tables = client.query_api().query(query)
    return sum(int(r.get_value()) for t in tables for r in t.records)


def engine_received(log: Path) -> int:
    """The last 'N readings received' a worker logged (its KPI engine's input count)."""
    last = 0
    for line in log.read_text(errors="replace").splitlines():
        if "readings received" in line:
            last = int(line.split(": ")[-1].split(" readings")[0])
    return last


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(stack: Stack, workers: int, path: Path, tmp: Path) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"w{tag}."
    telemetry, kpi = f"tel-{tag}", f"kpi-{tag}"
    create_bucket(stack, telemetry)
    create_bucket(stack, kpi)
    readings = asyncio.run(produce(stack, prefix, path))
    env = {"CITYSTREAM_KAFKA__TOPIC_PREFIX": prefix, "CITYSTREAM_INFLUX__BUCKET_KPI": kpi,
           "CITYSTREAM_INFLUX__BUCKET_TELEMETRY": telemetry}
    t0 = time.monotonic()
    procs = [WorkerProcess(stack, str(i), log_dir=tmp / tag, extra_env=env)
             for i in range(workers)]
    (tmp / tag).mkdir()
    for p in procs:
        p.start()
    deadline = time.monotonic() + 900
    written = 0
    engine_s = raw_s = None
    while time.monotonic() < deadline and (engine_s is None or raw_s is None):
        if engine_s is None and sum(engine_received(p.log) for p in procs) >= readings:
            engine_s = time.monotonic() - t0
        if raw_s is None:
            written = influx_count(stack, telemetry)
            if written >= readings:
                raw_s = time.monotonic() - t0
        time.sleep(1)
    elapsed = max(engine_s or 0.0, raw_s or 0.0)
    rss = [rss_mb(p.proc.pid) for p in procs if p.proc]
    for p in procs:
        p.stop()
    return {"workers": workers, "readings": readings, "written": written,
            "seconds": elapsed, "engine_readings_per_s": readings / (engine_s or elapsed),
            "raw_points_per_s": readings / (raw_s or elapsed),
            "rss_mb_per_worker": max(rss) if rss else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=32.0, help="city size (32 ≈ 10k sensors)")
    parser.add_argument("--count", type=int, default=60_000, help="messages to simulate")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "run.jsonl"
        recording(path, args.size, args.count)
        settings = StackSettings(home=tmp / "stack", mqtt_port=free_port(),
                                 kafka_port=free_port(), kafka_controller_port=free_port(),
                                 influxdb_port=free_port())
        stack = Stack(settings)
        stack.up(("kafka", "influxdb"))
        try:
            rows = [run(stack, n, path, tmp) for n in args.workers]
        finally:
            stack.down()
    print(f"\n{os.cpu_count()} CPUs; city size {args.size}; {args.count} messages")
    for row in rows:
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
