"""Requests per second of `citystream opendata` on this machine: a day of CSV and the NGSI-LD
entity list, cold (computed from InfluxDB) and cached.

    .venv/bin/python -m bench.opendata_bench [--seconds 10] [--clients 8]

A private InfluxDB (the local stack's code, free port, temporary home) gets two days of every
KPI of the shipped Milton Keynes (6 districts, 8 junctions, a shuttle route, 3 declared feeds:
about 10,000 points a day); `citystream opendata` runs as a child process with the stack's
read-only token. Each figure is `--clients` concurrent HTTP clients for `--seconds`:

- CSV cold: a settled day of `traffic_kpi` (2,304 rows), each request a different `from` (one
  second later), so none is served from the cache;
- CSV cached: the same settled day again and again (the server keeps it);
- CSV 304: the same with `If-None-Match` (revalidation);
- NGSI-LD cold: the entity list, computed per request (the default, `LIVE_CACHE_S=0`);
- NGSI-LD cached: a second server with `CITYSTREAM_OPENDATA__LIVE_CACHE_S=60`.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import BenchStack
from deploy.local.stack import free_port
from models.city import load_city
from tests.support import Process, city_kpis, feed_kpis, new_bucket

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


async def load(urls: list[str], seconds: float, clients: int,
               headers: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(requests/s, median latency ms, requests) of `clients` loops over `urls` for `seconds`."""
    latencies: list[float] = []
    statuses: set[int] = set()
    deadline = time.monotonic() + seconds
    counter = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            url = urls[counter % len(urls)]
            counter += 1
            t0 = time.perf_counter()
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                statuses.add(resp.status)
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.monotonic()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.monotonic() - t0
    assert statuses <= {200, 304}, statuses
    return len(latencies) / elapsed, statistics.median(latencies), len(latencies)


def start(stack: BenchStack, bucket: str, token: str, log: Path, **env: str
          ) -> tuple[Process, str]:
    """`citystream opendata` on a free port, reading `bucket` with `token`; and its URL."""
    port = free_port()
    full = {**os.environ, "CITYSTREAM_INFLUX__URL": stack.info["influxdb"]["url"],
            "CITYSTREAM_INFLUX__BUCKET_KPI": bucket, "CITYSTREAM_OPENDATA__TOKEN": token,
            "CITYSTREAM_OPENDATA__PORT": str(port), **env}
    proc = Process(log.stem, [sys.executable, "-m", "citystream", "-v", "opendata"], full, log,
                   ready="opendata running").start()
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.opendata_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="citystream-opendata-") as tmp_name:
        tmp = Path(tmp_name)
        stack = BenchStack(tmp / "stack").up(only=("influxdb",))
        procs: list[Process] = []
        try:
            city = load_city()
            bucket = new_bucket(stack.stack)
            now = int(time.time() * 1000)
            records = [*city_kpis(city, now - 5 * 60_000, hours=48),
                       *feed_kpis(city, now - 5 * 60_000, hours=48)]
            for i in range(0, len(records), 20_000):
                bucket.write(records[i:i + 20_000])
            print(f"{len(records)} KPI points over 48 h written", flush=True)
            plain, url = start(stack, bucket.name, bucket.read_token, tmp / "a.log")
            procs.append(plain)
            live, live_url = start(stack, bucket.name, bucket.read_token, tmp / "b.log",
                                   CITYSTREAM_OPENDATA__LIVE_CACHE_S="60")
            procs.append(live)
            day_end = (now - 26 * HOUR_MS) // HOUR_MS * HOUR_MS     # settled: > 24 h + grace
            day_start = day_end - DAY_MS + 4 * HOUR_MS               # within the 48 h written
            csv_path = f"{url}/data/traffic_kpi.csv"
            cold = [f"{csv_path}?from={iso(day_start + i * 1000)}&to={iso(day_end)}"
                    for i in range(100_000)]
            cached = [f"{csv_path}?from={iso(day_start)}&to={iso(day_end)}"]
            ngsi = "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"

            async def run() -> list[tuple[str, tuple[float, float, int]]]:
                async with aiohttp.ClientSession() as session, session.get(cached[0]) as resp:
                    body = await resp.read()
                    etag = resp.headers["ETag"]
                lines = body.count(b"\n") - 1
                print(f"a settled day of traffic_kpi: {lines} rows, "
                      f"{len(body) / 1024:.0f} KiB", flush=True)
                out = []
                for name, urls, headers in (
                        ("CSV day, cold", cold, None),
                        ("CSV day, cached", cached, None),
                        ("CSV day, 304 (If-None-Match)", cached, {"If-None-Match": etag}),
                        ("NGSI-LD list, cold", [url + ngsi], None),
                        ("NGSI-LD list, cached (LIVE_CACHE_S=60)", [live_url + ngsi], None),
                        ("NGSI-LD keyValues, cached", [live_url + ngsi + "&options=keyValues"],
                         None)):
                    out.append((name, await load(urls, args.seconds, args.clients, headers)))
                    print(f"  {name:<42} {out[-1][1][0]:8.1f} req/s  median "
                          f"{out[-1][1][1]:7.1f} ms  ({out[-1][1][2]} requests)", flush=True)
                return out

            print(f"\n{os.cpu_count()} CPUs, {args.clients} concurrent clients, "
                  f"{args.seconds:g} s each:", flush=True)
            asyncio.run(run())
        finally:
            for proc in procs:
                proc.stop(timeout_s=15)
            stack.close()


if __name__ == "__main__":
    main()
