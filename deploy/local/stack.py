"""The local stack: Mosquitto, Kafka (KRaft) and InfluxDB 2.x on 127.0.0.1, without Docker.

`Stack(settings).up()` installs what is missing (Debian packages, Kafka jars from Maven Central,
`influxd` built from its Go module, all cached under ``settings.cache``), starts each service as a
detached process group, waits until each really answers, and records everything a client needs in
``<home>/stack.json``. `down()` stops them; `status()` reads that file back.

Used by `citystream up/down/status` and by the pytest fixtures (with a per-session home and free
ports), so tests and users run exactly the same code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.influxdb.provision import (
    Bucket,
    InfluxAdmin,
    Plan,
    ProvisionError,
    ensure_buckets,
    parse_retention,
    provision,
)

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A service cannot be installed or started; the message says how to fix it."""


def _default_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "citystream"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "citystream"


class StackSettings(BaseSettings):
    """Where and how the local stack runs. Env vars: ``CITYSTREAM_STACK__<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CITYSTREAM_STACK__", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="data, logs and stack.json")
    cache: Path = Field(default_factory=_default_cache, description="downloads and builds")
    mqtt_port: int = 1883
    mqtt_tls_port: int = Field(0, description="TLS listener with a generated dev CA; 0 = off")
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    influxdb_port: int = 8086
    dashboard_port: int = 8080
    opendata_port: int = 8090
    kafka_version: str = "3.9.1"
    kafka_heap: str = Field("1g", description="Kafka's JVM heap: fixed (-Xms = -Xmx, as Kafka's "
                            "own start script) and touched at start, so its memory is flat")
    kafka_partitions: int = 8
    influxdb_version: str = "2.7.12"
    influxdb_org: str = "citystream"
    bucket_telemetry: str = "telemetry"
    bucket_kpi: str = "kpi"
    bucket_kpi_1h: str = Field("kpi_1h", description="hourly roll-up of the kpi bucket")
    retention_telemetry: str = Field("7d", description="raw readings: short (0 = forever)")
    retention_kpi: str = Field("400d", description="KPI windows, alerts, counters")
    retention_kpi_1h: str = Field("0", description="the hourly roll-up (0 = forever)")
    ready_timeout_s: float = 90.0
    sim_speed: float = Field(120.0, description="simulated seconds per wall second for `up`'s "
                             "simulator: it starts 6 h back and then runs in real time")
    sim_rate: float = Field(0.0, description="most messages per second for `up`'s simulator "
                            "(0 = no limit)")

    @field_validator("retention_telemetry", "retention_kpi", "retention_kpi_1h")
    @classmethod
    def _retention(cls, value: str) -> str:
        parse_retention(value)
        return value

    def influx_plan(self) -> Plan:
        """The buckets (with retention) that onboarding provisions."""
        return Plan(self.influxdb_org,
                    Bucket(self.bucket_telemetry, parse_retention(self.retention_telemetry)),
                    Bucket(self.bucket_kpi, parse_retention(self.retention_kpi)),
                    Bucket(self.bucket_kpi_1h, parse_retention(self.retention_kpi_1h)))


Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# processes


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


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """One supervised service process: spawned detached, stopped by process group."""

    name: str
    home: Path
    pid: int | None = None
    started: str | None = None

    @property
    def log(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
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


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait(what: str, svc: Service, probe: Callable[[], bool], timeout: float) -> None:
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


def _run(argv: list[str], what: str, **kw: Any) -> str:
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {argv[0]} not found") from exc
    except subprocess.CalledProcessError as exc:
        raise StackError(f"{what} failed ({' '.join(argv[:3])} ...):\n{exc.stdout}\n{exc.stderr}"
                         ) from exc
    return str(done.stdout)


def _http(method: str, url: str, body: Any = None, token: str | None = None,
          timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Token {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _bucket_id(base: str, token: str, org_id: str, name: str) -> str | None:
    """By name: a bucket listing is paged, and InfluxDB answers 404 for a name it lacks."""
    try:
        found = _http("GET", f"{base}/api/v2/buckets?orgID={org_id}"
                      f"&name={urllib.parse.quote(name)}", token=token)["buckets"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return str(found[0]["id"]) if found else None


# ---------------------------------------------------------------------------------------------
# installation (cached)


def _apt_install(packages: list[str], say: Progress) -> None:
    if shutil.which("apt-get") is None:
        raise StackError(f"Install {' '.join(packages)} with your package manager "
                         "(no apt-get on this machine).")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise StackError(f"Run as root: apt-get install -y {' '.join(packages)}")
        prefix = ["sudo", "-n"]
    say(f"installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        _run([*prefix, "apt-get", "install", "-y", "-q", *packages], "apt-get install", env=env)
    except StackError:
        _run([*prefix, "apt-get", "update", "-q"], "apt-get update", env=env)
        _run([*prefix, "apt-get", "install", "-y", "-q", *packages], "apt-get install", env=env)


def install_mosquitto(say: Progress = _say) -> None:
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        _apt_install(["mosquitto", "mosquitto-clients"], say)
    elif not shutil.which("mosquitto_pub"):
        _apt_install(["mosquitto-clients"], say)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise StackError("mosquitto not found: run `citystream install` "
                         "(or apt-get install -y mosquitto mosquitto-clients)")
    return found


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError("Java not found: Kafka needs a Java 11+ runtime. Install one "
                         "(apt-get install -y openjdk-17-jre-headless) or set JAVA_HOME.")
    return java


def install_kafka(s: StackSettings, say: Progress = _say) -> Path:
    """Kafka broker jars from Maven Central, cached at ``<cache>/kafka-<version>/lib``."""
    lib = s.cache / f"kafka-{s.kafka_version}" / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    java_binary()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) not found: it fetches the Kafka jars from Maven Central. "
                         "Install it (apt-get install -y maven).")
    say(f"fetching Kafka {s.kafka_version} jars from Maven Central into {lib}")
    tmp = lib.with_name("lib.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _run([mvn, "-q", "-B", "-f", str(HERE / "kafka-pom.xml"), f"-Dkafka.version={s.kafka_version}",
          "dependency:copy-dependencies", "-DincludeScope=runtime",
          f"-DoutputDirectory={tmp}"], "fetching Kafka jars with Maven")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    marker.write_text(s.kafka_version)
    return lib


def influxd_path(s: StackSettings) -> Path:
    return s.cache / f"influxdb-{s.influxdb_version}" / "bin" / "influxd"


def install_influxdb(s: StackSettings, say: Progress = _say) -> Path:
    """``influxd`` built from its Go module by build-influxd.sh, cached by version."""
    binary = influxd_path(s)
    if binary.exists():
        return binary
    say(f"building influxd {s.influxdb_version} from source (first run only: 15-25 min, "
        f"log in {s.cache}/influxd-build.log)")
    s.cache.mkdir(parents=True, exist_ok=True)
    log = s.cache / "influxd-build.log"
    env = {**os.environ, "CITYSTREAM_CACHE": str(s.cache),
           "CITYSTREAM_INFLUXDB_VERSION": s.influxdb_version}
    with log.open("w") as out:
        rc = subprocess.call(["bash", str(HERE / "build-influxd.sh")], stdout=out,
                             stderr=subprocess.STDOUT, env=env)
    if rc != 0 or not binary.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise StackError(f"building influxd failed (exit {rc}); full log {log}:\n{tail}")
    return binary


def install_all(s: StackSettings, say: Progress = _say) -> None:
    install_mosquitto(say)
    install_kafka(s, say)
    install_influxdb(s, say)


# ---------------------------------------------------------------------------------------------
# the services


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Credentials:
    """Secrets generated once per stack home and kept in ``<home>/secrets.json`` (mode 600).

    `influxdb_read_token` is made by InfluxDB during onboarding (READ on the two buckets, for
    the dashboard); it is empty until then.
    `influxdb_token` is the operator's (all access: setup, `status --json`);
    `influxdb_write_token` is the pipeline's, allowed only to write the two buckets. InfluxDB
    makes that one at onboarding, so it is empty until InfluxDB first started in this home.
    """

    mqtt_gateway_password: str
    mqtt_service_password: str
    influxdb_password: str
    influxdb_token: str
    influxdb_read_token: str = ""
    influxdb_write_token: str = ""

    @classmethod
    def load_or_create(cls, home: Path) -> Credentials:
        path = home / "secrets.json"
        if path.exists():
            saved = json.loads(path.read_text())
            return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
        creds = cls(mqtt_gateway_password=secrets.token_urlsafe(18),
                    mqtt_service_password=secrets.token_urlsafe(18),
                    influxdb_password=secrets.token_urlsafe(18),
                    influxdb_token=secrets.token_urlsafe(48))
        creds.save(home)
        return creds

    def save(self, home: Path) -> None:
        """Write ``<home>/secrets.json`` (mode 600), keeping keys this version does not know."""
        path = home / "secrets.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        _write_private(path, json.dumps({**saved, **self.__dict__}, indent=2))

    def all(self) -> dict[str, str]:
        """Every secret by name (for tests that prove none of them leaks)."""
        return {k: v for k, v in self.__dict__.items() if v}


MQTT_GATEWAY_USER = "gateway"
DASHBOARD_TOKEN_DESCRIPTION = "citystream dashboard: read the kpi and telemetry buckets"
MQTT_SERVICE_USER = "citystream"


def mosquitto_config(s: StackSettings, d: Path) -> str:
    return f"""# Generated by citystream deploy/local (production config: deploy/mosquitto/).
