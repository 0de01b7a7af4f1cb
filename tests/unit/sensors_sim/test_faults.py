"""Every fault earns exactly the reason the recording promises: checked against ingest.decode
and against an independent reading of the contract, at the earliest and the latest moment the
simulator may publish the message."""

from __future__ import annotations

import collections
import itertools
import json

import pytest

from sensors_sim import faults
from sensors_sim.generator import Message
from tests.unit.sensors_sim.helpers import (
    HORIZON_MS,
    contract_check,
    decoded_outcomes,
    oldest_valid_ts,
    simulate,
    ts_ms,
)


def _expected(msg: Message) -> list[tuple[bool, str | None]]:
    return [(e.valid, e.reason) for e in msg.expected]


def _publish_times(msg: Message) -> tuple[int, int]:
    """Earliest (at its sim time) and latest (oldest reading at horizon - 2 min) publish time."""
    oldest = oldest_valid_ts(msg.payload, [e.valid for e in msg.expected], msg.sim_time_ms)
    return msg.sim_time_ms + 1, max(msg.sim_time_ms, oldest + HORIZON_MS - 121_000)


@pytest.mark.parametrize("batch", [1, 3])
def test_all_faults_on_every_message_gets_its_recorded_outcome(batch: int) -> None:
    msgs = simulate(8000, seed=11, batch=batch, leak_districts=("bletchley",),
                    fault_rates=dict.fromkeys(faults.FAULT_KINDS, 0.04))
    seen = collections.Counter(f for m in msgs for f in m.faults)
    assert set(faults.FAULT_KINDS) <= set(seen), seen
    for msg in msgs:
        for received in _publish_times(msg):
            want = _expected(msg)
            assert decoded_outcomes(msg.topic, msg.payload, received) == want, (msg, received)
            assert contract_check(msg.topic, msg.payload, received) == want, (msg, received)


@pytest.mark.parametrize("fault", faults.INVALID_FAULTS)
def test_each_invalid_fault_gives_its_own_reason_once_per_message(fault: str) -> None:
    msgs = simulate(1500, seed=3, fault_rates={fault: 0.3})
    hit = [m for m in msgs if m.faults]
    assert len(hit) > 300
    for msg in hit:
        assert msg.faults == (fault,)
        assert msg.expected == (faults.Expected(False, fault, False),)
        assert decoded_outcomes(msg.topic, msg.payload, msg.sim_time_ms + 1) == [(False, fault)]
    for msg in msgs:
        if not msg.faults:
            assert decoded_outcomes(msg.topic, msg.payload, msg.sim_time_ms) == [(True, None)]


def test_a_broken_reading_in_a_batch_leaves_the_others_valid() -> None:
    msgs = simulate(3000, seed=5, batch=4, fault_rates={"out_of_range": 0.2, "schema": 0.2})
    broken = [m for m in msgs if m.faults and len(m.expected) == 4]
    assert broken
    for msg in broken:
        assert sum(not e.valid for e in msg.expected) == 1
        readings = json.loads(msg.payload)
        for e, r in zip(msg.expected, readings, strict=True):
            if e.valid:
                assert r["sensor_id"] == msg.topic.rsplit("/", 1)[1]


def test_time_faults_keep_a_wide_margin_from_the_limits() -> None:
    msgs = simulate(2000, seed=4, fault_rates={"future_timestamp": 0.2, "too_old": 0.2})
    for msg in msgs:
        if not msg.faults:
            continue
        ts = ts_ms(json.loads(msg.payload)["ts"])
        if msg.faults == ("future_timestamp",):
            # published by sim time + horizon - 2 min at the latest: still > 5 min + 60 s ahead
            assert ts - (msg.sim_time_ms + HORIZON_MS - 120_000) > 360_000
        else:
            assert (msg.sim_time_ms - HORIZON_MS) - ts > 60_000


