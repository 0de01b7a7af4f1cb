"""The bad-input corpus through the real pipeline: published over MQTT as a gateway, every
reading ends in Kafka or in the dead-letter topic with the corpus's reason, field and index;
accepted nasties reach InfluxDB exactly as sent (no line-protocol injection: the stored tags
equal the input and no extra point, tag or field appears); the processes survive it all and
the KPIs still equal the oracle. Cases MQTT cannot carry are decoder-only (tests/unit)."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from typing import Any

import pytest

from tests.bad_input import MAX_PAYLOAD, Case, load
from tests.integration.faults import pipeline_counters
from tests.integration.helpers import (
    Lane,
    Message,
    gateway_publisher,
    oracle_points,
    read_kafka,
    wait_for,
)
from tests.support import influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]

KINDS = ("water", "energy", "traffic", "shuttle")
INSTANCE = "edge 1,zone=a=b"  # an ingest name full of line-protocol specials (a tag)


def _kafka(lane: Lane) -> tuple[dict[str, list[dict[str, Any]]], Counter[str]]:
    """Dead letters by topic, and readings by sensor_id, currently in the lane's topics."""
    raw = read_kafka(lane.stack.client_info()["kafka"]["bootstrap"],
                     [*(f"{lane.prefix}telemetry.{k}" for k in KINDS),
                      f"{lane.prefix}telemetry.deadletter"], timeout=60)
    dead: dict[str, list[dict[str, Any]]] = {}
    for _k, value in raw.pop(f"{lane.prefix}telemetry.deadletter"):
        letter = json.loads(value)
        dead.setdefault(letter["topic"], []).append(letter)
    readings: Counter[str] = Counter()
    for records in raw.values():
        for _k, value in records:
            readings.update(r["sensor_id"] for r in json.loads(value))
    return dead, readings


def _oracle_rows(cases: list[Case]) -> list[dict[str, Any]]:
    """Recording rows of the accepted readings only, one per row (the oracle wants arrays of
    objects; the corpus has arrays with a bare number in them)."""
    rows = []
    for case in cases:
        if not case.accepted:
            continue
        body = json.loads(case.payload)
        items = body if isinstance(body, list) else [body]
        for item, expect in zip(items, case.expect, strict=True):
            if expect.get("accepted"):
                rows.append({"seq": len(rows), "topic": case.topic,
                             "payload_b64": base64.b64encode(json.dumps(item).encode()).decode(),
                             "expected": [{"valid": True, "reason": None, "duplicate": False}]})
    return rows


def test_corpus_through_the_pipeline(lane: Lane) -> None:
    ingest = lane.ingest(INSTANCE)
    lane.worker()
    cases = [c for c in load(int(time.time() * 1000)) if c.via == "mqtt"]
    publisher = gateway_publisher(lane.stack)
    try:
        publisher.publish_all([Message(c.topic, c.payload) for c in cases])
    finally:
        publisher.close()

    def settled() -> bool:
        dead, readings = _kafka(lane)
        return (sum(map(len, dead.values())) >= sum(len(c.rejections) for c in cases)
                and sum(readings.values()) >= sum(c.accepted for c in cases))

    wait_for(settled, 120, interval=2, what="every corpus message in Kafka")
    dead, readings = _kafka(lane)
    problems = []
    for case in cases:
        letters = dead.pop(case.topic, [])
        got = sorted(((d["reason"], d["field"], d["index"]) for d in letters), key=str)
        if got != sorted(case.rejections, key=str):
            problems.append(f"{case.name}: dead letters {got} != {case.rejections}")
        for d in letters:
            raw = base64.b64decode(d["raw"])
            if d["index"] is None and raw != case.payload[:MAX_PAYLOAD]:
                problems.append(f"{case.name}: raw is not the payload")
        if case.accepted and readings[case.sensor] != case.accepted:
            problems.append(f"{case.name}: {readings[case.sensor]} readings in Kafka, "
                            f"{case.accepted} expected")
    assert not dead, f"dead letters for no case: {list(dead)}"
    assert not problems, "\n".join(problems)
    accepted = {c.sensor: c for c in cases if c.accepted}
    assert set(readings) == set(accepted), "Kafka holds readings of no accepted case"

    lane.wait_equal(oracle_points(_oracle_rows(cases)), timeout=240)
    points = influx_points(lane.influx, lane.telemetry_bucket, KINDS)
    assert len(points) == sum(c.accepted for c in cases), "extra or missing raw points"
    by_sensor: dict[str, list[tuple[str, dict[str, str], dict[str, Any]]]] = {}
    for (measurement, tags, _ts), fields in points.items():
        by_sensor.setdefault(dict(tags)["sensor_id"], []).append(
            (measurement, dict(tags), fields))
    for sensor, case in accepted.items():
        assert len(by_sensor[sensor]) == case.accepted, case.name
        if not case.stored:
            continue
        measurement, tags, fields = by_sensor[sensor][0]
        want_tags = {"district": case.topic.split("/")[1], "sensor_id": sensor,
                     **case.stored.get("tags", {})}
        assert measurement == case.stored["measurement"], case.name
        assert tags == want_tags, case.name
        assert fields == case.stored["fields"], case.name
        assert {type(v) for v in fields.values()} <= {float, int, str, bool}

    counters = pipeline_counters(lane)["ingest"]
    published = sum(len(c.expect) for c in cases)
    rejected = sum(len(c.rejections) for c in cases)
    assert counters["received"] == published and counters["rejected"] == rejected, counters
    instances = {dict(tags)["instance"] for (_m, tags, _t) in
                 influx_points(lane.influx, lane.kpi_bucket, ("pipeline",))}
    assert INSTANCE in instances, instances
    assert ingest.proc is not None and ingest.proc.poll() is None
    assert all(p.proc is not None and p.proc.poll() is None for p in lane.processes)
