"""Fuzzing the whole ingest path: generated messages published over real MQTT as the gateway,
through `citystream ingest`, into real Kafka. Ingest never dies, and every message the broker
accepted ends in Kafka: each of its readings in `telemetry.<kind>` or in the dead-letter topic,
per topic exactly as many as the decoder accounts for. (Topics MQTT cannot carry, with `+`, `#`
or NUL, are left to the decoder fuzzing in tests/unit; the broker refuses city/alerts/... to the
gateway, which the publisher is told: those are checked to be refused, not to arrive. Control
characters and Unicode non-characters in a topic make Mosquitto drop the connection as a
malformed packet, so they are left out too.)

Budget: at most CITYSTREAM_FUZZ_INGEST_EXAMPLES (default 120) hypothesis examples of up to
12 messages, and no new example after CITYSTREAM_FUZZ_BUDGET_S (default 60) seconds."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from ingest.decode import decode
from tests.integration.helpers import Lane, read_kafka, wait_for
from tests.unit.ingest.test_decode_fuzz import mutated
from tests.unit.ingest.test_decode_properties import json_values

pytestmark = [pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]  # the lane: buckets

EXAMPLES = int(os.environ.get("CITYSTREAM_FUZZ_INGEST_EXAMPLES", "120"))
BUDGET_S = float(os.environ.get("CITYSTREAM_FUZZ_BUDGET_S", "60"))
KINDS = ("water", "energy", "traffic", "shuttle")

level = st.one_of(
    st.sampled_from(["central-mk", "bletchley", "water", "traffic", "shuttle", "energy",
                     "s-1", "", "alerts", "UPPER", "a b", "é", "$x", "../..", "x" * 70]),
    st.text(st.characters(exclude_characters="+#/", exclude_categories=("Cc", "Cs", "Cn")),
            max_size=10))
topics = st.one_of(
    st.builds(lambda d, k, s: f"city/{d}/{k}/{s}", level, st.sampled_from(KINDS), level),
    st.lists(level, min_size=0, max_size=5).map(lambda parts: "/".join(["city", *parts])))
payloads = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda doc: json.dumps(doc).encode("utf-8", "surrogatepass")),
    mutated().map(lambda message: message[1]))
messages = st.lists(st.tuples(topics, payloads), min_size=1, max_size=12)


class Publisher:
    """Publishes QoS 1 and records the broker's PUBACK reason for each message."""

    def __init__(self, lane: Lane) -> None:
        gateway = lane.stack.client_info()["mqtt"]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(gateway["username"], gateway["password"])
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.acks: dict[int, bool] = {}
        self.lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(gateway["host"], gateway["port"])
        self.client.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.lock:
            self.acks[mid] = not rc.is_failure

    def publish(self, batch: list[tuple[str, bytes]]) -> list[bool]:
        """Publish and wait for the PUBACKs: whether the broker accepted each message."""
        mids = [self.client.publish(topic, payload, qos=1).mid for topic, payload in batch]
        wait_for(lambda: all(m in self.acks for m in mids), 60, interval=0.02, what="PUBACKs")
        with self.lock:
            return [self.acks.pop(m) for m in mids]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_whatever_is_published_ends_in_kafka(lane: Lane) -> None:
    ingest = lane.ingest()
    publisher = Publisher(lane)
    expected: Counter[str] = Counter()  # topic -> readings + dead letters the decoder makes
    refused: list[str] = []
    deadline = time.monotonic() + BUDGET_S
    sent = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=messages)
    def publish(batch: list[tuple[str, bytes]]) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return
        now = int(time.time() * 1000)
        for (topic, payload), accepted in zip(batch, publisher.publish(batch), strict=True):
            sent += 1
            if not accepted:
                refused.append(topic)
                continue
            out = decode(topic, payload, now)
            expected[topic] += len(out.readings) + len(out.dead_letters)

    try:
        publish()
    finally:
        publisher.close()
    assert sent >= 100, f"only {sent} messages published"
    # the ACL's `deny city/alerts/#` covers city/alerts itself too (`#` matches the parent)
    assert all(t == "city/alerts" or t.startswith("city/alerts/") for t in refused), refused

    prefix = lane.prefix
    got: Counter[str] = Counter()

    def arrived() -> bool:
        raw = read_kafka(lane.stack.client_info()["kafka"]["bootstrap"],
                         [*(f"{prefix}telemetry.{k}" for k in KINDS),
                          f"{prefix}telemetry.deadletter"], timeout=60)
        got.clear()
        for topic, records in raw.items():
            for _key, value in records:
                if topic.endswith(".deadletter"):
                    got[json.loads(value)["topic"]] += 1
                    continue
                for r in json.loads(value):
                    got[f"city/{r['district']}/{r['kind']}/{r['sensor_id']}"] += 1
        return sum(got.values()) >= sum(expected.values())

    wait_for(arrived, 120, interval=2, what="every fuzzed message in Kafka")
    assert got == expected, {t: (got[t], expected[t]) for t in set(got) | set(expected)
                             if got[t] != expected[t]}
    assert ingest.proc is not None and ingest.proc.poll() is None, ingest.tail()
    print(f"{sent} fuzzed messages, {sum(expected.values())} readings and dead letters, "
          f"{len(refused)} refused by the broker (city/alerts)")
