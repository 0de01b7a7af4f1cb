"""Alerts out to MQTT: `city/alerts/<kind>/<entity>`, QoS 1, retained so a dashboard that
connects later sees each entity's current state."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from connectors.mqtt import client_for
from models.records import Alert
from models.settings import MqttSettings

log = logging.getLogger(__name__)


class AlertPublisher:
    """A paho client on its own network thread; `publish` never blocks the event loop."""

    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.settings = settings
        self.client = client_for(settings, mqtt.Client, client_id)
        self.client.reconnect_delay_set(1, 30)
        self.client.max_queued_messages_set(10_000)
        self.started = False

    def start(self) -> None:
        try:
            self.client.connect_async(self.settings.host, self.settings.port,
                                      keepalive=self.settings.keepalive_s)
            self.client.loop_start()
            self.started = True
        except OSError as exc:
            log.warning("alerts will not reach MQTT (%s:%s): %s", self.settings.host,
                        self.settings.port, exc)

    def publish(self, alert: Alert) -> None:
        if not self.started:
            return
        info = self.client.publish(alert.mqtt_topic, alert.to_json(), qos=1, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("alert %s/%s/%s not queued for MQTT: %s", alert.kind, alert.entity,
                        alert.rule, info.rc)

    def close(self) -> None:
        if self.started:
            self.client.disconnect()
            self.client.loop_stop()
