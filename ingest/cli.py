"""`citystream ingest`: MQTT to Kafka, at least once, every rejection explained."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import click
from aiokafka.errors import KafkaError

from connectors.kafka import LibrdkafkaSink, ensure_topics
from ingest.mqtt_source import MqttSource
from ingest.service import Ingest, IngestOptions
from models.settings import Settings

log = logging.getLogger("ingest")


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.option("--instance", default="0", show_default=True, envvar="CITYSTREAM_INGEST_INSTANCE",
              show_envvar=True,
              help="Name of this ingest process; with the host name it makes the stable MQTT "
                   "client id that keeps the persistent session across restarts.")
@click.option("--batch", "batch_max", default=5000, show_default=True, type=click.IntRange(1),
              envvar="CITYSTREAM_INGEST_BATCH", show_envvar=True,
              help="Most MQTT messages decoded and sent to Kafka per round.")
@click.option("--batch-wait", "batch_wait_s", default=0.05, show_default=True,
              type=click.FloatRange(0, 5), envvar="CITYSTREAM_INGEST_BATCH_WAIT_S",
              show_envvar=True,
              help="Seconds a round keeps gathering messages after its first before it goes to "
                   "Kafka: fewer, fuller records, so less CPU per reading in ingest, Kafka and "
                   "the worker, for at most this much latency (0: send what arrived at once). "
                   "A backlog fills a round at once and does not wait.")
@click.option("--receive-maximum", default=4096, show_default=True,
              type=click.IntRange(1, 65535), envvar="CITYSTREAM_INGEST_RECEIVE_MAXIMUM",
              show_envvar=True,
              help="Unacknowledged messages the broker may send before it waits (MQTT 5 flow "
                   "control: bounds memory while Kafka is down).")
@click.option("--counters-interval", default=10.0, show_default=True, type=float,
              envvar="CITYSTREAM_INGEST_COUNTERS_INTERVAL", show_envvar=True,
              help="Seconds between counter log lines and `pipeline.counters` records.")
@click.option("--horizon", "horizon_s", default=None, type=click.IntRange(60),
              envvar="CITYSTREAM_INGEST_HORIZON_S", show_envvar=True,
              help="Late-data horizon in seconds: older readings are rejected as too_old "
                   "[default: the city file's windows.horizon_s, 86400].")
@click.option("--leave-on-exit", is_flag=True, envvar="CITYSTREAM_INGEST_LEAVE_ON_EXIT",
              show_envvar=True,
              help="On SIGTERM, leave the shared group for good: unsubscribe, drain, and end the "
                   "MQTT session. Use when scaling down; without it the broker keeps routing a "
                   "share of messages to this instance's session until it returns. A drain "
                   "Kafka cannot take within 30 s keeps the session (and its messages).")
def ingest(instance: str, batch_max: int, batch_wait_s: float, receive_maximum: int,
           counters_interval: float, horizon_s: int | None, leave_on_exit: bool) -> None:
    """Move readings from Mosquitto into Kafka, dead-lettering bad input with a reason.

    Subscribes to $share/<CITYSTREAM_MQTT__SHARED_GROUP>/city/# (QoS 1, persistent MQTT 5
    session), so several ingest processes split the load; city/alerts/... (citystream's own
    output) is skipped. With CITYSTREAM_MQTT__SHARED_GROUP empty it subscribes to city/#
    itself (for ONE ingest process). Either survives a Mosquitto restart with the broker
    citystream runs (2.1 with its persist-sqlite plugin; Mosquitto 2.0 and file persistence
    drop shared subscriptions: use an empty group there; docs/operations.md). Valid readings go to
    telemetry.<kind> keyed by district (water, energy), junction (traffic) or route
    (shuttle), or for a feed declared in the city file (CITYSTREAM_CITY__FILE) by its entity
    and validated by its field rules; rejected ones to telemetry.deadletter. A message is
    acknowledged to the broker only after Kafka confirmed it.

    \b
    Connection settings (env): CITYSTREAM_MQTT__HOST, __PORT, __USERNAME, __PASSWORD,
    __TLS_CA, __SESSION_EXPIRY_S, __SHARED_GROUP, __CLIENT_ID; CITYSTREAM_KAFKA__BOOTSTRAP,
    __PARTITIONS, __REPLICATION_FACTOR, __MIN_INSYNC_REPLICAS.

    \b
    Example, against the local stack:
      eval "$(citystream env)" && citystream ingest --instance 0
    """
    from models.settings import settings_and_city

    settings, city = settings_and_city()  # the city file's feeds are kinds ingest accepts
    if horizon_s is None:
        horizon_s = city.windows.horizon_s
    group = settings.mqtt.shared_group or "plain"
    client_id = settings.mqtt.client_id or (
        f"citystream-ingest-{group}-{socket.gethostname()}-{instance}")
    options = IngestOptions(batch_max=batch_max, batch_wait_s=batch_wait_s, horizon_s=horizon_s,
                            counters_interval_s=counters_interval)
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    log.info("starting ingest %s: mqtt %s:%s as %s (client id %s), kafka %s", instance,
             settings.mqtt.host, settings.mqtt.port, settings.mqtt.username, client_id,
             settings.kafka.bootstrap)
    try:
        asyncio.run(_main(settings, client_id, instance, receive_maximum, options,
                          leave_on_exit))
    except ConnectionError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


async def _main(settings: Settings, client_id: str, instance: str, receive_maximum: int,
                options: IngestOptions, leave_on_exit: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(ensure_topics(settings.kafka, settings.kafka.topics.ingest),
                               timeout=60)
    except (TimeoutError, OSError) as exc:
        raise ConnectionError(f"cannot reach Kafka at {settings.kafka.bootstrap} ({exc}); "
                              "check CITYSTREAM_KAFKA__BOOTSTRAP") from exc
    except KafkaError as exc:  # refused: more replicas than brokers, say
        raise ConnectionError(str(exc)) from exc
    sink = LibrdkafkaSink(settings.kafka, client_id=client_id)
    await sink.start()
    source = MqttSource(settings.mqtt, client_id, receive_maximum=receive_maximum)
    await loop.run_in_executor(None, source.start)
    log.info("ingest %s running; Ctrl-C or SIGTERM stops it", instance)
    pump = Ingest(source, sink, instance, options, settings.kafka.topics)
    left = False
    try:
        await pump.run(stop)
        if leave_on_exit:
            log.info("ingest %s leaving the shared group: draining", instance)
            left = await pump.drain()
            if not left:
                log.error("ingest %s could not drain its MQTT session into Kafka within 30 s: "
                          "keeping the session, so the broker keeps what is not in Kafka yet; "
                          "start ingest %s again to deliver it", instance, instance)
    finally:
        source.close(end_session=left)
        await sink.close()
        log.info("ingest %s stopped", instance)
