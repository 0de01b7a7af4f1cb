"""`python -m bench.scale`: citystream's workers over a three-node Kafka cluster (root: network
namespaces, deploy/local/cluster.py), for docs/scaling.md.

For each number of workers and of partitions per topic, on an empty cluster (the topics of the
combination before are deleted: a broker's cost grows with every partition it carries, used
or not):

- *drain*: a backlog of the city's readings is put on the telemetry topics (replication 3,
  min.insync.replicas 2, as on the cluster tests), then the workers (with their sinks: raw
  points and KPIs into InfluxDB) start and drain it; the rate is taken from their committed
  offsets between 10 % and 90 % done (bench/suite.py), CPU per 1,000 readings per process and
  per service (each Kafka node, InfluxDB);
- *live*: a paced feed through Mosquitto and one ingest at `--rate` readings/s: the
  publish -> raw point latency of its probes.

Then a *rebalance under load*: a live feed into two workers, a third joins, later the first
leaves (SIGTERM): the probes' latency in each stretch and the longest time InfluxDB received
nothing (how long the workers' output stalled).

The machine has 2 cores: more workers on it cannot be faster, so the figures to carry over to
more machines are the CPU seconds per reading per component and what partitions cost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from deploy.local.cluster import Cluster, node_service
from deploy.local.settings import StackSettings
from models.city import load_city
from tests.support import Process, stop_all

from . import kafka as kq
from . import suite
from .procs import BenchStack, Namespace
from .system import HostMeter, machine

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class ClusterBench(BenchStack):
    """A `Cluster` where the benchmark expects its private stack: clients get the cluster's
    bootstrap and replication, CPU is counted for every Kafka node, Mosquitto and InfluxDB."""

    SERVICES = ("mosquitto", "influxdb", *(node_service(i) for i in (1, 2, 3)))

    def __init__(self, home: Path, say: Callable[[str], None]) -> None:
        self.cluster = Cluster(StackSettings(home=home, kafka_heap="512m", ready_timeout_s=180),
                               say=say)
        self.home = home

    def up(self, only: tuple[str, ...] = ()) -> ClusterBench:
        """The whole cluster (`only` is the single-node stack's choice: not used here)."""
        self.stack = self.cluster.up().stack
        return self

    def close(self) -> None:
        self.cluster.down()


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give whole numbers separated by commas") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: give at least one number, each 1 or more")
    return out


def _leave(index: int) -> suite.WorkerAction:
    """An event's action: stop (SIGTERM) the worker at `index`; it leaves its group at once."""
    def act(_ctx: suite.Context, _ns: Namespace, workers: list[Process]) -> None:
        workers[index].stop()
    return act


def _join(ctx: suite.Context, ns: Namespace, workers: list[Process]) -> None:
    """An event's action: start one more worker (its instance the next number)."""
    (new,) = suite._workers(ctx, ns, 1, first=len(workers))
    workers.append(new.start(wait=False))


def rebalance_events(feed_s: float) -> tuple[suite.LiveEvent, ...]:
    """A third worker joins a third of the way in; the first leaves at two thirds."""
    return (suite.LiveEvent(feed_s / 3, "worker 2 joins", _join),
            suite.LiveEvent(2 * feed_s / 3, "worker 0 leaves (SIGTERM)", _leave(0)))


def _row(config: str, drain: dict[str, Any] | None, live: dict[str, Any] | None) -> str:
    def f(v: Any, spec: str = ",.0f") -> str:
        return "-" if v is None else format(v, spec)

    d = drain or {}
    services = d.get("services_cpu_s_per_1k") or {}
    kafka = sum(v or 0 for k, v in services.items() if k.startswith("kafka-")) or None
    lat = (live or {}).get("latency") or {}
    return (f"| {config} | {f(d.get('rate_per_s'))} | {f(d.get('cpu_s_per_1k'), '.4f')} "
            f"| {f(kafka, '.4f')} | {f(services.get('influxdb'), '.4f')} "
            f"| {f((live or {}).get('delivered_rate_per_s'))} | {f(lat.get('p50_s'), '.2f')} "
            f"| {f(lat.get('p99_s'), '.2f')} |")


def table(results: dict[str, Any]) -> str:
    """The markdown table of a run (table.md)."""
    lines = [f"Live feed: {results['rate']:,.0f} readings/s for {results['live_s']:.0f} s; "
             f"backlog: {results['readings']:,} readings.", "",
             "| workers x partitions | drain readings/s | workers CPU s/1k | Kafka (3 nodes) "
             "CPU s/1k | InfluxDB CPU s/1k | live delivered/s | live p50 s | live p99 s |",
             "|---|---|---|---|---|---|---|---|"]
    for config, run in results["configs"].items():
        lines.append(_row(config, run.get("drain"), run.get("live")))
    reb = results.get("rebalance")
    if reb and "events" in reb:
        lines += ["", f"Rebalance under load ({reb['what']}):", "",
                  "| stretch | from s | probe p50 s | p99 s | max s | longest with no write s |",
                  "|---|---|---|---|---|---|"]
        for e in reb["events"]:
            lat = e["latency"]
            lines.append(f"| {e['what']} | {e['from_s']:.0f} | {lat['p50_s'] or 0:.2f} "
                         f"| {lat['p99_s'] or 0:.2f} | {lat['max_s'] or 0:.2f} "
                         f"| {e['longest_no_write_s']:.1f} |")
    return "\n".join(lines)


