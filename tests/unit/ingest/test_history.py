"""Reading past messages from files (`ingest.history`): the JSON-line forms, the recording fast
path that must say what a full parse says, resuming at any message, and the partitions."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.decode import decode
from ingest.history import (
    BadInput,
    HistoryError,
    Inputs,
    Partitioner,
    Position,
    describe_inputs,
    plan_assignment,
    unit_of,
)
from models.city import load_city
from models.deadletter import Reason
from tests.history_data import CITY_FILE, record

TOPIC = "city/bletchley/water/wm-1"
READING = {"sensor_id": "wm-1", "ts": 1794787200000, "volume_m3": 12.5}


@pytest.fixture(autouse=True)
def _city() -> None:
    load_city(CITY_FILE)


def inputs_of(tmp_path: Path, lines: list[bytes], name: str = "in.jsonl") -> Inputs:
    path = tmp_path / name
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return Inputs(describe_inputs([path], None), None)


def messages(inputs: Inputs) -> list[Any]:
    return [(item.topic, inputs.message(item)) for item in inputs.items(Position())]


def test_the_json_line_forms_give_the_same_message(tmp_path: Path) -> None:
    payload = orjson.dumps(READING)
    lines = [
        orjson.dumps({"topic": TOPIC, "payload": READING}),
        orjson.dumps({"topic": TOPIC, "payload_b64": base64.b64encode(payload).decode()}),
        orjson.dumps({"topic": TOPIC, **READING}),
        orjson.dumps({**READING, "topic": TOPIC, "received_at": "2026-11-16T00:01:00Z"}),
        orjson.dumps({"topic": TOPIC, "payload": READING, "received_at_ms": 1794787260000}),
        b"   ",
    ]
    got = messages(inputs_of(tmp_path, lines))
    assert [topic for topic, _ in got] == [TOPIC] * 5
    assert [json.loads(m[0]) for _, m in got] == [READING] * 5
    assert [m[1] for _, m in got] == [None, None, None, 1794787260000, 1794787260000]


def test_lines_that_are_no_message_are_dead_letters_with_the_contract_reason(
        tmp_path: Path) -> None:
    lines = [b"{not json", b"[1, 2]", orjson.dumps({"payload": READING}),
             orjson.dumps({"topic": TOPIC, "payload": READING, "received_at": "yesterday"}),
             orjson.dumps({"topic": TOPIC, "payload_b64": "***"})]
    got = [m for _, m in messages(inputs_of(tmp_path, lines))]
    assert all(isinstance(m, BadInput) for m in got)
    assert [m.reason for m in got] == [Reason.INVALID_JSON, Reason.INVALID_JSON,
                                       Reason.BAD_TOPIC, Reason.SCHEMA, Reason.INVALID_JSON]
    assert got[3].field == "received_at"
    assert got[0].raw == b"{not json"


def test_a_nan_literal_is_non_finite_as_in_live_ingest(tmp_path: Path) -> None:
    line = b'{"topic": "city/bletchley/water/wm-1", "payload": {"sensor_id": "wm-1", ' \
           b'"ts": 1794787200000, "volume_m3": NaN}}'
    [(topic, (payload, _received))] = messages(inputs_of(tmp_path, [line]))
    decoded = decode(topic, payload, 1794787200000)
    assert [d.reason for d in decoded.dead_letters] == [Reason.NON_FINITE]


def test_a_recording_line_reads_as_its_full_parse(tmp_path: Path) -> None:
    """The fast path (no JSON parse) must agree with the envelope reading of the same line,
    for every line of a real recording and for lines it must not take."""
    path = record(tmp_path / "rec.jsonl", 0.5)
    inputs = Inputs(describe_inputs([path], None), None)
    lines = path.read_bytes().splitlines()
    n = 0
    for item, line in zip(inputs.items(Position()), lines, strict=True):
        doc = orjson.loads(line)
        slow = inputs.message(item._replace(data=doc))
        assert inputs.message(item) == slow
        assert item.topic == doc["topic"]
        n += 1
    assert n > 1000
    kept = list(inputs.items(Position(), lambda topic: True))  # as a partition reads them
    assert all(type(item.data) is tuple for item in kept)
    assert [inputs.message(item) for item in kept] == [
        inputs.message(item) for item in inputs.items(Position())]
    head = (b'{"seq":1,"topic":"city/bletchley/water/wm-1","payload_b64":"e30=",'
            b'"qos":1,"sim_time":"2026-11-16T00:00:00Z"')
    odd = [head + b',"faults":[],"expected":',  # cut short
           head + b',"received_at":"x"}',  # received_at wins over sim_time
           head + b',"faults":[],"expected":[]}']
    got = [m for _, m in messages(inputs_of(tmp_path, odd, "odd.jsonl"))]
    assert isinstance(got[0], BadInput) and got[0].reason == Reason.INVALID_JSON
    assert isinstance(got[1], BadInput) and got[1].field == "received_at"
    assert got[2] == (b"{}", 1794787200000)
    # valid JSON the fast path must leave to the full parse, or read as it would
    odd = [head.replace(b"2026-11-16T00:00:00Z", b"yesterday") + b"}",  # not a time: schema
           head.replace(b"e30=", b"==") + b"}",
           head.replace(b"e30=", b"e30*") + b"}",  # not base64
           head.replace(b"e30=", b"e30") + b"}",  # not padded
           head.replace(b"bletchley", b"bletch ley") + b"}",
           head.replace(b"bletchley", b"bletch\\u0065ley") + b"}",
           head + b',"received_at_ms":1794787200001}']
    inputs = inputs_of(tmp_path, odd, "odd2.jsonl")
    for keep in (None, lambda topic: True):
        for item, line in zip(inputs.items(Position(), keep), odd, strict=True):
            doc = orjson.loads(line)
            assert item.topic == doc["topic"]
            assert inputs.message(item) == inputs.message(item._replace(data=doc)), line
    got = [m for _, m in messages(inputs)]
    assert isinstance(got[0], BadInput) and got[0].field == "sim_time"
    assert isinstance(got[2], BadInput) and got[2].reason == Reason.INVALID_JSON
    assert got[6] == (b"{}", 1794787200001)


@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz"])
def test_reading_resumes_at_any_message(tmp_path: Path, name: str) -> None:
    lines = [orjson.dumps({"topic": f"city/bletchley/water/wm-{i % 7}",
                           "payload": {**READING, "ts": READING["ts"] + i}})
             for i in range(50)]
    lines.insert(10, b"")
    inputs = inputs_of(tmp_path, lines, name)
    items = list(inputs.items(Position()))
    assert len(items) == 50 and items[10].line == 12
    for k in (0, 9, 10, 33, 49):
        again = list(inputs.items(items[k].position))
        assert [(i.n, i.topic, i.line, i.offset) for i in again] == [
            (i.n, i.topic, i.line, i.offset) for i in items[k:]]


def test_files_are_one_stream_in_the_order_given(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.ndjson"
    a.write_bytes(orjson.dumps({"topic": TOPIC, "payload": READING}) + b"\n")
    b.write_bytes(orjson.dumps({"topic": "city/x/energy/em-1", "payload": {}}) + b"\n")
    inputs = Inputs(describe_inputs([b, a], None), None)
    items = list(inputs.items(Position()))
    assert [(i.n, i.file, i.topic) for i in items] == [(0, 0, "city/x/energy/em-1"),
                                                        (1, 1, TOPIC)]
    assert list(inputs.items(items[1].position)) == items[1:]
    assert inputs.done_bytes(Position(2, 0, 0, 2)) == inputs.total_bytes


def test_inputs_are_named_by_their_format(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(HistoryError, match=r"not \.csv or \.jsonl"):
        describe_inputs([tmp_path / "x.txt"], None)
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(HistoryError, match="give --mapping"):
        describe_inputs([tmp_path / "x.csv"], None)


def test_partitions_keep_every_entity_whole_and_balance_the_units(tmp_path: Path) -> None:
    assert unit_of("city/bletchley/water/wm-1") == "water|bletchley"
    assert unit_of("city/bletchley/air_quality/aq-1") == "air_quality|bletchley"
    assert unit_of("city/bletchley/traffic/tc-1") == "traffic"  # junction: in the payload
    assert unit_of("city/bletchley/car_park/cp-1") == "car_park"  # entity field
    assert unit_of("city/Bletchley/water/wm-1") == "city/Bletchley/water/wm-1"
    weights = {"central-mk": 9, "bletchley": 7, "wolverton": 5, "kents-hill": 3}
    lines = [orjson.dumps({"topic": f"city/{d}/{k}/s{i}", "payload": {}})
             for d, n in weights.items() for k in ("water", "energy") for i in range(n)]
    lines += [orjson.dumps({"topic": f"city/{d}/traffic/t{i}", "payload": {}})
              for d in weights for i in range(2)]
    inputs = inputs_of(tmp_path, lines)
    assignment = plan_assignment(inputs, 2)
    owner = Partitioner(2, assignment)
    loads = [0, 0]
    for item in inputs.items(Position()):
        loads[owner(item.topic)] += 1
    assert abs(loads[0] - loads[1]) <= 9  # the largest unit at most
    assert len({owner(f"city/{d}/traffic/x") for d in weights}) == 1
    assert Partitioner(3, {"water|x": 7})("city/x/water/a") in (0, 1, 2)  # a stale plan
