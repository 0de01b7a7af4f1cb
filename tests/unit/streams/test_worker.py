"""The worker object with fakes (no Kafka, no Faust running): its agent path, quiet-window timer,
rewind timer, rebalance hooks and crash-recovery rule; and the Faust app built around it: tables
with bounded RocksDB memory, the agents, and the signals wired to the worker's hooks."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError
from click.testing import CliRunner
from faust.types import TP

from bench.system import worker_memory_lines
from kpi.engine import Held
from models import kinds
from models.city import load_city
from models.kinds import engines_for, reading_types
from models.settings import Settings
from streams import cli
from streams.app import _looked_up, create_app, rocksdb_options
from streams.offsets import MemoryRangeReader, OffsetLookupError, applied_offset, mark_applied
from streams.worker import (
    TableMemory,
    Worker,
    WorkerOptions,
    mark_clean_shutdown,
    recover_state_dir,
    release_freed_memory,
)

CITY = load_city()
SETTINGS = Settings()
TOPICS = SETTINGS.kafka.topics
WATER = TOPICS.telemetry["water"]
TS = 1_795_219_200_000


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, bool]] = []
        self.after_send: Any = None

    async def send(self, *, key: bytes, value: bytes, force: bool = False) -> None:
        self.sent.append((key, value, force))
        if self.after_send is not None:
            self.after_send()


class FakeHost:
    """A `Host` without Kafka: dict tables, recording topics, an assignment the test sets."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, bytes]] = {}
        self.topics: dict[str, FakeTopic] = {}
        self.is_settled = True
        self.gen = 1
        self.owned: set[TP] = set()
        self.ends: dict[TP, int] = {}
        self.seeks: list[tuple[TP, int]] = []
        self.lapsed: float | None = None
        self.held = 0
        self.waiting: dict[TP, float] = {}

    def table(self, name: str) -> dict[bytes, bytes]:
        return self.tables.setdefault(name, {})

    def topic(self, name: str, *, partitions: int | None = None) -> FakeTopic:
        return self.topics.setdefault(name, FakeTopic())

    def settled(self) -> bool:
        return self.is_settled

    def generation(self) -> int:
        return self.gen

    def lease_lapsed_s(self) -> float | None:
        return self.lapsed

    def undelivered(self) -> int:
        return self.held

    def assignment(self) -> set[TP]:
        return set(self.owned)

    async def highwaters(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: self.ends.get(tp, 0) for tp in tps}

    async def earliest_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    def fetch_state(self, tp: TP) -> str:
        return "fake"

    def consumer_state(self) -> str:
        return "fake consumer"

    def recovery_waiting(self) -> dict[TP, float]:
        return dict(self.waiting)

    def table_memory(self) -> TableMemory:
        return TableMemory(partitions=2, memtables=3 * 2**20, block_cache=2**20)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reader(MemoryRangeReader):
    closed = False

    async def close(self) -> None:
        self.closed = True


class Alerts:
    def __init__(self) -> None:
        self.started = False
        self.published: list[Any] = []

    def start(self) -> None:
        self.started = True

    def publish(self, alert: Any) -> None:
        self.published.append(alert)


class ForgetfulEngine:
    """Counts `forget_all`; the worker calls nothing else of it in these tests."""

    def __init__(self) -> None:
        self.forgotten = 0

    def forget_all(self) -> None:
        self.forgotten += 1

    def held(self) -> Held:
        return Held()


def build(**collaborators: Any) -> tuple[Worker, FakeHost, Clock]:
    host, clock = FakeHost(), Clock()
    collaborators = {"engines": {"water": engines_for(CITY)["water"]}, "alerts": Alerts(),
                     "reader": Reader({}), "clock": clock, **collaborators}
    return Worker(SETTINGS, CITY, WorkerOptions(quiet_s=10), host, **collaborators), host, clock


def water(district: str = "bletchley", ts_ms: int = TS, sensor_id: str | None = None) -> bytes:
    reading = reading_types()["water"].model_validate(
        {"district": district, "kind": "water", "sensor_id": sensor_id or f"wm-{district}",
         "ts_ms": ts_ms, "volume_m3": 1.0})
    return b"[" + reading.to_json() + b"]"


def kpi_sent(host: FakeHost) -> list[tuple[bytes, bytes, bool]]:
    return host.topics[TOPICS.kpi_records].sent


def test_the_timer_closes_the_windows_of_a_quiet_entity_once_per_change() -> None:
    worker, host, clock = build()
    host.owned = {TP(WATER, 0)}
    asyncio.run(worker.handle("water", WATER, 0, 0, water()))
    assert kpi_sent(host) == []  # the window is open
    clock.now += 9.9
    asyncio.run(worker.close_quiet_windows())
    assert kpi_sent(host) == [], "not quiet for 10 s yet"
    clock.now += 0.1
    asyncio.run(worker.close_quiet_windows())
    [(key, value, force)] = kpi_sent(host)
    assert key.startswith(b"water_kpi/") and b"bletchley" in key and force
    assert orjson.loads(value)["district"] == "bletchley"
    assert worker.counters.emitted == 1
    clock.now += 60
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 1, "closed once until the entity changes"

    asyncio.run(worker.handle("water", WATER, 0, 1, water(ts_ms=TS + 1000)))
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 1, "it just had a reading"
    clock.now += 10
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 2


def test_the_timer_leaves_other_workers_partitions_and_rebalances_alone() -> None:
    worker, host, clock = build()
    asyncio.run(worker.handle("water", WATER, 0, 0, water()))
    clock.now += 10
    host.owned = {TP(WATER, 1)}
    asyncio.run(worker.close_quiet_windows())
    assert kpi_sent(host) == [], "partition 0 is another worker's now"
    host.owned = {TP(WATER, 0)}
    host.is_settled = False
    asyncio.run(worker.close_quiet_windows())
    assert kpi_sent(host) == [], "a rebalance or recovery is under way"
    host.is_settled = True
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 1


def test_the_timer_stops_when_the_consumer_generation_changes() -> None:
    worker, host, clock = build()
    host.owned = {TP(WATER, 0)}
    asyncio.run(worker.handle("water", WATER, 0, 0, water("bletchley")))
    asyncio.run(worker.handle("water", WATER, 0, 1, water("wolverton")))
    clock.now += 10

    def rebalance() -> None:
        host.gen += 1

    host.topics[TOPICS.kpi_records].after_send = rebalance
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 1
    host.topics[TOPICS.kpi_records].after_send = None
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 2, "the other entity's window comes at the next run"
    assert {key.split(b"/")[1] for key, _, _ in kpi_sent(host)} == {b"bletchley", b"wolverton"}


class Restarted(Exception):
    pass


def restart(why: str) -> Any:
    raise Restarted(why)


def test_a_worker_cut_off_its_group_sends_nothing_and_restarts_if_it_holds_sends() -> None:
    worker, host, clock = build(restart=restart)
    host.owned = {TP(WATER, 0)}
    asyncio.run(worker.handle("water", WATER, 0, 0, water()))
    clock.now += 10
    host.lapsed = 8.5
    asyncio.run(worker.close_quiet_windows())
    assert kpi_sent(host) == [], "the entity only looks quiet: no records reach a cut worker"
    asyncio.run(worker.publish_counters())
    assert host.topics[TOPICS.pipeline_counters].sent == []
    worker.fence_if_cut_off()  # nothing held: it waits for the network
    host.held = 3
    try:
        worker.fence_if_cut_off()
    except Restarted as exc:
        assert "8.5 s" in str(exc) and "3 records not delivered" in str(exc)
    else:
        raise AssertionError("a cut-off worker holding sends must restart")
    try:
        asyncio.run(worker.handle("water", WATER, 0, 1, water(ts_ms=TS + 1000)))
    except Restarted as exc:
        assert "a record arrived" in str(exc)
    else:
        raise AssertionError("a record reaching a cut-off worker must not be applied")
    assert applied_offset(worker.tables["water"].state, 0) == 0

    host.lapsed = None  # the coordinator answered again
    worker.fence_if_cut_off()
    asyncio.run(worker.close_quiet_windows())
    assert len(kpi_sent(host)) == 1


def test_a_revocation_of_source_partitions_empties_the_engines_caches() -> None:
    """A worker that lost partitions must not keep their entities in memory (a soak's RSS
    stepped up at every rebalance)."""
    engines = {"water": ForgetfulEngine(), "energy": ForgetfulEngine()}
    worker, _, _ = build(engines=engines)
    worker.on_partitions_revoked({TP(TOPICS.kpi_records, 0)})
    assert [e.forgotten for e in engines.values()] == [0, 0], "other topics keep the caches"
    worker.on_partitions_revoked({TP(TOPICS.telemetry["energy"], 3)})
    assert [e.forgotten for e in engines.values()] == [1, 1]


def test_after_a_revocation_the_state_is_read_back_from_the_tables() -> None:
    worker, _, _ = build()
    asyncio.run(worker.handle("water", WATER, 0, 0, water()))
    worker.on_partitions_revoked({TP(WATER, 0)})
    asyncio.run(worker.handle("water", WATER, 0, 0, water()))
    assert (worker.counters.accepted, worker.counters.duplicates) == (1, 1)


def test_records_the_worker_cannot_take_are_dead_lettered_and_marked_applied() -> None:
    worker, host, _ = build()
    asyncio.run(worker.handle("water", WATER, 2, 0, b"not json"))
    [(key, value, _)] = host.topics[TOPICS.sink_deadletter].sent
    letter = orjson.loads(value)
    assert key == WATER.encode()
    assert (letter["reason"], letter["partition"], letter["offset"]) == ("undecodable", 2, 0)
    assert worker.counters.rejected == 1
    assert applied_offset(worker.tables["water"].state, 2) == 0


def test_skipped_records_are_read_back_before_the_one_that_arrived() -> None:
    reader = Reader({(WATER, 0): {0: water("bletchley"), 1: water("wolverton")}})
    worker, _, _ = build(reader=reader)
    asyncio.run(worker.handle("water", WATER, 0, 2, water("newport-pagnell")))
    assert (worker.counters.caught_up, worker.counters.accepted) == (2, 3)
    assert applied_offset(worker.tables["water"].state, 0) == 2


def test_an_idle_partition_with_records_after_the_applied_one_is_rewound() -> None:
    worker, host, clock = build()
    tp = TP(WATER, 0)
    host.owned, host.ends = {tp}, {tp: 5}
    mark_applied(worker.tables["water"].state, 0, 2)
    asyncio.run(worker.rewind_skipped_tails())
    clock.now += 29
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == [], "idle for less than 30 s"
    clock.now += 1
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == [(tp, 3)] and worker.counters.rewinds == 1
    host.ends = {tp: 3}
    clock.now += 30
    asyncio.run(worker.rewind_skipped_tails())
    assert len(host.seeks) == 1, "nothing after the applied offset"


def rounds_until_a_rewind(worker: Worker, host: FakeHost, clock: Clock,
                          others_delivered: int = 0) -> None:
    """Run the rewind check every 5 s until it seeks once more, while the worker's other
    partitions deliver `others_delivered` readings per round."""
    seeks = len(host.seeks)
    for _ in range(20):
        clock.now += 5
        worker.counters.received += others_delivered
        asyncio.run(worker.rewind_skipped_tails())
        if len(host.seeks) > seeks:
            return
    raise AssertionError("no rewind in 100 s")


def test_a_partition_rewinds_do_not_bring_back_restarts_the_worker_in_place() -> None:
    """soak at 1,000 msg/s with kept stores: after a restart in place Faust fetched nothing of
    three partitions until the next rebalance ten minutes later, and a rewind every 30 s did
    not change that (a seek cannot move a partition the consumer does not fetch)."""
    worker, host, clock = build(restart=restart)
    tp = TP(WATER, 0)
    host.owned, host.ends = {tp}, {tp: 5}
    mark_applied(worker.tables["water"].state, 0, 2)
    for _ in range(3):
        rounds_until_a_rewind(worker, host, clock, others_delivered=100)
    assert host.seeks == [(tp, 3)] * 3
    with pytest.raises(Restarted, match=r"3 rewinds to 3 delivered nothing"):
        rounds_until_a_rewind(worker, host, clock, others_delivered=100)


