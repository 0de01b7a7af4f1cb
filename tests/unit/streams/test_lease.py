"""The group lease of streams/lease.py: when it lapses, and the aiokafka methods it wraps."""

from __future__ import annotations

import asyncio
import inspect
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
