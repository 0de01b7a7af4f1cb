"""A record on `telemetry.<kind>` that the worker cannot take is kept on `sink.deadletter` with
its reason and the raw bytes, and the worker goes on with the next records."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from models.topics import Topics
from tests.integration.helpers import Lane, read_kafka, wait_for
from tests.support import influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.influxdb, pytest.mark.mqtt]


def test_an_unreadable_record_is_dead_lettered_and_the_worker_goes_on(lane: Lane) -> None:
    topics = Topics(lane.prefix)
    bootstrap = lane.stack.client_info()["kafka"]["bootstrap"]
    lane.worker()
    start = int(time.time() // 900 * 900 * 1000) - 3 * 3_600_000
    good = [{"district": "central-mk", "kind": "water", "sensor_id": f"wm-{i % 3}",
             "ts_ms": start + i * 60_000, "volume_m3": 1.0 + i} for i in range(60)]
    garbage = b'[{"district": "central-mk", "kind": "water", "sensor_id": 7}]'

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.telemetry["water"], garbage, key=b"central-mk")
            await producer.send_and_wait(topics.telemetry["water"],
                                         json.dumps(good).encode(), key=b"central-mk")
        finally:
            await producer.stop()

    asyncio.run(produce())

    def dead() -> list[dict[str, object]]:
        records = read_kafka(bootstrap, [topics.sink_deadletter])[topics.sink_deadletter]
        return [json.loads(value) for _key, value in records]

    # two letters, in either order: the KPI engine keeps the whole record, the raw sink the
    # reading at index 0 of its array
    wait_for(lambda: len(dead()) >= 2, 90, what="dead letters from the engine and the sink")
    letters = dead()
    assert len(letters) == 2, letters
    assert all(letter["reason"] == "undecodable" for letter in letters)
    assert all(letter["topic"] == topics.telemetry["water"] for letter in letters)
    engine = [letter for letter in letters if "index" not in letter]
    sink = [letter for letter in letters if letter.get("index") == 0]
    assert len(engine) == 1 and len(sink) == 1, letters
    assert base64.b64decode(str(engine[0]["raw"])) == garbage
    assert json.loads(base64.b64decode(str(sink[0]["raw"]))) == json.loads(garbage)[0]
    # the good record after it was processed: its closed windows are KPI points
    wait_for(lambda: influx_points(lane.stack, lane.kpi_bucket, ("water_kpi",)), 120,
             what="water KPI points after the bad record")

