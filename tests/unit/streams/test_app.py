"""streams/app.py: what the worker's Faust app does when Kafka does not take a record, or when
the app itself crashes."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import faust
import pytest
import rocksdict
from aiokafka import TopicPartition as AIOKafkaTP
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher, OffsetResetStrategy
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import KafkaTimeoutError
from faust.assignor.client_assignment import ClientAssignment
from faust.exceptions import ConsistencyError, ProducerSendError
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from models.city import load_city
from models.settings import Settings
from streams.app import (
    ASSIGNMENT_FILE,
    CrashExitingWorker,
    DrainingBuffer,
    FaustHost,
    RecoveryWatch,
    SendFailures,
    _consumer_state,
    _fetch_state,
    claim_last_assignment,
    create_app,
    exit_if_crashed,
    forget_stores_ahead_of_changelog,
    handled,
    remember_assignment,
    table_memory,
)
from streams.worker import Worker, WorkerOptions, recover_state_dir


class Ended(Exception):
    pass


def ended(why: str) -> NoReturn:
    raise Ended(why)


class App:
    should_stop = False


def fake_worker(**methods: Any) -> SimpleNamespace:
    """What `create_app` calls of a worker while it builds the app, and `methods`."""
    return SimpleNamespace(**{"tables": {}, "on_send_failed": print,
                              "check_recovery": lambda: None, **methods})


def test_a_send_kafka_did_not_take_reaches_the_worker_and_while_stopping_ends_the_process(
        ) -> None:
    failed: list[BaseException] = []
    app = App()
    sensor = SendFailures(app, failed.append, ended)  # type: ignore[arg-type]
    error = KafkaTimeoutError("batch expired")
    sensor.on_send_error(None, error, None)
    assert failed == [error]
    app.should_stop = True
    with pytest.raises(Ended, match="while stopping: KafkaTimeoutError"):
        sensor.on_send_error(None, error, None)
    assert failed == [error]


def test_a_send_waits_for_kafka_as_long_as_the_session_timeout(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, store="memory://", session_timeout_s=20.0)
    host = FaustHost(Settings(), options)
    assert host.app.conf.producer_request_timeout == 20.0, (
        "Faust's 1200 s would hold a record for a leader cut off from the network that long")


def test_a_crashed_app_ends_the_process_and_a_stopped_one_does_not() -> None:
    async def run(crash: bool) -> list[str]:
        calls: list[str] = []

        def exit_now(why: str) -> Any:
            calls.append(why)

        app = faust.Service()
        await app.start()
        watch = asyncio.ensure_future(exit_if_crashed(app, exit_now))
        await asyncio.sleep(0)
        assert not watch.done()
        if crash:
            await app.crash(RuntimeError("a timer raised"))
        else:
            await app.stop()
        await asyncio.wait_for(watch, 5)
        return calls

    assert asyncio.run(run(crash=False)) == []
    assert asyncio.run(run(crash=True)) == [
        "the Faust app crashed: RuntimeError('a timer raised')"]


def test_the_app_hands_failed_sends_to_its_worker_and_watches_for_its_own_crash(
        tmp_path: Path) -> None:
    failed: list[BaseException] = []
    fake = fake_worker(on_send_failed=failed.append)
    app = create_app(Settings(), load_city(), WorkerOptions(data_dir=tmp_path, store="memory://"),
                     make_worker=lambda *_: fake)  # type: ignore[arg-type]
    sensors = [s for s in app.sensors if isinstance(s, SendFailures)]
    assert len(sensors) == 1
    error = KafkaTimeoutError()
    sensors[0].on_send_error(None, error, None)
    assert failed == [error]
    assert "exit_when_crashed" in {task.__name__ for task in app._app_tasks}


def test_a_send_that_raised_in_an_agent_goes_to_the_worker_and_other_errors_do_not() -> None:
    failed: list[BaseException] = []
    worker: Any = SimpleNamespace(on_send_failed=failed.append)

    async def raising(exc: BaseException) -> None:
        raise exc

    error = ProducerSendError("buffer gave up")
    asyncio.run(handled(worker, raising(error)))
    assert failed == [error]
    with pytest.raises(ValueError):
        asyncio.run(handled(worker, raising(ValueError("a bug"))))
    assert failed == [error]


class SlowChannel:
    """Stands for the topic a buffered table write goes to: aiokafka takes each write only
    when the test lets it."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.gate = asyncio.Event()

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await self.gate.wait()
        self.taken.append(fut.n)


