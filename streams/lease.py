"""Self-fencing of a worker cut off from Kafka: nothing it still holds is delivered after the
group gave its partitions to another worker.

A consumer-group member owns its partitions only as long as the group coordinator hears from
it: the coordinator gives them to another member once `session.timeout.ms` has passed since it
last received a heartbeat. A member cut off from Kafka does not learn this; its producer buffers
what it sends meanwhile (KPI windows closed by the quiet timer, table changelog writes) and
delivers them when the network heals, after the new owner's: stale windows in InfluxDB, stale
state in the changelogs (docs/cluster.md, fault 2).

So each member holds a *lease*: renewed by every heartbeat the coordinator answered (from the
moment it was sent, a lower bound of when the coordinator received it) and by every completed
group join. A lease unrenewed for `LEASE_FRACTION` of the session timeout has *lapsed*: the
partitions may be another member's by the time anything sent now arrives. The worker
(streams/worker.py) then sends nothing more, and if its producer still holds undelivered records
it restarts in place (`restart_in_place`: the buffers die with the old process image, the
tables are brought up to date from the changelogs), before the coordinator can have moved the
partitions. A member between the revocation of its partitions and the end of its join owns
nothing and sends nothing (Faust flushed its producer when the partitions were revoked), so its
lease does not lapse then.

What this cannot fence: a process paused longer than the lease (SIGSTOP, a swap storm), which
may deliver what it buffered before it looks at its lease again. Kafka transactions fence that
too; PITFALLS.md says why the worker does not use Faust's exactly-once mode.

aiokafka has no public hook for heartbeats: `install` wraps three methods of its
`GroupCoordinator` (tests/unit/streams/test_lease.py fails if they change).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = ["EXIT_CRASHED", "LEASE_FRACTION", "MAX_RESTARTS_IN_PLACE", "RESTARTED",
           "RESTARTS_IN_PLACE", "RESTART_WINDOW_S", "Lease", "exit_crashed", "install", "lapsed",
           "restart_in_place"]

log = logging.getLogger(__name__)

_now = time.monotonic

RESTARTED = "CITYSTREAM_RESTARTED_IN_PLACE"
"""Set (to the reason) in the environment of a process `restart_in_place` started: it waits
for Kafka however long that takes rather than give up at start."""

RESTARTS_IN_PLACE = "CITYSTREAM_RESTARTS_IN_PLACE"
"""The times (`time.monotonic`, system-wide on Linux, so they survive `execv`; unlike the wall
clock, never stepped) of this process's recent restarts in place, kept in its environment
across them (a supervisor's fresh start has none)."""

MAX_RESTARTS_IN_PLACE = 5
RESTART_WINDOW_S = 900.0
"""At most `MAX_RESTARTS_IN_PLACE` restarts in place in `RESTART_WINDOW_S`: a partition that
stalls again after each restart would otherwise restart the worker every two minutes for ever."""

EXIT_CRASHED = 70
"""The exit status of a worker whose Faust app crashed (EX_SOFTWARE)."""

LEASE_FRACTION = 0.8
"""The share of the session timeout a lease lasts: the rest is the margin for the watch's
interval and the time a heartbeat takes to reach the coordinator."""


@dataclass
class Lease:
    """A group member's hold on its partitions, as this process can prove it."""

    group: str
    session_timeout_s: float
    renewed_at: float | None = None  # None until the member first joined the group
    joining: bool = False
    closed: bool = False

    def renew(self, at: float) -> None:
        """Called when the coordinator answered a heartbeat sent at `at`, or a join ended."""
        if self.renewed_at is None or at > self.renewed_at:
            self.renewed_at = at

    def overdue_s(self, now: float) -> float | None:
        """Seconds since the last renewal, if that is past the lease; else None. A lease
        never renewed, joining or closed is never overdue."""
        if self.renewed_at is None or self.joining or self.closed:
            return None
        age = now - self.renewed_at
        return age if age > LEASE_FRACTION * self.session_timeout_s else None


_leases: weakref.WeakKeyDictionary[Any, Lease] = weakref.WeakKeyDictionary()


def _lease(coordinator: Any) -> Lease:
    lease = _leases.get(coordinator)
    if lease is None:
        lease = Lease(str(coordinator.group_id), coordinator._session_timeout_ms / 1000)
        _leases[coordinator] = lease
    return lease


def install() -> None:
    """Called once per process before its group consumers start (idempotent): from then on
    every aiokafka group member of the process has a lease that `lapsed` sees."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    if getattr(GroupCoordinator, "_citystream_lease", False):
        return
    heartbeat = GroupCoordinator._do_heartbeat
    rejoin = GroupCoordinator._do_rejoin_group
    close = GroupCoordinator.close

    async def _do_heartbeat(self: Any) -> bool:
        sent = _now()
        answered: bool = await heartbeat(self)
        if answered:
            _lease(self).renew(sent)
        return answered

    async def _do_rejoin_group(self: Any, subscription: Any) -> bool:
        lease = _lease(self)
        lease.joining = True
        try:
            joined: bool = await rejoin(self, subscription)
        finally:
            lease.joining = False
        if joined:
            lease.renew(_now())
        return joined

    async def _close(self: Any) -> None:
        _lease(self).closed = True
        await close(self)

    GroupCoordinator._do_heartbeat = _do_heartbeat
    GroupCoordinator._do_rejoin_group = _do_rejoin_group
    GroupCoordinator.close = _close
    GroupCoordinator._citystream_lease = True


def lapsed(group: str, now: float | None = None) -> float | None:
    """Seconds since the lease of this process's member of `group` was last renewed, if it
    has lapsed; else None (also when the process has no member of `group`)."""
    at = _now() if now is None else now
    for lease in list(_leases.values()):
        if lease.group == group:
            overdue = lease.overdue_s(at)
            if overdue is not None:
                return overdue
    return None


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()


def exit_crashed(reason: str) -> NoReturn:
    """End this process at once with `EXIT_CRASHED`, for its supervisor to start it again: no
    clean shutdown runs (it could hang on what crashed); the next start brings the tables up to
    date from the changelogs (streams/store.py). Not a restart in place: a crash
    that recurs at every start would then loop without the supervisor's back-off."""
    log.critical("%s: exiting with status %d for the supervisor to start the worker again "
                 "(its tables are brought up to date from the changelogs)", reason, EXIT_CRASHED)
    _flush_logs()
    os._exit(EXIT_CRASHED)


def restart_in_place(reason: str, now: float | None = None) -> NoReturn:
    """Replace this process by a fresh run of the same command line (same pid, same
    environment, same log streams): every buffer, socket and thread of the old image is gone,
    and the worker brings its tables up to date from the changelogs. The `MAX_RESTARTS_IN_PLACE`
    + 1st within `RESTART_WINDOW_S` exits with `EXIT_CRASHED` instead, so that a cause that
    outlives every restart meets the supervisor's back-off and shows as a crash loop."""
    at = time.monotonic() if now is None else now
    recent = [t for t in _restart_times() if at - t < RESTART_WINDOW_S]
    if len(recent) >= MAX_RESTARTS_IN_PLACE:
        exit_crashed(f"{reason}; restarted in place {len(recent)} times in the last "
                     f"{RESTART_WINDOW_S / 60:.0f} minutes already, which did not cure it")
    log.critical("%s: restarting in place so that nothing this process holds is delivered "
                 "after the new owner's writes (its tables are brought up to date from the "
                 "changelogs)", reason)
    _flush_logs()
    os.environ[RESTARTED] = reason
    os.environ[RESTARTS_IN_PLACE] = " ".join(f"{t:.0f}" for t in [*recent, at])
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _restart_times() -> list[float]:
    try:
        return [float(t) for t in os.environ.get(RESTARTS_IN_PLACE, "").split()]
    except ValueError:  # not ours to trust: start counting afresh
        return []
