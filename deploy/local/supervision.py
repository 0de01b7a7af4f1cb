"""Processes of the local stack: spawned detached, waited for until ready, stopped by group.

A `Service` is one supervised process (its pid, start time and log under ``<home>/logs``);
`wait_ready` polls a readiness probe and turns a process that dies or never answers into a
`StackError` that shows its log; `run` does the same for one-off commands.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.local.settings import LOOPBACK
from models.errors import StackError

Progress = Callable[[str], None]


def say(msg: str) -> None:
    """The default progress report: one line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    now = _proc_start_time(pid)
    if now is None:
        return False
    if started is not None and started != now:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    if state != "Z":
        return True
    # A multi-threaded process whose main thread has exited shows "Z" while its other threads
    # still tear down and hold its files (and a mount busy); it is gone once they are.
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def check_port(port: int, setting: str, host: str = LOOPBACK) -> None:
    """`StackError` naming ``CITYSTREAM_STACK__<setting>`` when `port` is taken on `host`."""
    if port_in_use(port, host):
        raise StackError(f"port {port} on {host} is already in use (another instance?); "
                         f"stop it or choose another port with CITYSTREAM_STACK__{setting}")


def in_netns(netns: str, argv: list[str]) -> list[str]:
    """`argv` run in the network namespace `netns` (of ``ip netns add``), with the same pid.

    ``nsenter --net`` rather than ``ip netns exec``: the latter also makes a mount namespace,
    a copy of every mount of the moment, which then pins them (a loop device another test
    wants to detach, say) for as long as the process runs."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


@dataclass
class Service:
    """One supervised service process: spawned detached, stopped by process group; in the
    network namespace `netns` when given (`in_netns`)."""

    name: str
    home: Path
    pid: int | None = None
    started: str | None = None
    netns: str | None = None

    @property
    def log(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self.netns:
            argv = in_netns(self.netns, argv)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=self.home,
            )
        self.pid = proc.pid
        self.started = _proc_start_time(proc.pid)

    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid, self.started)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
        if not self.running():
            return
        assert self.pid is not None
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.running():
                return
            time.sleep(0.1)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while self.running():
            _reap(self.pid)
            time.sleep(0.05)


def wait_ready(what: str, svc: Service, probe: Callable[[], bool], timeout: float) -> None:
    """Poll `probe` until it returns True; `StackError` with the log's tail if `svc` exits or
    `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not svc.running():
            raise StackError(f"{what} exited during start-up; its log ({svc.log}) ends:\n"
                             f"{svc.log_tail()}")
        try:
            if probe():
                return
        except Exception:  # not ready yet, whatever the reason
            pass
        time.sleep(0.3)
    raise StackError(f"{what} did not become ready within {timeout:.0f}s; see {svc.log}:\n"
                     f"{svc.log_tail()}")


def run(argv: list[str], what: str, **kw: Any) -> str:
    """Run a command to completion; its stdout, or `StackError` with its output."""
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {argv[0]} not found") from exc
    except subprocess.CalledProcessError as exc:
        raise StackError(f"{what} failed ({' '.join(argv[:3])} ...):\n{exc.stdout}\n{exc.stderr}"
                         ) from exc
    return str(done.stdout)