@pytest.mark.parametrize("writes", [1, 3])  # 1: the write already taken off Faust's queue
@pytest.mark.parametrize("buffer_class", [DrainingBuffer, ProducerBuffer])
def test_a_full_flush_waits_for_every_table_write_in_faust_s_buffer(
        buffer_class: type[ProducerBuffer], writes: int) -> None:
    async def run() -> list[int]:
        channel = SlowChannel()
        buffer = buffer_class()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        await buffer.start()
        for n in range(writes):
            buffer.put(SimpleNamespace(n=n, message=SimpleNamespace(channel=channel)))  # type: ignore[arg-type]
        asyncio.get_running_loop().call_later(0.5, channel.gate.set)
        await asyncio.wait_for(buffer.flush(), 5)
        taken = list(channel.taken)
        await asyncio.sleep(0.6)  # the gate opens: the writes leave before the buffer stops
        await buffer.stop()
        return taken

    taken = asyncio.run(run())
    if buffer_class is DrainingBuffer:
        assert taken == list(range(writes))
    else:  # Faust's own: why DrainingBuffer exists (a commit after it would pass the writes)
        assert taken == []


def test_a_flush_after_a_table_write_failed_raises_rather_than_let_the_commit_go_on() -> None:
    class Refusing(SlowChannel):
        async def publish_message(self, fut: Any, wait: bool = False) -> None:
            raise KafkaTimeoutError("no leader")

    async def run() -> None:
        buffer = DrainingBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        await buffer.start()
        buffer.put(SimpleNamespace(n=0, message=SimpleNamespace(channel=Refusing())))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        with pytest.raises(RuntimeError, match=r"the buffer crashed.*no leader"):
            await asyncio.wait_for(buffer.flush(), 5)

    asyncio.run(run())


def test_the_app_s_producer_uses_the_draining_buffer(tmp_path: Path) -> None:
    host = FaustHost(Settings(), WorkerOptions(data_dir=tmp_path, store="memory://"))
    assert type(host.app.producer.buffer) is DrainingBuffer
    assert host.app.producer.buffer.app is host.app
    assert host.undelivered() == 0


def test_a_crash_even_during_start_up_ends_the_process_without_faust_s_clean_stop(
        tmp_path: Path) -> None:
    app = create_app(Settings(), load_city(), WorkerOptions(data_dir=tmp_path, store="memory://"),
                     make_worker=lambda *_: fake_worker())  # type: ignore[arg-type]

    class Exiting(CrashExitingWorker):
        exit_now = staticmethod(ended)

    worker = Exiting(app, loglevel="info", quiet=True)
    worker.on_worker_shutdown()  # stopped: Faust's clean stop follows
    recovery = app.tables  # a service of the app, as Faust's table recovery is
    asyncio.run(recovery.crash(RuntimeError("table recovery failed")))
    assert app.crash_reason is not None, "the crash reaches the app through the beacon"
    with pytest.raises(Ended, match="the Faust app crashed: RuntimeError"):
        worker.on_worker_shutdown()


