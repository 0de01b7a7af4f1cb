"""MQTT: the one place a paho-mqtt client is built and given its credentials.

Every client citystream opens is paho-mqtt 2.x, callback API v2, MQTT 5, with a username and
password when given and TLS when a CA file is given (the broker's certificate is then verified,
`ssl.CERT_REQUIRED`). `mqtt_client` builds one from explicit credentials, `client_for` from
`MqttSettings` (`CITYSTREAM_MQTT__USERNAME`, `__PASSWORD`, `__TLS_CA`). The caller passes the
client class (paho's `Client` or a subclass of it), picks the client id, sets its callbacks,
queue limits and reconnect delays, and connects: ingest's `MqttSource`, the worker's
`AlertPublisher`, the simulator's gateways (`MqttTransport`) and `citystream check`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from models.settings import MqttSettings

C = TypeVar("C", bound=mqtt.Client)


def mqtt_client(client_class: type[C], client_id: str, *, username: str | None = None,
                password: str | None = None, tls_ca: Path | None = None,
                **options: Any) -> C:
    """A new, unconnected `client_class` (MQTT 5, callback API v2) called `client_id`;
    `options` go to its constructor (e.g. `userdata`, `manual_ack`)."""
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id,
                          protocol=mqtt.MQTTv5, **options)
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
    return client


def client_for(settings: MqttSettings, client_class: type[C], client_id: str,
               **options: Any) -> C:
    """`mqtt_client` with the credentials and CA file of `settings` (an unset or empty
    username means no credentials)."""
    return mqtt_client(
        client_class, client_id, username=settings.username or None,
        password=settings.password.get_secret_value() if settings.password else None,
        tls_ca=settings.tls_ca or None, **options)
