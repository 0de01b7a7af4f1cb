"""`citystream worker` (the Faust KPI engine, with the InfluxDB sink unless --no-sink) and
`citystream sink` (the sink on its own)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from streams.worker import Flag, WorkerOptions

log = logging.getLogger("streams")


def worker_options(command: Callable[..., None]) -> Callable[..., None]:
    """A click option for every `WorkerOptions` field with a `Flag`, in field order: default,
    help and lower bound from there, env var `CITYSTREAM_WORKER_<FIELD>`."""
    for spec in reversed(fields(WorkerOptions)):
        flag: Flag | None = spec.metadata.get("flag")
        if flag is None:
            continue
        default = spec.default
        kind: Any = None  # bool: an on/off pair of flags
        if isinstance(default, Path):
            kind = click.Path(path_type=Path)
        elif isinstance(default, float):
            kind = float if flag.min is None else click.FloatRange(flag.min)
        elif isinstance(default, int) and not isinstance(default, bool):
            kind = int if flag.min is None else click.IntRange(int(flag.min))
        elif isinstance(default, str):
            kind = str
        command = click.option(flag.name, spec.name, default=default, type=kind,
                               show_default=True, envvar=f"CITYSTREAM_WORKER_{spec.name.upper()}",
                               show_envvar=True, help=flag.help)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@worker_options
def worker(**values: Any) -> None:
    """Turn telemetry.* into KPIs, alerts and raw points in InfluxDB (contract 2 and 3).

    Consumes the Kafka topics written by `citystream ingest`; scale by running more workers
    (they share the partitions of each topic; the partition count bounds parallelism).

    A worker that Kafka's group coordinator has not answered for 80 % of --session-timeout
    sends nothing more, and restarts itself in place (same pid; its tables brought up to
    date from the changelogs) if it still holds undelivered records: by then the group may
    have given its partitions to another worker, which must not see them overwritten
    (docs/cluster.md).

    \b
    Settings (env): CITYSTREAM_KAFKA__BOOTSTRAP, __PARTITIONS, __REPLICATION_FACTOR,
    __MIN_INSYNC_REPLICAS; CITYSTREAM_INFLUX__URL, __ORG,
    __TOKEN, __BUCKET_TELEMETRY, __BUCKET_KPI; CITYSTREAM_CITY__FILE (baselines, targets,
    grace and horizon); CITYSTREAM_MQTT__* (alerts are published on city/alerts/...).

    \b
    Example, against the local stack:
      eval "$(citystream env)" && citystream worker --instance 0
    """
    import asyncio
    import os
    import time

    from aiokafka.errors import KafkaConnectionError, KafkaError

    from connectors.kafka import brokers_answer, ensure_topics, group_coordinator_answers
    from models.settings import settings_and_city
    from streams import lease
    from streams.app import CrashExitingWorker, create_app, worker_group, worker_topics
    from streams.worker import mark_clean_shutdown, recover_state_dir

    settings, city = settings_and_city()
    options = WorkerOptions(**values)
    restarted = os.environ.pop(lease.RESTARTED, None)
    while True:
        try:
            asyncio.run(asyncio.wait_for(
                ensure_topics(settings.kafka, worker_topics(settings)), 60))
            if restarted:  # Faust's start crashes on a cluster that cannot run the group yet
                asyncio.run(asyncio.wait_for(
                    group_coordinator_answers(settings.kafka, worker_group(settings)), 30))
                asyncio.run(asyncio.wait_for(brokers_answer(settings.kafka), 30))
            break
        except (TimeoutError, OSError, KafkaError) as exc:
            if restarted:  # cut off Kafka (streams/lease.py): wait for the network
                log.warning("worker %s restarted in place (%s); Kafka at %s cannot run its "
                            "group yet (%r): trying again in 5 s", options.instance, restarted,
                            settings.kafka.bootstrap, exc)
                time.sleep(5)
                continue
            if isinstance(exc, KafkaError) and not isinstance(exc, KafkaConnectionError):
                click.echo(f"error: {exc}", err=True)  # refused: more replicas than brokers
            else:
                click.echo(f"error: cannot reach Kafka at {settings.kafka.bootstrap} ({exc}); "
                           "check CITYSTREAM_KAFKA__BOOTSTRAP", err=True)
            sys.exit(1)
    recover_state_dir(options)
    app = create_app(settings, city, options)

    log.info("starting worker %s (kafka %s, store %s)", options.instance,
             settings.kafka.bootstrap, options.store)
    verbose = logging.getLogger().level <= logging.DEBUG
    if not verbose:  # Faust's own INFO lines (partition tables...) drown ours
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        CrashExitingWorker(app, loglevel="info", quiet=True).execute_from_commandline()
    finally:
        mark_clean_shutdown(options)


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--instance", default="0", show_default=True, envvar="CITYSTREAM_SINK_INSTANCE",
              show_envvar=True, help="Name of this sink in the `pipeline` measurement.")
@click.option("--counters-interval", "counters_s", default=5.0, show_default=True,
              type=click.FloatRange(0.5), envvar="CITYSTREAM_SINK_COUNTERS_S", show_envvar=True,
              help="Seconds between `pipeline` counter records (component `sink`).")
def sink(instance: str, counters_s: float) -> None:
    """Write KPIs, alerts, raw readings and counters from Kafka to InfluxDB, on its own.

    The same sink that `citystream worker` runs inside its process, as a process of its own:
    run `citystream worker --no-sink` plus one or more `citystream sink` to put the InfluxDB
    writes on another core. Sinks share the consumer group `citystream-sink`; offsets are
    committed only after InfluxDB accepted the points, so a sink killed at any moment loses
    nothing (the points are written again, which is idempotent).

    \b
    Settings (env): CITYSTREAM_KAFKA__BOOTSTRAP, __TOPIC_PREFIX; CITYSTREAM_INFLUX__URL, __ORG,
    __TOKEN, __BUCKET_TELEMETRY, __BUCKET_KPI.

    \b
    Example, against the local stack:
      eval "$(citystream env)" && citystream sink --instance 0
    """
    import asyncio
    import signal
    import time

    from connectors.kafka import OutRecord
    from models.records import PipelineCounters, record_to_json
    from models.settings import settings_and_city
    from streams.sink import InfluxSink, serve

    settings, _city = settings_and_city()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        influx_sink = InfluxSink.from_settings(settings)

        async def publish_counters() -> None:
            while not stop.is_set():
                await asyncio.sleep(counters_s)
                c = influx_sink.counters()
                record = PipelineCounters(component="sink", instance=instance,
                                          ts_ms=int(time.time() * 1000), **c)
                try:
                    await influx_sink.deadletters.send([OutRecord(
                        settings.kafka.topics.pipeline_counters, f"sink/{instance}".encode(),
                        record_to_json(record))])
                except Exception as exc:  # counters are best effort; points are not
                    log.debug("could not publish sink counters: %s", exc)

        log.info("sink %s running; Ctrl-C or SIGTERM stops it", instance)
        counters = asyncio.create_task(publish_counters())
        try:
            await serve(influx_sink, stop)
        finally:
            counters.cancel()

    asyncio.run(run())
