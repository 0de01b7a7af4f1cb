"""The `citystream` command line: one entry point for the local stack and every component.

The top layer: it imports the components' commands only when one is run (`LazyGroup`), so
`citystream worker` loads the worker and what it needs, and no dashboard or simulator
code. The benchmarks are not part of it: `citystream bench` hands over to `python -m bench`
of a source checkout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from models.errors import StackError

if TYPE_CHECKING:
    from deploy.local.stack import Stack

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _stack(home: Path | None) -> Stack:
    from deploy.local.stack import Stack, StackSettings

    overrides: dict[str, Any] = {"home": home} if home else {}
    return Stack(StackSettings(**overrides))


home_option = click.option(
    "--home", type=click.Path(path_type=Path), envvar="CITYSTREAM_STACK__HOME", show_envvar=True,
    help="Where the local stack keeps data, logs and stack.json "
         "[default: ~/.local/state/citystream].")


class LazyGroup(click.Group):
    """A group whose component commands are imported when first looked up, by module path."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            module, attribute = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


COMPONENTS: dict[str, str] = {
    "check": "citystream.check:check",
    "ingest": "ingest.cli:ingest",
    "import": "ingest.import_cli:import_",
    "worker": "streams.cli:worker",
    "sink": "streams.cli:sink",
    "dashboard": "dashboard.cli:dashboard",
    "opendata": "opendata.cli:opendata",
    "report": "analysis.cli:report",
    "baseline": "analysis.cli:baseline",
    "erase": "analysis.erase:erase",
    "sim": "sensors_sim.cli:sim",
}
"""The components' commands, imported when run (or listed by --help)."""


