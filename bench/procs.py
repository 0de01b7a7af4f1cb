"""The processes a benchmark run starts: a private stack (Mosquitto, Kafka, InfluxDB on free
loopback ports in a temporary home, never a user's stack) and the measured programs as child
processes with their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from deploy.local.stack import MQTT_SERVICE_USER, Credentials, Stack, StackSettings, free_port

from .influx import Influx

ROOT = Path(__file__).resolve().parents[1]
_STARTED: list[Child] = []


def stop_children() -> None:
    """Stop every child this process started that still runs (after a failed measurement)."""
    while _STARTED:
        _STARTED.pop().stop(timeout_s=15)


class BenchStack:
    """`deploy.local.stack.Stack` in `home` with free ports (or, `attach`, the ports that home
    was started with); `close()` stops it."""

    def __init__(self, home: Path, say: Any = None, *, attach: bool = False) -> None:
        settings = StackSettings(home=home) if attach else StackSettings(
            home=home, mqtt_port=free_port(), kafka_port=free_port(),
            kafka_controller_port=free_port(), influxdb_port=free_port(),
            dashboard_port=free_port())
        self.stack = Stack(settings, say=say or (lambda msg: print(f"[stack] {msg}",
                                                                   file=sys.stderr)))
        self.home = home

    def up(self) -> BenchStack:
        self.stack.up()
        return self

    def close(self) -> None:
        self.stack.down()

    @property
    def info(self) -> dict[str, Any]:
        return self.stack.client_info()

    @property
    def bootstrap(self) -> str:
        return str(self.info["kafka"]["bootstrap"])

    def influx(self) -> Influx:
        i = self.info["influxdb"]
        return Influx(i["url"], i["org"], i["token"])

    def service_pids(self) -> dict[str, int]:
        return {name: svc.pid for name, svc in self.stack.services.items()
                if svc.pid is not None and name in Stack.SERVICES}

    def service_login(self) -> tuple[str, str]:
        """The MQTT user the services (and Telegraf) use: may read city/#."""
        return MQTT_SERVICE_USER, Credentials.load_or_create(self.home).mqtt_service_password


class Namespace:
    """Fresh names for one measurement: Kafka topic prefix, MQTT shared group, InfluxDB
    buckets; so measurements never see each other's data."""

    def __init__(self, label: str) -> None:
        self.tag = f"{label}-{uuid.uuid4().hex[:6]}"
        self.prefix = f"{self.tag}."
        self.group = self.tag.replace("-", "")
        self.telemetry = f"tel-{self.tag}"
        self.kpi = f"kpi-{self.tag}"

    def env(self) -> dict[str, str]:
        return {"CITYSTREAM_KAFKA__TOPIC_PREFIX": self.prefix,
                "CITYSTREAM_MQTT__SHARED_GROUP": self.group,
                "CITYSTREAM_INFLUX__BUCKET_TELEMETRY": self.telemetry,
                "CITYSTREAM_INFLUX__BUCKET_KPI": self.kpi}


class Child:
    """A measured program: started with its own log, ready when `ready` appears in it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path,
                 ready: str | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.ready = ready
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self, timeout_s: float = 120.0, wait: bool = True) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         start_new_session=True)
        self.started_at = time.time()
        _STARTED.append(self)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        if self.ready is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up; its log "
                                   f"{self.log} ends:\n{self.tail()}")
            with self.log.open("rb") as f:
                f.seek(self._offset)
                if self.ready.encode() in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start within {timeout_s:.0f}s; log "
                           f"{self.log}:\n{self.tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, wait, then SIGKILL it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(timeout_s=0.1, sig=signal.SIGKILL)


def _operator_token(stack: BenchStack) -> dict[str, str]:
    """The stack's pipeline token may write only the stack's own two buckets; a measurement
    writes buckets of its own, so its processes get the (private) stack's operator token."""
    return {"CITYSTREAM_INFLUX__TOKEN": stack.info["influxdb"]["token"]}


def citystream(name: str, args: list[str], stack: BenchStack, ns: Namespace, log_dir: Path,
               extra: dict[str, str] | None = None) -> Child:
    """A `citystream <args>` child pointed at the bench stack and the measurement's names."""
    env = {**os.environ, **stack.stack.service_env(), **ns.env(), **_operator_token(stack),
           "CITYSTREAM_MQTT__SESSION_EXPIRY_S": "600", **(extra or {})}
    ready = {"ingest": "running;", "worker": "running;"}.get(args[0])
    if ready:
        ready = f"{args[0]} {args[args.index('--instance') + 1]} {ready}"
    return Child(name, [sys.executable, "-m", "citystream", "-v", *args], env,
                 log_dir / f"{name}.log", ready)


def sink_child(name: str, stack: BenchStack, ns: Namespace, log_dir: Path) -> Child:
    """The InfluxDB sink alone (`bench.sinkproc`), as the worker runs it."""
    env = {**os.environ, **stack.stack.service_env(), **ns.env(), **_operator_token(stack)}
    return Child(name, [sys.executable, "-m", "bench.sinkproc"], env, log_dir / f"{name}.log",
                 "sink running")
