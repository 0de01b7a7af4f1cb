"""MQTT side of ingest: a persistent MQTT 5 session on a shared subscription, with manual acks.

The broker keeps our session (clean start off, session expiry > 0, stable client id) and limits
unacknowledged deliveries to `receive_maximum`; we acknowledge a message only after Kafka
confirmed it. So a crash or a Kafka outage loses nothing: the broker redelivers, and while
nothing is acknowledged it stops sending (flow control instead of an unbounded buffer).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.mqtt import client_for
from models.settings import MqttSettings

log = logging.getLogger(__name__)

# city/# rather than city/+/+/+: a topic with too few or too many levels must reach decode and
# be dead-lettered as bad_topic, not silently never seen. citystream's own alerts
# (city/alerts/...) are acknowledged and skipped.
READINGS_FILTER = "city/#"
ALERTS_PREFIX = "city/alerts/"


class Delivery(NamedTuple):
    """One MQTT message as received; `token` acknowledges it. (A named tuple: ingest makes one
    per message, and a tuple is the cheapest immutable record to make.)"""

    topic: str
    payload: bytes
    received_at_ms: int
    token: int
    redelivered: bool


class Source(Protocol):
    """Where ingest gets messages from. `ack` is called only once the message is durable."""

    def start(self) -> None: ...

    def poll(self, max_items: int) -> list[Delivery]: ...

    def ack(self, deliveries: list[Delivery]) -> None: ...

    def unsubscribe(self) -> None: ...

    def close(self, *, end_session: bool = False) -> None: ...

    @property
    def connected(self) -> bool: ...


class _BufferedSocket:
    """The broker connection read in 64 KiB chunks. paho reads every packet with several small
    `recv` calls (1 byte of command, the length byte by byte, then the body): from memory here
    instead of one system call each. `pending()` is paho's hook for bytes buffered outside the
    kernel (as in a TLS socket): its loop reads them before it waits in `select`."""

    CHUNK = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._data):
            data = self._sock.recv(max(bufsize, self.CHUNK))
            if len(data) <= bufsize:
                return bytes(data)
            self._data, self._pos = data, 0
        end = self._pos + bufsize
        out = self._data[self._pos:end]
        self._pos = min(end, len(self._data))
        return out

    def buffered(self) -> int:
        return len(self._data) - self._pos

    def peek(self) -> tuple[bytes, int]:
        """The chunk in memory and where its unread part starts."""
        return self._data, self._pos

    def skip_to(self, pos: int) -> None:
        """Mark the chunk read up to `pos` (what `peek`'s caller parsed itself)."""
        self._pos = pos

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self.buffered() + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


Publish = tuple[str, bytes, int, bool]
"""(topic, payload, packet id, dup) of a QoS 1 PUBLISH without MQTT 5 properties."""


class _Client(mqtt.Client):
    """paho's client reading through a `_BufferedSocket`, every buffered packet per wake-up,
    handing QoS 1 PUBLISHes without properties straight to `on_qos1_publishes` (parsed in bulk
    from the buffer) or `on_qos1_publish` (one that paho read), and sending a batch of PUBACKs
    as one write."""

    on_qos1_publish: Callable[[str, bytes, int, bool], None] | None = None
    on_qos1_publishes: Callable[[list[Publish]], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        """The gateways' every message, parsed here: paho builds a `Properties` (a dict of 27
        names and one of 27 types), an `MQTTMessage` with a `Condition` and matches topic
        filters for each, about 60 % of ingest's network thread. Anything else (QoS 0 or 2,
        properties, a malformed or non-UTF-8 topic) takes paho's own path."""
        handler = self.on_qos1_publish
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        if (handler is None or header & 0x06 != 0x02 or not self._manual_ack
                or self._protocol != mqtt.MQTTv5 or len(packet) < 2):
            return super()._handle_publish()
        end = 2 + (packet[0] << 8 | packet[1])
        if end == 2 or len(packet) < end + 3 or packet[end + 2] != 0:
            return super()._handle_publish()
        try:
            topic = packet[2:end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        handler(topic, bytes(packet[end + 3:]), packet[end] << 8 | packet[end + 1],
                bool(header & 0x08))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho reads from the socket (and handles its errors); then every whole QoS 1 PUBLISH
        in the chunk it filled is parsed here in one go, and paho takes anything else (another
        packet type, properties, a packet the chunk holds only part of) one packet at a time."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, _BufferedSocket)
               and sock.buffered()):
            if self._in_packet["command"] == 0:  # paho is not in the middle of a packet
                self._take_publishes(sock)
                if not sock.buffered():
                    break
            rc = super().loop_read(max_packets)
        return rc

    def _take_publishes(self, sock: _BufferedSocket) -> None:
        """Parse the QoS 1 PUBLISHes without properties at the head of the buffer (up to the
        first packet that is anything else or incomplete) and hand them on as one list, in
        receive order: paho's per-packet reading (its command byte, the length byte by byte,
        the body, each a `recv`) cost more than all of ingest's decoding."""
        handler = self.on_qos1_publishes
        if handler is None or not self._manual_ack or self._protocol != mqtt.MQTTv5:
            return
        data, pos = sock.peek()
        end = len(data)
        out: list[Publish] = []
        while pos < end:
            header = data[pos]
            if header & 0xF6 != 0x32:  # PUBLISH, QoS 1 (DUP and RETAIN either way)
                break
            i, length, shift = pos + 1, 0, 0
            while i < end and i <= pos + 4:  # the remaining length: at most 4 bytes
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                break  # incomplete here, or malformed: paho's path decides
            stop = i + length
            topic_end = i + 2 + (data[i] << 8 | data[i + 1]) if i + 1 < end else stop
            if (stop > end or topic_end == i + 2 or topic_end + 3 > stop
                    or data[topic_end + 2] != 0):
                break
            try:
                topic = data[i + 2:topic_end].decode()
            except UnicodeDecodeError:
                break
            out.append((topic, data[topic_end + 3:stop],
                        data[topic_end] << 8 | data[topic_end + 1], header & 0x08 != 0))
            pos = stop
        if out:
            sock.skip_to(pos)
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            handler(out)

    def ack_many(self, mids: list[int]) -> MQTTErrorCode:
        """PUBACK (QoS 1, success) for each of `mids`, in order, queued as one buffer: one
        wake-up of the network thread and one `send` for the batch. paho's `ack` queues a
        packet, wakes the thread and sends 4 bytes per message."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        buffer = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
        return self._packet_queue(mqtt.PUBACK, buffer, 0, 1)


_PUBACK = struct.Struct("!BBH")


class MqttSource:
    """paho-mqtt 2.x client (callback API v2, MQTT 5) feeding an in-process queue."""

    def __init__(self, settings: MqttSettings, client_id: str, *,
                 receive_maximum: int = 4096) -> None:
        self.settings = settings
        self.client_id = client_id
        self.receive_maximum = receive_maximum
        self._queue: deque[Delivery] = deque()
        self._connected = threading.Event()
        self._epoch = 0
        self._lock = threading.Lock()
        self.connects = 0
        self.skipped_alerts = 0
        client = client_for(settings, _Client, client_id, manual_ack=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_qos1_publish = self._on_publish
        client.on_qos1_publishes = self._on_publishes
        client.on_subscribe = self._on_subscribe
        self._client = client

    @property
    def topic_filter(self) -> str:
        """The shared subscription of the group, or a plain one without a group. Both are
        persisted with the session by Mosquitto 2.1's persist-sqlite plugin; Mosquitto 2.0
        (and 2.1's file persistence) drops shared ones at a restart, so messages published
        before ingest subscribes again are acknowledged to the gateway and lost."""
        group = self.settings.shared_group
        return f"$share/{group}/{READINGS_FILTER}" if group else READINGS_FILTER

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, timeout: float = 30.0) -> None:
        """Connect (retrying until `timeout`) and start the network thread."""
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._client.connect(self.settings.host, self.settings.port,
                                     keepalive=self.settings.keepalive_s, clean_start=False,
                                     properties=props)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"cannot reach MQTT broker at {self.settings.host}:{self.settings.port}"
                        f" ({exc}); check CITYSTREAM_MQTT__HOST/PORT") from exc
                time.sleep(1.0)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self._client.loop_stop()
            raise ConnectionError(
                f"MQTT broker at {self.settings.host}:{self.settings.port} did not accept the "
                f"connection within {timeout:.0f}s; check CITYSTREAM_MQTT__USERNAME/PASSWORD")

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused: %s", reason)
            return
        self.connects += 1
        with self._lock:
            self._epoch += 1
        log.info("MQTT connected as %s (session present: %s); subscribing to %s",
                 self.client_id, flags.session_present, self.topic_filter)
        # Subscribe on every connect (paho issue 573): cheap, and right if the session expired.
        client.subscribe(self.topic_filter, options=SubscribeOptions(qos=1))

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reasons: list[ReasonCode], _props: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            log.error("MQTT subscription to %s refused: %s (does the ACL allow this user to "
                      "read city/#?)", self.topic_filter, reasons)
            return
        self._connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any,
                       _flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       _props: Properties | None) -> None:
        self._connected.clear()
        log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_publish(msg.topic, bytes(msg.payload), msg.mid if msg.qos else 0,
                         bool(msg.dup))

    def _on_publish(self, topic: str, payload: bytes, mid: int, dup: bool) -> None:
        """A message from the broker; `mid` 0 for QoS 0 (nothing to acknowledge)."""
        if topic.startswith(ALERTS_PREFIX):
            self.skipped_alerts += 1
            self._client.ack_many([mid] if mid else [])
            return
        self._queue.append(Delivery(
            topic=topic, payload=payload, received_at_ms=int(time.time() * 1000),
            token=(self._epoch << 16) | mid, redelivered=dup))

    def _on_publishes(self, publishes: list[Publish]) -> None:
        """`_on_publish` for the messages of one read from the socket (one receive time)."""
        now = int(time.time() * 1000)
        epoch = self._epoch << 16
        append = self._queue.append
        new = tuple.__new__  # Delivery(...) without its generated __new__: a third of the cost
        alerts: list[int] = []
        for topic, payload, mid, dup in publishes:
            if topic.startswith(ALERTS_PREFIX):
                alerts.append(mid)
            else:
                append(new(Delivery, (topic, payload, now, epoch | mid, dup)))
        if alerts:
            self.skipped_alerts += len(alerts)
            self._client.ack_many(alerts)

    def poll(self, max_items: int) -> list[Delivery]:
        out: list[Delivery] = []
        queue = self._queue
        while queue and len(out) < max_items:
            out.append(queue.popleft())
        return out

    def ack(self, deliveries: list[Delivery]) -> None:
        """Send PUBACKs, in receive order. Acks from before a reconnect are skipped: the broker
        has redelivered those messages on the new connection and they will be acked there."""
        epoch = self._epoch
        mids = [d.token & 0xFFFF for d in deliveries if d.token >> 16 == epoch and d.token & 0xFFFF]
        rc = self._client.ack_many(mids)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("%d PUBACKs not sent (%s); the broker will redeliver", len(mids), rc)

    def unsubscribe(self) -> None:
        """Stop new deliveries to this session (before leaving the shared group for good)."""
        self._client.unsubscribe(self.topic_filter)

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect. The broker keeps the session (and keeps routing shared-subscription
        messages to it) unless `end_session`, which sets its expiry to 0 on DISCONNECT."""
        props = None
        if end_session:
            props = _properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]
