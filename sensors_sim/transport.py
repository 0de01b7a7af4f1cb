"""Publishing: one paho-mqtt client per gateway (`connectors.mqtt`), all driven from one thread.

Every gateway is its own MQTT 5 connection (QoS 1, clean start). Rather than a loop thread per
client (GIL contention), one `poll()` loop serves all sockets: `publish` hands a message to
its gateway's client (paho writes it to the socket at once), `pump` reads PUBACKs and flushes
partial writes. Flow control is ours: a gateway has at most `window` unacknowledged messages
(never more than the broker's Receive Maximum), so paho's own in-flight queue is switched off
(`max_inflight_messages 0`: its queued-message bookkeeping costs O(in flight) per PUBACK) and
`max_queued_messages` = window is only a safety net: `MQTT_ERR_QUEUE_SIZE` is checked and
waited out. A lost connection is re-established and paho re-sends what was not acknowledged
(at least once: the broker may then see a message twice).

Two things keep the per-message cost down: sockets are corked (TCP_CORK, flushed at every
pump) so the kernel sends few large segments instead of one per message, and PUBACKs skip
paho's MQTT 5 reason-code/properties objects (`_FastAckClient`). Together they triple the
unbatched rate on a small machine; batching (--batch) does the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from connectors.mqtt import mqtt_client
from models.errors import CitystreamError
from sensors_sim.generator import Message

log = logging.getLogger(__name__)

STALL_TIMEOUT_S = 30.0
"""A gateway whose window stays full this long (no PUBACK, no reconnect) fails the run."""
PUMP_EVERY = 32
"""Publishes between two network pumps (PUBACK reads, corked-socket flushes)."""
_FAST_ACK_INTERNALS = ("_in_packet", "_out_messages", "_out_message_mutex", "_inflight_messages",
                       "_max_inflight_messages", "_userdata")


class TransportError(CitystreamError):
    """The broker cannot be reached, refused us, or stopped acknowledging."""


@dataclass
class TransportReport:
    """How publishing went: acknowledged, never acknowledged, refused by the broker."""

    acked: int = 0
    unacked: int = 0
    rejected: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0


class Transport(Protocol):
    """Where messages go: `start`, then `publish`/`pump`, then `close`."""

    def start(self) -> None:
        """Connect; raises TransportError naming what to fix."""

    def publish(self, msg: Message) -> None:
        """Hand `msg` to the broker; may wait (pumping) while its gateway's window is full."""

    def pump(self, timeout: float) -> None:
        """Do network I/O for up to `timeout` seconds."""

    def unacked(self) -> int:
        """Messages handed over but not acknowledged yet."""

    def close(self, timeout: float) -> TransportReport:
        """Wait up to `timeout` s for outstanding acknowledgements, disconnect, report."""


class DryRunTransport:
    """Publishes nowhere (`--dry-run`)."""

    def __init__(self) -> None:
        self.sent = 0

    def start(self) -> None:
        """Nothing to connect."""

    def publish(self, msg: Message) -> None:
        """Count the message."""
        self.sent += 1

    def pump(self, timeout: float) -> None:
        """Sleep instead of doing I/O."""
        if timeout > 0:
            time.sleep(timeout)

    def unacked(self) -> int:
        """Always 0."""
        return 0

    def close(self, timeout: float) -> TransportReport:
        """Everything counts as acknowledged."""
        return TransportReport(acked=self.sent)


class _FastAckClient(mqtt.Client):
    """A paho client whose PUBACK handling skips paho's MQTT 5 decoding.

    paho builds two ReasonCode and one or two Properties objects for every PUBACK, which costs
    more CPU than everything else the simulator does per message. A PUBACK is a packet id and
    an optional reason byte: this reads those, does paho's own bookkeeping (drop the message
    from the out queue, count it off in flight) and calls `on_ack(gateway, reason)` instead of
    on_publish. It relies on paho 2.x internals, checked by `fast_acks_supported`; anything
    unusual (no paho in-flight limit unset, an unknown packet) goes through paho's own code.
    """

    on_ack: Callable[[int, int], None] | None = None

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        on_ack = self.on_ack
        if (cmd != "PUBACK" or len(packet) < 2 or on_ack is None
                or self._max_inflight_messages > 0):
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            self._inflight_messages -= 1
        msg.info._set_as_published()
        on_ack(self._userdata, packet[2] if len(packet) > 2 else 0)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def fast_acks_supported() -> bool:
    """True when the installed paho has the internals `_FastAckClient` uses."""
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    return hasattr(mqtt.Client, "_handle_pubackcomp") and all(
        hasattr(probe, name) for name in _FAST_ACK_INTERNALS)


