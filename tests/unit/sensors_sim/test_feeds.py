"""Declared feeds (CONTRACT section 5): simulated from the city file alone, valid by
construction, with every fault labelled as ingest decides, and without touching the built-in
kinds' messages."""

from __future__ import annotations

import base64
import collections
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ingest.decode import decode
from models import kinds
from models.city import DEFAULT_CITY_FILE as CITY_FILE
from models.city import City, load_city, parse_city
from models.feeds import FeedSpec
from models.readings import topic_context
from sensors_sim import faults
from sensors_sim.feeds import FeedFleet, interval_s, roles
from sensors_sim.generator import Message, SimConfig, Simulation
from tests.oracle import compute_kpis
from tests.oracle.feeds import compute_feed_points
from tests.unit.sensors_sim.helpers import (
    HORIZON_MS,
    MONDAY,
    city,
    contract_check,
    decoded_outcomes,
    oldest_valid_ts,
    simulate_until,
    ts_ms,
)

BUILTIN = ("water", "energy", "traffic", "shuttle")
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TINY = 0.05
"""--size for the long runs: a handful of meters, the feeds at full strength (size does not
change them)."""

NEW_FEEDS = """
[[feeds]]
kind = "noise"
title = "Noise"
window_s = 3600
entity = "district"

[feeds.fields]
laeq_db  = { type = "number", min = 20, max = 140 }
lamax_db = { type = "number", min = 20, max = 160, optional = true }

[[feeds.kpis]]
name = "laeq_mean_db"
agg = "mean"
field = "laeq_db"

[feeds.target]
kpi = "laeq_mean_db"
at_most = 55.0

[[feeds]]
kind = "recycling_visits"
title = "Recycling centre visits"
window_s = 1800
entity = "site_id"

[feeds.fields]
site_id = { type = "string" }
visitors = { type = "integer", min = 0, max = 100000 }
waste_kg_total = { type = "number", min = 0 }
bays_in_use = { type = "integer", min = 0, max = 60 }
bays = { type = "integer", min = 1, max = 60 }
gate_open = { type = "boolean" }
attendant = { type = "string", optional = true }
temperature_c = { type = "number", min = -40, max = 60, optional = true }

[[feeds.kpis]]
name = "visits"
agg = "increase"
field = "visitors"

[[feeds.kpis]]
name = "waste_t"
agg = "delta"
field = "waste_kg_total"
scale = 0.001

[[feeds.kpis]]
name = "bays_used_pct"
agg = "ratio_pct"
field = "bays_in_use"
of = "bays"
"""


def _without_feeds(text: str) -> str:
    """The city file text up to its first [[feeds]] table."""
    cut = text.find("\n[[feeds]]")
    return text if cut < 0 else text[:cut] + "\n"


def _custom_city() -> City:
    return parse_city(_without_feeds(CITY_FILE.read_text(encoding="utf-8")) + NEW_FEEDS,
                      "custom.toml")


def _docs(msg: Message) -> list[Any]:
    doc = json.loads(msg.payload)
    return doc if isinstance(doc, list) else [doc]


def _feed_readings(msgs: list[Message], feed: FeedSpec, valid_only: bool = True,
                   ) -> Iterator[tuple[Message, dict[str, Any]]]:
    """(message, reading) of a feed's messages, in publish order (duplicates left out)."""
    for m in msgs:
        if m.topic.split("/")[2:3] != [feed.kind] or "duplicate" in m.faults:
            continue
        if valid_only and not all(e.valid for e in m.expected):
            continue
        for r in _docs(m):
            yield m, r


def _is_feed(topic: str, sim: Simulation) -> bool:
    """Whether a (possibly broken) topic belongs to a declared feed's sensor."""
    declared = {k.name for k in sim.kinds if k.feed is not None}
    ids = {s for k in sim.kinds if k.feed is not None for s in k.ids}
    return any(part in declared or part.removesuffix(".v2") in ids
               for part in topic.split("/"))


@pytest.fixture(scope="module")
def day() -> list[Message]:
    """26 simulated hours of the shipped city, from Monday 00:00 UTC."""
    return simulate_until(26, seed=3, size=TINY)


