"""`python -m bench` end to end: a private stack, the measurements of bench/suite.py run
`runs` times, medians, one table, results.json and a chart in the output directory."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from models.city import load_city
from tests.support import stop_all

from . import suite
from .load import Burst
from .procs import BenchStack
from .report import chart, summary_rows, table_text
from .stats import merge_runs
from .system import HostMeter, machine, versions

log = logging.getLogger(__name__)


@dataclass
class Options:
    """What to run; see `python -m bench --help`."""

    out: Path
    runs: int = 1
    quick: bool = False
    workloads: tuple[str, ...] = suite.WORKLOADS
    stages: tuple[str, ...] = suite.STAGES
    peers: bool = True
    keep: bool = False
    quix_venv: Path = Path(".venv-bench")
    latency_at: tuple[int, ...] = (50, 90)  # percents of the end-to-end maximum
    extra: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs the selected measurements; a failing one is recorded with its error and the rest
    go on."""

    def __init__(self, ctx: suite.Context, options: Options) -> None:
        self.ctx = ctx
        self.o = options
        self.results: dict[str, Any] = {}

    def step(self, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        self.ctx.say(f"-- {key}")
        settled = suite.settle(self.ctx)
        t0 = time.time()
        try:
            result = fn()
        except Exception as exc:  # record it, measure the rest
            self.ctx.say(f"   {key} failed: {type(exc).__name__}: {exc}")
            result = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=8)}
        finally:
            stop_all()
            self.ctx.drop_buckets()
        result["seconds"] = round(time.time() - t0, 1)
        result["settled_s"] = round(settled, 1)
        self.results[key] = result
        with (self.o.out / "partial.jsonl").open("a") as partial:  # survives a killed run
            partial.write(json.dumps({key: result}, default=str) + "\n")
        if result.get("fell_behind"):
            self.ctx.say(f"   {result['fell_behind']}")
        rate = result.get("rate_per_s") or result.get("delivered_rate_per_s")
        lat = (result.get("latency") or {}).get("p99_s")
        over = result.get("measured_s")
        figures = [f"{rate:,.0f} readings/s" if rate else "no rate",
                   f"over {over:.1f} s" if over else "",
                   f"p99 {lat:.2f} s" if lat is not None else "", f"({result['seconds']} s)"]
        self.ctx.say(f"   {key}: {result.get('what', '')}: {'  '.join(f for f in figures if f)}")
        return None if "error" in result else result

    def want(self, name: str) -> bool:
        return name in self.o.stages or name in self.o.workloads

    def run_once(self) -> dict[str, Any]:
        ctx, s, step = self.ctx, self.ctx.scale, self.step
        city_msgs = suite.backlog_messages(ctx, s.sensors, s.cycles)
        gateway_msgs = suite.backlog_messages(ctx, s.sensors, s.gateway_cycles, s.gateway_batch)
        systems = ("citystream", "telegraf") if self.o.peers else ("citystream",)
        if self.want("floor"):
            step("floor.single", partial(suite.measure_floor, ctx, city_msgs,
                                         "1 reading per message"))
            step("floor.gateway", partial(suite.measure_floor, ctx, gateway_msgs,
                                          "gateway batches of 50"))
        if self.want("ingest"):
            for n in (1, 2):
                step(f"ingest.{n}", partial(suite.measure_ingest, ctx, city_msgs, n))
            step("ingest.gateway", partial(suite.measure_ingest, ctx, gateway_msgs, 1,
                                           ", gateway batches of 50"))
        if self.want("kpi") or self.want("sink"):
            for n in (1, 2):
                held: dict[str, Any] = {}
                kpi_msgs = suite.backlog_stream(ctx, s.sensors, s.kpi_cycles)
                if step(f"kpi.{n}", partial(_kpi, ctx, kpi_msgs, n, "", held)) and (
                        n == 1 and self.want("sink")):
                    step("sink", partial(suite.measure_sink, ctx, held["ns"], held["ledger"]))
        if self.want("quix"):
            water = suite.backlog_stream(ctx, s.water_sensors, s.water_cycles,
                                         kinds=("water",))
            held = {}
            if step("kpi.water", partial(_kpi, ctx, water, 1, ", water only", held)) and (
                    self.o.peers):
                step("quix.water", partial(suite.measure_quix, ctx, held["ns"], held["ledger"]))
        max_rate = None
        if self.want("e2e") or self.want("latency") or self.want("burst"):
            e2e = step("e2e.citystream", partial(suite.measure_e2e, ctx, "citystream",
                                                 city_msgs))
            max_rate = (e2e or {}).get("rate_per_s")
            for peer in ("telegraf", "telegraf-kafka") if self.o.peers else ():
                step(f"e2e.{peer}", partial(suite.measure_e2e, ctx, peer, city_msgs))
        if self.want("latency") and max_rate:
            for pct in self.o.latency_at:
                rate = max_rate * pct / 100
                spec = suite.steady_spec(s.sensors, rate, s.live_s)
                for system in systems:
                    kpi = system == "citystream" and s.live_s >= ctx.city.windows.grace_s + 40
                    step(f"latency.{pct}.{system}", partial(
                        suite.measure_live, ctx, system, spec,
                        f"latency at {pct} % of citystream's max ({rate:.0f} readings/s)",
                        kpi=kpi))
        if self.want("steady"):
            spec = suite.steady_spec(s.sensors, s.steady_rate, s.steady_s)
            for system in systems:
                step(f"steady.{system}", partial(
                    suite.measure_live, ctx, system, spec,
                    f"(a) steady city: {s.sensors} sensors at 1 reading/s",
                    kpi=system == "citystream"))
        if self.want("burst") and max_rate:
            base = max_rate / 2
            burst = Burst("traffic", s.burst_around_s, s.burst_around_s + s.burst_s, 10.0)
            spec = suite.steady_spec(s.sensors, base, 2 * s.burst_around_s + s.burst_s,
                                     bursts=(burst,))
            for system in systems:
                step(f"burst.{system}", partial(
                    suite.measure_live, ctx, system, spec,
                    f"(b) traffic counters at 10x for {s.burst_s:.0f} s on a city at "
                    f"{base:.0f} readings/s"))
        if self.want("gateway"):
            for system in (*systems, "telegraf-kafka") if self.o.peers else systems:
                step(f"gateway.{system}", partial(suite.measure_e2e, ctx, system, gateway_msgs,
                                                  ", (c) gateway batches of 50"))
        if self.want("replay"):
            day = suite.replay_day(ctx, s.replay_hours)
            for system in systems:
                step(f"replay.{system}", partial(suite.measure_replay, ctx, system, day))
        if self.want("rss"):
            for sensors in (s.sensors, s.rss_sensors):
                msgs = suite.backlog_messages(ctx, sensors, 2, 2)
                for system in systems:
                    step(f"rss.{sensors}.{system}", partial(
                        suite.measure_e2e, ctx, system, msgs, f", {sensors:,} sensors"))
        return self.results


