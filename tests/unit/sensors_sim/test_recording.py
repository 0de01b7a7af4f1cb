"""The --record format of docs/recording.md."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from sensors_sim import faults
from sensors_sim.recording import Recorder, iso_utc, read_recording
from tests.unit.sensors_sim.helpers import simulate


def test_lines_have_exactly_the_documented_fields(tmp_path: Path) -> None:
    msgs = simulate(400, seed=3, batch=2, fault_rates=dict.fromkeys(faults.FAULT_KINDS, 0.05))
    path = tmp_path / "run.jsonl"
    with Recorder(path) as rec:
        for m in msgs:
            rec.write(m)
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(msgs)
    for i, (line, m) in enumerate(zip(lines, msgs, strict=True)):
        d = json.loads(line)
        assert list(d) == ["seq", "topic", "payload_b64", "qos", "sim_time", "faults",
                           "expected"]
        assert d["seq"] == i and d["qos"] == 1 and d["topic"] == m.topic
        assert base64.b64decode(d["payload_b64"], validate=True) == m.payload
        assert d["sim_time"] == iso_utc(m.sim_time_ms) and d["sim_time"].endswith("Z")
        assert d["faults"] == list(m.faults)
        assert d["expected"] == [{"valid": e.valid, "reason": e.reason,
                                  "duplicate": e.duplicate} for e in m.expected]
    back = list(read_recording(path))
    assert [(r.topic, r.payload, r.faults, r.expected, r.sim_time_ms) for r in back] == [
        (m.topic, m.payload, m.faults, m.expected, m.sim_time_ms) for m in msgs]


def test_iso_utc_shows_milliseconds_only_when_there_are_some() -> None:
    assert iso_utc(1795219200000) == "2026-11-21T00:00:00Z"
    assert iso_utc(1795219200123) == "2026-11-21T00:00:00.123Z"