def test_a_worker_that_gets_nothing_at_all_rewinds_but_does_not_restart() -> None:
    """Nothing delivered from any partition is a slow or blocked worker, not one partition
    left unfetched: a restart would not help."""
    worker, host, clock = build(restart=restart)
    tp = TP(WATER, 0)
    host.owned, host.ends = {tp}, {tp: 5}
    mark_applied(worker.tables["water"].state, 0, 2)
    for _ in range(6):
        rounds_until_a_rewind(worker, host, clock)
    assert host.seeks == [(tp, 3)] * 6


def test_rewinds_that_bring_records_back_never_add_up_to_a_restart() -> None:
    worker, host, clock = build(restart=restart)
    tp = TP(WATER, 0)
    host.owned, host.ends = {tp}, {tp: 5}
    state = worker.tables["water"].state
    mark_applied(state, 0, 2)
    for applied in range(3, 9):
        clock.now += 35
        asyncio.run(worker.rewind_skipped_tails())
        clock.now += 35
        asyncio.run(worker.rewind_skipped_tails())
        assert host.seeks[-1] == (tp, applied)
        mark_applied(state, 0, applied)  # the rewind delivered one record
        host.ends = {tp: applied + 3}
    assert worker.counters.rewinds == 6


def test_a_long_quiet_partition_is_not_rewound_when_its_next_record_lands() -> None:
    """fault 3 of the cluster test: a partition quiet through a minute's ingest cut gets its
    next record at the heal; the next check (5 s on) saw it idle for over 30 s with a record
    after the applied one and sought back while Faust still held that record in its stream
    buffer: Faust delivered its buffered copy and the fetched one (70 readings twice)."""
    worker, host, clock = build()
    tp = TP(WATER, 0)
    host.owned, host.ends = {tp}, {tp: 58}
    mark_applied(worker.tables["water"].state, 0, 57)
    asyncio.run(worker.rewind_skipped_tails())
    clock.now += 65  # the cut: nothing new in Kafka
    asyncio.run(worker.rewind_skipped_tails())
    host.ends = {tp: 59}  # the heal: a record lands, Faust has it in its buffer
    clock.now += 5
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == [], "a record that just reached Kafka is not a skipped one"
    clock.now += 29
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == []
    clock.now += 1  # in Kafka for 30 s and still not delivered: skipped
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == [(tp, 58)] and worker.counters.rewinds == 1


def on_one_applied_partition(host: FakeHost) -> tuple[Worker, Any, Clock, TP]:
    """A worker on `host` owning water partition 0: 5 records in Kafka, 0-2 applied."""
    worker, _, clock = build()
    worker.host = host
    tp = TP(WATER, 0)
    host.owned, host.ends = {tp}, {tp: 5}
    state = worker.tables["water"].state
    host.tables = {"water-state": state.table}  # type: ignore[dict-item]
    mark_applied(state, 0, 2)
    return worker, host, clock, tp


def test_nothing_is_rewound_when_the_app_stops_during_the_offset_lookups() -> None:
    """Faust stops its tables while it shuts down (the RocksDB store then reads every key as
    missing): a check that began before must not take that for "nothing applied" and seek the
    partition back to its first record."""

    class StoppingHost(FakeHost):
        stop_at_lookup = False

        async def highwaters(self, tps: list[TP]) -> dict[TP, int]:
            if self.stop_at_lookup:
                self.is_settled = False  # flow control suspended, then the tables stopped
                for table in self.tables.values():
                    table.clear()
            return await super().highwaters(tps)

    worker, host, clock, _ = on_one_applied_partition(StoppingHost())
    asyncio.run(worker.rewind_skipped_tails())
    clock.now += 30
    host.stop_at_lookup = True
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == [] and worker.counters.rewinds == 0