@click.group(cls=LazyGroup, lazy=COMPONENTS, context_settings=CONTEXT)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """citystream: smart-city telemetry from MQTT to live KPIs in InfluxDB.

    \b
    Quick start:
      citystream up            # install (cached) and start Mosquitto, Kafka, InfluxDB
      citystream status        # where everything listens, and the credentials
      citystream down          # stop it all

    Ports, data dirs and versions of the local stack come from CITYSTREAM_STACK__* env vars
    (see `citystream up --help`); services read CITYSTREAM_MQTT__*, CITYSTREAM_KAFKA__*,
    CITYSTREAM_INFLUX__* (see README.md, Configuration).
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@main.command(context_settings=CONTEXT)
@home_option
def install(home: Path | None) -> None:
    """Install and cache the local stack without starting it.

    Mosquitto from Debian packages, Kafka jars from Maven Central, and influxd built from its Go
    module (15-25 min the first time), all cached under ~/.cache/citystream by version.
    """
    from deploy.local.stack import install_all

    t0 = time.monotonic()
    try:
        install_all(_stack(home).s)
    except StackError as exc:
        _fail(exc)
    click.echo(f"installed in {time.monotonic() - t0:.1f}s")


@main.command(context_settings=CONTEXT)
@home_option
@click.option("--pipeline/--no-pipeline", default=True, show_default=True,
              help="Also start ingest, worker, the dashboard and the city simulator.")
@click.option("--sim/--no-sim", default=True, show_default=True,
              envvar="CITYSTREAM_STACK__SIM", show_envvar=True,
              help="Start the simulated city with the pipeline (CITYSTREAM_STACK__SIM_SPEED, "
                   "__SIM_RATE set its pace). Turn it off when real gateways or your own "
                   "test data publish into the same districts.")
def up(home: Path | None, pipeline: bool, sim: bool) -> None:
    """Start Mosquitto, Kafka and InfluxDB on 127.0.0.1 and return once all are ready.

    Installs what is missing first (see `citystream install`). Services keep running in the
    background until `citystream down`. Settings (env): CITYSTREAM_STACK__MQTT_PORT (1883),
    __KAFKA_PORT (9092), __KAFKA_CONTROLLER_PORT (9093), __INFLUXDB_PORT (8086), __HOME, __CACHE,
    __KAFKA_VERSION (3.9.1), __INFLUXDB_VERSION (2.7.12), __INFLUXDB_ORG, __BUCKET_TELEMETRY,
    __BUCKET_KPI, __DASHBOARD_PORT (8080), __OPENDATA_PORT (8090).

    Then the pipeline: `citystream ingest`, `citystream worker`, the live dashboard
    (`citystream dashboard` on http://127.0.0.1:<dashboard port>/, reading InfluxDB with a
    read-only token), the open data (`citystream opendata` on http://127.0.0.1:<opendata
    port>/, docs/opendata.md) and a simulated Milton Keynes (`citystream sim`) publishing
    readings, each logging to <home>/logs/. They all read the city file
    CITYSTREAM_CITY__FILE (default: the shipped Milton Keynes, with its declared feeds), which
    is checked first.
    """
    t0 = time.monotonic()
    if pipeline:
        from models import kinds
        from models.settings import settings_and_city

        city = settings_and_city()[1]  # a bad city file stops here, naming feed and key
        click.echo(f"city {city.name}: kinds {', '.join(kinds.names())}")
    try:
        stack = _stack(home)
        stack.up()
        if pipeline:
            stack.start_pipeline(stack.PIPELINE if sim else ("ingest", "worker", "dashboard",
                                                             "opendata"))
    except StackError as exc:
        _fail(exc)
    info = stack.client_info()
    click.echo(f"all services ready in {time.monotonic() - t0:.1f}s; `citystream status` "
               f"shows where and how to connect, logs in {stack.home / 'logs'}")
    if pipeline:
        click.echo(f"KPIs land in InfluxDB {info['influxdb']['url']} (org "
                   f"{info['influxdb']['org']}, buckets {info['influxdb']['buckets']['kpi']} "
                   f"and {info['influxdb']['buckets']['telemetry']}); "
                   f"`citystream status --json` has the token")
        click.echo(f"live dashboard: {info['dashboard']['url']}")
        click.echo(f"open data (OGL v3.0): {info['opendata']['url']}catalog.jsonld")


@main.command(context_settings=CONTEXT)
@home_option
def down(home: Path | None) -> None:
    """Stop everything `citystream up` started (data is kept in --home)."""
    _stack(home).down()
    click.echo("stopped")


@main.command(context_settings=CONTEXT)
@home_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the contract's status object (section 4) as JSON, with credentials.")
def status(home: Path | None, as_json: bool) -> None:
    """Show where each service listens, whether it runs, and how to connect."""
    stack = _stack(home)
    if not stack.state_file.exists():
        click.echo("the local stack has not been started here; run `citystream up`", err=True)
        sys.exit(3)
    if as_json:
        click.echo(json.dumps(stack.client_info(), indent=2))
        return
    info = stack.status()
    for name, svc in info["services"].items():
        state = "running" if svc["running"] else "stopped"
        click.echo(f"{name:<10} {state:<8} log {svc['log']}")
    click.echo(f"mqtt       {info['mqtt']['host']}:{info['mqtt']['port']} "
               f"(user {info['mqtt']['username']}; password via --json)")
    click.echo(f"kafka      {info['kafka']['bootstrap']}")
    click.echo(f"influxdb   {info['influxdb']['url']} org {info['influxdb']['org']} "
               f"buckets {', '.join(info['influxdb']['buckets'].values())}")
    click.echo(f"dashboard  {info['dashboard']['url']}")
    click.echo(f"opendata   {info['opendata']['url']}")


@main.command(context_settings={**CONTEXT, "ignore_unknown_options": True,
                                "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmarks side by side with Telegraf and Quix Streams (from a source checkout).

    \b
    Hands over to `python -m bench` of the repository it runs in: `citystream bench --help`
    shows its options (stages, workloads, --runs, --quick, --out). The benchmarks are not
    installed with citystream; from an installed copy this says where to get them.
    """
    if (Path.cwd() / "bench" / "cli.py").exists() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a checkout's root: bench/ and tests/ beside us
    try:
        from bench.cli import bench as run_bench
    except ImportError as exc:
        raise click.ClickException(
            f"the benchmarks are not installed with citystream ({exc}): run this in the root "
            "of a source checkout (`make bench` there does the same)") from exc
    run_bench.main(list(args), prog_name="citystream bench")


@main.command(context_settings=CONTEXT)
@home_option
def env(home: Path | None) -> None:
    """Print `export` lines that point citystream's services at the local stack.

    \b
    Use:  eval "$(citystream env)"   then run `citystream ingest`, `citystream sim`, ...
    The lines carry the service credentials (MQTT user `citystream`, the InfluxDB token) and
    the dashboard's read-only InfluxDB token (CITYSTREAM_DASHBOARD__TOKEN).
    """
    import shlex

    stack = _stack(home)
    if not stack.state_file.exists():
        click.echo("the local stack has not been started here; run `citystream up`", err=True)
        sys.exit(3)
    for name, value in stack.service_env().items():
        click.echo(f"export {name}={shlex.quote(value)}")
