"""Who may do what, against the real services: Mosquitto refuses anonymous clients, wrong
passwords and untrusted certificates; a sensor may publish only its own topic and read nothing
of others; nobody but citystream touches city/alerts/...; the pipeline's InfluxDB token may
write the two buckets and nothing else; no secret ever reaches a log."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from deploy.local.mosquitto import HERE, mosquitto_config
from deploy.local.stack import Credentials, Stack
from ingest.mqtt_source import MqttSource
from models.settings import MqttSettings
from tests.integration.faults import lane_logs, secrets_in_logs
from tests.integration.helpers import Lane, gateway_publisher, wait_for, water_messages
from tests.support import IngestProcess, WorkerProcess

REPO_CONF = HERE.parent / "mosquitto" / "mosquitto.conf"


@dataclass
class Client:
    """A paho MQTT 5 client that records CONNACK, PUBACK reasons and received messages."""

    username: str | None
    password: str | None
    port: int
    tls_ca: Path | None = None
    connack: ReasonCode | None = None
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    received: list[mqtt.MQTTMessage] = field(default_factory=list)
    suback: list[ReasonCode] = field(default_factory=list)
    error: Exception | None = None

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"sec-{uuid.uuid4().hex[:8]}")
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls_ca is not None:
            self.client.tls_set(ca_certs=str(self.tls_ca), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.suback.extend(rcs)
        self._done = threading.Event()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode,
                    _p: Properties | None) -> None:
        self.connack = rc
        self._done.set()

    def connect(self) -> Client:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            return self
        self.client.loop_start()
        self._done.wait(10)
        return self

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.pubacks, 10, interval=0.05, what=f"PUBACK {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.suback.clear()
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: bool(self.suback), 10, interval=0.05, what=f"SUBACK {topic}")
        return list(self.suback)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def creds(stack: Stack) -> Credentials:
    return Credentials.load_or_create(stack.home)


# -- Mosquitto ------------------------------------------------------------------------------------


def test_shipped_configs_allow_no_anonymous_access(stack: Stack) -> None:
    for text in (REPO_CONF.read_text(), mosquitto_config(stack.s, Path("/x"))):
        lines = [line.split("#")[0].split() for line in text.splitlines()]
        settings = {words[0]: words[1:] for words in lines if words}
        assert settings["allow_anonymous"] == ["false"]
        assert settings["per_listener_settings"] == ["false"]  # one rule for every listener
        assert "password_file" in settings and "acl_file" in settings


@pytest.mark.mqtt
def test_anonymous_and_wrong_password_refused_on_both_listeners(stack: Stack) -> None:
    ca = stack.home / "mosquitto" / "certs" / "ca.crt"
    for port, tls in ((stack.s.mqtt_port, None), (stack.s.mqtt_tls_port, ca)):
        anonymous = Client(None, None, port, tls).connect()
        wrong = Client("gateway", "not-the-password", port, tls).connect()
        unknown = Client("nobody", creds(stack).mqtt_gateway_password, port, tls).connect()
        right = Client("gateway", creds(stack).mqtt_gateway_password, port, tls).connect()
        for client in (anonymous, wrong, unknown, right):
            client.close()
        assert not anonymous.accepted and not wrong.accepted and not unknown.accepted, port
        assert right.accepted, (port, right.connack, right.error)


@pytest.mark.mqtt
def test_a_sensor_writes_only_its_own_topic_and_reads_nothing_else(stack: Stack) -> None:
    me, other = f"acl-{uuid.uuid4().hex[:6]}", f"acl-{uuid.uuid4().hex[:6]}"
    stack.add_mqtt_user(me, "sensor-secret")
    stack.add_mqtt_user(other, "other-secret")
    time.sleep(0.5)
    c = creds(stack)
    watcher = Client("citystream", c.mqtt_service_password, stack.s.mqtt_port).connect()
    sensor = Client(me, "sensor-secret", stack.s.mqtt_port).connect()
    neighbour = Client(other, "other-secret", stack.s.mqtt_port).connect()
    gateway = Client("gateway", c.mqtt_gateway_password, stack.s.mqtt_port).connect()
    try:
        watcher.subscribe("city/#")
        sensor.subscribe("city/#")        # granted or not, it must deliver nothing of others
        gateway.subscribe("city/#")
        own = sensor.publish(f"city/bletchley/water/{me}", b'{"own": 1}')
        as_other = sensor.publish(f"city/bletchley/water/{other}", b'{"spoof": 1}')
        fake_alert = sensor.publish(f"city/alerts/water/{me}", b'{"fake": 1}')
        gateway_alert = gateway.publish("city/alerts/water/bletchley", b'{"fake": 2}')
        neighbours = neighbour.publish(f"city/bletchley/water/{other}", b'{"theirs": 1}')
        assert not own.is_failure and not neighbours.is_failure
        assert as_other.is_failure and fake_alert.is_failure and gateway_alert.is_failure
        assert "authori" in str(as_other).lower()
        wait_for(lambda: len(watcher.received) >= 2, 10, what="the allowed readings")
        time.sleep(1.0)
        # retained alerts of earlier tests' workers on the shared broker are not this test's
        seen = {m.topic for m in watcher.received if not m.retain}
        assert seen == {f"city/bletchley/water/{me}", f"city/bletchley/water/{other}"}, seen
        assert sensor.received == [], [m.topic for m in sensor.received]
        assert gateway.received == [], [m.topic for m in gateway.received]
    finally:
        for client in (watcher, sensor, neighbour, gateway):
            client.close()


@pytest.mark.mqtt
def test_tls_with_the_local_ca_and_untrusted_certificates_refused(stack: Stack,
                                                                  tmp_path: Path) -> None:
    ca = stack.home / "mosquitto" / "certs" / "ca.crt"
    c = creds(stack)
    port = stack.s.mqtt_tls_port
    watcher = Client("citystream", c.mqtt_service_password, port, ca).connect()
    gateway = Client("gateway", c.mqtt_gateway_password, port, ca).connect()
    try:
        assert watcher.accepted and gateway.accepted
        watcher.subscribe("city/#")
        topic = f"city/central-mk/water/tls-{uuid.uuid4().hex[:6]}"
        assert not gateway.publish(topic, b"over tls").is_failure
        wait_for(lambda: any(m.topic == topic for m in watcher.received), 10,
                 what="the reading over TLS")
    finally:
        watcher.close()
        gateway.close()
    rogue = tmp_path / "rogue"
    subprocess.run(["bash", str(HERE.parent / "mosquitto" / "make-dev-ca.sh"), str(rogue)],
                   check=True, capture_output=True)
    untrusting = Client("gateway", c.mqtt_gateway_password, port, rogue / "ca.crt").connect()
    untrusting.close()
    assert not untrusting.accepted
    assert isinstance(untrusting.error, ssl.SSLError | OSError), untrusting.error
    plaintext = Client("gateway", c.mqtt_gateway_password, port).connect()  # no TLS at all
    plaintext.close()
    assert not plaintext.accepted
    source = MqttSource(MqttSettings(host="127.0.0.1", port=port, username="citystream",
                                     password=c.mqtt_service_password,  # type: ignore[arg-type]
                                     tls_ca=rogue / "ca.crt"), "sec-ingest")
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        source.start(timeout=5)


# -- InfluxDB -------------------------------------------------------------------------------------


def _influx(stack: Stack, token: str, method: str, path: str, body: bytes | None = None,
            content_type: str = "text/plain") -> tuple[int, str]:
    url = stack.client_info()["influxdb"]["url"] + path
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Token {token}")
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.influxdb
def test_the_pipeline_token_writes_both_buckets_and_nothing_else(stack: Stack) -> None:
    token = stack.service_env()["CITYSTREAM_INFLUX__TOKEN"]
    operator = stack.client_info()["influxdb"]["token"]
    assert token != operator
    org = stack.s.influxdb_org
    for bucket in (stack.s.bucket_telemetry, stack.s.bucket_kpi):
        status, text = _influx(stack, token, "POST",
                               f"/api/v2/write?org={org}&bucket={bucket}&precision=ms", b"")
        assert status == 204, (bucket, status, text)
    org_id = json.loads(_influx(stack, operator, "GET", f"/api/v2/orgs?org={org}")[1])[
        "orgs"][0]["id"]
    flux = f'from(bucket: "{stack.s.bucket_kpi}") |> range(start: -1h)'.encode()
    denied = {
        "write _monitoring": _influx(stack, token, "POST",
                                     f"/api/v2/write?org={org}&bucket=_monitoring", b"m v=1"),
        "query": _influx(stack, token, "POST", f"/api/v2/query?org={org}", flux,
                         "application/vnd.flux"),
        "create bucket": _influx(stack, token, "POST", "/api/v2/buckets", json.dumps(
            {"name": "x", "orgID": org_id}).encode(), "application/json"),
    }
    # Not tested as denied: InfluxDB 2.x lets a bucket's write permission also delete points
    # (/api/v2/delete); no narrower scope exists (docs/operations.md, Security).
    for what, (status, text) in denied.items():
        assert status in (401, 403, 404), (what, status, text)
    for listing in ("/api/v2/buckets", "/api/v2/authorizations", "/api/v2/users"):
        status, text = _influx(stack, token, "GET", listing)
        assert status in (401, 403, 404) or json.loads(text).get(
            listing.rsplit("/", 1)[1], []) == [], (listing, status, text)
    for bucket in (stack.s.bucket_telemetry, stack.s.bucket_kpi):  # status --json still reads
        status, text = _influx(stack, operator, "POST", f"/api/v2/query?org={org}",
                               f'from(bucket: "{bucket}") |> range(start: -1m)'.encode(),
                               "application/vnd.flux")
        assert status == 200, (bucket, status, text)


# -- logs -----------------------------------------------------------------------------------------


class DebugIngest(IngestProcess):
    verbosity = "-vv"


class DebugWorker(WorkerProcess):
    verbosity = "-vv"


@pytest.mark.e2e
def test_no_secret_in_any_log_even_at_debug(stack: Stack, lane: Lane) -> None:
    """The pipeline at DEBUG, plus refused logins: every secret of secrets.json and the lane's
    token is absent from every service and pipeline log."""
    procs = [DebugIngest(stack, "0", log_dir=lane.dir, extra_env=lane.env).start(),
             DebugWorker(stack, "0", log_dir=lane.dir, extra_env=lane.env).start()]
    lane.processes.extend(procs)
    messages = water_messages(200, sensors=10, tag=lane.prefix.strip("."))
    publisher = gateway_publisher(stack)
    try:
        publisher.publish_all(messages)
    finally:
        publisher.close()
    c = creds(stack)
    Client("gateway", c.mqtt_service_password, stack.s.mqtt_port).connect().close()  # refused
    check = subprocess.run([".venv/bin/citystream", "check"], env={
        **lane.env, **stack.service_env(), "CITYSTREAM_INFLUX__TOKEN": c.influxdb_token + "x",
        "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, cwd=HERE.parents[1])
    (lane.dir / "check.log").write_text(check.stdout + check.stderr)
    written = re.compile(r" [1-9][0-9]* points written")
    wait_for(lambda: bool(written.search(procs[1].log.read_text())), 120,
             what="the worker writing to InfluxDB")
    leaked = secrets_in_logs([stack], [lane.env["CITYSTREAM_INFLUX__TOKEN"]], lane_logs(lane))
    assert not leaked, leaked
    assert any("DEBUG" in p.log.read_text() for p in procs)


@pytest.mark.e2e
def test_check_with_the_write_only_token(stack: Stack) -> None:
    """`citystream check` proves the pipeline token can write both buckets, and names the
    setting to fix when the token, the org or a bucket is wrong."""
    from click.testing import CliRunner

    from citystream.cli import main

    env = stack.service_env()
    ok = CliRunner().invoke(main, ["check"], env=env)
    assert ok.exit_code == 0 and "token writes buckets" in ok.output, ok.output
    cases = {"CITYSTREAM_INFLUX__TOKEN": ("not-a-token", "CITYSTREAM_INFLUX__TOKEN"),
             "CITYSTREAM_INFLUX__ORG": ("no-such-org", "CITYSTREAM_INFLUX__ORG"),
             "CITYSTREAM_INFLUX__BUCKET_KPI": ("no-such-bucket", "__BUCKET_KPI")}
    for name, (value, named) in cases.items():
        wrong = CliRunner().invoke(main, ["check"], env={**env, name: value})
        assert wrong.exit_code == 1 and named in wrong.output, (name, wrong.output)
        assert env["CITYSTREAM_INFLUX__TOKEN"] not in wrong.output
