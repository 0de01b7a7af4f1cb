"""The measurements of `python -m bench`, run against a private stack.

Every measurement gets fresh names (Kafka topic prefix, MQTT shared group, InfluxDB buckets), so
none sees another's data, and stops what it started. How each figure is obtained (the method)
is documented in docs/performance.md; in short:

- *stage capacity* (MQTT->Kafka, Kafka->KPI, KPI+raw->InfluxDB, end to end, Telegraf, Quix):
  the input is loaded first (into Mosquitto's queue for the consumer's persistent session, or
  onto the Kafka topics), then the consumer starts and drains it; the rate is taken between
  10 % and 90 % of the input done, so start-up and stragglers stay out of it, from progress
  points that start at the consumer's start (nothing done) so every run gives a figure, and
  `measured_s` says how long that part ran. Progress comes from Kafka record times (ingest),
  committed offsets (KPI worker, sink, Quix: each commits at least every second) or
  InfluxDB's count of points written (end to end); inputs are sized so the measured part lasts
  many of those steps (the KPI stages get a larger backlog of their own: they are the fastest);
- *latency*: a paced live feed with probe readings whose publish times the publisher notes;
  a poller finds them in InfluxDB;
- *CPU* from /proc of each process, *RSS* at the end (and its peak), load and steal of the
  machine during each measurement.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import multiprocessing as mp
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from connectors.kafka import ensure_topics
from models.city import City, load_city
from models.settings import KafkaSettings
from tests.support import Process

from . import kafka as kq
from .influx import Influx, KpiPoller, ProbePoller, WriteCounter
from .load import (
    CITY_MESSAGES_PER_MINUTE,
    Burst,
    LiveSpec,
    Sensor,
    backlog,
    city_fleet,
    publish_backlog,
    record_city,
    run_live,
)
from .peers import (
    floor,
    quix_child,
    quix_python,
    telegraf_child,
    telegraf_kafka_children,
    telegraf_kafka_topic,
)
from .procs import BenchStack, Namespace, citystream
from .stats import latency_summary, measured_rate, per_1k, progress
from .system import CpuMeter, HostMeter, memory_mb

log = logging.getLogger(__name__)

Message = tuple[Sensor, bytes, int]
WORKLOADS = ("steady", "burst", "gateway", "replay")
STAGES = ("floor", "ingest", "kpi", "sink", "quix", "e2e", "latency", "rss")


@dataclass(frozen=True)
class Scale:
    """How big and long the measurements are (`--quick` shrinks every one)."""

    sensors: int = 10_000
    cycles: int = 20  # readings per sensor in the loaded backlogs
    gateway_batch: int = 50
    gateway_cycles: int = 100
    # the KPI stages read Kafka faster than ingest fills it: a backlog of their own, 1.2
    # million readings (2 h of event time: windows and quality hours close as they would live)
    kpi_cycles: int = 120
    live_s: float = 180.0  # latency runs at 50 % and 90 % of the maximum
    water_sensors: int = 10_000  # the Quix comparison: water meters only, 100 min of readings
    water_cycles: int = 100
    steady_rate: float = 10_000.0
    steady_s: float = 300.0
    burst_s: float = 60.0
    burst_around_s: float = 60.0  # steady load before and after the burst
    replay_hours: float = 23.5
    rss_sensors: int = 100_000
    drain_s: float = 180.0  # longest wait for a backlog after a live feed

    @classmethod
    def quick(cls) -> Scale:
        return cls(cycles=3, gateway_cycles=50, kpi_cycles=6, water_sensors=1000,
                   water_cycles=20, live_s=30.0,
                   steady_s=170.0, burst_s=20.0, burst_around_s=20.0, replay_hours=1.0,
                   drain_s=60.0)


@dataclass
class Context:
    """What every measurement needs."""

    stack: BenchStack
    influx: Influx
    city: City
    scale: Scale
    logs: Path
    quix_venv: Path
    say: Callable[[str], None]
    peers: bool = True
    cleanup: list[str] = field(default_factory=list)

    def namespace(self, label: str, buckets: bool = True,
                  partitions: int | None = None) -> Namespace:
        ns = Namespace(label, partitions)
        if buckets:
            for bucket in (ns.telemetry, ns.kpi):
                self.influx.create_bucket(bucket)
                self.cleanup.append(bucket)
        return ns

    def drop_buckets(self) -> None:
        for bucket in self.cleanup:
            try:
                self.influx.delete_bucket(bucket)
            except Exception:  # best effort; the stack is temporary anyway
                log.debug("could not delete bucket %s", bucket, exc_info=True)
        self.cleanup.clear()

    def kafka(self, ns: Namespace) -> KafkaSettings:
        return self.stack.kafka(ns.prefix, ns.partitions)


def settle(ctx: Context, max_s: float = 90.0, cores: float = 0.25) -> float:
    """Wait (at most `max_s`) until the services use less than `cores` of CPU, so one
    measurement's aftermath (Mosquitto freeing a dropped queue, Kafka flushing, InfluxDB
    compacting) does not count against the next. Returns the seconds waited."""
    t0 = time.time()
    meter = CpuMeter(ctx.stack.service_pids()).start()
    while time.time() - t0 < max_s:
        time.sleep(1.0)
        used = sum(meter.stop().values())
        if used < cores:
            break
        meter.start()
    return time.time() - t0


# -- pieces -----------------------------------------------------------------------------------


def _ingest(ctx: Context, ns: Namespace, n: int, leave: bool = True) -> list[Process]:
    extra = {"CITYSTREAM_INGEST_COUNTERS_INTERVAL": "1"}
    if leave:
        extra["CITYSTREAM_INGEST_LEAVE_ON_EXIT"] = "1"
    return [citystream(f"ingest-{ns.tag}-{i}", ["ingest", "--instance", str(i)], ctx.stack, ns,
                       ctx.logs, extra) for i in range(n)]


def _workers(ctx: Context, ns: Namespace, n: int, sink: bool = True, first: int = 0,
             ) -> list[Process]:
    args = [] if sink else ["--no-sink"]
    return [citystream(f"worker-{ns.tag}-{i}",
                       ["worker", "--instance", str(i), "--data-dir",
                        str(ctx.logs / f"state-{ns.tag}"), *args], ctx.stack, ns, ctx.logs)
            for i in range(first, first + n)]


def _start_all(children: list[Process], timeout_s: float = 180.0) -> None:
    for c in children:
        c.start(wait=False)
    for c in children:
        c.wait_ready(timeout_s)


def _stop_all(children: list[Process]) -> None:
    for c in children:
        c.stop()


def _prime(children: list[Process]) -> None:
    """Start and stop consumers once, so the broker keeps their persistent sessions and queues
    what is published meanwhile."""
    _start_all(children)
    _stop_all(children)


def _meters(ctx: Context, procs: dict[str, Process]) -> tuple[CpuMeter, CpuMeter, HostMeter]:
    ours = CpuMeter({name: c.pid for name, c in procs.items()}).start()
    services = CpuMeter(ctx.stack.service_pids()).start()
    return ours, services, HostMeter().start()


def _figures(items: float, rate: float | None, ours: dict[str, float],
             services: dict[str, float], host: dict[str, Any],
             procs: dict[str, Process]) -> dict[str, Any]:
    return {
        "items": items, "rate_per_s": rate,
        "cpu_s_per_1k": per_1k(sum(ours.values()), items),
        "cpu_s_per_1k_by_process": {k: per_1k(v, items) for k, v in ours.items()},
        "services_cpu_s_per_1k": {k: per_1k(v, items) for k, v in services.items()},
        "memory_mb": {name: memory_mb(c.pid) for name, c in procs.items()},
        "host": host,
    }


def _ingest_accepted(children: list[Process]) -> int:
    """Readings accepted so far, from the ingest processes' counter log lines."""
    total = 0
    for c in children:
        last = 0
        try:
            text = c.log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines()[-50:]:
            if " readings accepted" in line and "ingest " in line:
                last = int(line.split(" messages, ")[1].split(" readings")[0])
        total += last
    return total


