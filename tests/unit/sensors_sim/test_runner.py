"""Pacing, stop conditions and the horizon guard of `runner.run`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sensors_sim.faults import VALID
from sensors_sim.generator import Message
from sensors_sim.runner import FellBehind, Pacing, run
from sensors_sim.transport import TransportReport

HOUR = 3_600_000


class FakeTransport:
    """Records what was published and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def publish(self, msg: Message) -> None:
        self.sent.append((time.monotonic(), msg.topic))

    def pump(self, timeout: float) -> None:
        time.sleep(timeout)

    def unacked(self) -> int:
        return 0

    def close(self, timeout: float) -> TransportReport:
        self.closed = True
        return TransportReport(acked=len(self.sent))


def _stream(sim_times_ms: list[int], oldest_ms: list[int] | None = None) -> Iterator[Message]:
    for i, t in enumerate(sim_times_ms):
        oldest = oldest_ms[i] if oldest_ms else t
        yield Message(f"city/x/water/s{i}", b"{}", 0, 1, (), (VALID,), oldest, t)


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_never_publishes_before_the_simulated_time() -> None:
    now = _now_ms()
    fake = FakeTransport()
    t0 = time.monotonic()
    summary = run(_stream([now - 1000, now + 400]), fake, Pacing(), sim_start_ms=now - 2000)
    assert summary.messages == 2 and fake.started and fake.closed
    assert fake.sent[0][0] - t0 < 0.2
    assert fake.sent[1][0] - t0 >= 0.35


def test_speed_spreads_simulated_time_over_wall_time() -> None:
    now = _now_ms()
    start = now - HOUR
    times = [start + i * 60_000 for i in range(4)]  # 3 simulated minutes
    fake = FakeTransport()
    t0 = time.monotonic()
    run(_stream(times), fake, Pacing(speed=360.0), sim_start_ms=start)  # 0.5 s of wall time
    assert fake.sent[-1][0] - t0 == pytest.approx(0.5, abs=0.15)


def test_rate_limits_messages_per_second() -> None:
    now = _now_ms()
    fake = FakeTransport()
    t0 = time.monotonic()
    summary = run(_stream([now - HOUR] * 60), fake, Pacing(rate=200.0), sim_start_ms=now - HOUR)
    assert summary.messages == 60
    assert fake.sent[-1][0] - t0 == pytest.approx(0.3, abs=0.1)


def test_count_and_duration_stop_the_run() -> None:
    now = _now_ms()
    summary = run(_stream([now - HOUR] * 100), FakeTransport(), Pacing(), sim_start_ms=now,
                  count=10)
    assert (summary.messages, summary.stopped_by) == (10, "count")
    summary = run(_stream([now - HOUR, now + 5000]), FakeTransport(), Pacing(),
                  sim_start_ms=now, duration_s=0.3)
    assert (summary.messages, summary.stopped_by) == (1, "duration")
    assert summary.elapsed_s < 1.0


def test_falling_behind_the_horizon_stops_instead_of_sending_too_old_readings() -> None:
    now = _now_ms()
    old = now - 24 * HOUR + 60_000  # inside the horizon, but not by the 2 min guard
    fake = FakeTransport()
    with pytest.raises(FellBehind, match="too_old"):
        run(_stream([now - HOUR, now - HOUR], [now - HOUR, old]), fake, Pacing(),
            sim_start_ms=now - HOUR)
    assert len(fake.sent) == 1 and fake.closed


def test_dry_run_pacing_neither_waits_nor_checks_the_horizon() -> None:
    far = _now_ms() + 10 * HOUR
    fake = FakeTransport()
    t0 = time.monotonic()
    summary = run(_stream([far, far + 1000], [0, 0]), fake, Pacing(realtime=False),
                  sim_start_ms=far)
    assert summary.messages == 2 and time.monotonic() - t0 < 0.5
