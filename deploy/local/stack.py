"""The local stack: Mosquitto, Kafka (KRaft) and InfluxDB 2.x on 127.0.0.1, without Docker.

`Stack(settings).up()` installs what is missing, starts each service as a detached process group,
waits until each really answers, and records everything a client needs in ``<home>/stack.json``.
`down()` stops them; `status()` reads that file back; `start_pipeline()` runs citystream's own
processes (ingest, worker, dashboard, opendata, sim) against it.

Used by `citystream up/down/status/env` and by the pytest fixtures (with a per-session home and
free ports), so tests and users run exactly the same code. The package, by concern:

    settings.py     StackSettings (CITYSTREAM_STACK__*)
    supervision.py  Service (one detached process), readiness waits, ports, commands
    credentials.py  Credentials (<home>/secrets.json), the MQTT users
    mosquitto.py    install, configure, start Mosquitto  } each: install(...) and
    kafka.py        install, configure, start Kafka      } start(settings, home, service,
    influxdb.py     install, start, onboard InfluxDB     }       credentials, say)
    stack.py        this orchestration

This module is the package's public face: the names in `__all__` are what other code imports.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from connectors.influxdb.admin import can_write
from deploy.local import influxdb, kafka, mosquitto
from deploy.local.credentials import (
    MQTT_GATEWAY_USER,
    MQTT_SERVICE_USER,
    Credentials,
    write_private,
)
from deploy.local.influxdb import influxd_path
from deploy.local.mosquitto import mosquitto_binary
from deploy.local.settings import LOOPBACK, StackSettings
from deploy.local.supervision import Progress, Service, check_port, free_port, say, wait_ready
from models.errors import ProvisionError, StackError
from models.settings import local_stack_env

__all__ = ["MQTT_GATEWAY_USER", "MQTT_SERVICE_USER", "Credentials", "Stack", "StackError",
           "StackSettings", "free_port", "influxd_path", "install_all", "mosquitto_binary"]

Starter = Callable[[StackSettings, Path, Service, Credentials, Progress], None]
STARTERS: dict[str, Starter] = {"mosquitto": mosquitto.start, "kafka": kafka.start,
                                "influxdb": influxdb.start}


def install_all(s: StackSettings, say: Progress = say) -> None:
    """Install (cached) every service without starting any."""
    mosquitto.install(s, say)
    kafka.install(s, say)
    influxdb.install(s, say)


class Stack:
    """The local stack under one home directory (see module docstring)."""

    SERVICES: tuple[str, ...] = ("mosquitto", "kafka", "influxdb")
    PIPELINE = ("ingest", "worker", "dashboard", "opendata", "sim")

    def __init__(self, settings: StackSettings | None = None, say: Progress = say) -> None:
        settings = settings or StackSettings()
        self.home = settings.home.expanduser().resolve()
        self.s = self._with_saved(settings)
        self.s.cache = self.s.cache.expanduser().resolve()
        self.say = say
        self.services = {n: Service(n, self.home) for n in self.SERVICES}
        self._load_pids()

    # -- state -----------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    def _with_saved(self, settings: StackSettings) -> StackSettings:
        """Settings this home was started with (ports, buckets...), unless given explicitly
        now, so `status` and `down` find the stack that `up` started."""
        if not self.state_file.exists():
            return settings
        saved = json.loads(self.state_file.read_text()).get("settings", {})
        explicit = settings.model_dump(include=settings.model_fields_set)
        return StackSettings.model_validate({**saved, **explicit})

    def _load_pids(self) -> None:
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        for name, proc in state.get("processes", {}).items():
            svc = self.services.setdefault(name, Service(name, self.home))
            svc.pid, svc.started = proc["pid"], proc["started"]

    def _save(self) -> None:
        creds = Credentials.load_or_create(self.home)
        state = {
            **self.client_info(creds),
            "settings": self.s.model_dump(mode="json"),
            "processes": {n: {"pid": v.pid, "started": v.started, "log": str(v.log)}
                          for n, v in self.services.items() if v.pid is not None},
        }
        write_private(self.state_file, json.dumps(state, indent=2))

    def client_info(self, creds: Credentials | None = None) -> dict[str, Any]:
        """The contract's `citystream status --json` object (section 4)."""
        creds = creds or Credentials.load_or_create(self.home)
        return {
            "mqtt": {"host": self.s.host, "port": self.s.mqtt_port, "username": MQTT_GATEWAY_USER,
                     "password": creds.mqtt_gateway_password},
            "kafka": {"bootstrap": f"{self.s.host}:{self.s.kafka_port}"},
            "influxdb": {"url": self.s.influxdb_url,
                         "org": self.s.influxdb_org, "token": creds.influxdb_token,
                         "buckets": {"telemetry": self.s.bucket_telemetry,
                                     "kpi": self.s.bucket_kpi}},
            "dashboard": {"url": f"http://{LOOPBACK}:{self.s.dashboard_port}/"},
            "opendata": {"url": f"http://{LOOPBACK}:{self.s.opendata_port}/"},
        }

    def service_env(self) -> dict[str, str]:
        """Env vars that point citystream components (ingest, worker, sim) at this stack
        (`models.settings.local_stack_env`, which `Settings.load()` also uses to find this
        stack by itself).

        The InfluxDB token is the pipeline's write-only one (see `Credentials`), present once
        InfluxDB has been onboarded; reading takes the operator token of `client_info`."""
        creds = Credentials.load_or_create(self.home)
        return local_stack_env(self.client_info(creds), asdict(creds)) | self.city_env()

    @staticmethod
    def city_env() -> dict[str, str]:
        """`CITYSTREAM_CITY__FILE` as an absolute path when it is set: every component the
        stack starts reads the same city file (and so the same declared feeds)."""
        city = os.environ.get("CITYSTREAM_CITY__FILE")
        return {"CITYSTREAM_CITY__FILE": str(Path(city).resolve())} if city else {}

    def dashboard_env(self) -> dict[str, str]:
        """Env for `citystream dashboard`: the read-only token and the stack's dashboard port;
        the service credentials (InfluxDB all-access token, MQTT password) are blanked."""
        creds = Credentials.load_or_create(self.home)
        if not creds.influxdb_read_token:
            self.ensure_read_token(creds)
        return {**self.service_env(),
                "CITYSTREAM_INFLUX__TOKEN": "", "CITYSTREAM_MQTT__PASSWORD": "",
                "CITYSTREAM_DASHBOARD__TOKEN": creds.influxdb_read_token,
                "CITYSTREAM_DASHBOARD__HOST": LOOPBACK,
                "CITYSTREAM_DASHBOARD__PORT": str(self.s.dashboard_port)}

    def opendata_env(self) -> dict[str, str]:
        """Env for `citystream opendata`: the read-only token and the stack's opendata port;
        the service credentials are blanked, as for the dashboard."""
        creds = Credentials.load_or_create(self.home)
        if not creds.influxdb_read_token:
            self.ensure_read_token(creds)
        return {**self.dashboard_env(), "CITYSTREAM_DASHBOARD__TOKEN": "",
                "CITYSTREAM_OPENDATA__TOKEN": creds.influxdb_read_token,
                "CITYSTREAM_OPENDATA__HOST": LOOPBACK,
                "CITYSTREAM_OPENDATA__PORT": str(self.s.opendata_port)}

    def status(self) -> dict[str, Any]:
        info = self.client_info()
        info["services"] = {
            n: {"running": v.running(), "pid": v.pid, "log": str(v.log)}
            for n, v in self.services.items()
        }
        return info

    # -- lifecycle -------------------------------------------------------------------------

    def up(self, only: tuple[str, ...] = SERVICES) -> dict[str, Any]:
        """Install what is missing, start every service not already running, wait until ready."""
        self.home.mkdir(parents=True, exist_ok=True)
        if only == self.SERVICES:
            install_all(self.s, self.say)
        for name in only:
            self.ensure(name)
        return self.client_info()

    def ensure(self, name: str) -> None:
        """Start one service (installing it first if needed) unless it already runs."""
        svc = self.services[name]
        if svc.running():
            self.say(f"{name}: already running (pid {svc.pid}) on {self._where(name)}")
            return
        self.home.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            self.start_service(name)
        finally:
            self._save()
        self.say(f"{name}: ready in {time.monotonic() - t0:.1f}s on {self._where(name)}, "
                 f"log {svc.log}")

    def _where(self, name: str) -> str:
        return {"mosquitto": f"mqtt://{self.s.host}:{self.s.mqtt_port}",
                "kafka": f"kafka {self.s.host}:{self.s.kafka_port}",
                "influxdb": self.s.influxdb_url}.get(name, name)

    def down(self) -> None:
        """Stop every service this home started (pipeline processes first)."""
        order = [n for n in self.services if n not in self.SERVICES]
        order += [n for n in ("influxdb", "kafka", "mosquitto") if n in self.services]
        for name in order:
            svc = self.services[name]
            if svc.running():
                self.say(f"{name}: stopping (pid {svc.pid})")
                svc.stop(timeout=30.0 if name == "kafka" else 15.0)
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            state["processes"] = {}
            write_private(self.state_file, json.dumps(state, indent=2))
        for svc in self.services.values():
            svc.pid = svc.started = None

    def stop_service(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one service (fault tests use this with SIGKILL)."""
        self.services[name].stop(sig=sig)

    def start_service(self, name: str) -> None:
        """(Re)start one stopped service and wait until it is ready."""
        creds = Credentials.load_or_create(self.home)
        STARTERS[name](self.s, self.home, self.services[name], creds, self.say)
        self._save()

    # -- the pipeline ----------------------------------------------------------------------

    def pipeline_argv(self, name: str) -> list[str]:
        """The citystream command each pipeline process runs."""
        return {
            "ingest": ["ingest", "--instance", "0"],
            "worker": ["worker", "--instance", "0",
                       "--data-dir", str(self.home / "worker")],
            "sim": ["sim", "--start", "now-6h", "--speed", str(self.s.sim_speed),
                    "--rate", str(self.s.sim_rate), "--no-progress"],
            "dashboard": ["dashboard"],
            "opendata": ["opendata"],
        }[name]

    def start_pipeline(self, names: tuple[str, ...] = PIPELINE) -> None:
        """Start ingest, worker, the dashboard and the simulator against this stack (each
        once)."""
        for name in names:
            svc = self.services.setdefault(name, Service(name, self.home))
            if svc.running():
                self.say(f"{name}: already running (pid {svc.pid})")
                continue
            if name == "dashboard":
                check_port(self.s.dashboard_port, "DASHBOARD_PORT")
            if name == "opendata":
                check_port(self.s.opendata_port, "OPENDATA_PORT")
            env = {"dashboard": self.dashboard_env, "opendata": self.opendata_env}.get(
                name, self.service_env)()
            t0 = time.monotonic()
            offset = svc.log.stat().st_size if svc.log.exists() else 0
            svc.spawn([sys.executable, "-m", "citystream", "-v", *self.pipeline_argv(name)],
                      env=env)
            self._save()
            marker = {"sim": "", "dashboard": "dashboard running",
                      "opendata": "opendata running"}.get(name, f"{name} 0 running")

            def started(svc: Service = svc, marker: str = marker, offset: int = offset) -> bool:
                with svc.log.open("rb") as f:
                    f.seek(offset)
                    return marker.encode() in f.read()

            wait_ready(name, svc, started, self.s.ready_timeout_s)
            self.say(f"{name}: running in {time.monotonic() - t0:.1f}s, log {svc.log}")

    def add_mqtt_user(self, username: str, password: str) -> None:
        """Add (or change) an MQTT user, e.g. a sensor whose user name is its sensor_id, and
        make the running broker reload its password file and ACL."""
        mosquitto.add_user(self.home, self.services["mosquitto"], username, password)

    # -- InfluxDB tokens -------------------------------------------------------------------

    def ensure_read_token(self, creds: Credentials) -> str:
        """The dashboard's InfluxDB token: READ on the two buckets and nothing else.

        InfluxDB generates it; it is kept in secrets.json and checked at every start (made
        again if InfluxDB lost it or the buckets were re-created).
        """
        return influxdb.ensure_read_token(self.s, self.home, creds)

    def create_write_token(self, buckets: list[str], description: str) -> str:
        """A new InfluxDB token that may write `buckets` and nothing else (made with the
        operator token; the local stack's pipeline gets one at onboarding)."""
        try:
            return influxdb.create_write_token(self.s, Credentials.load_or_create(self.home),
                                               buckets, description)
        except ProvisionError as exc:
            raise StackError(str(exc)) from exc

    def can_write(self, token: str, buckets: list[str]) -> bool:
        """Whether `token` may write every one of `buckets` (an empty write: nothing stored)."""
        return can_write(self.s.influxdb_url, token, self.s.influxdb_org, buckets)