@pytest.fixture()
def restore_registry() -> Iterator[None]:
    """Tests that load another city give the shipped city's feeds back to the registry."""
    yield
    kinds.activate(city().feeds)


def test_every_declared_feed_gets_readings_that_validate(day: list[Message]) -> None:
    shipped = load_city()  # activates the shipped city's feeds in the registry
    assert [f.kind for f in shipped.feeds] == ["air_quality", "car_park", "bus_occupancy"]
    for feed in shipped.feeds:
        model = kinds.reading_type(feed.kind)
        assert model is not None
        readings = list(_feed_readings(day, feed))
        assert len(readings) > 200, feed.kind
        for m, r in readings:
            district = m.topic.split("/")[1]
            reading = model.model_validate(r, context=topic_context(district), by_alias=True,
                                           by_name=False)
            assert reading.kind == feed.kind and reading.sensor_id == m.topic.split("/")[3]
            assert contract_check(m.topic, m.payload, m.sim_time_ms) == [(True, None)]
            assert decoded_outcomes(m.topic, m.payload, m.sim_time_ms) == [(True, None)]
            assert ts_ms(r["ts"]) <= m.sim_time_ms and isinstance(r["ts"], int)


def test_sensors_entities_and_intervals_follow_the_spec(day: list[Message]) -> None:
    sim = Simulation(city(), SimConfig(start_ms=MONDAY, seed=3, size=TINY))  # as `day`
    slugs = {d.slug for d in city().districts}
    feeds = {k.name: k for k in sim.kinds if k.feed is not None}
    assert set(feeds) == {f.kind for f in city().feeds}
    for feed in city().feeds:
        kind = feeds[feed.kind]
        assert all(ID.fullmatch(s) for s in kind.ids) and len(set(kind.ids)) == len(kind.ids)
        entity_of: dict[str, set[str]] = collections.defaultdict(set)
        times: dict[str, list[int]] = collections.defaultdict(list)
        for m, r in _feed_readings(day, feed):
            value = m.topic.split("/")[1] if feed.entity == "district" else r[feed.entity]
            entity_of[r["sensor_id"]].add(value)
            if not m.faults:
                times[r["sensor_id"]].append(ts_ms(r["ts"]))
        assert set(entity_of) == set(kind.ids)  # every sensor reported
        assert all(len(v) == 1 for v in entity_of.values())  # bound to one entity value
        per_entity = collections.Counter(next(iter(v)) for v in entity_of.values())
        if feed.entity == "district":
            assert per_entity == dict.fromkeys(slugs, 2)
        else:
            assert len(per_entity) == 4 and all(1 <= n <= 3 for n in per_entity.values())
            assert all(ID.fullmatch(e) for e in per_entity)
        step = interval_s(feed) * 1000
        assert step == max(60, feed.window_s // 4) * 1000
        for series in times.values():
            assert set(np.diff(series).tolist()) == {step}
    assert {r["car_park"] for _, r in _feed_readings(day, city().feeds[1])} \
        == {"cp-1", "cp-2", "cp-3", "cp-4"}


def test_values_are_plausible_inside_their_ranges(day: list[Message]) -> None:
    for feed in city().feeds:
        role = roles(feed)
        present: collections.Counter[str] = collections.Counter()
        total = 0
        capacity: dict[tuple[str, str], set[Any]] = collections.defaultdict(set)
        for _, r in _feed_readings(day, feed):
            total += 1
            for name, spec in feed.fields.items():
                if name not in r:
                    assert spec.optional, (feed.kind, name)
                    continue
                present[name] += 1
                value = r[name]
                if spec.type == "integer":
                    assert type(value) is int
                if spec.type in ("number", "integer") and role[name] != "counter":
                    # never at the bounds
                    assert spec.min is None or value > spec.min, (feed.kind, name, value)
                    assert spec.max is None or value < spec.max, (feed.kind, name, value)
                if role[name] == "capacity":
                    capacity[(r["sensor_id"], name)].add(value)
            for kpi in feed.kpis:
                if kpi.agg == "ratio_pct" and kpi.field in r and kpi.of in r:
                    assert 0 <= r[kpi.field] <= r[kpi.of]
            if "stop_id" in r:
                assert re.fullmatch(r"stop-\d+", r["stop_id"])
        for name, spec in feed.fields.items():
            share = present[name] / total
            assert (0.6 < share < 0.8) if spec.optional else share == 1.0, (feed.kind, name)
        assert all(len(v) == 1 for v in capacity.values())  # constant per sensor
        assert bool(capacity) == ("capacity" in role.values())


def test_gauges_follow_the_day_and_keep_to_the_low_end_of_wide_ranges(
        day: list[Message]) -> None:
    by_hour: dict[str, dict[int, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for feed in city().feeds:
        for _, r in _feed_readings(day, feed):
            hour = ts_ms(r["ts"]) // 3_600_000 % 24
            if feed.kind == "air_quality":
                by_hour["pm25"][hour].append(r["pm25_ugm3"])
                by_hour["no2"][hour].append(r["no2_ugm3"])
            elif feed.kind == "car_park":
                by_hour["car_park"][hour].append(r["occupied"] / r["capacity"])
    for series in by_hour.values():
        night = np.mean(series[2] + series[3])
        peak = np.mean(series[8] + series[17])
        assert peak > 1.3 * night
    pm25 = [v for values in by_hour["pm25"].values() for v in values]
    assert 2 < np.mean(pm25) < 40 and max(pm25) < 100  # of 0..1000


def test_counters_never_decrease_without_a_reset(day: list[Message]) -> None:
    checked = 0
    for feed in city().feeds:
        counters = [n for n, role in roles(feed).items() if role == "counter"]
        last: dict[tuple[str, str], float] = {}
        for _, r in _feed_readings(day, feed):
            for name in counters:
                if name in r:
                    key = (r["sensor_id"], name)
                    assert r[name] >= last.get(key, r[name])
                    last[key] = r[name]
                    checked += 1
    assert checked > 500  # car_park entries_total (bus passengers are a ratio: a gauge)
    assert roles(city().feeds[1])["entries_total"] == "counter"
    assert roles(city().feeds[2])["passengers"] == "share"


@pytest.mark.parametrize("batch", [1, 3])
def test_every_fault_on_feed_messages_gets_the_outcome_ingest_gives(batch: int) -> None:
    rates = dict.fromkeys(faults.FAULT_KINDS, 0.04)
    opts: dict[str, Any] = {"seed": 13, "size": TINY, "batch": batch, "fault_rates": rates}
    msgs = simulate_until(8, **opts)
    sim = Simulation(city(), SimConfig(start_ms=MONDAY, **opts))
    fields = {n for f in city().feeds for n in f.fields} | {"ts", "sensor_id", "seq"}
    seen: collections.Counter[str] = collections.Counter()
    for msg in msgs:
        if not _is_feed(msg.topic, sim):
            continue
        seen.update(msg.faults)
        want = [(e.valid, e.reason) for e in msg.expected]
        oldest = oldest_valid_ts(msg.payload, [e.valid for e in msg.expected], msg.sim_time_ms)
        for received in (msg.sim_time_ms + 1,
                         max(msg.sim_time_ms, oldest + HORIZON_MS - 121_000)):
            assert decoded_outcomes(msg.topic, msg.payload, received) == want, (msg, received)
            assert contract_check(msg.topic, msg.payload, received) == want, (msg, received)
        if set(msg.faults) & {"schema", "non_finite", "out_of_range"}:
            letters = decode(msg.topic, msg.payload, msg.sim_time_ms + 1).dead_letters
            assert len(letters) == 1 and letters[0].field is not None
            assert letters[0].field.split(".")[-1] in fields  # the path names the field
    assert set(faults.FAULT_KINDS) - faults.REGISTER_FAULTS <= set(seen), seen


def test_meter_reset_restarts_feed_counters_near_their_minimum() -> None:
    msgs = simulate_until(10, seed=4, size=TINY, fault_rates={"meter_reset": 0.05})
    car_park = city().feeds[1]
    last: dict[str, int] = {}
    reset_since: dict[str, bool] = collections.defaultdict(bool)
    drops = 0
    for m in msgs:
        if m.topic.split("/")[2] != "car_park":
            continue
        r = json.loads(m.payload)
        sensor = r["sensor_id"]
        reset_since[sensor] |= "meter_reset" in m.faults
        if "entries_total" not in r:
            continue
        value = r["entries_total"]
        if sensor in last and value < last[sensor]:
            drops += 1
            assert reset_since[sensor] and value < 100
        reset_since[sensor] = False
        last[sensor] = value
    assert drops > 5
    assert roles(car_park)["entries_total"] == "counter"
    assert not any("meter_reset" in m.faults for m in msgs
                   if m.topic.split("/")[2] in ("air_quality", "traffic", "shuttle"))


def test_a_counter_reaching_its_max_rolls_over_as_a_reset() -> None:
    feed = _custom_city().feeds[1]
    fleet = FeedFleet(feed, city(), np.random.default_rng(1), "rv")
    start, _, _, top = fleet.counters["visitors"]
    start[:] = top - 0.5
    idx = np.arange(fleet.n, dtype=np.int64)
    ts = np.full(fleet.n, MONDAY + 8 * 3_600_000, dtype=np.int64)
    readings, rolled = fleet.step(idx, ts, fleet.ids, ts.tolist(), [0] * fleet.n, None)
    assert rolled is not None and rolled.any()
    for r, over in zip(readings, rolled.tolist(), strict=True):
        assert r["visitors"] < 100 if over else r["visitors"] <= top


def test_a_feed_new_in_the_city_file_is_simulated_without_code(
        restore_registry: None) -> None:
    custom = _custom_city()
    rates = dict.fromkeys(faults.FAULT_KINDS, 0.03)
    sim = Simulation(custom, SimConfig(start_ms=MONDAY, seed=5, size=TINY, batch=2,
                                       fault_rates=rates))
    end = MONDAY + 6 * 3_600_000
    msgs = []
    for m in sim.messages():
        if m.sim_time_ms > end:
            break
        msgs.append(m)
    _, visits = custom.feeds
    assert roles(visits) == {
        "site_id": "entity", "visitors": "counter", "waste_kg_total": "counter",
        "bays_in_use": "share", "bays": "capacity", "gate_open": "boolean",
        "attendant": "string", "temperature_c": "gauge"}
    kinds.activate(custom.feeds)
    noise_model, visits_model = (kinds.reading_type(f.kind) for f in custom.feeds)
    assert noise_model is not None and visits_model is not None
    got: collections.Counter[str] = collections.Counter()
    last: dict[tuple[str, str], float] = {}
    for m in msgs:
        want = [(e.valid, e.reason) for e in m.expected]
        assert decoded_outcomes(m.topic, m.payload, m.sim_time_ms + 1, custom.feeds) == want
        assert contract_check(m.topic, m.payload, m.sim_time_ms + 1, feeds=custom.feeds) == want
        kind = m.topic.split("/")[2] if m.topic.count("/") == 3 else ""
        if kind not in ("noise", "recycling_visits") or not all(e.valid for e in m.expected):
            continue
        for r in _docs(m):
            got[kind] += 1
            model = noise_model if kind == "noise" else visits_model
            model.model_validate(r, context=topic_context(m.topic.split("/")[1]),
                                 by_alias=True, by_name=False)
            if kind == "noise":
                assert 20 < r["laeq_db"] < 140 and r["sensor_id"].startswith("noise-")
            else:
                assert r["site_id"] in {"site-1", "site-2", "site-3", "site-4"}
                assert r["bays_in_use"] <= r["bays"] and type(r["gate_open"]) is bool
                for name in ("visitors", "waste_kg_total"):
                    key = (r["sensor_id"], name)
                    if "meter_reset" not in m.faults and "duplicate" not in m.faults:
                        assert r[name] >= last.get(key, r[name])
                    last[key] = r[name]
    assert got["noise"] > 50 and got["recycling_visits"] > 50
    assert {k.name for k in sim.kinds if k.feed is not None} == {"noise", "recycling_visits"}


def test_built_in_messages_are_the_same_whatever_feeds_the_city_declares() -> None:
    plain = parse_city(_without_feeds(CITY_FILE.read_text(encoding="utf-8")), "plain.toml")
    assert not plain.feeds
    rates = dict.fromkeys(faults.FAULT_KINDS, 0.02)

    def run(c: City) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        sim = Simulation(c, SimConfig(start_ms=MONDAY, seed=9, size=TINY, batch=2,
                                      fault_rates=rates, leak_districts=("wolverton",)))
        built_in, declared = [], []
        for m in sim.messages():
            if m.sim_time_ms > MONDAY + 3 * 3_600_000:
                break
            key = (m.topic, m.payload, m.faults, m.expected, m.sim_time_ms, m.readings,
                   m.oldest_ts_ms)
            (declared if _is_feed(m.topic, sim) else built_in).append(key)
        return built_in, declared

    alone, none = run(plain)
    shipped, declared = run(city())
    custom, other = run(_custom_city())
    assert not none and declared and other and declared != other
    assert alone == shipped == custom


def test_feed_messages_are_deterministic() -> None:
    rates = dict.fromkeys(faults.FAULT_KINDS, 0.02)

    def feed_messages(seed: int) -> list[tuple[str, bytes, tuple[str, ...]]]:
        sim = Simulation(city(), SimConfig(start_ms=MONDAY, seed=seed, size=TINY,
                                           fault_rates=rates))
        out = []
        for m in sim.messages():
            if m.sim_time_ms > MONDAY + 2 * 3_600_000:
                break
            if _is_feed(m.topic, sim):
                out.append((m.topic, m.payload, m.faults))
        return out

    a, b, c = feed_messages(1), feed_messages(1), feed_messages(2)
    assert a == b != c and len(a) > 100


def test_the_built_in_oracle_counts_feed_messages_but_leaves_them_alone(
        day: list[Message]) -> None:
    msgs = day[:20000]

    def rows(keep_feeds: bool) -> list[dict[str, Any]]:
        return [{"seq": i, "topic": m.topic,
                 "payload_b64": base64.b64encode(m.payload).decode(),
                 "expected": [e.as_json() for e in m.expected], "faults": list(m.faults)}
                for i, m in enumerate(msgs)
                if keep_feeds or m.topic.split("/")[2] in BUILTIN]

    with_feeds = compute_kpis(rows(True), CITY_FILE)
    without = compute_kpis(rows(False), CITY_FILE)
    assert with_feeds.points == without.points
    n_feed = sum(m.topic.split("/")[2] not in BUILTIN for m in msgs)
    assert n_feed > 100
    assert with_feeds.messages == len(msgs) == without.messages + n_feed
    assert with_feeds.accepted == without.accepted + n_feed
    assert not {k[0] for k in with_feeds.points} - {f"{k}_kpi" for k in BUILTIN}


def test_feed_kpis_of_a_day_look_like_a_city(day: list[Message]) -> None:
    """The feed oracle over a simulated day: occupancy and pollution in believable ranges."""
    import tomllib

    tables = {f["kind"]: f for f in tomllib.loads(CITY_FILE.read_text())["feeds"]}
    for feed in city().feeds:
        readings = [{**r, "district": m.topic.split("/")[1]}
                    for m, r in _feed_readings(day, feed)]
        points = compute_feed_points(readings, tables[feed.kind])
        assert len(points) > 20
        for (_, tags, _), fields in points.items():
            if feed.kind == "air_quality":
                assert 1 < fields["pm25_mean_ugm3"] < 60 and fields["sensors_reporting"] >= 1
            elif feed.kind == "car_park":
                assert 2 < fields["occupancy_pct"] < 99 and fields.get("entries", 0) >= 0
            else:
                assert 2 < fields["occupancy_pct"] < 99 and fields["boardings"] >= 0
                assert dict(tags)["route"].startswith("route-")
