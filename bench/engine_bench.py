"""KPI engine benchmark: readings/s through the pure engines, no Kafka, no Faust.

    .venv/bin/python -m bench.engine_bench --size 32 --count 20000 [--profile out.txt]

A seeded simulation (`citystream sim --dry-run`; --size 32 is about 10,000 sensors) is decoded
and grouped into records exactly as ingest does, then each record goes through its kind's engine
with an in-memory store that counts what a changelog would carry (writes and bytes). This is the
ceiling of the worker's Kafka-to-KPI stage: the worker adds Kafka, Faust and the changelog.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import pstats
import resource
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson

from bench.kafka import encoder
from bench.load import record_city
from ingest.mqtt_source import Delivery
from kpi.engine import engines_for
from models.city import City, load_city, parse_city
from models.topics import Topics
from streams.worker import decode_record
from tests.support import ROOT


class CountingStore(MutableMapping[str, bytes]):
    """A dict that counts writes and bytes written, as a changelog would carry them."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0
        self.bytes = 0

    def __getitem__(self, key: str) -> bytes:
        return self.data[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        self.writes += 1
        self.bytes += len(key) + len(value)
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        self.writes += 1
        self.bytes += len(key)
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def records(size: float, count: int, seed: int) -> list[tuple[str, bytes]]:
    """(kind, record value) pairs as ingest would produce them, in arrival order."""
    start = (int(time.time()) // 3600 - 20) * 3_600_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.jsonl"
        record_city(path, start_ms=start, count=count, seed=seed, size=size)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    now = int(time.time() * 1000)
    deliveries = [Delivery(r["topic"], base64.b64decode(r["payload_b64"]), now, i, False)
                  for i, r in enumerate(rows)]
    topics = Topics("")
    kinds = {topic: kind for kind, topic in topics.telemetry.items()}
    pump = encoder(topics)
    out: list[tuple[str, bytes]] = []
    for i in range(0, len(deliveries), 2000):
        out.extend((kinds[r.topic], r.value) for r in pump.encode(deliveries[i:i + 2000])
                   if r.topic in kinds)
    return out


def run(recs: list[tuple[str, bytes]], city: City | None = None) -> dict[str, Any]:
    city = city or load_city(None)
    engines = engines_for(city)
    stores = {kind: CountingStore() for kind in engines}
    readings = emitted = 0
    per_kind: dict[str, list[float]] = {kind: [0, 0.0] for kind in engines}
    t0 = time.perf_counter()
    for offset, (kind, value) in enumerate(recs):
        started = time.perf_counter()
        batch = decode_record(kind, value)
        readings += len(batch)
        out = engines[kind].process(batch, stores[kind], offset=offset)
        emitted += len(out.records) + len(out.alerts)
        for record in out.records:
            orjson.dumps(record.model_dump())
        tally = per_kind[kind]
        tally[0] += len(batch)
        tally[1] += time.perf_counter() - started
    seconds = time.perf_counter() - t0
    writes = sum(s.writes for s in stores.values())
    written = sum(s.bytes for s in stores.values())
    held = sum(len(k) + len(v) for s in stores.values() for k, v in s.data.items())
    return {"records": len(recs), "readings": readings, "seconds": round(seconds, 3),
            "readings_per_s": round(readings / seconds), "emitted": emitted,
            "state_writes_per_reading": round(writes / readings, 3),
            "state_bytes_per_reading": round(written / readings, 1),
            "state_mb_held": round(held / 1e6, 2),
            "readings_per_s_by_kind": {kind: round(n / t) for kind, (n, t) in per_kind.items()
                                       if n},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


DECLARED_WATER = """
[[feeds]]
kind = "declared_water"
title = "Water, declared"
window_s = 900
[feeds.fields]
volume_m3 = { type = "number", min = 0 }
flow_l_min = { type = "number", min = 0, optional = true }
pressure_bar = { type = "number", min = 0, max = 25, optional = true }
[[feeds.kpis]]
name = "consumption_l"
agg = "delta"
field = "volume_m3"
scale = 1000.0
[[feeds.kpis]]
name = "meters_reporting"
agg = "sensors"
[feeds.target]
kpi = "consumption_l"
at_most = 5000.0
"""


def feed_vs_water(recs: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The simulated water records through the built-in water engine and, unchanged, through
    a declared feed that says the same in the vocabulary (register deltas in litres, meters
    reporting, a 24 h target): same readings, same records, same batching."""
    shipped = (ROOT / "models" / "cities" / "milton-keynes.toml").read_text()
    city = parse_city(shipped.split("[[feeds]]")[0] + DECLARED_WATER)
    from models import kinds

    kinds.activate(city.feeds)
    water = [(kind, value) for kind, value in recs if kind == "water"]
    rates: dict[str, list[float]] = {"water": [], "declared_water": []}
    for _ in range(3):
        for kind in rates:
            got = run([(kind, value.replace(b'"kind":"water"', f'"kind":"{kind}"'.encode()))
                       for _, value in water], city)
            rates[kind].append(got["readings_per_s_by_kind"][kind])
    median = {kind: sorted(values)[1] for kind, values in rates.items()}
    return {"water_records": len(water), "median_of_3_readings_per_s": median,
            "declared_vs_builtin": round(median["declared_water"] / median["water"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=32.0, help="city size (32 ≈ 10k sensors)")
    parser.add_argument("--count", type=int, default=20_000, help="messages to simulate")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="write a cProfile summary here")
    parser.add_argument("--feed-vs-water", action="store_true",
                        help="only compare the water kind with the same readings through a "
                             "declared feed (median of 3 runs each)")
    args = parser.parse_args()
    recs = records(args.size, args.count, args.seed)
    if args.feed_vs_water:
        print(json.dumps(feed_vs_water(recs)))
        return
    if args.profile:
        prof = cProfile.Profile()
        result = prof.runcall(run, recs)
        with args.profile.open("w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(40)
    else:
        result = run(recs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