def _kpi(ctx: suite.Context, messages: Iterable[suite.Message], workers: int, label: str,
         held: dict[str, Any]) -> dict[str, Any]:
    """A KPI stage run that keeps its namespace and ledger for the sink or Quix after it."""
    result, held["ns"], held["ledger"] = suite.measure_kpi(ctx, messages, workers, label)
    return result


def run(options: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything selected and write `results.json`, `table.md` and `chart.png`."""
    options.out.mkdir(parents=True, exist_ok=True)
    scale = suite.Scale.quick() if options.quick else suite.Scale()
    work = Path(tempfile.mkdtemp(prefix="citystream-bench-"))
    stack = BenchStack(work / "stack", say=lambda m: say(f"[stack] {m}"))
    host = HostMeter().start()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: list[dict[str, Any]] = []
    info_versions: dict[str, Any] = {}
    try:
        stack.up()
        ctx = suite.Context(stack=stack, influx=stack.influx(), city=load_city(), scale=scale,
                            logs=work / "logs", quix_venv=options.quix_venv, say=say,
                            peers=options.peers)
        telegraf = quix = None
        if options.peers:
            from .peers import QUIX_VERSION, quix_python, telegraf_binary

            telegraf = str(telegraf_binary(say))
            if "quix" in options.stages:
                quix_python(options.quix_venv, say)
                quix = QUIX_VERSION
        from deploy.local.stack import influxd_path, mosquitto_binary

        info_versions = versions(mosquitto_binary(), str(influxd_path(stack.stack.s)),
                                 stack.stack.s.kafka_version, telegraf, quix)
        for i in range(options.runs):
            say(f"== run {i + 1} of {options.runs}")
            runs.append(Runner(ctx, options).run_once())
    finally:
        stop_all()
        stack.close()
        if options.keep:
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summary = {key: merge_runs([r[key] for r in runs if key in r and "error" not in r[key]])
               for key in dict.fromkeys(k for r in runs for k in r)}
    results = {
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": options.extra.get("command"), "quick": options.quick, "runs": options.runs,
        "scale": scale.__dict__, "machine": machine(), "versions": info_versions,
        "conditions": host.stop(), "summary": summary, "per_run": runs,
        "errors": {k: v["error"] for r in runs for k, v in r.items() if "error" in v},
    }
    rows = summary_rows(summary)
    text = table_text(rows, results)
    (options.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (options.out / "table.md").write_text(text + "\n")
    try:
        chart(summary, options.out / "chart.png", results)
    except ImportError as exc:
        say(f"no chart: {exc} (pip install matplotlib, or the dev extra)")
    say(f"results in {options.out}/results.json, table.md, chart.png")
    return results
