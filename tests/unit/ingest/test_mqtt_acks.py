"""ingest's PUBACKs against a scripted MQTT 5 broker: a batch of acks leaves as one write, in
receive order, and acks from before a reconnect are not sent."""

from __future__ import annotations

import socket
import struct
import threading
import time

from bench.load import _varint
from citystream.settings import MqttSettings
from ingest.mqtt_source import MqttSource


def _publish(topic: str, mid: int, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", mid) + b"\0" + payload
    return b"\x32" + _varint(len(body)) + body


class ScriptedBroker(threading.Thread):
    """Accepts one client: CONNACK, SUBACK, then `messages` QoS 1 PUBLISHes; records every
    `recv` from the client after that (to see how the PUBACKs arrive)."""

    def __init__(self, messages: int) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.messages = messages
        self.reads: list[bytes] = []
        self.ready = threading.Event()

    def run(self) -> None:
        conn, _ = self.server.accept()
        conn.recv(65536)  # CONNECT
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, MQTT 5, no properties
        subscribe = conn.recv(65536)
        pid = subscribe[2:4]
        conn.sendall(b"\x90\x04" + pid + b"\x00\x01")  # SUBACK, granted QoS 1
        conn.sendall(b"".join(_publish(f"city/central-mk/water/wm-{i}", i + 1, b"{}")
                              for i in range(self.messages)))
        self.ready.set()
        conn.settimeout(5)
        try:
            while chunk := conn.recv(65536):
                self.reads.append(chunk)
                if chunk[:1] == b"\xe0":  # DISCONNECT
                    break
        except TimeoutError:
            pass
        conn.close()


def test_a_batch_of_acks_is_one_write_in_receive_order() -> None:
    broker = ScriptedBroker(messages=200)
    broker.start()
    source = MqttSource(MqttSettings(port=broker.port), "ingest-acks-test")
    source.start(timeout=10)
    try:
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 200 and time.monotonic() < deadline:
            got += source.poll(500)
            time.sleep(0.01)
        assert [d.topic for d in got] == [f"city/central-mk/water/wm-{i}" for i in range(200)]
        source.ack(got)
        deadline = time.monotonic() + 5
        while sum(map(len, broker.reads)) < 800 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        source.close()
        broker.join(10)
    acks = b"".join(broker.reads)[:800]
    assert acks == b"".join(b"\x40\x02" + struct.pack("!H", i + 1) for i in range(200))
    assert len(broker.reads[0]) >= 800, "the 200 PUBACKs should arrive in one write"


def test_acks_from_before_a_reconnect_are_skipped() -> None:
    broker = ScriptedBroker(messages=3)
    broker.start()
    source = MqttSource(MqttSettings(port=broker.port), "ingest-acks-test-2")
    source.start(timeout=10)
    try:
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            got += source.poll(10)
            time.sleep(0.01)
        source._epoch += 1  # what a reconnect does: the broker redelivers these
        source.ack(got[:2])
        time.sleep(0.3)
    finally:
        source.close()
        broker.join(10)
    assert b"".join(broker.reads) == b"\xe0\x00"  # only the DISCONNECT