def test_a_store_ahead_of_its_changelog_is_rebuilt_after_the_crash(tmp_path: Path) -> None:
    """Faust's recovery raises ConsistencyError for a store past its changelog's end (the topic
    was recreated): the crash exit drops the prefix mark, so the next start rebuilds."""
    options = WorkerOptions(data_dir=tmp_path)
    recover_state_dir(options)
    (options.state_dir / "db").write_text("x")
    app = SimpleNamespace(conf=SimpleNamespace(datadir=options.state_dir))
    forget_stores_ahead_of_changelog(app, RuntimeError("a timer raised"))
    recover_state_dir(options)
    assert (options.state_dir / "db").exists(), "other crashes keep the stores"
    forget_stores_ahead_of_changelog(app, ConsistencyError("persisted offset > highwater"))
    recover_state_dir(options)
    assert not (options.state_dir / "db").exists()


def test_a_restarted_worker_claims_the_partitions_it_owned_last(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, store="memory://")
    before = FaustHost(Settings(), options).app
    before.assignor._assignment = ClientAssignment(
        actives={"telemetry.water": [1, 3, 9], "telemetry.energy": [1, 3]},
        standbys={"telemetry.water": [0]})
    remember_assignment(before)
    after = FaustHost(Settings(), options).app
    assert after.assignor._assignment.actives == {}
    claim_last_assignment(after, partitions=8)
    claimed = after.assignor._assignment
    assert claimed.actives == {"telemetry.water": [1, 3], "telemetry.energy": [1, 3]}, (
        "a partition the topics no longer have is not claimed")
    assert claimed.standbys == {"telemetry.water": [0]}


def test_a_worker_without_a_usable_last_assignment_joins_as_a_new_member(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, store="memory://")
    app = FaustHost(Settings(), options).app
    claim_last_assignment(app, partitions=8)  # no file
    assert app.assignor._assignment.actives == {}
    (options.state_dir / ASSIGNMENT_FILE).write_bytes(b'{"actives": ')  # torn write
    claim_last_assignment(app, partitions=8)
    assert app.assignor._assignment.actives == {}


def test_the_app_keeps_each_assignment_for_the_next_start(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, store="memory://")
    assigned: list[bool] = []
    fake = fake_worker(on_partitions_assigned=lambda: assigned.append(True))
    app = create_app(Settings(), load_city(), options,
                     make_worker=lambda *_: fake)  # type: ignore[arg-type]
    app.assignor._assignment = ClientAssignment(actives={"telemetry.water": [2]}, standbys={})
    asyncio.run(app.on_partitions_assigned.send(set()))
    assert assigned == [True]
    again = create_app(Settings(), load_city(), options,
                       make_worker=lambda *_: fake)  # type: ignore[arg-type]
    assert again.assignor._assignment.actives == {"telemetry.water": [2]}


def test_a_last_assignment_of_the_wrong_shape_is_not_claimed(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, store="memory://")
    app = FaustHost(Settings(), options).app
    (options.state_dir / ASSIGNMENT_FILE).write_bytes(b'{"actives": null, "standbys": {}}')
    claim_last_assignment(app, partitions=8)
    assert app.assignor._assignment.actives == {}
    (options.state_dir / ASSIGNMENT_FILE).write_bytes(
        b'{"actives": {"telemetry.water": ["1", 2, -1]}, "standbys": {}}')
    claim_last_assignment(app, partitions=8)
    assert app.assignor._assignment.actives == {"telemetry.water": [2]}


def test_a_state_directory_that_cannot_be_written_costs_only_the_claim(tmp_path: Path) -> None:
    options = WorkerOptions(data_dir=tmp_path, store="memory://")
    app = FaustHost(Settings(), options).app
    (options.state_dir / "last-assignment.tmp").mkdir()  # the write fails with an OSError
    remember_assignment(app)
    assert not (options.state_dir / ASSIGNMENT_FILE).exists()


