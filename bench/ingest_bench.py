"""Ingest benchmark: sustained readings/s from the real Mosquitto to Kafka through one and two
`citystream ingest` processes, CPU seconds per 1,000 readings, and publish-to-Kafka latency.

    .venv/bin/python bench/ingest_bench.py                 # starts its own stack (temp home)
    .venv/bin/python bench/ingest_bench.py --messages 200000 --batch 10 --processes 1 2

Prints one table; figures, not assertions. Publishers run in separate processes so the
measured ingest is the bottleneck, not the load generator; every message is a water reading
(or a gateway batch of `--batch` readings) with a unique (sensor_id, ts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from deploy.local.stack import Stack, StackSettings, free_port  # noqa: E402
from tests.integration.helpers import IngestProcess, Publisher  # noqa: E402


def publish(args: tuple[dict[str, object], str, int, int, int, int, mp.Queue[object]]) -> None:
    mqtt, tag, start, count, batch, worker, out = args
    pub = Publisher(str(mqtt["host"]), int(mqtt["port"]),  # type: ignore[call-overload]
                    str(mqtt["username"]), str(mqtt["password"]))
    base_ts = int(time.time() * 1000) - 3_000_000
    sent: list[tuple[int, float]] = []
    messages = []
    for i in range(start, start + count):
        sensor = f"wm{tag}-{i % 500:04d}"
        body = [{"sensor_id": sensor, "ts": base_ts + (i // 500) * 1000 * batch + k,
                 "volume_m3": 1.0 + i, "seq": i} for k in range(batch)]
        payload = json.dumps(body if batch > 1 else body[0]).encode()
        messages.append((f"city/central-mk/water/{sensor}", payload, i))
    infos = []
    for topic, payload, i in messages:
        sent.append((i, time.time()))
        infos.append(pub.client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    pub.close()
    out.put((worker, sent))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drain(bootstrap: str, topic: str, want: int, timeout: float
                ) -> list[tuple[int, int]]:
    """(seq, Kafka create time ms) of every reading, until `want` were seen."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", max_poll_records=5000)
    await consumer.start()
    out: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for r in records:
                    out.extend((reading["seq"], r.timestamp) for reading in json.loads(r.value))
    finally:
        await consumer.stop()
    return out


def run(stack: Stack, processes: int, messages: int, batch: int, publishers: int,
        log_dir: Path) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    env = {"CITYSTREAM_KAFKA__TOPIC_PREFIX": f"b{tag}.",
           "CITYSTREAM_MQTT__SHARED_GROUP": f"b{tag}"}
    ingests = [IngestProcess(stack, str(i), log_dir=log_dir, extra_env=env).start()
               for i in range(processes)]
    cpu0 = sum(cpu_seconds(p.proc.pid) for p in ingests if p.proc)
    out: mp.Queue[object] = mp.Queue()
    per = messages // publishers
    mqtt = stack.client_info()["mqtt"]
    jobs = [mp.Process(target=publish, args=((mqtt, tag, w * per, per, batch, w, out),))
            for w in range(publishers)]
    t0 = time.time()
    for j in jobs:
        j.start()
    sent: dict[int, float] = {}
    for _ in jobs:
        _, pairs = out.get(timeout=600)  # type: ignore[misc]
        sent.update(pairs)
    for j in jobs:
        j.join()
    published_s = time.time() - t0
    got = asyncio.run(drain(stack.client_info()["kafka"]["bootstrap"],
                            f"b{tag}.telemetry.water", per * publishers * batch, 600))
    cpu1 = sum(cpu_seconds(p.proc.pid) for p in ingests if p.proc)
    for p in ingests:
        p.stop()
    first = min(ts for _, ts in got) / 1000
    last = max(ts for _, ts in got) / 1000
    readings = len({seq for seq, _ in got}) * batch
    latencies = sorted(ts / 1000 - sent[seq] for seq, ts in got if seq in sent)
    return {
        "processes": processes, "batch": batch, "readings": readings,
        "publish_msg_s": per * publishers / published_s,
        "ingest_readings_s": readings / max(last - first, 1e-9),
        "cpu_s_per_1k": (cpu1 - cpu0) / readings * 1000,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1, help="readings per MQTT message")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = StackSettings(home=Path(tmp) / "stack", mqtt_port=free_port(),
                                 kafka_port=free_port(), kafka_controller_port=free_port(),
                                 influxdb_port=free_port())
        stack = Stack(settings)
        stack.up(("mosquitto", "kafka"))
        try:
            rows = [run(stack, n, args.messages, args.batch, args.publishers, Path(tmp))
                    for n in args.processes]
        finally:
            stack.down()
    print(f"\n{os.cpu_count()} CPUs; {args.messages} messages x {args.batch} readings; "
          f"{args.publishers} publisher processes")
    header = list(rows[0])
    print(" | ".join(f"{h:>17}" for h in header))
    for row in rows:
        print(" | ".join(f"{row[h]:>17.1f}" if isinstance(row[h], float) else f"{row[h]:>17}"
                         for h in header))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
