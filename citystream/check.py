"""`citystream check`: validate the configuration and reach every service, naming what to fix."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import click

from models.errors import CitystreamError
from models.settings import ConfigError, Settings


class CheckFailed(CitystreamError):
    """A service `citystream check` probes refused or did not answer; the message says why."""


def _mqtt(settings: Settings) -> str:
    import paho.mqtt.client as mqtt

    from connectors.mqtt import client_for

    s = settings.mqtt
    client = client_for(s, mqtt.Client, f"citystream-check-{int(time.time())}")
    refused: list[str] = []

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            refused.append(str(rc))

    client.on_connect = on_connect
    client.connect(s.host, s.port, keepalive=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not client.is_connected() and not refused:
        client.loop(0.1)
    connected = client.is_connected()
    client.disconnect()
    if refused:
        raise CheckFailed(f"refused ({refused[0]}): check CITYSTREAM_MQTT__USERNAME/PASSWORD")
    if not connected:
        raise CheckFailed(f"no CONNACK from {s.host}:{s.port} within 5 s")
    return f"mqtt://{s.host}:{s.port} as {s.username or 'anonymous'}"


def _kafka(settings: Settings) -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap,
                                    request_timeout_ms=5000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        have = sum(t in topics for t in settings.kafka.topics.ingest)
        return (f"{settings.kafka.bootstrap}: {len(cluster['brokers'])} broker(s), "
                f"{have}/{len(settings.kafka.topics.ingest)} citystream topics exist")

    return asyncio.run(asyncio.wait_for(probe(), 10))


def _influx(settings: Settings) -> str:
    """The pipeline needs only to write both buckets (its token may do nothing else): an empty
    write, which stores nothing, proves it and tells a missing bucket from a weak token."""
    from connectors.influxdb.admin import InfluxAdmin
    from connectors.influxdb.errors import describe_missing_buckets, describe_write_error
    from models.errors import ProvisionError

    s = settings.influx
    health = InfluxAdmin(s.url, timeout=5.0).call("GET", "/health")
    if not s.token:
        raise CheckFailed("no token: set CITYSTREAM_INFLUX__TOKEN")
    admin = InfluxAdmin(s.url, s.token.get_secret_value(), timeout=5.0)
    missing = []
    for bucket in (s.bucket_telemetry, s.bucket_kpi):
        try:
            admin.call("POST", "/api/v2/write", data=b"", org=s.org, bucket=bucket,
                       precision="ms")
        except ProvisionError as exc:
            if exc.status is None:
                raise
            # the message ends with InfluxDB's own, which names a missing organization
            problem = describe_write_error(exc.status, str(exc), s.org, bucket)
            if problem is not None:
                raise CheckFailed(problem) from None
            missing.append(bucket)
    if missing:
        raise CheckFailed(describe_missing_buckets(missing, s.org))
    return (f"{s.url} {health.get('version', '?')}, token writes buckets {s.bucket_telemetry}, "
            f"{s.bucket_kpi}")


def _city(settings: Settings) -> str:
    from models.city import load_city

    city = load_city(settings.city.file)
    feeds = "".join(f"\n          feed {f.kind} ({f.title}): {f.window_tag} windows per "
                    f"{f.entity}, KPIs {', '.join(k.name for k in f.kpis)}"
                    + (f"; target {f.target.kpi} "
                       f"{'at most' if f.target.at_most is not None else 'at least'} "
                       f"{f.target.limit:g}" if f.target else "")
                    + (f"; alerts {', '.join(a.rule for a in f.alerts)}" if f.alerts else "")
                    for f in city.feeds)
    return (f"{city.name}: {len(city.districts)} districts, {len(city.junctions)} junctions, "
            f"{len(city.routes)} routes, {len(city.feeds)} declared feeds{feeds}")


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
def check() -> None:
    """Check configuration and connectivity: settings, city file, MQTT, Kafka, InfluxDB.

    Reads the same CITYSTREAM_* environment as ingest and worker and prints one line per check;
    exits 1 if any fails. Against the local stack: eval "$(citystream env)" && citystream check
    """
    try:
        settings = Settings.load()
    except ConfigError as exc:
        click.echo(f"config    FAIL {exc}")
        sys.exit(1)
    click.echo("config    ok   CITYSTREAM_* settings are valid")
    checks: list[tuple[str, Callable[[Settings], str]]] = [
        ("city", _city), ("mqtt", _mqtt), ("kafka", _kafka), ("influxdb", _influx)]
    failed = False
    for name, probe in checks:
        try:
            click.echo(f"{name:<9} ok   {probe(settings)}")
        except Exception as exc:  # report every failure, whatever it is
            failed = True
            click.echo(f"{name:<9} FAIL {type(exc).__name__}: {exc}")
    sys.exit(1 if failed else 0)