def test_table_memory_sums_rocksdb_s_accounting_over_the_open_partitions(tmp_path: Path) -> None:
    dbs = {p: rocksdict.Rdict(str(tmp_path / str(p))) for p in (0, 3)}
    try:
        for i in range(5_000):
            dbs[0][f"entity-{i}".encode()] = b"x" * 200
        stores = [SimpleNamespace(data=SimpleNamespace(_dbs=dbs)),
                  SimpleNamespace(data={})]  # a memory:// table holds no RocksDB
        for i in range(0, 5_000, 7):  # reads fill the block cache once a flush made files
            assert dbs[0][f"entity-{i}".encode()] == b"x" * 200
        memory = table_memory(stores)

        def summed(name: str) -> int:
            return sum(db.property_int_value(f"rocksdb.{name}") for db in dbs.values())

        assert memory.partitions == 2
        assert memory.memtables == summed("cur-size-all-mem-tables") >= 5_000 * 200
        assert memory.block_cache == summed("block-cache-usage")
        assert memory.readers == summed("estimate-table-readers-mem")
    finally:
        for db in dbs.values():
            db.close()


def test_standby_replicas_reach_faust(tmp_path: Path) -> None:
    app = create_app(Settings(), load_city(), WorkerOptions(data_dir=tmp_path, store="memory://",
                                                            standby_replicas=1))
    assert app.conf.table_standby_replicas == 1


CHANGELOG = f"{Settings().kafka.topic_prefix}citystream-worker-water-state-changelog"


def test_the_hosts_recovery_waits_for_partitions_behind_their_highwater(tmp_path: Path) -> None:
    """`FaustHost.recovery_waiting` reads Faust's recovery (faust-streaming internals: this
    test fails if they change), started and ended by Faust's own transitions."""
    host = FaustHost(Settings(), WorkerOptions(data_dir=tmp_path, store="memory://"))
    recovery: Any = host.app.tables.recovery  # type: ignore[attr-defined]
    behind, replayed, fresh = (TP(CHANGELOG, n) for n in range(3))
    assert host.recovery_waiting() == {}
    recovery._set_recovery_started()
    recovery._recovery_started_at -= 100
    recovery.active_highwaters.update({behind: 10, replayed: 5, fresh: 7})
    recovery.active_offsets.update({behind: 4, replayed: 5, fresh: -1})
    now = time.monotonic()
    recovery._active_events_received_at.update({behind: now - 30, replayed: now - 1})
    waiting = host.recovery_waiting()
    assert set(waiting) == {behind, fresh}
    assert 30 <= waiting[behind] < 31 and 100 <= waiting[fresh] < 101
    host.app._stopped.set()  # stopping: a stalled recovery is no cause to restart then
    assert host.app.should_stop and host.recovery_waiting() == {}
    host.app._stopped.clear()
    assert host.recovery_waiting()
    recovery._set_recovery_ended()
    assert host.recovery_waiting() == {}


def test_the_recovery_watch_runs_from_the_apps_start_and_outlives_its_errors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    made: list[Worker] = []

    def make_worker(*args: Any) -> Worker:
        made.append(Worker(*args))
        return made[0]

    app = create_app(Settings(), load_city(), WorkerOptions(data_dir=tmp_path, store="memory://"),
                     make_worker=make_worker)
    [watch] = [child for child in app._children if isinstance(child, RecoveryWatch)]
    assert watch.check == made[0].check_recovery and watch.interval == 5.0

    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) <= 2:
            raise KeyError("gone")

    async def run() -> int:
        watch = RecoveryWatch(check, 0.01)
        await watch.start()
        await asyncio.sleep(0.2)
        await watch.stop()
        stopped_at = len(checks)
        await asyncio.sleep(0.05)
        return stopped_at

    stopped_at = asyncio.run(run())
    assert len(checks) >= 4, "checked on after its errors"
    assert len(checks) == stopped_at, "nothing checked once stopped"
    assert caplog.text.count("could not check the table recovery") == 1
    assert "KeyError('gone')" in caplog.text