class MqttTransport:
    """`gateways` paho clients to one broker, served by one poll loop (see module docstring)."""

    def __init__(self, host: str, port: int, username: str | None, password: str | None, *,
                 gateways: int = 4, window: int = 256, keepalive_s: int = 30,
                 tls_ca: Path | None = None, client_prefix: str | None = None,
                 cork: bool = True, fast_acks: bool = True) -> None:
        if gateways < 1 or window < 1:
            raise ValueError("gateways and window must be at least 1")
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.keepalive_s = keepalive_s
        self.tls_ca = tls_ca
        self.window = window
        prefix = client_prefix or f"citystream-sim-{socket.gethostname()[:20]}-{os.getpid()}"
        self.clients: list[mqtt.Client] = []
        self._window = [window] * gateways
        self._unacked = [0] * gateways
        self._connected = [False] * gateways
        self._refused: dict[int, str] = {}
        self._lost: dict[int, float] = {}  # gateway -> when to try reconnecting
        self._backoff = [1.0] * gateways
        self._closing = False
        self._poll = select.poll()
        self._fds: dict[int, int] = {}  # fd -> gateway
        self._want_write: set[int] = set()
        self._corked: set[int] = set()
        self.cork = cork
        self._since_pump = 0
        self._last_misc = time.monotonic()
        self.report = TransportReport()
        fast = fast_acks and fast_acks_supported()
        for g in range(gateways):
            client = mqtt_client(_FastAckClient if fast else mqtt.Client, f"{prefix}-{g:03d}",
                                 username=username, password=password, tls_ca=tls_ca,
                                 userdata=g)
            if isinstance(client, _FastAckClient):
                client.on_ack = self._on_ack
            client.max_inflight_messages_set(0)
            client.max_queued_messages_set(window)
            client.on_connect = self._on_connect
            client.on_publish = self._on_publish
            client.on_disconnect = self._on_disconnect
            self.clients.append(client)

    # -- paho callbacks (called from inside loop_read) -------------------------------------

    def _on_connect(self, client: mqtt.Client, g: int, _flags: Any, reason: ReasonCode,
                    props: Properties | None) -> None:
        if reason.is_failure:
            self._refused[g] = str(reason)
            return
        self._connected[g] = True
        self._backoff[g] = 1.0
        receive_max = getattr(props, "ReceiveMaximum", 65535) if props is not None else 65535
        self._window[g] = max(1, min(self.window, int(receive_max)))

    def _on_publish(self, _client: mqtt.Client, g: int, _mid: int, reason: ReasonCode,
                    _props: Properties) -> None:
        self._unacked[g] -= 1
        self.report.acked += 1
        if reason.is_failure:
            self.report.rejected += 1
            self.report.reject_reasons[str(reason)] += 1

    def _on_ack(self, g: int, reason: int) -> None:
        self._unacked[g] -= 1
        self.report.acked += 1
        if reason >= 0x80:
            self.report.rejected += 1
            self.report.reject_reasons[str(ReasonCode(PacketTypes.PUBACK, identifier=reason))] \
                += 1

    def _on_disconnect(self, _client: mqtt.Client, g: int, _flags: Any, reason: ReasonCode,
                       _props: Properties | None) -> None:
        was = self._connected[g]
        self._connected[g] = False
        if not self._closing:
            if was:
                log.warning("gateway %d lost its MQTT connection (%s); reconnecting", g, reason)
            self._lost[g] = time.monotonic() + self._backoff[g]

    # -- life cycle --------------------------------------------------------------------------

    def _register(self, g: int) -> None:
        sock = self.clients[g].socket()
        if sock is None:
            return
        fd = sock.fileno()
        for old, gw in list(self._fds.items()):
            if gw == g and old != fd:
                self._unregister(old)
        self._fds[fd] = g
        self._poll.register(fd, select.POLLIN)
        if self.cork and hasattr(socket, "TCP_CORK") and isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                self._corked.add(fd)

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        self._fds.pop(fd, None)
        self._want_write.discard(fd)
        self._corked.discard(fd)

    def start(self, timeout: float = 15.0) -> None:
        """Open every gateway's connection and wait for all CONNACKs."""
        where = f"{self.host}:{self.port}"
        for g, client in enumerate(self.clients):
            try:
                client.connect(self.host, self.port, keepalive=self.keepalive_s,
                               clean_start=True)
            except (OSError, ValueError) as exc:
                raise TransportError(
                    f"cannot reach the MQTT broker at {where}: {exc} (CITYSTREAM_MQTT__HOST, "
                    f"CITYSTREAM_MQTT__PORT, --host/--port)") from None
            self._register(g)
        deadline = time.monotonic() + timeout
        while not all(self._connected):
            if self._refused:
                g, why = next(iter(self._refused.items()))
                raise TransportError(
                    f"the MQTT broker at {where} refused gateway {g}: {why} (check "
                    f"CITYSTREAM_MQTT__USERNAME / CITYSTREAM_MQTT__PASSWORD or --username/"
                    f"--password)")
            if time.monotonic() > deadline:
                raise TransportError(f"no CONNACK from the MQTT broker at {where} within "
                                     f"{timeout:.0f} s")
            self.pump(0.05)

    def publish(self, msg: Message) -> None:
        """Hand `msg` to its gateway's client, waiting while the gateway's window is full."""
        g = msg.gateway % len(self.clients)
        if self._unacked[g] >= self._window[g] or not self._connected[g]:
            self._wait_for_room(g)
        while True:
            rc = self.clients[g].publish(msg.topic, msg.payload, qos=1).rc
            if rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
                break  # no connection: paho keeps the message and sends it after the reconnect
            if rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                raise TransportError(f"publish on {msg.topic} failed: {mqtt.error_string(rc)}")
            self._wait_for_room(g)
        self._unacked[g] += 1
        self._since_pump += 1
        if self._since_pump >= PUMP_EVERY:
            self.pump(0.0)

    def _wait_for_room(self, g: int) -> None:
        deadline = time.monotonic() + STALL_TIMEOUT_S
        while self._unacked[g] >= self._window[g] or not self._connected[g]:
            if self._refused.get(g):
                raise TransportError(f"the broker refused gateway {g} on reconnect: "
                                     f"{self._refused[g]}")
            if time.monotonic() > deadline:
                raise TransportError(
                    f"gateway {g}: no PUBACK or reconnect for {STALL_TIMEOUT_S:.0f} s "
                    f"({self._unacked[g]} messages unacknowledged)")
            self.pump(0.01)

    def pump(self, timeout: float) -> None:
        """Read PUBACKs, flush pending writes, keep connections alive, reconnect lost ones."""
        self._since_pump = 0
        for fd in self._corked:  # push what the kernel held back, keep coalescing after
            g = self._fds[fd]
            sock = self.clients[g].socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        for fd, g in self._fds.items():
            wants = self.clients[g].want_write()
            if wants != (fd in self._want_write):
                self._poll.modify(fd, select.POLLIN | select.POLLOUT if wants else select.POLLIN)
                if wants:
                    self._want_write.add(fd)
                else:
                    self._want_write.discard(fd)
        for fd, events in self._poll.poll(max(0, int(timeout * 1000))):
            gw = self._fds.get(fd)
            if gw is None:
                continue
            client = self.clients[gw]
            if events & (select.POLLIN | select.POLLERR | select.POLLHUP):
                client.loop_read()
            if events & select.POLLOUT:
                client.loop_write()
            if client.socket() is None:
                self._unregister(fd)
        now = time.monotonic()
        if now - self._last_misc >= 1.0:
            self._last_misc = now
            for client in self.clients:
                client.loop_misc()
        if self._lost:
            self._reconnect(now)

    def _reconnect(self, now: float) -> None:
        for g, when in list(self._lost.items()):
            if now < when:
                continue
            del self._lost[g]
            for fd, gw in list(self._fds.items()):
                if gw == g:
                    self._unregister(fd)
            try:
                self.clients[g].reconnect()
            except OSError as exc:
                self._backoff[g] = min(self._backoff[g] * 2, 10.0)
                self._lost[g] = now + self._backoff[g]
                log.warning("gateway %d: reconnect failed (%s); retrying in %.0f s", g, exc,
                            self._backoff[g])
                continue
            self.report.reconnects += 1
            self._register(g)

    def unacked(self) -> int:
        """Messages handed to paho that the broker has not acknowledged yet."""
        return sum(self._unacked)

    def close(self, timeout: float = 30.0) -> TransportReport:
        """Wait for outstanding PUBACKs (at most `timeout` s), then disconnect every client."""
        deadline = time.monotonic() + timeout
        while self.unacked() and time.monotonic() < deadline:
            self.pump(0.05)
        self._closing = True
        for g, client in enumerate(self.clients):
            if self._connected[g]:
                client.disconnect()
        end = time.monotonic() + 2.0
        while any(c.want_write() for c in self.clients) and time.monotonic() < end:
            self.pump(0.02)
        for fd in list(self._fds):
            self._unregister(fd)
        self.report.unacked = self.unacked()
        return self.report