@click.command(context_settings=CONTEXT)
@click.option("--workers", "workers_list", default="1,2,4", show_default=True, metavar="LIST",
              envvar="CITYSTREAM_SCALE_WORKERS", show_envvar=True, help="Worker counts.")
@click.option("--partitions", "partitions_list", default="8,16,32", show_default=True,
              metavar="LIST", envvar="CITYSTREAM_SCALE_PARTITIONS", show_envvar=True,
              help="Partitions per topic (CITYSTREAM_KAFKA__PARTITIONS of each run).")
@click.option("--sensors", default=10_000, show_default=True, type=click.IntRange(100),
              envvar="CITYSTREAM_SCALE_SENSORS", show_envvar=True,
              help="Sensors of the city mix, for the backlog and the live feed.")
@click.option("--cycles", default=30, show_default=True, type=click.IntRange(1),
              envvar="CITYSTREAM_SCALE_CYCLES", show_envvar=True,
              help="Readings per sensor in each drained backlog.")
@click.option("--rate", default=3000.0, show_default=True, type=click.FloatRange(1),
              envvar="CITYSTREAM_SCALE_RATE", show_envvar=True,
              help="Readings/s of the live feeds (keep it below one worker's drain rate).")
@click.option("--live-s", default=60.0, show_default=True, type=click.FloatRange(0),
              envvar="CITYSTREAM_SCALE_LIVE_S", show_envvar=True,
              help="Seconds of each live feed, 10 or more (0: drains only).")
@click.option("--rebalance-s", default=150.0, show_default=True, type=click.FloatRange(0),
              envvar="CITYSTREAM_SCALE_REBALANCE_S", show_envvar=True,
              help="Seconds of the rebalance feed (16 partitions); 0 leaves it out.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results/scale"),
              show_default=True, envvar="CITYSTREAM_SCALE_OUT", show_envvar=True,
              help="Directory for results.json and table.md.")
@click.option("--keep", is_flag=True, help="Keep the cluster's logs (printed at the end).")
def scale(workers_list: str, partitions_list: str, sensors: int, cycles: int, rate: float,
          live_s: float, rebalance_s: float, out: Path, keep: bool) -> None:
    """Drain rate, CPU per component and live latency of citystream's workers over a
    three-node Kafka cluster, for every WORKERS x PARTITIONS, then a rebalance under load.
    Needs root (network namespaces); about 3 minutes per combination. Figures, not
    assertions: docs/scaling.md says how to read them."""
    if 0 < live_s < 10:
        raise click.BadParameter(f"{live_s:g}: give 10 s or more, or 0 for no live feeds",
                                 param_hint="--live-s")
    if os.geteuid() != 0:
        raise click.UsageError("the cluster needs root (ip netns): run it with sudo")
    workers, partitions = _ints(workers_list), _ints(partitions_list)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="citystream-scale-"))
    stack = ClusterBench(work / "cluster", say=lambda m: print(f"[cluster] {m}", flush=True))
    host = HostMeter().start()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": sys.argv,
        "machine": machine(), "sensors": sensors, "readings": sensors * cycles,
        "rate": rate, "live_s": live_s, "configs": {}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    try:
        stack.up()
        sizes = suite.Scale(drain_s=180.0)
        ctx = suite.Context(stack=stack, influx=stack.influx(), city=load_city(), scale=sizes,
                            logs=work / "logs", quix_venv=Path(), say=print, peers=False)
        for p in partitions:
            for w in workers:
                config = f"{w} x {p}"
                print(f"== {config}: drain {sensors * cycles:,} readings", flush=True)
                run: dict[str, Any] = {}
                results["configs"][config] = run
                run["drain"], _ns, _ledger = suite.measure_kpi(
                    ctx, suite.backlog_stream(ctx, sensors, cycles), w,
                    f", {p} partitions, cluster", sink=True, partitions=p)
                print(f"   {run['drain']['rate_per_s'] or 0:,.0f} readings/s, complete: "
                      f"{run['drain']['complete']}", flush=True)
                suite.settle(ctx)
                if live_s:
                    print(f"== {config}: live {rate:,.0f} readings/s for {live_s:.0f} s",
                          flush=True)
                    run["live"] = suite.measure_live(
                        ctx, "citystream", suite.steady_spec(sensors, rate, live_s),
                        f"live {rate:,.0f}/s, {config}", workers=w, partitions=p)
                    lat = run["live"]["latency"]
                    print(f"   p50 {lat['p50_s'] or 0:.2f} s, p99 {lat['p99_s'] or 0:.2f} s",
                          flush=True)
                    suite.settle(ctx)
                ctx.drop_buckets()
                run["topics_deleted"] = asyncio.run(kq.delete_topics(stack.bootstrap))
                suite.settle(ctx)
                save()
        if rebalance_s:
            print(f"== rebalance: live {rate:,.0f} readings/s for {rebalance_s:.0f} s, "
                  "2 workers, 16 partitions", flush=True)
            results["rebalance"] = suite.measure_live(
                ctx, "citystream", suite.steady_spec(sensors, rate, rebalance_s),
                "2 workers, 16 partitions: a third joins, then the first leaves", workers=2,
                partitions=16, events=rebalance_events(rebalance_s))
    finally:
        stop_all()
        results["conditions"] = host.stop()
        save()
        stack.close()
        if keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"results in {out}/results.json, table.md")


if __name__ == "__main__":
    scale(prog_name="python -m bench.scale")