def test_the_fetch_state_reads_aiokafkas_own_view_of_a_partition() -> None:
    """`FaustHost.fetch_state` reads aiokafka's fetcher and subscriptions (internals: this
    test fails if they change); the consumer around them stands for Faust's."""
    water = [TP("telemetry.water", n) for n in range(4)]
    ours = [AIOKafkaTP(tp.topic, tp.partition) for tp in water]

    async def states() -> list[str]:
        subscriptions = SubscriptionState()
        subscriptions.assign_from_user(set(ours))
        fetcher = Fetcher(AIOKafkaClient(bootstrap_servers="127.0.0.1:1"), subscriptions)
        await fetcher.close()  # its fetch routine left alone would act on what follows
        inner = SimpleNamespace(_fetcher=fetcher)
        consumer = SimpleNamespace(_paused_partitions={water[1]}, _active_partitions={water[0]},
                                   _read_offset={water[0]: 4},
                                   _thread=SimpleNamespace(_ensure_consumer=lambda: inner))
        seen = [_fetch_state(consumer, water[0])]
        subscriptions.seek(ours[0], 5)
        assignment = subscriptions.subscription.assignment
        assignment.state_value(ours[1]).await_reset(OffsetResetStrategy.EARLIEST)
        assignment.state_value(ours[2]).fetch_committed()
        fetcher._client.cluster.leader_for_partition = lambda tp: 2 if tp.partition < 3 else 3
        fetcher._in_flight.add(2)
        fetcher._records[ours[0]] = object()
        seen += [_fetch_state(consumer, water[0]), _fetch_state(consumer, water[3]),
                 _fetch_state(consumer, TP("telemetry.water", 4))]
        return seen

    assert asyncio.run(states()) == [
        "Faust active, read offset 4; aiokafka fetching, position none, highwater None, last "
        "fetch never, nothing fetched and not consumed; leader None: no request in flight, 4 of "
        "its partitions without a position (telemetry.water[0]: none, telemetry.water[1]: none, "
        "telemetry.water[2]: none, ...)",
        "Faust active, read offset 4; aiokafka fetching, position 5, highwater None, last fetch "
        "never, records fetched and not consumed; leader 2: a request in flight, 2 of its "
        "partitions without a position (telemetry.water[1]: awaiting reset, "
        "telemetry.water[2]: none, waiting for its committed offset)",
        "Faust not active, read offset None; aiokafka fetching, position none, highwater None, "
        "last fetch never, nothing fetched and not consumed; leader 3: no request in flight, 1 "
        "of its partitions without a position (telemetry.water[3]: none)",
        "Faust not active, not in aiokafka's assignment"]


def test_the_consumer_state_shows_a_position_update_waiting_for_a_committed_offset() -> None:
    """The one wait in aiokafka's fetcher without a timeout: a broker's position update waits
    for a committed offset only the coordinator's refresh task fetches; while it waits, no
    partition of that broker is fetched. `FaustHost.consumer_state` shows it (aiokafka
    internals: this test fails if they change)."""
    tp = AIOKafkaTP("telemetry.water", 0)

    async def state() -> str:
        subscriptions = SubscriptionState()
        subscriptions.assign_from_user({tp})
        fetcher = Fetcher(AIOKafkaClient(bootstrap_servers="127.0.0.1:1"), subscriptions)
        await fetcher.close()
        assignment = subscriptions.subscription.assignment
        updating = asyncio.create_task(fetcher._update_fetch_positions(assignment, 2, [tp]))
        fetcher._pending_tasks.add(updating)
        fetcher._in_flight.add(2)

        async def refresh() -> None:
            raise KeyError("refresh failed")

        refreshing = asyncio.create_task(refresh())
        await asyncio.sleep(0.05)
        inner = SimpleNamespace(_fetcher=fetcher,
                                _coordinator=SimpleNamespace(_commit_refresh_task=refreshing))
        seen = _consumer_state(SimpleNamespace(
            _thread=SimpleNamespace(_ensure_consumer=lambda: inner)))
        updating.cancel()
        return seen

    assert re.fullmatch(
        r"aiokafka: requests in flight to brokers \[2\], pending tasks "
        r"\[_update_fetch_positions at line \d+\]; committed-offset refresh task ended "
        r"\(KeyError\('refresh failed'\)\), 1 partitions waiting for their committed offset",
        asyncio.run(state()))
