"""Mosquitto for the local stack: broker 2.1 built from source (build-mosquitto.sh) with its
persist-sqlite plugin, Debian's packages for `mosquitto_passwd` and `mosquitto_pub`; configured
with the production ACL (deploy/mosquitto/acl) and a password file, ready once an authenticated
MQTT 5 CONNECT works.

Why a build: Debian 12's broker (2.0.11) does not persist shared subscriptions ($share/...), so
after a restart messages published before ingest subscribes again were dropped; 2.1's
persist-sqlite plugin restores them (docs/operations.md, "Known gaps")."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from deploy.local.credentials import (
    MQTT_GATEWAY_USER,
    MQTT_SERVICE_USER,
    Credentials,
    write_private,
)
from deploy.local.settings import StackSettings
from deploy.local.supervision import Progress, Service, check_port, run, say, wait_ready
from models.errors import StackError

HERE = Path(__file__).resolve().parent
# The ACL shipped for production is the one the local stack uses (users `citystream`, `gateway`).
MOSQUITTO_ACL_FILE = HERE.parent / "mosquitto" / "acl"
MAKE_DEV_CA = HERE.parent / "mosquitto" / "make-dev-ca.sh"
BUILD_SCRIPT = HERE / "build-mosquitto.sh"
PERSIST_PLUGIN = "mosquitto_persist_sqlite.so"
# The persist-sqlite plugin commits its SQLite transaction every this many seconds: what a
# SIGKILLed broker or a power loss can lose. 5 s, as the `autosave_interval 5` of the file
# persistence (`persistence true`) it replaces; also the plugin's own default.
PERSIST_FLUSH_PERIOD_S = 5
# In flight per client: one below MQTT's maximum of 65535 (what an MQTT 5 client assumes when
# the broker announces none, as 2.0 did with `max_inflight_messages 0`), because Mosquitto 2.1
# reads 65535 as 0, which makes 2.1.2 warn for every QoS 1 message (see mosquitto_config).
MAX_INFLIGHT = 65_534
# MQTT's own largest packet (2.0's default; 2.1's is 2,000,000 bytes, see mosquitto_config).
MAX_PACKET_SIZE = 268_435_455


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
        run([*prefix, "apt-get", "install", "-y", "-q", *packages], "apt-get install", env=env)
    except StackError:
        run([*prefix, "apt-get", "update", "-q"], "apt-get update", env=env)
        run([*prefix, "apt-get", "install", "-y", "-q", *packages], "apt-get install", env=env)


def mosquitto_prefix(s: StackSettings) -> Path:
    """Where build-mosquitto.sh installs the broker (``sbin/``) and its plugins (``lib/``)."""
    return s.cache.expanduser() / f"mosquitto-{s.mosquitto_version}"


def _paths(s: StackSettings) -> tuple[Path, Path]:
    """The broker and its persist-sqlite plugin: the built ones, or CITYSTREAM_STACK__
    MOSQUITTO_BINARY (and MOSQUITTO_PERSIST_PLUGIN, by default in ../lib beside it)."""
    if s.mosquitto_binary is not None:
        binary = s.mosquitto_binary.expanduser()
        return binary, (s.mosquitto_persist_plugin
                        or binary.resolve().parent.parent / "lib" / PERSIST_PLUGIN).expanduser()
    prefix = mosquitto_prefix(s)
    return (prefix / "sbin" / "mosquitto",
            (s.mosquitto_persist_plugin or prefix / "lib" / PERSIST_PLUGIN).expanduser())


def persist_plugin(s: StackSettings) -> Path:
    """The persist-sqlite plugin the broker loads (not checked to exist)."""
    return _paths(s)[1]


def install(s: StackSettings, say: Progress = say) -> Path:
    """Debian's `mosquitto_passwd` and `mosquitto_pub` unless present, and the broker with its
    persist-sqlite plugin, built once into the cache by build-mosquitto.sh (about 30 s)."""
    missing = [pkg for pkg, tool in (("mosquitto", "mosquitto_passwd"),
                                     ("mosquitto-clients", "mosquitto_pub"))
               if not shutil.which(tool) and not Path("/usr/bin", tool).exists()]
    if missing:
        _apt_install(missing, say)
    binary, plugin = _paths(s)
    if s.mosquitto_binary is not None:
        for path, name in ((binary, "MOSQUITTO_BINARY"), (plugin, "MOSQUITTO_PERSIST_PLUGIN")):
            if not path.is_file():
                raise StackError(f"{path} not found: fix CITYSTREAM_STACK__{name}, or unset "
                                 "CITYSTREAM_STACK__MOSQUITTO_BINARY to build Mosquitto "
                                 f"{s.mosquitto_version}")
        return binary
    if binary.exists() and plugin.exists():
        return binary
    cache = s.cache.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "mosquitto-build.log"
    say(f"building mosquitto {s.mosquitto_version} with its persist-sqlite plugin from source "
        f"(first run only: about 30 s, log in {log})")
    env = {**os.environ, "CITYSTREAM_CACHE": str(cache),
           "CITYSTREAM_MOSQUITTO_VERSION": s.mosquitto_version}
    with log.open("a") as out:   # appended: a second, concurrent install waits on the lock
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n")
        out.flush()
        rc = subprocess.call(["bash", str(BUILD_SCRIPT)], stdout=out, stderr=subprocess.STDOUT,
                             env=env)
    if rc != 0 or not (binary.exists() and plugin.exists()):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise StackError(f"building mosquitto {s.mosquitto_version} failed (exit {rc}); "
                         f"full log {log}:\n{tail}")
    return binary


def mosquitto_binary(s: StackSettings | None = None) -> str:
    """The broker the stack runs (built into the cache, or CITYSTREAM_STACK__MOSQUITTO_BINARY)."""
    s = s or StackSettings()
    binary = _paths(s)[0]
    if not binary.exists():
        raise StackError(f"mosquitto {s.mosquitto_version} not found at {binary}: run "
                         "`citystream install` (it builds it with deploy/local/"
                         "build-mosquitto.sh), or set CITYSTREAM_STACK__MOSQUITTO_BINARY")
    return str(binary)


def mosquitto_config(s: StackSettings, d: Path) -> str:
    """mosquitto.conf for a broker whose files are under `d`.

    Persistence is the persist-sqlite plugin (``<d>/data/mosquitto.sqlite3``), not the file
    persistence of `persistence true` (which Mosquitto 2.1 refuses alongside a persistence
    plugin, and which never saved shared subscriptions)."""
    return f"""# Generated by citystream deploy/local (production config: deploy/mosquitto/).
