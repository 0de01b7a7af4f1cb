"""End to end: a seeded simulation with faults through MQTT, ingest, Kafka, the Faust worker and
the sink; every KPI point in InfluxDB must equal the offline oracle's, point for point, also
after a worker is killed, with two workers, across an InfluxDB outage and on a replay."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Lane, Message, gateway_publisher, oracle_points, start_of_run
from tests.support import influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]

SIM = ["--seed", "7", "--speed", "0", "--gateways", "4"]
FAULTS = ["--faults", "0.004", "--fault", "duplicate=0.02", "--fault", "reorder=0.02",
          "--fault", "meter_reset=0.002"]


def test_kpis_in_influxdb_equal_the_oracle(lane: Lane, tmp_path: Path) -> None:
    lane.ingest()
    lane.worker()
    record = tmp_path / "run.jsonl"
    lane.simulate(*SIM, *FAULTS, "--start", start_of_run(), "--count", "20000", record=record)
    want = oracle_points(record)
    assert len(want) > 100
    lane.wait_equal(want)
    print(f"{len(want)} KPI points equal the oracle")
    counters = influx_points(lane.stack, lane.kpi_bucket, ("pipeline",))
    latest: dict[str, dict[str, Any]] = {}
    for (_m, tags, _ts), fields in sorted(counters.items(), key=lambda kv: kv[0][2]):
        latest[dict(tags)["component"]] = fields
    assert {"ingest", "worker"} <= set(latest), latest
    ingest = latest["ingest"]
    assert ingest["received"] == ingest["accepted"] + ingest["rejected"] > 0
    assert all(isinstance(v, int) for f in latest.values() for v in f.values())
    assert latest["worker"]["written"] > 0


def test_worker_killed_and_two_workers_still_equal_the_oracle(lane: Lane,
                                                              tmp_path: Path) -> None:
    lane.ingest()
    first = lane.worker("0")
    second = lane.worker("1")
    record = tmp_path / "run.jsonl"
    sim = threading.Thread(target=lane.simulate, args=(
        *SIM, *FAULTS, "--start", start_of_run(), "--count", "30000", "--rate", "3000"),
        kwargs={"record": record})
    sim.start()
    time.sleep(5)
    second.kill()                        # SIGKILL mid-run: the first worker takes over
    time.sleep(8)
    first.kill()                         # and it dies too, then comes back
    lane.processes.remove(first)
    first = lane.worker("0")
    sim.join(300)
    lane.wait_equal(oracle_points(record), timeout=300)


def test_influxdb_down_for_a_minute(lane: Lane, tmp_path: Path) -> None:
    lane.ingest()
    lane.worker()
    record = tmp_path / "run.jsonl"
    sim = threading.Thread(target=lane.simulate, args=(
        *SIM, *FAULTS, "--start", start_of_run(), "--count", "20000", "--rate", "2000"),
        kwargs={"record": record})
    sim.start()
    time.sleep(3)
    lane.stack.stop_service("influxdb")
    time.sleep(60)
    lane.stack.start_service("influxdb")
    sim.join(300)
    lane.wait_equal(oracle_points(record), timeout=300)


def test_replaying_the_same_input_writes_the_same_points(lane: Lane, tmp_path: Path) -> None:
    lane.ingest()
    lane.worker()
    record = tmp_path / "run.jsonl"
    lane.simulate(*SIM, "--start", start_of_run(), "--count", "8000", record=record)
    want = oracle_points(record)
    lane.wait_equal(want)
    replay = [Message(row["topic"], base64.b64decode(row["payload_b64"]))
              for row in map(json.loads, record.read_text().splitlines())]
    publisher = gateway_publisher(lane.stack)
    try:
        publisher.publish_all(replay)
    finally:
        publisher.close()
    time.sleep(15)
    lane.wait_equal(want, timeout=60)


def test_alerts_reach_mqtt_and_influxdb(lane: Lane, tmp_path: Path) -> None:
    """Sensors that fall silent raise `silent` alerts: retained on city/alerts/<kind>/<entity>
    and written to the `alert` measurement, with the contract's field types."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    lane.ingest()
    lane.worker()
    record = tmp_path / "run.jsonl"
    lane.simulate(*SIM, "--fault", "silent=0.05", "--start", start_of_run(), "--count", "15000",
                  record=record)
    deadline = time.monotonic() + 180
    alerts: dict[Any, Any] = {}
    silent: list[tuple[dict[str, str], dict[str, Any]]] = []
    while time.monotonic() < deadline and not silent:
        alerts = influx_points(lane.stack, lane.kpi_bucket, ("alert",))
        silent = [(dict(tags), fields) for (_m, tags, _t), fields in alerts.items()
                  if dict(tags)["rule"] == "silent"]
        time.sleep(3)
    assert silent, f"no silent-sensor alert among {sorted({dict(k[1])['rule'] for k in alerts})}"
    tags, fields = silent[0]
    assert isinstance(fields["active"], bool) and isinstance(fields["message"], str)
    assert isinstance(fields["value"], float) and isinstance(fields["threshold"], float)

    env = lane.stack.service_env()
    got: list[mqtt.MQTTMessage] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(env["CITYSTREAM_MQTT__USERNAME"], env["CITYSTREAM_MQTT__PASSWORD"])
    client.on_connect = lambda c, *_: c.subscribe(
        f"city/alerts/{tags['kind']}/{tags['entity']}", qos=1)
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client.connect(lane.stack.client_info()["mqtt"]["host"],
                   lane.stack.client_info()["mqtt"]["port"])
    client.loop_start()
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and not got:
            time.sleep(0.2)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got, "the retained alert is not on MQTT"
    body = json.loads(got[0].payload)
    assert got[0].retain
    assert {"kind", "entity", "rule", "value", "threshold", "message", "active"} <= set(body)
    assert body["entity"] == tags["entity"]
