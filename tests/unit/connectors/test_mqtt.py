"""The MQTT client factory: MQTT 5, the caller's class and id, credentials only when given."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from pydantic import SecretStr

from connectors.mqtt import client_for, mqtt_client
from models.settings import MqttSettings


class Custom(mqtt.Client):
    pass


def test_a_client_from_settings_carries_their_credentials() -> None:
    settings = MqttSettings(username="svc", password=SecretStr("pw"))
    client = client_for(settings, Custom, "citystream-test", userdata=7)
    assert type(client) is Custom and client.protocol == mqtt.MQTTv5
    assert (client.username, client.password, client.user_data_get()) == ("svc", "pw", 7)


def test_no_username_means_no_credentials() -> None:
    assert client_for(MqttSettings(username=""), mqtt.Client, "c").username is None
    assert mqtt_client(mqtt.Client, "c", password="ignored").username is None