def test_a_look_up_kafka_does_not_answer_skips_the_round_and_the_next_one_goes_on() -> None:
    """cluster fault 1b: with a Kafka node isolated, the end-offset request to it hung for
    Faust's 90 s request timeout and the error, let through the timer, crashed both workers'
    apps (and their processes hung on)."""

    class CutOffHost(FakeHost):
        answers = False

        async def highwaters(self, tps: list[TP]) -> dict[TP, int]:
            if not self.answers:
                raise OffsetLookupError("Kafka did not answer the look-up of end offsets")
            return await super().highwaters(tps)

    worker, host, clock, tp = on_one_applied_partition(CutOffHost())
    asyncio.run(worker.rewind_skipped_tails())  # no exception: the round is skipped
    host.answers = True
    asyncio.run(worker.rewind_skipped_tails())
    clock.now += 30
    asyncio.run(worker.rewind_skipped_tails())
    assert host.seeks == [(tp, 3)]


def test_faust_s_offset_look_up_errors_become_offset_lookup_errors() -> None:
    async def timed_out() -> dict[TP, int]:
        raise KafkaTimeoutError("Failed to get offsets by times in 90000 ms")

    with pytest.raises(OffsetLookupError, match="end offsets"):
        asyncio.run(_looked_up(timed_out(), "end"))


def test_start_and_close_drive_the_alert_publisher_and_the_reader() -> None:
    worker, _, _ = build()
    asyncio.run(worker.start())
    asyncio.run(worker.close())
    assert worker.alerts.started and worker.reader.closed  # type: ignore[attr-defined]


def test_stores_of_an_earlier_version_are_deleted_after_a_crash(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, instance="3")
    options.state_dir.mkdir()
    (options.state_dir / "db").write_text("x")
    mark_clean_shutdown(options)
    recover_state_dir(options)
    assert (options.state_dir / "db").exists(), "kept after a clean shutdown"
    assert not (options.state_dir / ".clean-shutdown").exists(), "a crash of this run shows"
    (options.state_dir / ".changelog-prefix").unlink()
    recover_state_dir(options)
    assert not (options.state_dir / "db").exists(), "deleted after a crash"
    assert (options.state_dir / ".changelog-prefix").exists()


def test_stores_of_this_version_are_kept_after_a_crash(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, instance="3")
    recover_state_dir(options)
    assert (options.state_dir / ".changelog-prefix").exists(), "a fresh directory is marked"
    (options.state_dir / "db").write_text("x")
    recover_state_dir(options)
    assert (options.state_dir / "db").exists(), "kept after a crash: a prefix of the changelog"
    mark_clean_shutdown(options)
    assert not (options.state_dir / ".changelog-prefix").exists(), "an earlier version may run"
    recover_state_dir(options)
    assert (options.state_dir / "db").exists()
    assert not (options.state_dir / ".clean-shutdown").exists()


def test_the_command_line_takes_every_default_from_worker_options() -> None:
    flagged = {f.name: f.default for f in fields(WorkerOptions) if "flag" in f.metadata}
    assert {p.name: p.default for p in cli.worker.params} == flagged
    assert set(flagged) >= {"instance", "data_dir", "store", "quiet_s", "sink",
                            "session_timeout_s", "table_memory_mb", "standby_replicas"}


def test_a_negative_count_of_standby_replicas_is_refused_before_anything_starts() -> None:
    done = CliRunner().invoke(cli.worker, ["--standby-replicas", "-1"])
    assert done.exit_code == 2 and "--standby-replicas" in done.output, done.output


def test_rocksdb_options_split_the_budget() -> None:
    assert rocksdb_options(4) == {"write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
                                  "block_cache_size": 2 << 20}