def _wait(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


# -- the floor --------------------------------------------------------------------------------


def measure_floor(ctx: Context, messages: list[Message], label: str) -> dict[str, Any]:
    result = floor(messages, min_seconds=3.0)
    return {"what": f"floor: parse, validate, line-encode ({label})", "items": result["readings"],
            "rate_per_s": result["readings_per_cpu_s"], "wall_rate_per_s":
            result["readings_per_s"], "cpu_s_per_1k": result["cpu_s_per_1k"],
            "measured_s": result["readings"] / result["readings_per_s"]}


# -- stages -----------------------------------------------------------------------------------


def measure_ingest(ctx: Context, messages: list[Message], processes: int, label: str = "",
                   ) -> dict[str, Any]:
    """MQTT -> Kafka: `processes` ingest processes drain a backlog queued in Mosquitto."""
    ns = ctx.namespace("ingest", buckets=False)
    _prime(_ingest(ctx, ns, processes, leave=False))
    pub = publish_backlog(ctx.stack.info["mqtt"], iter(messages), f"bench-{ns.tag}")
    want = pub["readings"]
    ingests = _ingest(ctx, ns, processes)
    procs = {f"ingest-{i}": c for i, c in enumerate(ingests)}
    _start_all(ingests)
    ours, services, host = _meters(ctx, procs)
    done = _wait(lambda: _ingest_accepted(ingests) >= want, ctx.scale.drain_s * 3)
    figures = _figures(want, None, ours.stop(), services.stop(), host.stop(), procs)
    arrived = asyncio.run(kq.arrivals(ctx.stack.bootstrap,
                                      list(ctx.kafka(ns).topics.telemetry.values()), want, 120))
    _stop_all(ingests)
    samples = kq.cumulative(arrived)
    figures.update(measured_rate(samples, want))
    figures["complete"] = done and bool(samples) and samples[-1][1] >= want
    figures["startup_s"] = samples[0][0] - ingests[0].started_at if samples else None
    return {"what": f"MQTT -> Kafka, {processes} ingest{label}", **figures,
            "messages": pub["messages"]}


def measure_kpi(ctx: Context, messages: Iterable[Message], workers: int, label: str = "",
                sink: bool = False, partitions: int | None = None,
                ) -> tuple[dict[str, Any], Namespace, kq.Ledger]:
    """Kafka -> KPI records: `workers` workers without the sink (or, `sink`, with it: raw
    points and KPIs into InfluxDB too) drain a backlog on Kafka; progress is their committed
    offsets (Faust commits every second)."""
    ns = ctx.namespace("kpi", buckets=sink, partitions=partitions)
    ledger = asyncio.run(kq.preload(ctx.kafka(ns), iter(messages)))
    watch = kq.GroupWatcher(ctx.stack.bootstrap, f"{ns.prefix}citystream-worker", ledger,
                            interval_s=0.2)
    children = _workers(ctx, ns, workers, sink=sink)
    procs = {f"worker-{i}": c for i, c in enumerate(children)}
    watch.start()
    started = time.time()
    _start_all(children)
    ours, services, host = _meters(ctx, procs)
    done = watch.wait(ctx.scale.drain_s * 5)
    engine_done = time.time()
    if sink:  # the sink's own group writes the raw points behind the engine
        done = _wait(lambda: ctx.influx.count(ns.telemetry) >= ledger.total,
                     ctx.scale.drain_s, 1.0) and done
    sink_behind = time.time() - engine_done
    figures = _figures(ledger.total, None, ours.stop(), services.stop(), host.stop(), procs)
    samples = watch.stop()
    _stop_all(children)
    figures.update(measured_rate(progress(samples, started), ledger.total))
    figures["complete"] = done
    figures["kpi_records"] = sum(asyncio.run(kq.end_offsets(
        ctx.stack.bootstrap, [f"{ns.prefix}kpi.records"])).values())
    if sink:
        figures["raw_points"] = ctx.influx.count(ns.telemetry)
        figures["sink_behind_s"] = sink_behind
        figures["complete"] = done and figures["raw_points"] == ledger.total
    into = "KPI and InfluxDB" if sink else "KPI"
    return ({"what": f"Kafka -> {into}, {workers} worker{label}", **figures}, ns, ledger)


def measure_sink(ctx: Context, ns: Namespace, ledger: kq.Ledger) -> dict[str, Any]:
    """KPI records + raw readings -> InfluxDB: the sink alone drains what a KPI stage left."""
    for bucket in (ns.telemetry, ns.kpi):
        ctx.influx.create_bucket(bucket)
        ctx.cleanup.append(bucket)
    units = [f"{ns.prefix}kpi.records", f"{ns.prefix}pipeline.counters"]
    full = kq.ledger_for_units(ledger, asyncio.run(kq.end_offsets(ctx.stack.bootstrap, units)),
                               units)
    watch = kq.GroupWatcher(ctx.stack.bootstrap, f"{ns.prefix}citystream-sink", full,
                            interval_s=0.2)
    sink = citystream(f"sink-{ns.tag}", ["sink", "--instance", "0"], ctx.stack, ns, ctx.logs)
    procs = {"sink": sink}
    watch.start()
    started = time.time()
    sink.start()
    ours, services, host = _meters(ctx, procs)
    done = watch.wait(ctx.scale.drain_s * 3)
    figures = _figures(full.total, None, ours.stop(), services.stop(), host.stop(), procs)
    samples = watch.stop()
    sink.stop()
    figures.update(measured_rate(progress(samples, started), full.total))
    figures["complete"] = done and ctx.influx.count(ns.telemetry) == ledger.total
    return {"what": "KPI + raw -> InfluxDB, sink", **figures}


def measure_quix(ctx: Context, ns: Namespace, ledger: kq.Ledger) -> dict[str, Any]:
    """Quix Streams: 15-min water consumption per district from the same loaded topic."""
    water = kq.Ledger({tp: v for tp, v in ledger.offsets.items() if tp.topic.endswith(".water")},
                      {tp: v for tp, v in ledger.cumulative.items()
                       if tp.topic.endswith(".water")})
    group = f"{ns.prefix}quix"
    watch = kq.GroupWatcher(ctx.stack.bootstrap, group, water, interval_s=0.2)
    child = quix_child(quix_python(ctx.quix_venv, ctx.say), ctx.stack, ns, ctx.logs, group)
    procs = {"quix": child}
    watch.start()
    started = time.time()
    child.start()
    ours, services, host = _meters(ctx, procs)
    done = watch.wait(ctx.scale.drain_s * 5)
    figures = _figures(water.total, None, ours.stop(), services.stop(), host.stop(), procs)
    samples = watch.stop()
    child.stop()
    figures.update(measured_rate(progress(samples, started), water.total))
    figures["complete"] = done
    figures["check"] = compare_water(ctx, ns)
    return {"what": "Quix Streams: 15-min water consumption", **figures}


def compare_water(ctx: Context, ns: Namespace) -> dict[str, Any]:
    """Quix's windows against citystream's water_kpi records of the same topic."""
    raw = asyncio.run(kq.read_all(ctx.stack.bootstrap,
                                  [f"{ns.prefix}kpi.records", f"{ns.prefix}quix.water"]))
    ours: dict[tuple[str, int], float] = {}
    for _, value in raw.get(f"{ns.prefix}kpi.records", []):
        body = orjson.loads(value)
        if body.get("measurement") == "water_kpi":
            ours[(body["district"], body["window_end_ms"])] = body["consumption_l"]
    theirs: dict[tuple[str, int], float] = {}
    for key, value in raw.get(f"{ns.prefix}quix.water", []):
        body = orjson.loads(value)
        theirs[((key or b"").decode(), body["end"])] = body["consumption_l"]
    both = set(ours) & set(theirs)
    worst = max((abs(ours[k] - theirs[k]) / max(1.0, abs(ours[k])) for k in both), default=None)
    return {"citystream_windows": len(ours), "quix_windows": len(theirs), "compared": len(both),
            "max_rel_diff": worst}


SYSTEMS = {"citystream": "citystream", "telegraf": "Telegraf",
           "telegraf-kafka": "Telegraf via Kafka (mqtt_consumer -> kafka -> kafka_consumer)"}


def _peer(ctx: Context, system: str, ns: Namespace) -> list[Process]:
    """A peer's processes for one measurement: Telegraf direct, or Telegraf via Kafka (its topic
    is created by `measure_e2e` as citystream's are: same partitions, replication and
    min.insync.replicas)."""
    if system == "telegraf":
        return [telegraf_child(ctx.stack, ns, ctx.logs, ns.tag)]
    return telegraf_kafka_children(ctx.stack, ns, ctx.logs, ns.tag)


def measure_e2e(ctx: Context, system: str, messages: list[Message], label: str = "",
                ingests: int = 1, workers: int = 1) -> dict[str, Any]:
    """MQTT -> raw points in InfluxDB: a backlog queued in Mosquitto drained by citystream
    (ingest + worker with its sink) or by a peer (`SYSTEMS`)."""
    ns = ctx.namespace("e2e")
    ours = system == "citystream"
    if system == "telegraf-kafka":
        asyncio.run(ensure_topics(ctx.kafka(ns), [telegraf_kafka_topic(ns)]))
    _prime(_ingest(ctx, ns, ingests, leave=False) if ours else _peer(ctx, system, ns)[-1:])
    pub = publish_backlog(ctx.stack.info["mqtt"], iter(messages), f"bench-{ns.tag}")
    want = pub["readings"]
    counter = WriteCounter(ctx.influx)
    if not ours:
        children = _peer(ctx, system, ns)
        procs = {c.name: c for c in children}
        starting = children
    else:
        ws = _workers(ctx, ns, workers)
        _start_all(ws)  # Faust needs ~10 s to join; ingest then starts the drain
        starting = _ingest(ctx, ns, ingests)
        children = [*ws, *starting]
        procs = {f"worker-{i}": c for i, c in enumerate(ws)}
        procs.update({f"ingest-{i}": c for i, c in enumerate(starting)})
    counter.start()
    started = time.time()
    _start_all(starting)
    meters = _meters(ctx, procs)
    done = counter.wait_for(want, ctx.scale.drain_s * 5, idle_s=60)
    t_raw = time.time()
    engine_done = True
    if ours:  # the KPI engine must have taken every reading too
        topics = list(ctx.kafka(ns).topics.telemetry.values())
        group = f"{ns.prefix}citystream-worker"
        engine_done = _wait(lambda: asyncio.run(kq.caught_up(ctx.stack.bootstrap, group,
                                                              topics)),
                            ctx.scale.drain_s * 5, 1.0)
    t_all = time.time()
    figures = _figures(want, None, meters[0].stop(), meters[1].stop(), meters[2].stop(), procs)
    samples = counter.stop()
    _stop_all(children)
    first = next((t for t, n in samples if n > 0), None)
    raw = measured_rate(progress(samples, started), want)
    figures.update(raw)
    figures["raw_rate_per_s"] = raw["rate_per_s"]
    # sustained: the raw path's rate, unless the KPI engine took longer than it (then the
    # readings over the time from the first point until raw points and KPIs were all done)
    whole = want / (t_all - first) if first and engine_done and t_all > first else None
    if whole and (raw["rate_per_s"] is None or whole < raw["rate_per_s"]):
        assert first is not None
        figures.update({"rate_per_s": whole, "measured_s": t_all - first,
                        "rate_samples": sum(1 for t, _ in samples if first < t < t_all)})
    figures["engine_lag_s"] = t_all - t_raw
    figures["kafka_records"] = asyncio.run(kq.records_by_topic(ctx.stack.bootstrap, ns.prefix))
    figures["kafka_bytes"] = kq.log_bytes_by_topic(ctx.stack.home, ns.prefix)
    figures["raw_points"] = ctx.influx.count(ns.telemetry)
    figures["complete"] = done and engine_done and figures["raw_points"] == want
    figures["startup_s"] = first - started if first else None
    who = f"citystream {ingests} ingest + {workers} worker" if ours else SYSTEMS[system]
    return {"what": f"MQTT -> InfluxDB raw{label}, {who}", "system": system, **figures}


# -- live feeds -------------------------------------------------------------------------------


def _live_main(spec: LiveSpec, city_file: str | None, out: Any) -> None:
    city = load_city(Path(city_file) if city_file else None)
    result = run_live(spec, city, lambda probes: out.put(("probes", probes)))
    out.put(("done", result))


WorkerAction = Callable[["Context", Namespace, list[Process]], None]
"""Something done to the workers of a live feed (they are given, and may be added to)."""


@dataclass(frozen=True)
class LiveEvent:
    """Something done to citystream's workers `at_s` seconds into a live feed (a worker joins
    or leaves: a rebalance under load); `act` gets the workers and may add to them."""

    at_s: float
    what: str
    act: WorkerAction


def measure_live(ctx: Context, system: str, spec: LiveSpec, what: str,
                 kpi: bool = False, workers: int = 1, partitions: int | None = None,
                 events: tuple[LiveEvent, ...] = ()) -> dict[str, Any]:
    """A paced live feed into citystream (ingest + `workers` workers) or Telegraf: delivered
    rate, publish-to-InfluxDB latency of the probes (overall, per burst phase and after each
    of `events`), KPI latency. CPU counts the processes started with the feed: a worker an
    event starts is not in it, one an event stops counts until then."""
    ns = ctx.namespace("live", partitions=partitions)
    ws: list[Process] = []
    if system == "telegraf":
        children = [telegraf_child(ctx.stack, ns, ctx.logs, ns.tag)]
        procs = {"telegraf": children[0]}
    else:
        ws = _workers(ctx, ns, workers)
        ins = _ingest(ctx, ns, 1)
        children = [*ws, *ins]
        procs = {f"worker-{i}": w for i, w in enumerate(ws)} | {"ingest-0": ins[0]}
    _start_all(children)
    start_at = time.time() + 2.0
    shift_ms = cross_ms = 0
    if kpi:  # event time such that windows of every kind end 10 s into the feed
        cross_ms = int((start_at + 10) * 1000)
        shift_ms = cross_ms % 1_800_000
    spec = replace(spec, mqtt=ctx.stack.info["mqtt"], client_id=f"bench-{ns.tag}",
                   start_at=start_at, shift_ms=shift_ms)
    probes = ProbePoller(ctx.influx, ns.telemetry)
    kpis = KpiPoller(ctx.influx, ns.kpi, cross_ms - shift_ms - 1000) if kpi else None
    counter = WriteCounter(ctx.influx)
    results: queue_mod.Queue[Any] = queue_mod.Queue()
    spawn = mp.get_context("spawn")
    channel = spawn.Queue()
    publisher = spawn.Process(target=_live_main, args=(spec, None, channel), daemon=True)

    def pump() -> None:
        while True:
            kind, body = channel.get()
            if kind == "probes":
                probes.add(body)
            else:
                results.put(body)
                return

    pumper = threading.Thread(target=pump, daemon=True)
    for t in (probes, counter, pumper, *([kpis] if kpis else [])):
        t.start()
    ours, services, host = _meters(ctx, procs)
    publisher.start()
    done_at: dict[str, float] = {}
    feed_over = threading.Event()

    def run_events() -> None:
        for event in events:
            if feed_over.wait(max(0.0, start_at + event.at_s - time.time())):
                return  # the feed ended first: nothing more is started or stopped
            at = time.time()
            event.act(ctx, ns, ws)
            done_at[event.what] = at

    actor = threading.Thread(target=run_events, daemon=True)
    actor.start()
    try:
        try:
            sent = results.get(timeout=spec.duration_s + 300)
        except queue_mod.Empty:
            raise TimeoutError(
                f"the publisher did not finish {spec.duration_s + 300:.0f} s after a "
                f"{spec.duration_s:.0f} s feed at {spec.rate:,.0f} readings/s: the broker took "
                "its messages too slowly on this machine") from None
        t_end = time.time()
        written_at_end = counter.written()
        _wait(lambda: probes.outstanding() == 0, ctx.scale.drain_s)
        drained = time.time() - t_end
        if kpis:
            _wait(lambda: _kpi_closed(kpis, spec, start_at, t_end, ctx.city), 30)
        figures = _figures(sent["readings"], None, ours.stop(), services.stop(), host.stop(),
                           procs)
    finally:
        if publisher.is_alive():
            publisher.terminate()
        publisher.join(10)
        visible = probes.stop()
        samples = counter.stop()
        if kpis:
            kpis.stop()
        feed_over.set()
        actor.join()
        _stop_all([*children, *ws[workers:]])
    lat = probes.latencies()
    if sent.get("fell_behind_at_s") is not None:
        figures["fell_behind"] = (
            f"the feed fell {spec.max_lag_s:.0f} s behind its schedule after "
            f"{sent['fell_behind_at_s']:.0f} s of {spec.duration_s:.0f} s and stopped: "
            f"{spec.rate:,.0f} readings/s is more than the broker, {system} and the publisher "
            "take together on this machine")
    figures.update(_delivered(samples, start_at, t_end))
    figures.update({
        "offered_rate_per_s": sent["readings"] / sent["seconds"],
        "published": {k: v for k, v in sent.items() if k != "probes"},
        "latency": latency_summary(lat),
        "probes": {"published": len(probes.published), "seen": len(visible.seen),
                   "poll_resolution_s": visible.resolution_s, "polls": visible.polls,
                   "poll_errors": visible.errors},
        "written_during_feed": written_at_end, "drain_s": drained,
        "backlog_at_end": sent["readings"] - written_at_end,
    })
    if spec.bursts:
        figures["phases"] = _phases(probes, spec, start_at)
    if kpis is not None:
        figures["kpi_latency"] = _kpi_latency(kpis, spec, start_at, t_end, ctx.city)
    if events:
        figures["events"] = _after_events(probes, samples, start_at, t_end, done_at)
    return {"what": what, "system": system, **figures}


def _after_events(probes: ProbePoller, samples: list[tuple[float, float]], t0: float,
                  t_end: float, done_at: dict[str, float]) -> list[dict[str, Any]]:
    """Per stretch of the feed (before the first event, then from each event to the next):
    the probes' latency, and the longest time InfluxDB received no point at all (raw points
    and KPIs come through the same workers: that is how long they all stalled), to the
    resolution of `samples` (a lower bound: a stall may be one sample interval longer)."""
    bounds = [("before", t0), *sorted(done_at.items(), key=lambda kv: kv[1])]
    seen = probes.result.seen
    out = []
    for i, (what, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else t_end
        lat = [seen[k] - p for k, p in probes.published.items() if start <= p < end and k in seen]
        lost = sum(1 for k, p in probes.published.items() if start <= p < end and k not in seen)
        out.append({"what": what, "from_s": start - t0, "to_s": end - t0,
                    "latency": latency_summary(lat), "probes_not_seen": lost,
                    "longest_no_write_s": _longest_flat(samples, start, end)})
    return out


def _longest_flat(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """The longest stretch between `start` and `end` over which the count did not grow (a
    stretch that began before `start` counts from `start`)."""
    before = [(start, n) for t, n in samples if t < start][-1:]
    inside = before + [(t, n) for t, n in samples if start <= t <= end]
    longest, since = 0.0, None
    for (t_prev, n_prev), (t, n) in itertools.pairwise(inside):
        if n == n_prev:
            since = t_prev if since is None else since
            longest = max(longest, t - since)
        else:
            since = None
    return longest


def _delivered(samples: list[tuple[float, float]], t0: float, t1: float,
               ) -> dict[str, float | None]:
    """Points written per second over the second half of the feed (steady state), and the
    seconds that was measured over."""
    mid = t0 + (t1 - t0) / 2
    inside = [(t, n) for t, n in samples if mid <= t <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return {"delivered_rate_per_s": None, "measured_s": None}
    span = inside[-1][0] - inside[0][0]
    return {"delivered_rate_per_s": (inside[-1][1] - inside[0][1]) / span, "measured_s": span}


def _phases(probes: ProbePoller, spec: LiveSpec, t0: float) -> dict[str, Any]:
    burst = spec.bursts[0]
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    seen = probes.result.seen
    for key, published in probes.published.items():
        at = published - t0
        phase = ("before" if at < burst.start_s else "during" if at < burst.end_s else "after")
        if key in seen:
            phases[phase].append(seen[key] - published)
    out: dict[str, Any] = {k: latency_summary(v) for k, v in phases.items()}
    base = out["before"]["p99_s"]
    recovered = None
    late = sorted((p - t0, seen[k] - p) for k, p in probes.published.items()
                  if k in seen and p - t0 >= burst.end_s)
    if base is not None and late:  # the first moment after the burst from which every probe
        # is back near base (none if the feed stopped before the burst ended: not measured)
        limit = max(2 * base, base + 0.5)
        bad = [at for at, lat in late if lat > limit]
        recovered = (max(bad) - burst.end_s) if bad else 0.0
    out["recovery_s"] = recovered
    return out


def _kpi_window_ends(spec: LiveSpec, start_at: float, t_end: float, city: City,
                     ) -> dict[str, list[int]]:
    """Per KPI measurement, the window ends (feed time, ms) that became final during the feed."""
    grace = city.windows.grace_s * 1000
    first = int((start_at - 1) * 1000) - spec.shift_ms
    last = int(t_end * 1000) - spec.shift_ms - grace
    out = {}
    for measurement, window_s in (("water_kpi", 900), ("energy_kpi", 1800),
                                  ("traffic_kpi", 300), ("shuttle_kpi", 900)):
        step = window_s * 1000
        out[measurement] = list(range((first // step + 1) * step, last + 1, step))
    return out


def _kpi_closed(kpis: KpiPoller, spec: LiveSpec, start_at: float, t_end: float,
                city: City) -> bool:
    ends = _kpi_window_ends(spec, start_at, t_end, city)
    seen = {(m, e) for m, _, e in kpis.result.seen}
    return all((m, e) in seen for m, es in ends.items() for e in es)


def _kpi_latency(kpis: KpiPoller, spec: LiveSpec, start_at: float, t_end: float,
                 city: City) -> dict[str, Any]:
    """Seconds from a window's end (as wall time of the feed) to its KPI point in InfluxDB,
    for windows that became final during the feed: when a point for it was first visible
    (`first`), and when its value last changed (`final`, the final value if the pipeline kept
    up). The contract's grace is part of both: a window is final only once event time passed
    its end plus the grace."""
    ends = _kpi_window_ends(spec, start_at, t_end, city)
    grace = city.windows.grace_s
    out: dict[str, Any] = {"grace_s": grace, "poll_resolution_s": kpis.result.resolution_s}
    first_all: list[float] = []
    final_all: list[float] = []
    for measurement, window_ends in ends.items():
        keys = [k for k in kpis.result.seen if k[0] == measurement and k[2] in window_ends]
        first = [kpis.result.seen[k] - (k[2] + spec.shift_ms) / 1000 for k in keys]
        final = [kpis.changed[k] - (k[2] + spec.shift_ms) / 1000 for k in keys]
        first_all.extend(first)
        final_all.extend(final)
        out[measurement] = {"windows": len(window_ends), "first": latency_summary(first),
                            "final": latency_summary(final)}
    out["first"] = latency_summary(first_all)
    out["final"] = latency_summary(final_all)
    out["final_minus_grace"] = latency_summary([v - grace for v in final_all])
    return out


# -- workloads --------------------------------------------------------------------------------


def replay_day(ctx: Context, hours: float, seed: int = 11) -> list[Message]:
    """A recorded day of the shipped city (`citystream sim --record`, batch 1, no faults),
    ending 15 min ago so every reading is inside the 24 h horizon when replayed."""
    path = ctx.logs / f"replay-{int(time.time())}.jsonl"
    start = int(time.time() * 1000) - int(hours * 3_600_000) - 900_000
    count = int(hours * 60 * CITY_MESSAGES_PER_MINUTE)  # trimmed below
    record_city(path, start_ms=start, count=count, seed=seed)
    end_iso = time.strftime("%Y-%m-%dT%H:%M:%S",
                            time.gmtime((start + hours * 3_600_000) / 1000))
    out: list[Message] = []
    with path.open("rb") as f:
        for line in f:
            row = orjson.loads(line)
            if row["sim_time"][:19] > end_iso:
                break
            topic = row["topic"]
            _, district, kind, sensor_id = topic.split("/")
            sensor = Sensor(len(out), kind, district, sensor_id, "")
            out.append((sensor, base64.b64decode(row["payload_b64"]), len(row["expected"])))
    path.unlink()
    return out


def measure_replay(ctx: Context, system: str, messages: list[Message]) -> dict[str, Any]:
    """A recorded day published as fast as the broker takes it, into running consumers."""
    ns = ctx.namespace("replay")
    if system == "telegraf":
        children = [telegraf_child(ctx.stack, ns, ctx.logs, ns.tag)]
        procs = {"telegraf": children[0]}
    else:
        ws, ins = _workers(ctx, ns, 1), _ingest(ctx, ns, 1)
        children = [*ws, *ins]
        procs = {"worker-0": ws[0], "ingest-0": ins[0]}
    _start_all(children)
    want = sum(n for _, _, n in messages)
    counter = WriteCounter(ctx.influx)
    counter.start()
    ours, services, host = _meters(ctx, procs)
    t0 = time.time()
    pub = publish_backlog(ctx.stack.info["mqtt"], iter(messages), f"bench-{ns.tag}")
    done = counter.wait_for(want, ctx.scale.drain_s * 10, idle_s=90)
    t_done = time.time()
    figures = _figures(want, None, ours.stop(), services.stop(), host.stop(), procs)
    samples = counter.stop()
    kpi_points = 0
    if system != "telegraf":
        time.sleep(15)  # the last windows close on the quiet timer
        kpi_points = ctx.influx.count(ns.kpi, ("consumption_l", "energy_kwh", "vehicles",
                                               "boardings"))
    _stop_all(children)
    figures.update(measured_rate(progress(samples, t0), want))
    figures.update({
        "overall_rate_per_s": want / (t_done - t0) if done else None,
        "publish_s": pub["seconds"], "total_s": t_done - t0, "complete": done,
        "raw_points": ctx.influx.count(ns.telemetry), "kpi_points": kpi_points,
        "messages": len(messages)})
    who = "Telegraf" if system == "telegraf" else "citystream"
    return {"what": f"(d) replay of a recorded day, {who}", "system": system, **figures}


def steady_spec(sensors: int, rate: float, duration_s: float,
                batch: int = 1, bursts: tuple[Burst, ...] = ()) -> LiveSpec:
    """A live city feed: probes at about 50 readings/s whatever the rate."""
    probes = max(1, min(sensors // 4, round(sensors * 50 / max(rate, 1))))
    return LiveSpec(mqtt={}, sensors=sensors, rate=rate, duration_s=duration_s,
                    probes=probes, batch=batch, bursts=bursts)


def backlog_messages(ctx: Context, sensors: int, cycles: int, batch: int = 1,
                     kinds: tuple[str, ...] = ("water", "energy", "traffic", "shuttle"),
                     ) -> list[Message]:
    return list(backlog_stream(ctx, sensors, cycles, batch, kinds))


def backlog_stream(ctx: Context, sensors: int, cycles: int, batch: int = 1,
                   kinds: tuple[str, ...] = ("water", "energy", "traffic", "shuttle"),
                   ) -> Iterable[Message]:
    """`backlog_messages` made as they are taken (the KPI stages' millions of readings need
    not be held at once), the last report a minute before the call."""
    fleet = city_fleet(ctx.city, sensors, 0, kinds)
    end = int(time.time() * 1000) - 60_000
    return backlog(fleet, cycles, end, batch=batch)
