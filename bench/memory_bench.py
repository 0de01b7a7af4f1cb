"""Worker memory over event time: does a KPI worker's RSS level off once it holds the windows
it keeps (the late-data horizon plus the 24 h the rolling figures need, about 49 h)?

    .venv/bin/python -m bench.memory_bench --hours 72 --out bench-results/memory

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
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from bench import kafka as kq
from bench.load import CITY_MESSAGES_PER_MINUTE, record_city
from bench.procs import BenchStack, Namespace, citystream
from bench.system import memory_mb, worker_memory_lines
from ingest.mqtt_source import Delivery
from models.city import load_city
from models.settings import KafkaSettings
from tests.support import Process

HOUR_MS = 3_600_000


def recording(path: Path, hours: float, seed: int, size: float) -> int:
    """`hours` of the shipped city at `size` ending an hour ago; the start (epoch ms). A city
    grown by `size` makes about `size` times the messages (a tenth more are recorded, and
    `hours_of` leaves out what falls past `hours`)."""
    start = (int(time.time() * 1000) // HOUR_MS - int(hours) - 1) * HOUR_MS
    count = int(hours * 60 * CITY_MESSAGES_PER_MINUTE * size * 1.1)
    record_city(path, start_ms=start, count=count, seed=seed, size=size)
    return start


def hours_of(path: Path, start: int) -> Iterator[list[Delivery]]:
    """The recording's messages by simulated hour since `start`, an hour at a time (a grown
    city's recording does not fit in memory at once); an hour without messages is empty. A
    message behind the hour being gathered joins it."""
    hour: list[Delivery] = []
    index = 0
    with path.open() as lines:
        for i, line in enumerate(lines):
            row = json.loads(line)
            sim_ms = int(datetime.fromisoformat(row["sim_time"]).timestamp() * 1000)
            while max(0, sim_ms - start) // HOUR_MS > index:
                yield hour
                hour, index = [], index + 1
            hour.append(Delivery(row["topic"], base64.b64decode(row["payload_b64"]),
                                 int(time.time() * 1000), i, False))
    yield hour


async def caught_up(kafka: KafkaSettings, timeout_s: float) -> float:
    """Seconds until the worker and the sink committed every telemetry record."""
    t0 = time.monotonic()
    groups = [f"{kafka.topic_prefix}citystream-worker", f"{kafka.topic_prefix}citystream-sink"]
    topics = list(kafka.topics.telemetry.values())
    while time.monotonic() - t0 < timeout_s:
        if all([await kq.caught_up(kafka.bootstrap, group, topics) for group in groups]):
            return time.monotonic() - t0
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the worker is still behind after {timeout_s:.0f} s")


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ax.plot([r["event_hours"] for r in rows], [r["rss_mb"] for r in rows], marker=".",
            color="#1f77b4", label="worker RSS")
    if all("table_mb" in r for r in rows):
        ax.plot([r["event_hours"] for r in rows], [r["table_mb"] for r in rows], marker=".",
                color="#ff7f0e", label="of which table stores (RocksDB's accounting)")
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
    parser = argparse.ArgumentParser(prog="python -m bench.memory_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=int, default=72, help="event time to feed")
    parser.add_argument("--size", type=float, default=1.0,
                        help="the city's size (`citystream sim --size`: more meters and "
                             "counters on the same districts and junctions; the soak at "
                             "1,000 msg/s runs 4.7)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--table-memory-mb", type=int, default=None,
                        help="the worker's --table-memory-mb (default: its own)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/memory"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_city()  # its declared feeds become kinds here too, as in ingest and the worker
    with tempfile.TemporaryDirectory(prefix="citystream-memory-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "run.jsonl"
        print(f"recording {args.hours} h of the shipped city at size {args.size} ...",
              flush=True)
        start = recording(path, args.hours, args.seed, args.size)
        hours = itertools.islice(hours_of(path, start), args.hours)
        stack = BenchStack(tmp / "stack").up()
        try:
            ns = Namespace("mem")
            influx = stack.influx()
            for bucket in (ns.telemetry, ns.kpi):
                influx.create_bucket(bucket)
            extra = {}
            if args.table_memory_mb is not None:
                extra["CITYSTREAM_WORKER_TABLE_MEMORY_MB"] = str(args.table_memory_mb)
            worker = citystream("worker-0", ["worker", "--instance", "0", "--quiet", "3",
                                             "--data-dir", str(tmp / "state")],
                                stack, ns, tmp / "logs", extra)
            kafka = KafkaSettings(bootstrap=stack.bootstrap, topic_prefix=ns.prefix)
            rows = asyncio.run(_run(kafka, worker, hours, args.hours))
        finally:
            stack.close()
    print(f"\n{os.cpu_count()} CPUs; {len(rows)} h of event time; one worker")
    if len(rows) < args.hours:
        print(f"the recording ended after {len(rows)} of {args.hours} h: its last row is a "
              "partial hour (the city made more messages an hour than assumed)")
    (args.out / "memory.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "memory.png",
         f"citystream worker RSS over {len(rows)} h of event time, the shipped city at size "
         f"{args.size:g}")
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'memory.png'}")


def next_memory_line(worker: Process, after: float, timeout_s: float = 30) -> dict[str, float]:
    """The first memory line the worker logs after `after` (epoch s): it logs one with its
    counters every few seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = worker_memory_lines(worker.log.read_text(errors="replace"))
        if lines and lines[-1]["at"] > after:
            return next(line for line in lines if line["at"] > after)
        time.sleep(0.5)
    raise TimeoutError(f"the worker logged no memory line in {timeout_s:.0f} s")


async def _run(kafka: KafkaSettings, worker: Process, hours: Iterator[list[Delivery]],
               count: int) -> list[dict[str, float]]:
    # every reading of the recording is inside the horizon of ingest's validation
    horizon_s = (count + 2) * 3600
    rows: list[dict[str, float]] = []
    first = next(hours)
    await kq.produce(kafka, first, horizon_s)
    worker.start(wait=False)
    try:
        worker.wait_ready(300)  # a first start on a busy machine can take minutes
        print(f"{'event h':>7} {'messages':>9} {'catch-up s':>10} {'RSS MB':>7} {'tables MB':>9} "
              f"{'pymalloc k':>10} {'windows':>7} {'dedupe pairs':>12}", flush=True)
        for h, deliveries in enumerate(itertools.chain([first], hours)):
            if h:
                await kq.produce(kafka, deliveries, horizon_s)
            took = await caught_up(kafka, 1800)
            line = next_memory_line(worker, time.time())
            row = {"event_hours": h + 1, "messages": len(deliveries), "catch_up_s": took,
                   "rss_mb": memory_mb(worker.pid)["rss_mb"], "table_mb": line["table_mb"],
                   "pymalloc_blocks": line["pymalloc_blocks"], "windows": line["windows"],
                   "sensors": line["sensors"], "dedupe_pairs": line["dedupe_pairs"]}
            rows.append(row)
            print(f"{h + 1:>7} {len(deliveries):>9} {took:>10.1f} {row['rss_mb']:>7.0f} "
                  f"{row['table_mb']:>9.0f} {row['pymalloc_blocks'] / 1000:>10.0f} "
                  f"{row['windows']:>7.0f} {row['dedupe_pairs']:>12.0f}", flush=True)
    finally:
        worker.stop()
    return rows


if __name__ == "__main__":
    main()