def test_the_app_has_an_agent_and_two_tables_per_kind(tmp_path: Path) -> None:
    """Plus the dead-letter agent and its table of `rejected` counts."""
    app = create_app(SETTINGS, CITY, WorkerOptions(data_dir=tmp_path, store="memory://"))
    assert app.conf.id == f"{SETTINGS.kafka.topic_prefix}citystream-worker"
    assert set(app.agents) == {f"citystream.{kind}_kpis" for kind in kinds.names()} | {
        "citystream.rejected_counts"}
    assert set(app.tables) == {f"{kind}-{table}" for kind in kinds.names()
                               for table in ("entities", "state")} | {"quality-rejected"}


def test_every_table_partition_stays_within_its_memory(tmp_path: Path) -> None:
    """Faust's defaults let each table partition hold 3 x 64 MiB of memtables: the worker's RSS
    grew with every write. With the app's options, writing 40 MB into one table partition
    leaves at most the two memtables of the budget in memory."""
    app = create_app(SETTINGS, CITY, WorkerOptions(data_dir=tmp_path, store="rocksdb://",
                                                   table_memory_mb=4))
    tables = list(app.tables.values())
    assert len(tables) == 2 * len(kinds.names()) + 1  # per kind and feed, and quality-rejected
    for table in tables:
        assert table.data.rocksdb_options.write_buffer_size == 1 << 20  # type: ignore[attr-defined]
    db = tables[0].data.rocksdb_options.open(tmp_path / "db")  # type: ignore[attr-defined]
    value = os.urandom(4000)
    for n in range(10_000):
        db[f"entity-{n % 200}".encode()] = value
    assert db.property_int_value("rocksdb.cur-size-all-mem-tables") <= 2 * (1 << 20) * 1.1
    db.close()


def test_the_apps_rebalance_signals_reach_the_worker(tmp_path: Path) -> None:
    released: list[int] = []
    engine = ForgetfulEngine()
    app = create_app(SETTINGS, CITY, WorkerOptions(data_dir=tmp_path, store="memory://"),
                     make_worker=functools.partial(Worker, engines={"water": engine},
                                                   release_memory=lambda: released.append(1)))

    async def rebalance() -> None:
        await app.on_partitions_revoked.send({TP(TOPICS.kpi_records, 0)})
        assert engine.forgotten == 0
        await app.on_partitions_revoked.send({TP(WATER, 0)})
        assert engine.forgotten == 1
        await app.on_partitions_assigned.send(set())
        await app.on_rebalance_complete.send()

    asyncio.run(rebalance())
    assert len(released) == 2


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_freed_memory_goes_back_to_the_os() -> None:
    """glibc keeps freed heap pages (here pinned under a live allocation) until malloc_trim."""
    blocks = [bytes(2048) for _ in range(100_000)]  # ~200 MB of malloc'd (not pymalloc) blocks
    pin = bytes(2048)
    del blocks
    held = _rss_mb()
    release_freed_memory()
    assert held - _rss_mb() > 100, (held, _rss_mb())
    assert len(pin) == 2048


def dead_letter(topic: str, ts: int | None, received_at_ms: int = TS + 5000) -> bytes:
    from models.deadletter import DeadLetter, Reason

    raw = orjson.dumps({"sensor_id": topic.rsplit("/", 1)[-1], "ts": ts, "volume_m3": -1})
    return DeadLetter(reason=Reason.OUT_OF_RANGE, detail="below 0", field="volume_m3",
                      topic=topic, raw=raw, received_at_ms=received_at_ms).to_json()


def test_ingest_dead_letters_count_as_rejected_for_the_sensor_their_topic_names() -> None:
    worker, host, _ = build()
    hour_end = TS - TS % 3_600_000 + 3_600_000
    topic = "city/bletchley/water/wm-7"
    for offset in (0, 1, 1):  # the last one is a redelivery
        asyncio.run(worker.count_rejected(offset, dead_letter(topic, TS)))
    asyncio.run(worker.count_rejected(2, dead_letter("city/nowhere", TS)))  # names no sensor
    asyncio.run(worker.count_rejected(3, b"not a dead letter"))
    sent = [orjson.loads(value) for _, value, _ in kpi_sent(host)]
    assert [p["rejected"] for p in sent] == [1, 2, 2]
    assert {(p["measurement"], p["kind"], p["district"], p["sensor_id"], p["hour_end_ms"])
            for p in sent} == {("sensor_quality", "water", "bletchley", "wm-7", hour_end)}
    assert all(p["readings"] is None for p in sent), "the worker's other fields stay its own"
    host2 = FakeHost()
    host2.tables = host.tables  # a restarted worker: the table restored from its changelog
    rebuilt = Worker(SETTINGS, CITY, WorkerOptions(), host2, engines={}, alerts=Alerts(),
                     reader=Reader({}))
    asyncio.run(rebuilt.count_rejected(4, dead_letter(topic, None, received_at_ms=TS)))
    assert orjson.loads(kpi_sent(host2)[-1][1])["rejected"] == 3


