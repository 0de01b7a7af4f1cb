"""ingest's MQTT client against a scripted MQTT 5 broker: PUBLISHes parsed by its fast path and
by paho's own path give the same deliveries; a batch of acks leaves as one write, in receive
order; QoS 0 messages and acks from before a reconnect are not acknowledged."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

from ingest.mqtt_source import Delivery, MqttSource
from models.settings import MqttSettings
from tests.support import varint


def _publish(topic: str, mid: int, payload: bytes, *, qos: int = 1, dup: bool = False,
             properties: bytes = b"") -> bytes:
    body = (struct.pack("!H", len(topic.encode())) + topic.encode()
            + (struct.pack("!H", mid) if qos else b"") + varint(len(properties)) + properties
            + payload)
    return bytes([0x30 | qos << 1 | dup << 3]) + varint(len(body)) + body


class ScriptedBroker(threading.Thread):
    """Accepts one client: CONNACK, SUBACK, then `messages` QoS 1 PUBLISHes; records every
    `recv` from the client after that (to see how the PUBACKs arrive)."""

    def __init__(self, messages: int, packets: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.messages = messages
        self.packets = packets
        self.reads: list[bytes] = []
        self.ready = threading.Event()

    def run(self) -> None:
        conn, _ = self.server.accept()
        conn.recv(65536)  # CONNECT
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, MQTT 5, no properties
        subscribe = conn.recv(65536)
        pid = subscribe[2:4]
        conn.sendall(b"\x90\x04" + pid + b"\x00\x01")  # SUBACK, granted QoS 1
        conn.sendall(self.packets or b"".join(
            _publish(f"city/central-mk/water/wm-{i}", i + 1, b"{}") for i in range(self.messages)))
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


def exchange(broker: ScriptedBroker, count: int,
             ack: Callable[[MqttSource, list[Delivery]], None]
             ) -> tuple[list[Delivery], MqttSource]:
    """Connect an `MqttSource` to `broker`, receive `count` deliveries, `ack` them, wait until
    the broker has read what the client sent, disconnect."""
    broker.start()
    source = MqttSource(MqttSettings(port=broker.port), f"ingest-test-{broker.port}")
    source.start(timeout=10)
    try:
        got: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            got += source.poll(500)
            time.sleep(0.01)
        ack(source, got)
        time.sleep(0.3)
    finally:
        source.close()
        broker.join(10)
    return got, source


def test_a_batch_of_acks_is_one_write_in_receive_order() -> None:
    broker = ScriptedBroker(messages=200)
    got, _ = exchange(broker, 200, MqttSource.ack)
    assert [d.topic for d in got] == [f"city/central-mk/water/wm-{i}" for i in range(200)]
    acks = b"".join(broker.reads)[:800]
    assert acks == b"".join(b"\x40\x02" + struct.pack("!H", i + 1) for i in range(200))
    assert len(broker.reads[0]) >= 800, "the 200 PUBACKs should arrive in one write"


def test_acks_from_before_a_reconnect_are_skipped() -> None:
    def after_reconnect(source: MqttSource, got: list[Delivery]) -> None:
        source._epoch += 1  # what a reconnect does: the broker redelivers these
        source.ack(got[:2])

    broker = ScriptedBroker(messages=3)
    exchange(broker, 3, after_reconnect)
    assert b"".join(broker.reads) == b"\xe0\x00"  # only the DISCONNECT


def test_fast_path_and_paho_path_give_the_same_deliveries() -> None:
    expiry = b"\x02" + struct.pack("!I", 60)  # Message Expiry Interval: paho's own path
    packets = [
        _publish("city/central-mk/water/wm-1", 7, b'{"a":1}'),
        _publish("city/central-mk/water/wm-1", 8, b'{"a":1}', dup=True),
        _publish("city/central-mk/water/wm-1", 9, b'{"a":1}', properties=expiry),
        _publish("city/central-mk/water/wm-\u00e9", 10, b""),
        _publish("city/central-mk/water/wm-1", 0, b'{"q":0}', qos=0),
        _publish("city/alerts/water/central-mk", 11, b"{}"),
    ]
    broker = ScriptedBroker(0, b"".join(packets))
    got, source = exchange(broker, 5, MqttSource.ack)
    assert [(d.topic, d.payload, d.token & 0xFFFF, d.redelivered) for d in got] == [
        ("city/central-mk/water/wm-1", b'{"a":1}', 7, False),
        ("city/central-mk/water/wm-1", b'{"a":1}', 8, True),
        ("city/central-mk/water/wm-1", b'{"a":1}', 9, False),
        ("city/central-mk/water/wm-\u00e9", b"", 10, False),
        ("city/central-mk/water/wm-1", b'{"q":0}', 0, False),
    ]
    assert source.skipped_alerts == 1
    acks = b"".join(broker.reads).removesuffix(b"\xe0\x00")
    assert sorted(acks[i:i + 4] for i in range(0, len(acks), 4)) == [
        b"\x40\x02" + struct.pack("!H", mid) for mid in (7, 8, 9, 10, 11)]


def test_publishes_parsed_in_bulk_across_reads_keep_order_and_flags() -> None:
    """Thousands of PUBLISHes (bodies over 127 bytes: two length bytes) arrive in chunks that
    split packets anywhere; one with properties and a QoS 0 one sit in the middle. Every
    message arrives once, in order, with its packet id and DUP flag, and nearly all of them
    through the bulk parser."""
    count = 3000
    packets = []
    expected = []
    for i in range(count):
        topic = f"city/central-mk/water/wm-{i}"
        payload = b'{"i":%d,"pad":"%s"}' % (i, b"x" * (i % 300))
        mid = i % 65000 + 1
        if i == 1500:
            packets.append(_publish(topic, mid, payload, properties=b"\x02\x00\x00\x00\x3c"))
        elif i == 2000:
            packets.append(_publish(topic, 0, payload, qos=0))
            mid = 0
        else:
            packets.append(_publish(topic, mid, payload, dup=i % 7 == 0))
        expected.append((topic, payload, mid, i % 7 == 0 and i not in (1500, 2000)))
    broker = ScriptedBroker(0, b"".join(packets))
    bulk: list[int] = []
    original = MqttSource._on_publishes

    def counting(self: MqttSource, publishes: list[tuple[str, bytes, int, bool]]) -> None:
        bulk.append(len(publishes))
        original(self, publishes)

    MqttSource._on_publishes = counting  # type: ignore[method-assign]
    try:
        got, _ = exchange(broker, count, MqttSource.ack)
    finally:
        MqttSource._on_publishes = original  # type: ignore[method-assign]
    assert [(d.topic, d.payload, d.token & 0xFFFF, d.redelivered) for d in got] == expected
    assert sum(bulk) > count * 0.9
