"""The group lease of streams/lease.py: when it lapses, and the aiokafka methods it wraps."""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from streams import lease
from streams.lease import LEASE_FRACTION, Lease


def test_a_lease_lapses_after_its_share_of_the_session_timeout() -> None:
    held = Lease("g", session_timeout_s=10.0)
    assert held.overdue_s(1e9) is None, "never renewed: the member has not joined yet"
    held.renew(100.0)
    assert held.overdue_s(100.0 + LEASE_FRACTION * 10) is None
    assert held.overdue_s(109.0) == pytest.approx(9.0)
    held.renew(95.0)
    assert held.renewed_at == 100.0, "an older heartbeat does not move the lease back"
    held.joining = True
    assert held.overdue_s(200.0) is None, "joining: its partitions were revoked and flushed"
    held.joining = False
    held.closed = True
    assert held.overdue_s(200.0) is None


def test_the_wrapped_coordinator_methods_still_exist_in_aiokafka() -> None:
    for name, params in [("_do_heartbeat", ["self"]),
                         ("_do_rejoin_group", ["self", "subscription"]), ("close", ["self"])]:
        method = getattr(GroupCoordinator, name)
        assert inspect.iscoroutinefunction(method), name
        assert list(inspect.signature(method).parameters) == params, name
    init = inspect.getsource(GroupCoordinator.__init__)
    assert "self._session_timeout_ms" in init and "self.group_id" in init


class Coordinator:
    """What the wrappers read of aiokafka's GroupCoordinator."""

    group_id = "g1"
    _session_timeout_ms = 10_000

    def __init__(self) -> None:
        self.answers: list[bool] = [True]
        self.closed = False

    async def _do_heartbeat(self) -> bool:
        return self.answers.pop(0)

    async def _do_rejoin_group(self, subscription: Any) -> bool:
        return subscription == "ok"

    async def close(self) -> None:
        self.closed = True


def test_install_renews_on_answered_heartbeats_and_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroupCoordinator, "_citystream_lease", False, raising=False)
    for name in ("_do_heartbeat", "_do_rejoin_group", "close"):
        monkeypatch.setattr(GroupCoordinator, name, getattr(Coordinator, name))
    now = [1000.0]
    monkeypatch.setattr(lease, "_now", lambda: now[0])
    lease.install()
    lease.install()  # idempotent: wrapped once
    member = Coordinator()
    wrapped = GroupCoordinator

    assert asyncio.run(wrapped._do_rejoin_group(member, "no")) is False
    assert lease.lapsed("g1", now=1e9) is None, "not joined yet"
    assert asyncio.run(wrapped._do_rejoin_group(member, "ok")) is True
    now[0] = 1009.0
    assert lease.lapsed("g1") == pytest.approx(9.0)
    assert lease.lapsed("other") is None
    assert asyncio.run(wrapped._do_heartbeat(member)) is True
    assert lease.lapsed("g1") is None
    member.answers = [False]
    now[0] = 1020.0
    assert asyncio.run(wrapped._do_heartbeat(member)) is False
    assert lease.lapsed("g1") == pytest.approx(11.0), "an unanswered heartbeat renews nothing"
    asyncio.run(wrapped.close(member))
    assert member.closed and lease.lapsed("g1") is None


class Exec(Exception):
    """What `os.execv` or `os._exit` would have done."""


@pytest.fixture
def no_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def execv(path: str, argv: list[str]) -> None:
        raise Exec("execv", argv)

    def exit_now(status: int) -> None:
        raise Exec("exit", status)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(os, "_exit", exit_now)
    for name in (lease.RESTARTED, lease.RESTARTS_IN_PLACE):
        monkeypatch.setenv(name, "")  # so that what restart_in_place sets is undone after
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_exec")
def test_a_restart_in_place_execs_the_same_command_and_remembers_when() -> None:
    with pytest.raises(Exec) as done:
        lease.restart_in_place("lease lapsed", now=1000.0)
    assert done.value.args[0] == "execv"
    assert os.environ[lease.RESTARTED] == "lease lapsed"
    assert os.environ[lease.RESTARTS_IN_PLACE] == "1000"
    with pytest.raises(Exec):
        lease.restart_in_place("lease lapsed", now=1100.0)
    assert os.environ[lease.RESTARTS_IN_PLACE] == "1000 1100"
    with pytest.raises(Exec):
        lease.restart_in_place("lease lapsed", now=1000.0 + lease.RESTART_WINDOW_S)
    assert os.environ[lease.RESTARTS_IN_PLACE] == f"1100 {1000 + lease.RESTART_WINDOW_S:.0f}"


@pytest.mark.usefixtures("no_exec")
def test_restarts_in_place_that_do_not_cure_it_end_in_a_crash_for_the_supervisor(
        caplog: pytest.LogCaptureFixture) -> None:
    for i in range(lease.MAX_RESTARTS_IN_PLACE):
        with pytest.raises(Exec) as done:
            lease.restart_in_place("stalled", now=1000.0 + 120 * i)
        assert done.value.args[0] == "execv"
    with pytest.raises(Exec) as done:
        lease.restart_in_place("stalled", now=1000.0 + 120 * lease.MAX_RESTARTS_IN_PLACE)
    assert done.value.args == ("exit", lease.EXIT_CRASHED)
    assert (f"stalled; restarted in place {lease.MAX_RESTARTS_IN_PLACE} times in the last 15 "
            "minutes already") in caplog.text


@pytest.mark.usefixtures("no_exec")
def test_restart_times_that_are_not_numbers_count_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lease.RESTARTS_IN_PLACE, "1000 soon")
    with pytest.raises(Exec) as done:
        lease.restart_in_place("lease lapsed", now=1100.0)
    assert done.value.args[0] == "execv"
    assert os.environ[lease.RESTARTS_IN_PLACE] == "1100"
