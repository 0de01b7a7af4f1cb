"""`citystream sim` through the real Mosquitto: a subscriber gets exactly what was recorded."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sensors_sim.recording import read_recording

CITYSTREAM = [sys.executable, "-c", "import sys; from citystream.cli import main; sys.exit(main())"]


class Subscriber:
    """A QoS 1 paho subscriber on city/# with the service credentials."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"test-sim-sub-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, *_: c.subscribe("city/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK for city/#"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.qos))

    def wait_for(self, topics: set[str], n: int, timeout: float = 60.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [(t, p) for t, p, _ in self.messages if t in topics]
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _sim(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([*CITYSTREAM, "sim", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.mqtt
@pytest.mark.parametrize("batch", ["1", "3"])
def test_subscriber_receives_exactly_the_recorded_messages(stack: Any, tmp_path: Path,
                                                           batch: str) -> None:
    gateway = stack.status()["mqtt"]
    service = stack.service_env()
    sub = Subscriber(gateway["host"], gateway["port"], service["CITYSTREAM_MQTT__USERNAME"],
                     service["CITYSTREAM_MQTT__PASSWORD"])
    record = tmp_path / "run.jsonl"
    try:
        result = _sim(
            {"CITYSTREAM_MQTT__HOST": gateway["host"],
             "CITYSTREAM_MQTT__PORT": str(gateway["port"]),
             "CITYSTREAM_MQTT__USERNAME": gateway["username"],
             "CITYSTREAM_MQTT__PASSWORD": gateway["password"]},
            "--count", "4000", "--speed", "0", "--start", "now-3h", "--seed", "5",
            "--batch", batch, "--gateways", "3", "--faults", "0.01",
            "--fault", "duplicate=0.03", "--leak-district", "bletchley",
            "--record", str(record), "--no-progress")
        assert result.returncode == 0, result.stderr + result.stdout
        assert "unacked 0" in result.stdout
        recorded = list(read_recording(record))
        assert len(recorded) == 4000
        got = sub.wait_for({r.topic for r in recorded}, len(recorded))
    finally:
        sub.close()
    want = collections.Counter((r.topic, r.payload) for r in recorded)
    assert collections.Counter(got) == want
    faults = collections.Counter(f for r in recorded for f in r.faults)
    assert faults["duplicate"] > 50 and faults["bad_topic"] > 5 and faults["too_large"] > 5
    assert all(qos == 1 for _, _, qos in sub.messages)


@pytest.mark.mqtt
def test_a_wrong_password_is_refused_with_a_hint(stack: Any) -> None:
    gateway = stack.status()["mqtt"]
    result = _sim({"CITYSTREAM_MQTT__HOST": gateway["host"],
                   "CITYSTREAM_MQTT__PORT": str(gateway["port"]),
                   "CITYSTREAM_MQTT__USERNAME": gateway["username"],
                   "CITYSTREAM_MQTT__PASSWORD": "not-the-password"},
                  "--count", "10", "--no-progress")
    assert result.returncode == 1
    assert "refused" in result.stderr and "CITYSTREAM_MQTT__PASSWORD" in result.stderr