user root
per_listener_settings false
allow_anonymous false
password_file {d}/passwd
acl_file {d}/acl
persistence true
persistence_location {d}/data/
autosave_interval 5
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 0
set_tcp_nodelay true
listener {s.mqtt_port} {LOOPBACK}
""" + (f"""
listener {s.mqtt_tls_port} {LOOPBACK}
cafile {d}/certs/ca.crt
certfile {d}/certs/server.crt
keyfile {d}/certs/server.key
tls_version tlsv1.2
""" if s.mqtt_tls_port else "")


# The ACL shipped for production is the one the local stack uses (users `citystream`, `gateway`).
MOSQUITTO_ACL_FILE = HERE.parent / "mosquitto" / "acl"


class Stack:
    """The local stack under one home directory (see module docstring)."""

    def __init__(self, settings: StackSettings | None = None, say: Progress = _say) -> None:
        settings = settings or StackSettings()
        self.home = settings.home.expanduser().resolve()
        self.s = self._with_saved(settings)
        self.s.cache = self.s.cache.expanduser().resolve()
        self.say = say
        self.services = {n: Service(n, self.home) for n in ("mosquitto", "kafka", "influxdb")}
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
        _write_private(self.state_file, json.dumps(state, indent=2))

    def client_info(self, creds: Credentials | None = None) -> dict[str, Any]:
        """The contract's `citystream status --json` object (section 4)."""
        creds = creds or Credentials.load_or_create(self.home)
        return {
            "mqtt": {"host": LOOPBACK, "port": self.s.mqtt_port, "username": MQTT_GATEWAY_USER,
                     "password": creds.mqtt_gateway_password},
            "kafka": {"bootstrap": f"{LOOPBACK}:{self.s.kafka_port}"},
            "influxdb": {"url": f"http://{LOOPBACK}:{self.s.influxdb_port}",
                         "org": self.s.influxdb_org, "token": creds.influxdb_token,
                         "buckets": {"telemetry": self.s.bucket_telemetry,
                                     "kpi": self.s.bucket_kpi}},
            "dashboard": {"url": f"http://{LOOPBACK}:{self.s.dashboard_port}/"},
            "opendata": {"url": f"http://{LOOPBACK}:{self.s.opendata_port}/"},
        }

    def service_env(self) -> dict[str, str]:
        """Env vars that point citystream components (ingest, worker, sim) at this stack.

        The InfluxDB token is the pipeline's write-only one (see `Credentials`), present once
        InfluxDB has been onboarded; reading takes the operator token of `client_info`."""
        creds = Credentials.load_or_create(self.home)
        return {
            "CITYSTREAM_MQTT__HOST": LOOPBACK,
            "CITYSTREAM_MQTT__PORT": str(self.s.mqtt_port),
            "CITYSTREAM_MQTT__USERNAME": MQTT_SERVICE_USER,
            "CITYSTREAM_MQTT__PASSWORD": creds.mqtt_service_password,
            "CITYSTREAM_KAFKA__BOOTSTRAP": f"{LOOPBACK}:{self.s.kafka_port}",
            "CITYSTREAM_INFLUX__URL": f"http://{LOOPBACK}:{self.s.influxdb_port}",
            "CITYSTREAM_INFLUX__ORG": self.s.influxdb_org,
            "CITYSTREAM_INFLUX__BUCKET_TELEMETRY": self.s.bucket_telemetry,
            "CITYSTREAM_INFLUX__BUCKET_KPI": self.s.bucket_kpi,
            "CITYSTREAM_DASHBOARD__TOKEN": creds.influxdb_read_token,
            "CITYSTREAM_INFLUX__READ_TOKEN": creds.influxdb_read_token,
        } | ({"CITYSTREAM_INFLUX__TOKEN": creds.influxdb_write_token}
             if creds.influxdb_write_token else {}) | self.city_env()

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

    SERVICES = ("mosquitto", "kafka", "influxdb")

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
        return {"mosquitto": f"mqtt://{LOOPBACK}:{self.s.mqtt_port}",
                "kafka": f"kafka {LOOPBACK}:{self.s.kafka_port}",
                "influxdb": f"http://{LOOPBACK}:{self.s.influxdb_port}"}.get(name, name)

    def down(self) -> None:
        """Stop every service this home started (pipeline processes first)."""
        order = [n for n in self.services if n not in ("mosquitto", "kafka", "influxdb")]
        order += ["influxdb", "kafka", "mosquitto"]
        for name in order:
            svc = self.services[name]
            if svc.running():
                self.say(f"{name}: stopping (pid {svc.pid})")
                svc.stop(timeout=30.0 if name == "kafka" else 15.0)
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            state["processes"] = {}
            _write_private(self.state_file, json.dumps(state, indent=2))
        for svc in self.services.values():
            svc.pid = svc.started = None

    def stop_service(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one service (fault tests use this with SIGKILL)."""
        self.services[name].stop(sig=sig)

    def start_service(self, name: str) -> None:
        """(Re)start one stopped service and wait until it is ready."""
        creds = Credentials.load_or_create(self.home)
        {"mosquitto": self._start_mosquitto, "kafka": self._start_kafka,
         "influxdb": self._start_influxdb}[name](creds)
        self._save()

    # The pipeline -------------------------------------------------------------------------

    PIPELINE = ("ingest", "worker", "dashboard", "opendata", "sim")

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
                self._check_port(self.s.dashboard_port, "DASHBOARD_PORT")
            if name == "opendata":
                self._check_port(self.s.opendata_port, "OPENDATA_PORT")
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

            _wait(name, svc, started, self.s.ready_timeout_s)
            self.say(f"{name}: running in {time.monotonic() - t0:.1f}s, log {svc.log}")

    def add_mqtt_user(self, username: str, password: str) -> None:
        """Add (or change) an MQTT user, e.g. a sensor whose user name is its sensor_id, and
        make the running broker reload its password file and ACL."""
        passwd = self.home / "mosquitto" / "passwd"
        _run(["mosquitto_passwd", "-b", str(passwd), username, password], "mosquitto_passwd")
        svc = self.services["mosquitto"]
        if svc.running() and svc.pid is not None:
            os.kill(svc.pid, signal.SIGHUP)

    def _check_port(self, port: int, setting: str) -> None:
        if port_in_use(port):
            raise StackError(f"port {port} on {LOOPBACK} is already in use (another instance?); "
                             f"stop it or choose another port with CITYSTREAM_STACK__{setting}")

    # Mosquitto ---------------------------------------------------------------------------

    def _start_mosquitto(self, creds: Credentials) -> None:
        install_mosquitto(self.say)
        self._check_port(self.s.mqtt_port, "MQTT_PORT")
        d = self.home / "mosquitto"
        (d / "data").mkdir(parents=True, exist_ok=True)
        passwd = d / "passwd"
        _write_private(passwd, "")
        for user, pw in ((MQTT_GATEWAY_USER, creds.mqtt_gateway_password),
                         (MQTT_SERVICE_USER, creds.mqtt_service_password)):
            _run(["mosquitto_passwd", "-b", str(passwd), user, pw], "mosquitto_passwd")
        _write_private(d / "acl", MOSQUITTO_ACL_FILE.read_text())
        if self.s.mqtt_tls_port and not (d / "certs" / "ca.crt").exists():
            self._check_port(self.s.mqtt_tls_port, "MQTT_TLS_PORT")
            _run(["bash", str(HERE.parent / "mosquitto" / "make-dev-ca.sh"), str(d / "certs")],
                 "making the development CA for Mosquitto's TLS listener")
        (d / "mosquitto.conf").write_text(mosquitto_config(self.s, d))
        svc = self.services["mosquitto"]
        svc.spawn([mosquitto_binary(), "-c", str(d / "mosquitto.conf")])
        _wait("mosquitto", svc, lambda: self._mqtt_ready(creds), self.s.ready_timeout_s)

    def _mqtt_ready(self, creds: Credentials) -> bool:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=f"citystream-ready-{secrets.token_hex(4)}")
        client.username_pw_set(MQTT_SERVICE_USER, creds.mqtt_service_password)
        try:
            client.connect(LOOPBACK, self.s.mqtt_port, keepalive=5)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not client.is_connected():
                client.loop(timeout=0.1)
            return client.is_connected()
        finally:
            client.disconnect()

    # Kafka -------------------------------------------------------------------------------

    def _start_kafka(self, creds: Credentials) -> None:
        self._check_port(self.s.kafka_port, "KAFKA_PORT")
        self._check_port(self.s.kafka_controller_port, "KAFKA_CONTROLLER_PORT")
        java = java_binary()
        lib = install_kafka(self.s, self.say)
        d = self.home / "kafka"
        data = d / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = d / "server.properties"
        props.write_text(self._kafka_properties(data))
        log4j = d / "log4j.properties"
        log4j.write_text(KAFKA_LOG4J)
        cp = f"{lib}/*"
        if not (data / "meta.properties").exists():
            # one id in 64 starts with "-": given as --cluster-id=ID, never as a separate word
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            _run([java, f"-Dlog4j.configuration=file:{log4j}", "-cp", cp,
                  "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                  "-c", str(props)],
                 "formatting Kafka storage")
        svc = self.services["kafka"]
        svc.spawn([java, f"-Xmx{self.s.kafka_heap}", f"-Xms{self.s.kafka_heap}",
                   "-XX:+AlwaysPreTouch", "-XX:+UseG1GC",
                   "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{log4j}",
                   "-cp", cp, "kafka.Kafka", str(props)])
        _wait("kafka", svc, self._kafka_ready, self.s.ready_timeout_s)

    def _kafka_properties(self, data: Path) -> str:
        s = self.s
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{LOOPBACK}:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://{LOOPBACK}:{s.kafka_port},"
            f"CONTROLLER://{LOOPBACK}:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={s.kafka_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=168",
            "num.network.threads=2",
            "num.io.threads=4",
            "",
        ])

    def _kafka_ready(self) -> bool:
        import logging

        from aiokafka.admin import AIOKafkaAdminClient

        if not port_in_use(self.s.kafka_port):
            return False
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=f"{LOOPBACK}:{self.s.kafka_port}",
                                        request_timeout_ms=3000)
            await admin.start()
            try:
                cluster = await admin.describe_cluster()
                return bool(cluster.get("brokers"))
            finally:
                await admin.close()

        return asyncio.run(asyncio.wait_for(probe(), timeout=5))

    # InfluxDB ----------------------------------------------------------------------------

    def _start_influxdb(self, creds: Credentials) -> None:
        self._check_port(self.s.influxdb_port, "INFLUXDB_PORT")
        binary = install_influxdb(self.s, self.say)
        d = self.home / "influxdb"
        d.mkdir(parents=True, exist_ok=True)
        svc = self.services["influxdb"]
        svc.spawn([str(binary), "run",
                   f"--http-bind-address={LOOPBACK}:{self.s.influxdb_port}",
                   f"--bolt-path={d}/influxd.bolt", f"--engine-path={d}/engine",
                   f"--sqlite-path={d}/influxd.sqlite",
                   "--reporting-disabled", "--ui-disabled", "--log-level=info"])
        base = f"http://{LOOPBACK}:{self.s.influxdb_port}"
        _wait("influxdb", svc, lambda: _http("GET", f"{base}/health")["status"] == "pass",
              self.s.ready_timeout_s)
        self._onboard(base, creds)

    def _onboard(self, base: str, creds: Credentials) -> None:
        if _http("GET", f"{base}/api/v2/setup").get("allowed"):
            self.say(f"influxdb: onboarding org {self.s.influxdb_org!r}, buckets "
                     f"{self.s.bucket_telemetry!r} and {self.s.bucket_kpi!r}")
            _http("POST", f"{base}/api/v2/setup", {
                "username": "admin", "password": creds.influxdb_password,
                "org": self.s.influxdb_org, "bucket": self.s.bucket_telemetry,
                "token": creds.influxdb_token})
        try:
            provision(InfluxAdmin(base, creds.influxdb_token), self.s.influx_plan())
        except ProvisionError as exc:
            raise StackError(f"influxdb: setting up buckets, InfluxQL mappings and the roll-up "
                             f"task failed: {exc}") from exc
        self.ensure_read_token(creds)
        buckets = [self.s.bucket_telemetry, self.s.bucket_kpi]
        if not (creds.influxdb_write_token
                and self.can_write(creds.influxdb_write_token, buckets)):
            creds.influxdb_write_token = self.create_write_token(
                buckets, "citystream pipeline: write telemetry and kpi only")
            creds.save(self.home)

    def _buckets(self, base: str, creds: Credentials) -> tuple[str, dict[str, str]]:
        """The org id and the ids of the two buckets, creating missing buckets."""
        admin = InfluxAdmin(base, creds.influxdb_token)
        org_id = admin.org_id(self.s.influxdb_org)
        ids = ensure_buckets(admin, org_id, self.s.influx_plan().buckets)
        return org_id, {b: ids[b] for b in (self.s.bucket_telemetry, self.s.bucket_kpi)}

    def ensure_read_token(self, creds: Credentials) -> str:
        """The dashboard's InfluxDB token: READ on the two buckets and nothing else.

        InfluxDB generates it; it is kept in secrets.json and checked at every start (made
        again if InfluxDB lost it or the buckets were re-created).
        """
        base = f"http://{LOOPBACK}:{self.s.influxdb_port}"
        org_id, buckets = self._buckets(base, creds)
        token = read_authorization(base, creds.influxdb_token, org_id, list(buckets.values()),
                                   DASHBOARD_TOKEN_DESCRIPTION, creds.influxdb_read_token)
        if token != creds.influxdb_read_token:
            creds.influxdb_read_token = token
            creds.save(self.home)
        return token

    def create_write_token(self, buckets: list[str], description: str) -> str:
        """A new InfluxDB token that may write `buckets` and nothing else (made with the
        operator token; the local stack's pipeline gets one at onboarding)."""
        base = f"http://{LOOPBACK}:{self.s.influxdb_port}"
        admin = Credentials.load_or_create(self.home).influxdb_token
        org_id = _http("GET", f"{base}/api/v2/orgs?org={self.s.influxdb_org}",
                       token=admin)["orgs"][0]["id"]
        ids = {name: _bucket_id(base, admin, org_id, name) for name in buckets}
        missing = [b for b in buckets if ids[b] is None]
        if missing:
            raise StackError(f"InfluxDB has no bucket(s) {missing} in org {self.s.influxdb_org}")
        auth = _http("POST", f"{base}/api/v2/authorizations", {
            "orgID": org_id, "description": description,
            "permissions": [{"action": "write",
                             "resource": {"type": "buckets", "id": ids[b], "orgID": org_id}}
                            for b in buckets]}, token=admin)
        return str(auth["token"])

    def can_write(self, token: str, buckets: list[str]) -> bool:
        """Whether `token` may write every one of `buckets` (an empty write: nothing stored)."""
        base = f"http://{LOOPBACK}:{self.s.influxdb_port}"
        for bucket in buckets:
            url = (f"{base}/api/v2/write?org={urllib.parse.quote(self.s.influxdb_org)}"
                   f"&bucket={urllib.parse.quote(bucket)}")
            req = urllib.request.Request(url, data=b"", method="POST")
            req.add_header("Authorization", f"Token {token}")
            try:
                with urllib.request.urlopen(req, timeout=5):
                    pass
            except urllib.error.HTTPError:
                return False
        return True


def read_authorization(base: str, admin_token: str, org_id: str, bucket_ids: list[str],
                       description: str, current: str = "") -> str:
    """A token that may only READ `bucket_ids`: `current` if InfluxDB still has it with exactly
    those permissions, else a new one. Other authorizations with `description` are deleted."""
    want = sorted(("read", "buckets", bucket_id) for bucket_id in bucket_ids)
    auths = _http("GET", f"{base}/api/v2/authorizations?orgID={org_id}",
                  token=admin_token)["authorizations"]
    found = ""
    for auth in auths:
        if auth.get("description") != description:
            continue
        perms = sorted((p["action"], p["resource"].get("type"), p["resource"].get("id"))
                       for p in auth["permissions"])
        if (current and auth.get("token") == current and perms == want
                and auth.get("status") == "active" and not found):
            found = current
        else:
            _http("DELETE", f"{base}/api/v2/authorizations/{auth['id']}", token=admin_token)
    if found:
        return found
    made = _http("POST", f"{base}/api/v2/authorizations", {
        "orgID": org_id, "description": description,
        "permissions": [{"action": "read", "resource": {"type": "buckets", "id": bucket_id,
                                                        "orgID": org_id}}
                        for _, _, bucket_id in want]}, token=admin_token)
    return str(made["token"])


KAFKA_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""
