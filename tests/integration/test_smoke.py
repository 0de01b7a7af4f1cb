"""Each real service, proven with a real client: Mosquitto, Kafka and InfluxDB 2.x."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from deploy.local.stack import Stack


@pytest.mark.mqtt
def test_mosquitto_pub_reaches_a_paho_subscriber(stack: Stack) -> None:
    env = stack.service_env()
    gateway = stack.client_info()["mqtt"]
    topic = f"city/central-mk/water/wm-smoke-{uuid.uuid4().hex[:8]}"
    received: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    got = threading.Event()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"smoke-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(env["CITYSTREAM_MQTT__USERNAME"], env["CITYSTREAM_MQTT__PASSWORD"])
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg)
        got.set()

    client.on_message = on_message
    client.connect(gateway["host"], gateway["port"])
    client.loop_start()
    try:
        assert subscribed.wait(10), "subscription not acknowledged by Mosquitto"
        payload = json.dumps({"sensor_id": topic.rsplit("/", 1)[1], "ts": int(time.time() * 1000),
                              "volume_m3": 12.5})
        subprocess.run(["mosquitto_pub", "-h", gateway["host"], "-p", str(gateway["port"]),
                        "-u", gateway["username"], "-P", gateway["password"], "-q", "1",
                        "-V", "mqttv5", "-t", topic, "-m", payload], check=True, timeout=10)
        assert got.wait(10), "paho subscriber received nothing"
    finally:
        client.loop_stop()
        client.disconnect()
    assert received[0].topic == topic
    assert received[0].payload.decode() == payload
    assert received[0].qos == 1


@pytest.mark.mqtt
def test_mosquitto_refuses_anonymous_and_wrong_password(stack: Stack) -> None:
    gateway = stack.client_info()["mqtt"]
    base = ["mosquitto_pub", "-h", gateway["host"], "-p", str(gateway["port"]), "-q", "1",
            "-t", "city/central-mk/water/x", "-m", "{}"]
    anonymous = subprocess.run(base, capture_output=True, text=True, timeout=10)
    assert anonymous.returncode != 0
    wrong = subprocess.run([*base, "-u", gateway["username"], "-P", "not-the-password"],
                           capture_output=True, text=True, timeout=10)
    assert wrong.returncode != 0
    assert "not authorised" in (wrong.stderr + wrong.stdout).lower()


@pytest.mark.kafka
def test_kafka_produce_and_consume_with_aiokafka(stack: Stack) -> None:
    bootstrap = stack.client_info()["kafka"]["bootstrap"]
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    value = uuid.uuid4().bytes

    async def roundtrip() -> tuple[bytes | None, bytes | None]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    enable_idempotence=True)
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, value=value, key=b"central-mk")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        assert record.partition == meta.partition and record.offset == meta.offset
        return record.key, record.value

    key, got = asyncio.run(roundtrip())
    assert key == b"central-mk"
    assert got == value


@pytest.mark.influxdb
def test_influxdb_write_then_flux_query(stack: Stack) -> None:
    info = stack.client_info()["influxdb"]
    run = uuid.uuid4().hex[:8]
    ts = time.time_ns() // 1_000_000 * 1_000_000
    with InfluxDBClient(url=info["url"], token=info["token"], org=info["org"]) as client:
        assert client.ping()
        assert client.version().startswith("v2.7"), client.version()
        point = (Point("smoke").tag("run", run).field("value", 42.5).field("count", 7)
                 .time(ts, WritePrecision.NS))
        client.write_api(write_options=SYNCHRONOUS).write(info["buckets"]["telemetry"],
                                                           record=point)
        query = (f'from(bucket: "{info["buckets"]["telemetry"]}") |> range(start: -1h) '
                 f'|> filter(fn: (r) => r._measurement == "smoke" and r.run == "{run}")')
        tables = client.query_api().query(query)
        rows = {rec.get_field(): rec.get_value() for t in tables for rec in t.records}
        # by name: other tests' lanes add buckets, and a listing is paged (20 by default)
        missing = [name for name in (info["buckets"]["telemetry"], info["buckets"]["kpi"])
                   if client.buckets_api().find_bucket_by_name(name) is None]
    assert rows == {"value": 42.5, "count": 7}
    assert not missing, f"buckets missing: {missing}"


@pytest.mark.e2e
def test_status_json_is_the_contract_object(stack: Stack) -> None:
    from click.testing import CliRunner

    from citystream.cli import main

    result = CliRunner().invoke(main, ["status", "--json", "--home", str(stack.home)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert set(info) == {"mqtt", "kafka", "influxdb", "dashboard", "opendata"}  # contract 4 + 6
    assert set(info["mqtt"]) == {"host", "port", "username", "password"}
    assert set(info["kafka"]) == {"bootstrap"}
    assert set(info["influxdb"]) == {"url", "org", "token", "buckets"}
    assert info["influxdb"]["buckets"] == {"telemetry": "telemetry", "kpi": "kpi"}
    assert set(info["dashboard"]) == {"url"}
    assert info["mqtt"]["port"] == stack.s.mqtt_port
    assert info["kafka"]["bootstrap"] == f"127.0.0.1:{stack.s.kafka_port}"


@pytest.mark.mqtt
def test_tls_listener_with_the_dev_ca(stack: Stack) -> None:
    gateway = stack.client_info()["mqtt"]
    certs = stack.home / "mosquitto" / "certs"
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(stack.s.mqtt_tls_port), "-q", "1",
            "-u", gateway["username"], "-P", gateway["password"],
            "-t", "city/central-mk/water/wm-tls", "-m", "{}"]
    ok = subprocess.run([*base, "--cafile", str(certs / "ca.crt")], capture_output=True,
                        text=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    untrusted = subprocess.run([*base, "--cafile", "/etc/ssl/certs/ca-certificates.crt"],
                               capture_output=True, text=True, timeout=10)
    assert untrusted.returncode != 0


@pytest.mark.e2e
def test_check_reaches_every_service_and_names_what_is_wrong(stack: Stack) -> None:
    from click.testing import CliRunner

    from citystream.cli import main

    env = stack.service_env()
    ok = CliRunner().invoke(main, ["check"], env=env)
    assert ok.exit_code == 0, ok.output
    assert ok.output.count(" ok ") == 5
    wrong = CliRunner().invoke(main, ["check"], env={**env, "CITYSTREAM_MQTT__PASSWORD": "x"})
    assert wrong.exit_code == 1
    assert "mqtt      FAIL" in wrong.output and "CITYSTREAM_MQTT__USERNAME/PASSWORD" in wrong.output
    bad = CliRunner().invoke(main, ["check"], env={**env, "CITYSTREAM_KAFKA__BOOTSTRAP": "nope"})
    assert bad.exit_code == 1
    assert "CITYSTREAM_KAFKA__BOOTSTRAP" in bad.output