user root
per_listener_settings false
allow_anonymous false
password_file {d}/passwd
acl_file {d}/acl
# Sessions, subscriptions (shared ones too), queued and retained messages in SQLite under
# persistence_location (the plugin ignores plugin_opt_db_file when that is set). It commits
# every flush_period seconds: a SIGKILL or power loss loses at most that much.
persistence_location {d}/data/
global_plugin {persist_plugin(s)}
plugin_opt_flush_period {PERSIST_FLUSH_PERIOD_S}
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
max_queued_messages 1000000
max_queued_bytes 0
# Not 0 ("no limit"): with 0 (or 65535, which it reads as 0) 2.1.2 keeps a client's receive
# quota at 0 and logs "has exceeded its receive-maximum quota" for every QoS 1 message.
max_inflight_messages {MAX_INFLIGHT}
# 2.1 lowered the default to 2,000,000 bytes and disconnects a client that sends more; the MQTT
# limit (2.0's default) lets ingest dead-letter oversized payloads with a reason instead.
max_packet_size {MAX_PACKET_SIZE}
set_tcp_nodelay true
listener {s.mqtt_port} {s.host}
""" + (f"""
listener {s.mqtt_tls_port} {s.host}
cafile {d}/certs/ca.crt
certfile {d}/certs/server.crt
keyfile {d}/certs/server.key
tls_version tlsv1.2
""" if s.mqtt_tls_port else "")


def start(s: StackSettings, home: Path, svc: Service, creds: Credentials,
          say: Progress = say) -> None:
    """Write the broker's files under ``<home>/mosquitto``, start it, wait until it answers."""
    binary = install(s, say)
    check_port(s.mqtt_port, "MQTT_PORT", s.host)
    d = home / "mosquitto"
    (d / "data").mkdir(parents=True, exist_ok=True)
    passwd = d / "passwd"
    write_private(passwd, "")
    for user, pw in ((MQTT_GATEWAY_USER, creds.mqtt_gateway_password),
                     (MQTT_SERVICE_USER, creds.mqtt_service_password)):
        run(["mosquitto_passwd", "-b", str(passwd), user, pw], "mosquitto_passwd")
    write_private(d / "acl", MOSQUITTO_ACL_FILE.read_text())
    if s.mqtt_tls_port and not (d / "certs" / "ca.crt").exists():
        check_port(s.mqtt_tls_port, "MQTT_TLS_PORT", s.host)
        run(["bash", str(MAKE_DEV_CA), str(d / "certs")],
            "making the development CA for Mosquitto's TLS listener")
    (d / "mosquitto.conf").write_text(mosquitto_config(s, d))
    svc.spawn([str(binary), "-c", str(d / "mosquitto.conf")])
    wait_ready("mosquitto", svc, lambda: _ready(s, creds), s.ready_timeout_s)


def _ready(s: StackSettings, creds: Credentials) -> bool:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"citystream-ready-{secrets.token_hex(4)}")
    client.username_pw_set(MQTT_SERVICE_USER, creds.mqtt_service_password)
    try:
        client.connect(s.host, s.mqtt_port, keepalive=5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not client.is_connected():
            client.loop(timeout=0.1)
        return client.is_connected()
    finally:
        client.disconnect()


def add_user(home: Path, svc: Service, username: str, password: str) -> None:
    """Add (or change) an MQTT user and make the running broker reload its password file."""
    run(["mosquitto_passwd", "-b", str(home / "mosquitto" / "passwd"), username, password],
        "mosquitto_passwd")
    if svc.running() and svc.pid is not None:
        os.kill(svc.pid, signal.SIGHUP)
