"""The memory benchmark feeds the recording hour by hour of simulated time."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from bench.memory_bench import HOUR_MS, hours_of

START = 1_795_219_200_000  # 2026-11-21T00:00:00Z


def test_messages_are_grouped_by_simulated_hour(tmp_path: Path) -> None:
    rows = [("2026-11-21T00:00:00Z", "a"), ("2026-11-21T00:59:59Z", "b"),
            ("2026-11-21T01:00:00Z", "c"), ("2026-11-21T03:10:00Z", "d")]
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps({
        "topic": f"city/bletchley/water/{sid}", "sim_time": at,
        "payload_b64": base64.b64encode(json.dumps({"sensor_id": sid}).encode()).decode()}) + "\n"
        for at, sid in rows))
    hours = list(hours_of(path, START))
    assert [[d.topic.rsplit("/", 1)[1] for d in hour] for hour in hours] == [
        ["a", "b"], ["c"], [], ["d"]]
    assert [d.token for hour in hours for d in hour] == [0, 1, 2, 3]
    assert HOUR_MS == 3_600_000


def test_a_message_behind_the_hour_being_gathered_joins_it(tmp_path: Path) -> None:
    rows = [("2026-11-21T01:00:00Z", "a"), ("2026-11-21T00:30:00Z", "b"),
            ("2026-11-21T02:00:00Z", "c")]
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps({
        "topic": f"city/bletchley/water/{sid}", "sim_time": at,
        "payload_b64": base64.b64encode(b"{}").decode()}) + "\n" for at, sid in rows))
    assert [[d.topic.rsplit("/", 1)[1] for d in hour] for hour in hours_of(path, START)] == [
        [], ["a", "b"], ["c"]]
