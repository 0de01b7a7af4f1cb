"""`citystream ingest` against the real Mosquitto and Kafka: nothing lost, every rejection
explained, across crashes, broker restarts, Kafka outages and two processes on one share."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.stack import Stack
from tests.integration.helpers import (
    Message,
    gateway_publisher,
    kafka_contents,
    reading_ids,
    wait_for,
    water_messages,
)
from tests.support import IngestProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.kafka]


def ids_in_kafka(stack: Stack, tag: str) -> Counter[tuple[str, int]]:
    dump = kafka_contents(stack)
    return Counter((r["sensor_id"], r["ts_ms"]) for r in dump.readings
                   if r["sensor_id"].startswith(f"wm{tag}-"))


def wait_all_in_kafka(stack: Stack, tag: str, expected: list[tuple[str, int]],
                      timeout: float = 90.0) -> Counter[tuple[str, int]]:
    want = set(expected)
    seen: Counter[tuple[str, int]] = Counter()

    def complete() -> bool:
        nonlocal seen
        seen = ids_in_kafka(stack, tag)
        return want <= set(seen)

    try:
        wait_for(complete, timeout, interval=2.0, what="every published reading in Kafka")
    except AssertionError:
        missing = want - set(seen)
        raise AssertionError(f"{len(missing)} of {len(want)} readings missing from Kafka, "
                             f"e.g. {sorted(missing)[:5]}") from None
    return seen


@pytest.fixture
def ingest0(stack: Stack, tmp_path: Path) -> Iterator[IngestProcess]:
    proc = IngestProcess(stack, "0", log_dir=tmp_path).start()
    yield proc
    proc.stop()


def test_valid_readings_in_kafka_and_rejections_dead_lettered(
        stack: Stack, ingest0: IngestProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    valid = water_messages(300, district="bletchley", sensors=30, tag=tag)
    sensor = f"wm{tag}-0000"
    topic = f"city/bletchley/water/{sensor}"
    now = int(time.time() * 1000)
    bad = {
        "invalid_json": Message(topic, b'{"sensor_id": '),
        "sensor_mismatch": Message(topic, json.dumps(
            {"sensor_id": f"wm{tag}-9999", "ts": now, "volume_m3": 1.0}).encode()),
        "out_of_range": Message(topic, json.dumps(
            {"sensor_id": sensor, "ts": now, "volume_m3": -1.0}).encode()),
        "schema": Message(topic, json.dumps({"sensor_id": sensor, "ts": now}).encode()),
        "bad_topic": Message(f"city/bletchley/water/{sensor}/extra", json.dumps(
            {"sensor_id": sensor, "ts": now, "volume_m3": 1.0}).encode()),
        "future_timestamp": Message(topic, json.dumps(
            {"sensor_id": sensor, "ts": now + 3_600_000, "volume_m3": 1.0}).encode()),
    }
    pub = gateway_publisher(stack)
    try:
        pub.publish_all([*valid, *bad.values()])
    finally:
        pub.close()
    seen = wait_all_in_kafka(stack, tag, reading_ids(valid))
    assert set(seen) == set(reading_ids(valid)), "Kafka holds readings that were never published"

    def dead_for_tag() -> dict[str, dict[str, object]]:
        out = {}
        for d in kafka_contents(stack).dead_letters:
            if tag in d["topic"]:
                out[d["reason"]] = d
        return out

    wait_for(lambda: set(dead_for_tag()) == set(bad), 30, what="every rejection dead-lettered")
    dead = dead_for_tag()
    for reason, msg in bad.items():
        assert dead[reason]["topic"] == msg.topic
        assert base64.b64decode(str(dead[reason]["raw"])) == msg.payload
        assert dead[reason]["received_at_ms"] >= now - 60_000
    assert dead["schema"]["field"] == "volume_m3"
    dump = kafka_contents(stack)
    keys = {key for key, r in zip(dump.keys, dump.readings, strict=True)
            if r["sensor_id"].startswith(f"wm{tag}-")}
    assert keys == {("telemetry.water", "bletchley")}


def _publish_in_background(stack: Stack, messages: list[Message],
                           per_second: float | None = None) -> threading.Thread:
    """Publish from a thread; with `per_second`, paced in chunks so the stream lasts."""
    def run() -> None:
        pub = gateway_publisher(stack)
        try:
            if per_second is None:
                pub.publish_all(messages, timeout=300)
                return
            chunk = max(1, int(per_second / 10))
            for i in range(0, len(messages), chunk):
                started = time.monotonic()
                pub.publish_all(messages[i:i + chunk], timeout=300)
                time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
        finally:
            pub.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_kill_9_mid_stream_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    messages = water_messages(20_000, district="wolverton", sensors=200, tag=tag)
    ingest = IngestProcess(stack, "0", log_dir=tmp_path).start()
    try:
        # paced: the stream lasts about 10 s, however long reading Kafka back takes
        publisher = _publish_in_background(stack, messages, per_second=2000)
        wait_for(lambda: len(ids_in_kafka(stack, tag)) > 2000, 60, interval=0.3,
                 what="ingest to be mid-stream")
        ingest.kill()
        killed_at = len(ids_in_kafka(stack, tag))
        assert killed_at < len(messages), "stream finished before the kill; publish more"
        time.sleep(1.0)
        ingest = IngestProcess(stack, "0", log_dir=tmp_path).start()
        publisher.join(300)
        seen = wait_all_in_kafka(stack, tag, reading_ids(messages), timeout=120)
    finally:
        ingest.stop()
    assert set(seen) == set(reading_ids(messages))
    print(f"killed after {killed_at} readings; redelivered duplicates: "
          f"{sum(seen.values()) - len(seen)}")


def test_mosquitto_restart_and_kafka_outage_lose_nothing(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    first = water_messages(3000, district="kents-hill", sensors=100, tag=tag)
    second = water_messages(3000, district="kents-hill", sensors=100, tag=tag,
                            start_ms=int(time.time() * 1000) - 1_000_000)
    ingest = IngestProcess(stack, "0", log_dir=tmp_path).start()
    try:
        pub = gateway_publisher(stack)
        pub.publish_all(first)
        pub.close()
        # The broker restarts while messages may still be queued for ingest.
        stack.stop_service("mosquitto")
        stack.start_service("mosquitto")
        wait_for(lambda: "MQTT connected" in ingest.tail(200).split("disconnected")[-1], 60,
                 what="ingest to reconnect to Mosquitto")
        # Kafka goes away while readings keep arriving; the broker must hold them.
        stack.stop_service("kafka")
        pub = gateway_publisher(stack)
        pub.publish_all(second)
        pub.close()
        time.sleep(10)
        stack.start_service("kafka")
        seen = wait_all_in_kafka(stack, tag, reading_ids(first + second), timeout=180)
    finally:
        ingest.stop()
    assert set(seen) == set(reading_ids(first + second))


def test_two_processes_split_the_load(stack: Stack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    messages = water_messages(4000, district="newport-pagnell", sensors=100, tag=tag)
    first = IngestProcess(stack, "0", log_dir=tmp_path).start()
    second = IngestProcess(stack, "1", log_dir=tmp_path,
                           extra_env={"CITYSTREAM_INGEST_LEAVE_ON_EXIT": "1"}).start()
    try:
        pub = gateway_publisher(stack)
        pub.publish_all(messages)
        pub.close()
        seen = wait_all_in_kafka(stack, tag, reading_ids(messages))
    finally:
        first.stop()
        second.stop()
    assert set(seen) == set(reading_ids(messages))
    shares = [_accepted_in_log(p) for p in (first, second)]
    assert all(share > 0 for share in shares), f"load not split: {shares}"
    print(f"ingest 0 took {shares[0]}, ingest 1 took {shares[1]} readings")


def _accepted_in_log(proc: IngestProcess) -> int:
    best = 0
    for line in proc.log.read_text().splitlines():
        if f"ingest {proc.instance}: " in line and "readings accepted" in line:
            best = max(best, int(line.split("messages, ")[1].split(" readings")[0]))
    return best


def test_a_sensor_cannot_publish_as_another(stack: Stack, ingest0: IngestProcess) -> None:
    tag = uuid.uuid4().hex[:6]
    me, other = f"wm{tag}-0001", f"wm{tag}-0002"
    stack.add_mqtt_user(me, "sensor-secret")
    time.sleep(0.5)
    mqtt = stack.client_info()["mqtt"]
    now = int(time.time() * 1000)

    def pub(topic_sensor: str, payload_sensor: str, ts: int) -> subprocess.CompletedProcess[str]:
        body = json.dumps({"sensor_id": payload_sensor, "ts": ts, "volume_m3": 5.0})
        return subprocess.run(
            ["mosquitto_pub", "-h", mqtt["host"], "-p", str(mqtt["port"]), "-V", "mqttv5",
             "-q", "1", "-u", me, "-P", "sensor-secret", "-i", me,
             "-t", f"city/bletchley/water/{topic_sensor}", "-m", body],
            capture_output=True, text=True, timeout=10)

    own = pub(me, me, now - 1000)
    assert own.returncode == 0, own.stderr
    as_other = pub(other, other, now - 2000)        # the broker's ACL refuses the topic
    spoof = pub(me, other, now - 3000)              # allowed topic, payload claims another id
    assert spoof.returncode == 0, spoof.stderr
    wait_for(lambda: (me, now - 1000) in ids_in_kafka(stack, tag), 30, what="own reading")

    def spoof_dead_lettered() -> bool:
        return any(d["reason"] == "sensor_mismatch" and d["topic"].endswith(me)
                   for d in kafka_contents(stack).dead_letters)

    wait_for(spoof_dead_lettered, 30, what="the spoofed reading in the dead letter")
    seen = ids_in_kafka(stack, tag)
    assert (other, now - 2000) not in seen, "a sensor published on another sensor's topic"
    assert (other, now - 3000) not in seen
    print("ACL refusal:", as_other.returncode, as_other.stderr.strip())


def test_seeded_simulation_lands_exactly_as_recorded(stack: Stack, tmp_path: Path) -> None:
    """Kafka holds exactly the recording's valid readings, and the dead-letter topic exactly
    its invalid ones, each with the reason the recording predicts."""
    import os
    import sys

    from tests.integration.helpers import city_kinds, read_kafka
    from tests.oracle import parse_ts
    from tests.support import ROOT

    tag = uuid.uuid4().hex[:8]
    env = {"CITYSTREAM_KAFKA__TOPIC_PREFIX": f"s{tag}.", "CITYSTREAM_MQTT__SHARED_GROUP": f"s{tag}"}
    ingest = IngestProcess(stack, "0", log_dir=tmp_path, extra_env=env).start()
    record = tmp_path / "sim.jsonl"
    try:
        gateway = stack.client_info()["mqtt"]
        start_ms = (int(time.time()) // 3600 - 20) * 3_600_000
        done = subprocess.run(
            [sys.executable, "-m", "citystream", "sim", "--no-progress", "--seed", "11",
             "--speed", "0", "--start", str(start_ms), "--count", "6000", "--batch", "3",
             "--faults", "0.01", "--fault", "duplicate=0.02", "--record", str(record)],
            env={**os.environ, **stack.service_env(), **env,
                 "CITYSTREAM_MQTT__USERNAME": gateway["username"],
                 "CITYSTREAM_MQTT__PASSWORD": gateway["password"]},
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        valid: Counter[tuple[str, str, int]] = Counter()
        invalid: Counter[tuple[str, str]] = Counter()
        for row in map(json.loads, record.read_text().splitlines()):
            for i, expected in enumerate(row["expected"]):
                if expected["valid"]:
                    payload = json.loads(base64.b64decode(row["payload_b64"]))
                    item = payload[i] if isinstance(payload, list) else payload
                    valid[(row["topic"], item["sensor_id"], parse_ts(item["ts"]))] += 1
                else:
                    invalid[(row["topic"], expected["reason"])] += 1
        topics = [f"s{tag}.telemetry.{k}" for k in city_kinds()]
        bootstrap = stack.client_info()["kafka"]["bootstrap"]

        def landed() -> tuple[Counter[tuple[str, str, int]], Counter[tuple[str, str]]]:
            raw = read_kafka(bootstrap, [*topics, f"s{tag}.telemetry.deadletter"])
            got_valid: Counter[tuple[str, str, int]] = Counter()
            got_dead: Counter[tuple[str, str]] = Counter()
            for topic, records in raw.items():
                for _key, value in records:
                    if topic.endswith("deadletter"):
                        dead = json.loads(value)
                        got_dead[(dead["topic"], dead["reason"])] += 1
                    else:
                        for r in json.loads(value):
                            topic_of = f"city/{r['district']}/{r['kind']}/{r['sensor_id']}"
                            got_valid[(topic_of, r["sensor_id"], r["ts_ms"])] += 1
            return got_valid, got_dead

        def complete() -> bool:
            got_valid, got_dead = landed()
            return set(got_valid) >= set(valid) and sum(got_dead.values()) >= sum(
                invalid.values())

        wait_for(complete, 120, interval=2, what="every recorded message in Kafka")
        got_valid, got_dead = landed()
    finally:
        ingest.stop()
    assert set(got_valid) == set(valid)
    assert got_dead == invalid
    assert sum(invalid.values()) > 20, "the run injected too few faults to prove anything"
    print(f"{sum(valid.values())} valid readings and {sum(invalid.values())} rejections "
          f"({len(set(r for _, r in invalid))} reasons) as recorded")