CHANGELOG = TP(f"{SETTINGS.kafka.topic_prefix}citystream-worker-water-state-changelog", 2)


def silent_for(host: FakeHost, clock: Clock, seconds: float) -> None:
    """Time passes with the recovery still waiting for `CHANGELOG`, silent all along."""
    clock.now += seconds
    host.waiting = {CHANGELOG: host.waiting.get(CHANGELOG, 0.0) + seconds}


def restarts_once_silent_120_s_more(worker: Worker, host: FakeHost, clock: Clock) -> None:
    silent_for(host, clock, 119)
    worker.check_recovery()
    silent_for(host, clock, 1)
    with pytest.raises(Restarted):
        worker.check_recovery()


def test_a_table_recovery_that_gets_nothing_from_a_partition_restarts_the_worker() -> None:
    """Cluster, worker 1 cut off: worker 0 took its partitions over and replayed their
    changelogs except those led by one broker, which delivered nothing for five minutes."""
    worker, host, clock = build(restart=restart)
    worker.check_recovery()
    silent_for(host, clock, 119)
    worker.check_recovery()
    host.waiting[TP(CHANGELOG.topic, 3)] = 5.0  # others deliver
    silent_for(host, clock, 1)
    with pytest.raises(Restarted, match=re.escape(
            "table recovery got nothing from 1 changelog partitions for 120 s while Kafka "
            f"answered ({CHANGELOG.topic}[2]: fake; fake consumer)")):
        worker.check_recovery()


def test_the_restart_names_at_most_four_partitions() -> None:
    worker, host, clock = build(restart=restart)
    worker.check_recovery()
    clock.now += 120
    host.waiting = {TP(CHANGELOG.topic, n): 120.0 for n in range(6)}
    with pytest.raises(Restarted) as restarted:
        worker.check_recovery()
    assert "from 6 changelog partitions" in str(restarted.value)
    assert str(restarted.value).count(": fake") == 4
    assert str(restarted.value).endswith("[3]: fake and 2 more; fake consumer)")


def test_a_table_recovery_waits_for_kafka_without_restarting() -> None:
    """Nothing delivered while Kafka does not answer is an outage, which a restart does not
    cure: the recovery's silence counts only from when the group coordinator answers again."""
    worker, host, clock = build(restart=restart)
    worker.check_recovery()
    silent_for(host, clock, 100)
    worker.check_recovery()
    host.lapsed = 12.0
    silent_for(host, clock, 100)
    worker.check_recovery()
    host.lapsed = None
    worker.check_recovery()
    restarts_once_silent_120_s_more(worker, host, clock)


def test_a_rebalance_restarts_the_count_of_a_recoverys_silence() -> None:
    """Between the revocation and the next recovery's start Faust keeps the old recovery's
    figures, and a join takes as long as the slowest member: not silence to restart on."""
    worker, host, clock = build(restart=restart, release_memory=lambda: None)
    worker.check_recovery()
    silent_for(host, clock, 100)
    worker.on_partitions_revoked(set())
    worker.check_recovery()
    silent_for(host, clock, 100)
    worker.on_partitions_assigned()
    worker.check_recovery()
    restarts_once_silent_120_s_more(worker, host, clock)


def test_no_recovery_under_way_restarts_nothing() -> None:
    worker, _, clock = build(restart=restart)
    for _ in range(100):
        clock.now += 5
        worker.check_recovery()


def test_a_record_kafka_did_not_take_restarts_the_worker() -> None:
    worker, _host, _clock = build(restart=restart)
    with pytest.raises(Restarted, match="Kafka did not take a record: KafkaTimeoutError"):
        worker.on_send_failed(KafkaTimeoutError())


def test_windows_sent_again_for_a_redelivered_record_are_sent_again_if_that_send_failed(
        ) -> None:
    """A redelivered record sends its entity's final windows again once (kpi.engine); when
    that send raised, the next redelivered record sends them again."""
    worker, host, _ = build()
    for offset in range(40):  # a reading every 5 minutes: windows become final
        asyncio.run(worker.handle("water", WATER, 0, offset, water(ts_ms=TS + offset * 300_000)))
    engine = worker.engines["water"]
    engine.forget_all()  # as a restarted worker: state read back from the tables
    topic = host.topics[TOPICS.kpi_records]

    def fail() -> None:
        raise RuntimeError("not sent")

    topic.after_send = fail
    with pytest.raises(RuntimeError):
        asyncio.run(worker.handle("water", WATER, 0, 30, water(ts_ms=TS + 30 * 300_000)))
    topic.after_send = None
    before = len(kpi_sent(host))
    asyncio.run(worker.handle("water", WATER, 0, 31, water(ts_ms=TS + 31 * 300_000)))
    again = len(kpi_sent(host)) - before
    assert again > 1, "the windows whose send failed were not sent again"
    before = len(kpi_sent(host))
    asyncio.run(worker.handle("water", WATER, 0, 32, water(ts_ms=TS + 32 * 300_000)))
    assert len(kpi_sent(host)) == before, "sent once, not for every redelivered record"


def test_the_counters_log_the_worker_s_memory_with_its_table_stores_share(
        caplog: pytest.LogCaptureFixture) -> None:
    worker, host, _ = build()
    host.owned = {TP(WATER, 0)}
    window = 900_000
    for offset, (sensor, ts) in enumerate([("a", TS + 60_000), ("a", TS), ("b", TS + 30_000),
                                           ("b", TS + 2 * window), ("b", TS + 4 * window),
                                           ("b", TS + 6 * window)]):  # 2 and 3 out of order
        asyncio.run(worker.handle("water", WATER, 0, offset, water(ts_ms=ts, sensor_id=sensor)))
    with caplog.at_level(logging.INFO, logger="streams.worker"):
        asyncio.run(worker.publish_counters())
    record = next(r for r in caplog.records if "memory" in r.getMessage())
    line = record.getMessage()
    assert re.fullmatch(r"worker 0 memory: RSS [1-9]\d* MB, of which table stores 4 MB in 2 "
                        r"partitions \(memtables 3, block cache 1: at most 8; index and filter "
                        r"blocks 0\); [1-9]\d* pymalloc blocks; engines hold 1 entities with "
                        r"4 windows and 2 sensors, and 3 \(sensor, time\) pairs of 1 windows "
                        r"to tell duplicates", line), line
    as_logged = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    [parsed] = worker_memory_lines(f"other line\n{as_logged}\n")  # as the soak and bench read it
    assert parsed["at"] == pytest.approx(record.created, abs=0.001)
    assert {k: v for k, v in parsed.items() if k not in ("at", "rss_mb", "pymalloc_blocks")} == {
        "table_mb": 4, "partitions": 2, "entities": 1, "windows": 4, "sensors": 2,
        "dedupe_pairs": 3}
    assert parsed["rss_mb"] > 0 and parsed["pymalloc_blocks"] > 0


def test_a_memory_line_that_fails_is_a_warning_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    worker, host, _ = build()

    def broken() -> TableMemory:
        raise RuntimeError("DB instance already closed")

    host.table_memory = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="streams.worker"):
        asyncio.run(worker.publish_counters())
    assert any("could not measure its memory" in r.getMessage() and "already closed" in
               r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert any("readings received" in r.getMessage() for r in caplog.records)
