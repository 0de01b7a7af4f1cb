"""Worker memory over event time: does a KPI worker's RSS level off once it holds the windows
it keeps (the late-data horizon plus the 24 h the rolling figures need, about 49 h)?

    .venv/bin/python bench/memory_bench.py --hours 72 --out bench-results/memory

A seeded recording of the shipped city (`citystream sim --dry-run`, one reading per message)
covering --hours of event time is grouped as ingest does and fed to one worker (RocksDB tables,
the raw and KPI sink, alerts over MQTT) on a private stack, one hour of event time at a time:
each hour is produced to Kafka, then the worker's and the sink's consumer groups must have
committed all of it before the worker's RSS is read. A 30-minute soak covers a few hours of
event time and so cannot show this plateau; this shows it in minutes. Prints one row per hour
and writes memory.json and memory.png. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import worker_bench  # noqa: E402
from bench.worker_bench import rss_mb  # noqa: E402
from deploy.local.stack import Stack, StackSettings, free_port  # noqa: E402
from ingest.kafka_sink import KafkaSink, MemorySink, ensure_topics  # noqa: E402
from ingest.mqtt_source import Delivery  # noqa: E402
from ingest.service import Ingest, IngestOptions  # noqa: E402
from models.settings import KafkaSettings  # noqa: E402
from models.topics import Topics  # noqa: E402
from tests.integration.helpers import WorkerProcess  # noqa: E402

HOUR_MS = 3_600_000
MESSAGES_PER_SIM_MINUTE = 340  # the shipped city publishes about 331


def recording(path: Path, hours: float, seed: int) -> int:
    """`hours` of the shipped city ending an hour ago; the start (epoch ms)."""
    start = (int(time.time() * 1000) // HOUR_MS - int(hours) - 1) * HOUR_MS
    worker_bench.recording(path, 1.0, int(hours * 60 * MESSAGES_PER_SIM_MINUTE), seed=seed,
                           start=start)
    return start


def hours_of(path: Path, start: int) -> list[list[Delivery]]:
    """The recording's messages by simulated hour since `start`."""
    out: list[list[Delivery]] = []
    for i, line in enumerate(path.read_text().splitlines()):
        row = json.loads(line)
        payload = base64.b64decode(row["payload_b64"])
        sim_ms = int(datetime.fromisoformat(row["sim_time"]).timestamp() * 1000)
        hour = max(0, sim_ms - start) // HOUR_MS
        while len(out) <= hour:
            out.append([])
        out[hour].append(Delivery(row["topic"], payload, int(time.time() * 1000), i, False))
    return out


class Feeder:
    """Produces hours of readings and waits until the worker and the sink committed them."""

    def __init__(self, settings: KafkaSettings, hours: int) -> None:
        self.settings = settings
        # every reading of the recording is inside the horizon of ingest's validation
        self.pump = Ingest(None, MemorySink(), "bench",  # type: ignore[arg-type]
                           IngestOptions(horizon_s=(hours + 2) * 3600),
                           Topics(settings.topic_prefix))
        self.sink = KafkaSink(settings)

    async def start(self) -> None:
        await ensure_topics(self.settings, self.settings.topics.ingest)
        await self.sink.start()

    async def feed(self, deliveries: list[Delivery]) -> None:
        for i in range(0, len(deliveries), 500):
            await self.sink.send(self.pump.encode(deliveries[i:i + 500]))

    async def caught_up(self, timeout: float) -> float:
        """Seconds until both consumer groups committed every telemetry record."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        t0 = time.monotonic()
        prefix = self.settings.topic_prefix
        groups = [f"{prefix}citystream-worker", f"{prefix}citystream-sink"]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
        await consumer.start()
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for topic in self.settings.topics.telemetry.values()
                   for p in range(self.settings.partitions)]
            while time.monotonic() - t0 < timeout:
                ends = await consumer.end_offsets(tps)
                behind = 0
                for group in groups:
                    done = {tp: m.offset for tp, m in
                            (await admin.list_consumer_group_offsets(group)).items()}
                    behind += sum(max(0, end - done.get(tp, 0)) for tp, end in ends.items())
                if behind == 0:
                    return time.monotonic() - t0
                await asyncio.sleep(0.5)
            raise TimeoutError(f"the worker is still behind after {timeout:.0f} s")
        finally:
            await consumer.stop()
            await admin.close()

    async def close(self) -> None:
        await self.sink.close()


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ax.plot([r["event_hours"] for r in rows], [r["rss_mb"] for r in rows], marker=".",
            color="#1f77b4", label="worker RSS")
    ax.axvline(49, color="#999", linestyle="--", linewidth=1)
    ax.text(49.5, ax.get_ylim()[0], " windows kept: horizon 24 h + 24 h rolling", fontsize=8,
            color="#666", va="bottom")
    ax.set_xlabel("event time fed (hours of the city)")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=int, default=72, help="event time to feed")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--table-memory-mb", type=int, default=None,
                        help="the worker's --table-memory-mb (default: its own)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/memory"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="citystream-memory-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "run.jsonl"
        print(f"recording {args.hours} h of the shipped city ...", flush=True)
        start = recording(path, args.hours, args.seed)
        hours = hours_of(path, start)[:args.hours]
        settings = StackSettings(home=tmp / "stack", mqtt_port=free_port(),
                                 kafka_port=free_port(), kafka_controller_port=free_port(),
                                 influxdb_port=free_port())
        stack = Stack(settings)
        stack.up()
        rows: list[dict[str, float]] = []
        try:
            kafka = KafkaSettings(bootstrap=stack.client_info()["kafka"]["bootstrap"],
                                  topic_prefix="mem.")
            env = {"CITYSTREAM_KAFKA__TOPIC_PREFIX": "mem."}  # the private stack's buckets
            if args.table_memory_mb is not None:
                env["CITYSTREAM_WORKER_TABLE_MEMORY_MB"] = str(args.table_memory_mb)
            (tmp / "logs").mkdir()
            worker = WorkerProcess(stack, "0", log_dir=tmp / "logs", extra_env=env)
            rows = asyncio.run(_run(kafka, worker, hours))
        finally:
            stack.down()
    print(f"\n{os.cpu_count()} CPUs; {len(rows)} h of event time; one worker")
    (args.out / "memory.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "memory.png",
         f"citystream worker RSS over {len(rows)} h of the shipped city's event time")
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'memory.png'}")


async def _run(kafka: KafkaSettings, worker: WorkerProcess,
               hours: list[list[Delivery]]) -> list[dict[str, float]]:
    feeder = Feeder(kafka, len(hours))
    await feeder.start()
    rows: list[dict[str, float]] = []
    try:
        await feeder.feed(hours[0])
        worker.start()
        worker.wait_running()
        assert worker.proc is not None
        print(f"{'event h':>7} {'messages':>9} {'catch-up s':>10} {'RSS MB':>7}", flush=True)
        for h, deliveries in enumerate(hours):
            if h:
                await feeder.feed(deliveries)
            took = await feeder.caught_up(600)
            row = {"event_hours": h + 1, "messages": len(deliveries), "catch_up_s": took,
                   "rss_mb": rss_mb(worker.proc.pid)}
            rows.append(row)
            print(f"{h + 1:>7} {len(deliveries):>9} {took:>10.1f} {row['rss_mb']:>7.0f}",
                  flush=True)
    finally:
        await feeder.close()
        worker.stop()
    return rows


if __name__ == "__main__":
    main()
