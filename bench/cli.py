"""`python -m bench`: the benchmark suite against its peers, on a private stack."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .suite import STAGES, WORKLOADS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if value in ("", "none"):
        return ()
    if value == "all":
        return allowed
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise click.BadParameter(f"unknown {what} {', '.join(unknown)}; choose from "
                                 f"{', '.join(allowed)} (or all, none)")
    return names


@click.command(context_settings=CONTEXT)
@click.option("--all", "everything", is_flag=True,
              help="Every stage and every workload (the default when neither --stages nor "
                   "--workloads is given).")
@click.option("--quick", is_flag=True, envvar="CITYSTREAM_BENCH_QUICK", show_envvar=True,
              help="Small inputs and short feeds: a smoke run of every code path (about "
                   "15 minutes with everything), not figures to publish.")
@click.option("--runs", default=1, show_default=True, type=click.IntRange(1),
              envvar="CITYSTREAM_BENCH_RUNS", show_envvar=True,
              help="Repeat every measurement; the table shows medians, results.json every run.")
@click.option("--stages", default=None, metavar="LIST", envvar="CITYSTREAM_BENCH_STAGES",
              show_envvar=True,
              help=f"Comma-separated from: {', '.join(STAGES)} (or all, none).")
@click.option("--workloads", default=None, metavar="LIST", envvar="CITYSTREAM_BENCH_WORKLOADS",
              show_envvar=True,
              help="Comma-separated from: steady (a: 10,000 sensors at 1 reading/s), burst (b: "
                   "traffic counters at 10x for 60 s), gateway (c: 50 readings per message), "
                   "replay (d: a recorded day as fast as possible); or all, none.")
@click.option("--peers/--no-peers", default=True, show_default=True,
              envvar="CITYSTREAM_BENCH_PEERS", show_envvar=True,
              help="Also measure Telegraf and Quix Streams on the same input (Telegraf is built "
                   "from its Go module and Quix installed into --quix-venv on first use).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results"),
              show_default=True, envvar="CITYSTREAM_BENCH_OUT", show_envvar=True,
              help="Directory for results.json, table.md and chart.png.")
@click.option("--quix-venv", type=click.Path(path_type=Path), default=Path(".venv-bench"),
              show_default=True, envvar="CITYSTREAM_BENCH_QUIX_VENV", show_envvar=True,
              help="Separate venv for Quix Streams (it pins pydantic below citystream's).")
@click.option("--latency-at", default="50,90", show_default=True, metavar="PERCENTS",
              envvar="CITYSTREAM_BENCH_LATENCY_AT", show_envvar=True,
              help="The latency stage's feeds, in percent of the end-to-end maximum measured "
                   "in the same run (a live feed costs more per reading than the drained "
                   "backlog that maximum comes from: add a lower one to see where it keeps "
                   "up).")
@click.option("--keep-logs", is_flag=True,
              help="Keep the private stack's directory with every process log.")
def bench(everything: bool, quick: bool, runs: int, stages: str | None, workloads: str | None,
          peers: bool, out: Path, quix_venv: Path, latency_at: str, keep_logs: bool) -> None:
    """Measure citystream stage by stage and against its peers, on this machine.

    Starts its own Mosquitto, Kafka and InfluxDB on free loopback ports in a temporary
    directory (never a running `citystream up` stack), runs each measurement with fresh
    topics, MQTT group and buckets, and prints one table of medians: sustained readings/s per
    stage and end to end, CPU seconds per 1,000 readings (ours and the services'),
    publish-to-InfluxDB latency p50/p95/p99 at 50 % and 90 % of the maximum, window-end to
    KPI-visible latency, RSS at 10,000 and 100,000 sensors, 1 -> 2 ingest and worker
    processes, Telegraf (MQTT straight to InfluxDB, and with citystream's durability: Kafka
    between two Telegraf processes), Quix Streams and the parse-validate-encode floor; then
    the end-to-end runs' CPU per 1,000 readings by component (ingest, worker, Telegraf,
    Mosquitto, Kafka, InfluxDB). Method: docs/performance.md.

    \b
    Examples:
      python -m bench --all --runs 3 --out bench-results/   # everything, ~2.5 h
      python -m bench --quick                                # smoke run
      python -m bench --stages ingest,e2e --workloads none --no-peers

    Run from the repository's root with its venv (`make bench ARGS=...` does). Needs the
    stack's programs (`citystream install`); Telegraf builds with Go (~2 min once),
    Quix Streams installs from PyPI. Load and CPU steal during each measurement are recorded
    next to its figures: measure on a quiet machine.
    """
    from .run import Options, run

    chosen_stages: tuple[str, ...] = STAGES
    chosen_workloads: tuple[str, ...] = WORKLOADS
    if not everything and (stages is not None or workloads is not None):
        chosen_stages = _names(stages or "", STAGES, "stage")
        chosen_workloads = _names(workloads or "", WORKLOADS, "workload")
    options = Options(out=out, runs=runs, quick=quick, workloads=chosen_workloads,
                      stages=chosen_stages, peers=peers, keep=keep_logs, quix_venv=quix_venv,
                      latency_at=_percents(latency_at),
                      extra={"command": " ".join(["python -m bench", *sys.argv[1:]])})
    try:
        results = run(options, say=lambda msg: click.echo(msg, err=True))
    except Exception as exc:  # one readable line; the stack is already down
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo((out / "table.md").read_text())
    if results["errors"]:
        click.echo(f"{len(results['errors'])} measurement(s) failed: "
                   f"{', '.join(results['errors'])} (details in results.json)", err=True)
        sys.exit(1)


def _percents(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or not all(0 < v <= 100 for v in values):
        raise click.BadParameter(f"{text!r}: give percents from 1 to 100, e.g. 25,50,90",
                                 param_hint="--latency-at")
    return values