def test_duplicates_repeat_an_earlier_clean_message_byte_for_byte() -> None:
    msgs = simulate(5000, seed=8, fault_rates={"duplicate": 0.05})
    earlier: set[tuple[str, bytes]] = set()
    dups = 0
    for msg in msgs:
        if msg.faults == ("duplicate",):
            dups += 1
            assert (msg.topic, msg.payload) in earlier
            assert all(e.valid and e.duplicate for e in msg.expected)
        else:
            assert not msg.faults
            earlier.add((msg.topic, msg.payload))
    assert dups > 150


def test_only_duplicates_repeat_a_sensor_id_and_ts() -> None:
    rates = dict.fromkeys(faults.FAULT_KINDS, 0.03)
    msgs = simulate(12000, seed=21, batch=2, fault_rates=rates)
    keys: set[tuple[str, int]] = set()
    for msg in msgs:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            continue
        readings = doc if isinstance(doc, list) else [doc]
        for e, r in zip(msg.expected, readings, strict=False):
            if not e.valid:
                continue
            key = (r["sensor_id"], ts_ms(r["ts"]))
            assert (key in keys) == e.duplicate, (msg, key)
            keys.add(key)


def test_reordered_messages_are_overtaken_by_their_sensors_next_message() -> None:
    msgs = simulate(6000, seed=9, fault_rates={"reorder": 0.05})
    newest: dict[str, int] = {}
    overtaken = late = 0
    for msg in msgs:
        r = json.loads(msg.payload)
        ts = ts_ms(r["ts"])
        if msg.faults == ("reorder",):
            late += 1
            overtaken += newest.get(r["sensor_id"], -1) > ts
        newest[r["sensor_id"]] = max(ts, newest.get(r["sensor_id"], -1))
    assert late > 100
    assert overtaken / late > 0.9


def test_meter_reset_restarts_the_register_near_zero() -> None:
    msgs = simulate(6000, seed=2, fault_rates={"meter_reset": 0.01})
    last: dict[str, float] = {}
    resets = 0
    for msg in msgs:
        r = json.loads(msg.payload)
        reg = r.get("volume_m3", r.get("energy_kwh"))
        if reg is None:
            continue
        if "meter_reset" in msg.faults:
            resets += 1
            assert reg < last.get(r["sensor_id"], 1e9) and reg < 5.0
        elif r["sensor_id"] in last:
            assert reg >= last[r["sensor_id"]]
        last[r["sensor_id"]] = reg
    assert resets > 20


def test_silent_sensors_leave_a_gap_after_their_labelled_reading() -> None:
    msgs = simulate(30000, seed=6, fault_rates={"silent": 0.05})
    times: dict[str, list[tuple[int, bool]]] = collections.defaultdict(list)
    for msg in msgs:
        times[msg.topic].append((msg.sim_time_ms, "silent" in msg.faults))
    gaps = 0
    for series in times.values():
        for (t, quiet), (t_next, _) in itertools.pairwise(series):
            if quiet:
                gaps += 1
                assert t_next - t >= 600_000
    assert gaps > 10


def test_clock_skew_offsets_ts_by_seconds_but_never_a_whole_second() -> None:
    msgs = simulate(20000, seed=7, fault_rates={"clock_skew": 0.1})
    skewed = [m for m in msgs if "clock_skew" in m.faults]
    assert len(skewed) > 500
    for msg in skewed:
        ts = ts_ms(json.loads(msg.payload)["ts"])
        offset = ts - msg.sim_time_ms
        assert -101_000 < offset < 91_000
        assert offset > 0 or msg.sim_time_ms - ts > 5_000
        assert decoded_outcomes(msg.topic, msg.payload, msg.sim_time_ms) == [(True, None)]


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        faults.check_rates({"gremlins": 0.1})
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        faults.check_rates({"schema": 1.5})
    with pytest.raises(ValueError, match="add up to"):
        faults.check_rates(dict.fromkeys(faults.MESSAGE_FAULTS, 0.1))
