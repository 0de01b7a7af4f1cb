"""streams/app.py: what the worker's Faust app does when Kafka does not take a record, or when
the app itself crashes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import faust
import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.exceptions import ProducerSendError

from models.city import load_city
from models.settings import Settings
from streams.app import FaustHost, SendFailures, create_app, exit_if_crashed, handled
from streams.worker import WorkerOptions


class Ended(Exception):
    pass


def ended(why: str) -> NoReturn:
    raise Ended(why)


class App:
    should_stop = False


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
    fake = SimpleNamespace(tables={}, on_send_failed=failed.append)
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
