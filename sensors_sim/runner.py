"""Run a simulation against a transport: pacing, stop conditions, recording, progress, summary.

Pacing (skipped entirely by --dry-run) holds each message until all of these are true:

* wall clock >= its simulated time (a reading is never published before it happened, so
  valid readings are never in the future);
* with --speed S > 0: wall clock >= run start + (sim time - sim start) / S;
* with --rate R > 0: at most R messages per second (bursts of a few ms allowed).

Before handing a message over it checks that its oldest timestamp is still younger than the
horizon minus 2 minutes; if the simulation has fallen that far behind the wall clock the run
stops (`FellBehind`) instead of publishing valid readings that ingest would call too_old.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from models.errors import CitystreamError
from sensors_sim.generator import Message
from sensors_sim.recording import Recorder, iso_utc
from sensors_sim.transport import Transport, TransportReport

HORIZON_GUARD_MS = 120_000
"""Valid readings are published at least this long before they would fall out of the horizon."""


class FellBehind(CitystreamError):
    """The simulated clock fell so far behind the wall clock that readings would be too old."""


@dataclass(frozen=True)
class Pacing:
    """How fast to go; see the module docstring."""

    speed: float = 0.0
    rate: float = 0.0
    realtime: bool = True
    """False for --dry-run: no waiting and no horizon check at all."""
    horizon_ms: int = 86_400_000


@dataclass
class Summary:
    """What a run did."""

    messages: int = 0
    readings: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    first_sim_ms: int | None = None
    last_sim_ms: int | None = None
    stopped_by: str = "end"
    transport: TransportReport = field(default_factory=TransportReport)

    @property
    def readings_per_s(self) -> float:
        """Readings per wall-clock second, up to the last PUBACK."""
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def messages_per_s(self) -> float:
        """Messages per wall-clock second, up to the last PUBACK."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True unless messages went unacknowledged, were refused, or the run fell behind."""
        return (self.transport.unacked == 0 and self.transport.rejected == 0
                and self.stopped_by != "fell behind")

    def line(self) -> str:
        """The one-line summary printed at the end of every run."""
        span = ""
        if self.first_sim_ms is not None and self.last_sim_ms is not None:
            span = f", sim {iso_utc(self.first_sim_ms)} .. {iso_utc(self.last_sim_ms)}"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        t = self.transport
        extra = f", rejected by broker {t.rejected} ({dict(t.reject_reasons)})" \
            if t.rejected else ""
        extra += f", reconnects {t.reconnects}" if t.reconnects else ""
        return (f"sim: {self.messages} messages, {self.readings} readings in "
                f"{self.elapsed_s:.1f} s ({self.readings_per_s:,.0f} readings/s, "
                f"{self.messages_per_s:,.0f} msg/s); acked {t.acked}, unacked {t.unacked}"
                f"{extra}; faults: {faults}; stopped by {self.stopped_by}{span}")


class _Progress:
    """A carriage-return progress line on a terminal, at most twice a second."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.next = 0.0
        self.width = 0

    def show(self, s: Summary, unacked: int, sim_ms: int, now: float, start: float,
             force: bool = False) -> None:
        if self.out is None or (now < self.next and not force):
            return
        self.next = now + 0.5
        elapsed = max(now - start, 1e-9)
        text = (f"{iso_utc(sim_ms)}  {s.readings:,} readings ({s.readings / elapsed:,.0f}/s)  "
                f"{s.messages:,} msgs  faults {sum(s.faults.values()):,}  unacked {unacked:,}")
        self.out.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.out.flush()

    def clear(self) -> None:
        if self.out is not None and self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.out.flush()


def run(messages: Iterator[Message], transport: Transport, pacing: Pacing, *,
        sim_start_ms: int, count: int | None = None, duration_s: float | None = None,
        recorder: Recorder | None = None, progress: TextIO | None = None,
        ack_timeout_s: float = 30.0) -> Summary:
    """Publish `messages` until `count` messages or `duration_s` wall seconds (or Ctrl-C).

    Raises TransportError if the broker cannot be used; returns the summary otherwise
    (`stopped_by` says why the run ended).
    """
    summary = Summary()
    bar = _Progress(progress)
    stop_flag: list[str] = []
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop_flag.append("SIGTERM")

    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    transport.start()
    wall0 = time.time()
    mono0 = time.monotonic()
    deadline = mono0 + duration_s if duration_s is not None else None
    rate_next = mono0
    horizon_limit = pacing.horizon_ms - HORIZON_GUARD_MS
    sim_ms = sim_start_ms
    try:
        for msg in messages:
            if count is not None and summary.messages >= count:
                summary.stopped_by = "count"
                break
            if stop_flag:
                summary.stopped_by = stop_flag[0]
                break
            sim_ms = msg.sim_time_ms
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                summary.stopped_by = "duration"
                break
            if pacing.realtime:
                release = mono0 + (sim_ms / 1000 - wall0)  # sim time as a monotonic instant
                if pacing.speed > 0:
                    release = max(release, mono0 + (sim_ms - sim_start_ms) / 1000 / pacing.speed)
                if pacing.rate > 0:
                    release = max(release, rate_next)
                    rate_next = max(rate_next, now - 0.005) + 1.0 / pacing.rate
                if release > now + 0.002:
                    if deadline is not None and release >= deadline:
                        summary.stopped_by = "duration"
                        break
                    while now < release and not stop_flag:
                        transport.pump(min(release - now, 0.05))
                        now = time.monotonic()
                        bar.show(summary, transport.unacked(), sim_ms, now, mono0)
                    if stop_flag:
                        continue
                lag_ms = int((wall0 + (now - mono0)) * 1000) - msg.oldest_ts_ms
                if lag_ms > horizon_limit:
                    summary.stopped_by = "fell behind"
                    raise FellBehind(
                        f"the simulation fell {lag_ms / 3_600_000:.1f} h behind the wall clock, "
                        f"past the late-data horizon ({pacing.horizon_ms / 3_600_000:.1f} h) "
                        f"minus {HORIZON_GUARD_MS // 1000} s: its readings would arrive "
                        f"too_old. Raise --speed or --rate, or use a later --start.")
            transport.publish(msg)
            if recorder is not None:
                recorder.write(msg)
            summary.messages += 1
            summary.readings += msg.readings
            if msg.faults:
                summary.faults.update(msg.faults)
            if summary.first_sim_ms is None:
                summary.first_sim_ms = sim_ms
            if progress is not None and (summary.messages & 255) == 0:
                bar.show(summary, transport.unacked(), sim_ms, time.monotonic(), mono0)
    except KeyboardInterrupt:
        summary.stopped_by = "interrupt"
    finally:
        summary.last_sim_ms = sim_ms if summary.messages else None
        bar.show(summary, transport.unacked(), sim_ms, time.monotonic(), mono0, force=True)
        bar.clear()
        summary.transport = transport.close(ack_timeout_s)
        summary.elapsed_s = time.monotonic() - mono0  # including the wait for the last PUBACKs
        if recorder is not None:
            recorder.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return summary


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def stderr_if_tty() -> TextIO | None:
    """stderr when it is a terminal (for the progress line), else None."""
    return sys.stderr if sys.stderr.isatty() else None
