"""`citystream worker` (the Faust KPI engine, with the InfluxDB sink unless --no-sink) and
`citystream sink` (the sink on its own)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

log = logging.getLogger("streams")


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--instance", default="0", show_default=True, envvar="CITYSTREAM_WORKER_INSTANCE",
              show_envvar=True, help="Name of this worker; keeps its state directory apart.")
@click.option("--data-dir", type=click.Path(path_type=Path),
              default=Path("~/.local/state/citystream/worker"), show_default=True,
              envvar="CITYSTREAM_WORKER_DATA_DIR", show_envvar=True,
              help="Where the RocksDB table stores live (one sub-directory per instance).")
@click.option("--store", default="rocksdb://", show_default=True,
              envvar="CITYSTREAM_WORKER_STORE", show_envvar=True,
              help="Faust table store: rocksdb:// (durable, fast restarts) or memory:// "
                   "(state rebuilt from the changelog at every start).")
@click.option("--quiet", "quiet_s", default=10.0, show_default=True, type=float,
              envvar="CITYSTREAM_WORKER_QUIET_S", show_envvar=True,
              help="Seconds without readings after which an entity's open windows are "
                   "written anyway (wall-clock close).")
@click.option("--sink/--no-sink", default=True, show_default=True,
              envvar="CITYSTREAM_WORKER_SINK", show_envvar=True,
              help="Also run the InfluxDB sink (KPIs, alerts, raw readings, counters).")
@click.option("--session-timeout", "session_timeout_s", default=30.0, show_default=True,
              type=click.FloatRange(3), envvar="CITYSTREAM_WORKER_SESSION_TIMEOUT_S",
              show_envvar=True,
              help="Seconds before Kafka gives a silent worker's partitions to the others.")
@click.option("--table-memory-mb", default=4.0, show_default=True,
              type=click.FloatRange(0.25), envvar="CITYSTREAM_WORKER_TABLE_MEMORY_MB",
              show_envvar=True,
              help="RocksDB memory per table partition (memtables and block cache). A worker "
                   "opens 8 x the partitions it owns (8 tables); all 8 partitions: 64 x this.")
def worker(instance: str, data_dir: Path, store: str, quiet_s: float, sink: bool,
           session_timeout_s: float, table_memory_mb: float) -> None:
    """Turn telemetry.* into KPIs, alerts and raw points in InfluxDB (contract 2 and 3).

    Consumes the Kafka topics written by `citystream ingest`; scale by running more workers
    (they share the partitions of each topic; the partition count bounds parallelism).

    \b
    Settings (env): CITYSTREAM_KAFKA__BOOTSTRAP, __PARTITIONS; CITYSTREAM_INFLUX__URL, __ORG,
    __TOKEN, __BUCKET_TELEMETRY, __BUCKET_KPI; CITYSTREAM_CITY__FILE (baselines, targets,
    grace and horizon); CITYSTREAM_MQTT__* (alerts are published on city/alerts/...).

    \b
    Example, against the local stack:
      eval "$(citystream env)" && citystream worker --instance 0
    """
    from citystream.startup import settings_and_city
    from streams.app import WorkerOptions, create_app

    settings, city = settings_and_city()
    options = WorkerOptions(instance=instance, data_dir=data_dir, store=store, quiet_s=quiet_s,
                            session_timeout_s=session_timeout_s,
                            table_memory_mb=table_memory_mb)
    import asyncio
    import shutil

    import faust

    from ingest.kafka_sink import ensure_topics
    from streams.app import worker_topics

    try:
        asyncio.run(asyncio.wait_for(ensure_topics(settings.kafka, worker_topics(settings)), 60))
    except (TimeoutError, OSError) as exc:
        click.echo(f"error: cannot reach Kafka at {settings.kafka.bootstrap} ({exc}); check "
                   "CITYSTREAM_KAFKA__BOOTSTRAP", err=True)
        sys.exit(1)
    state_dir = options.data_dir.expanduser() / instance
    clean_mark = state_dir / ".clean-shutdown"
    if state_dir.exists() and not clean_mark.exists() and any(state_dir.iterdir()):
        # Local RocksDB may hold writes the changelog never got (a crash); rebuild from it.
        log.warning("worker %s did not shut down cleanly: rebuilding its state from the "
                    "Kafka changelogs", instance)
        shutil.rmtree(state_dir)
    clean_mark.unlink(missing_ok=True)
    app = create_app(settings, city, options, with_sink=sink)

    log.info("starting worker %s (kafka %s, store %s)", instance, settings.kafka.bootstrap,
             store)
    verbose = logging.getLogger().level <= logging.DEBUG
    if not verbose:  # Faust's own INFO lines (partition tables...) drown ours
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()
    finally:
        if state_dir.exists():
            clean_mark.touch()


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

    from citystream.startup import settings_and_city
    from ingest.kafka_sink import OutRecord
    from models.records import PipelineCounters, record_to_json
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
