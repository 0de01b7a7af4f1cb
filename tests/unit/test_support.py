"""tests/support.py, which the integration tests and the benchmarks build on: the process
harness against small Python programs, and MQTT's variable byte integer."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support import Process, stop_all, varint

SLEEPER = "import time; print('sleeper running', flush=True); time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn running', flush=True); time.sleep(60)")


def program(name: str, code: str, log_dir: Path, ready: str | None = None) -> Process:
    return Process(name, [sys.executable, "-c", code], os.environ, log_dir / f"{name}.log",
                   ready=ready)


def test_ready_once_it_says_so_and_started_again_after_a_kill(tmp_path: Path) -> None:
    proc = program("sleeper", SLEEPER, tmp_path, ready="sleeper running").start()
    assert proc.running() and "sleeper running" in proc.tail()
    proc.kill()
    assert not proc.running() and proc.proc is not None
    assert proc.proc.returncode == -signal.SIGKILL
    proc.start()  # looks for the marker in what the new run logs, not in the old lines
    assert proc.running()
    proc.stop()
    assert proc.proc.returncode == -signal.SIGTERM
    assert proc.tail().count("sleeper running") == 2


def test_a_program_that_exits_during_start_up_fails_with_its_log(tmp_path: Path) -> None:
    proc = program("broken", "import sys; print('no config'); sys.exit(3)", tmp_path,
                   ready="broken running")
    with pytest.raises(RuntimeError, match=r"(?s)broken exited \(3\).*no config"):
        proc.start()


def test_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    proc = program("stubborn", STUBBORN, tmp_path, ready="stubborn running").start()
    proc.stop(timeout_s=0.5)
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL


def test_stop_all_stops_what_is_still_running(tmp_path: Path) -> None:
    first = program("a", SLEEPER, tmp_path, ready="sleeper running").start()
    second = program("b", SLEEPER, tmp_path).start()
    first.stop()
    stop_all()
    assert not first.running() and not second.running()


@pytest.mark.parametrize(("n", "encoded"), [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")])
def test_varint_matches_the_mqtt_specification(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded
