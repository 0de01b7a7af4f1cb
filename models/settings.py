"""Service settings from the environment: ``CITYSTREAM_<SECTION>__<NAME>``.

Every component (sim, ingest, worker) reads the same `Settings`; secrets are `SecretStr` and never
printed. `Settings.load()` turns a validation error into `ConfigError` naming the env var to fix.

With no ``CITYSTREAM_MQTT__*``, ``CITYSTREAM_KAFKA__*`` or ``CITYSTREAM_INFLUX__*`` variable in the
environment, `Settings.load()` finds the local stack that `citystream up` started (its home:
``CITYSTREAM_STACK__HOME``, else ``$XDG_STATE_HOME/citystream``, else
``~/.local/state/citystream``), fills the connection settings from its ``stack.json`` and
``secrets.json`` exactly as ``eval "$(citystream env)"`` would, and says so on stderr. The local
stack's files are read here, not through `deploy.local`, so this core module imports no
component; `local_stack_env` is the one mapping from those files to settings, and
`deploy.local.stack.Stack.service_env` uses it too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.city import City, load_city
from models.errors import CityModelError, CitystreamError
from models.topics import Topics

ENV_PREFIX = "CITYSTREAM_"
CONNECTION_SECTIONS = ("MQTT", "KAFKA", "INFLUX")
LOCAL_STACK_SERVICE_USER = "citystream"
"""The MQTT user citystream's services log in as on the local stack (deploy/mosquitto/acl)."""


class ConfigError(CitystreamError, ValueError):
    """A setting is invalid; the message names the env var and what is wrong."""


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = Field(None, description="CA file; enables TLS when set")
    keepalive_s: int = Field(30, ge=5)
    session_expiry_s: int = Field(3600, ge=0, description="persistent-session lifetime")
    shared_group: str = Field(
        "ingest", description="MQTT shared-subscription group of the ingest processes; empty: "
        "a plain subscription (run ONE ingest); both survive a restart of Mosquitto 2.1 "
        "with its persist-sqlite plugin, only a plain one a restart of Mosquitto 2.0")
    client_id: str | None = Field(None, description="stable id for a persistent session")


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    partitions: int = Field(8, ge=1)
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]{0,100}$",
                              description="namespace for every topic and consumer group")
    replication_factor: int = Field(1, ge=1, description="copies of each partition of every "
                                    "topic citystream creates (ingest's, the worker's and its "
                                    "changelogs); 3 on a production cluster")
    min_insync_replicas: int = Field(1, ge=1, description="copies that must have a record "
                                     "before Kafka acknowledges it to a producer (all of "
                                     "citystream's use acks=all); 2 with a replication factor "
                                     "of 3: one broker may fail, a second stops producers")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def topic_config(self) -> dict[str, str]:
        """The topic-level config every topic citystream creates carries."""
        return {"min.insync.replicas": str(self.min_insync_replicas)}

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) is more "
                f"than CITYSTREAM_KAFKA__REPLICATION_FACTOR ({self.replication_factor}): no "
                "record could ever be acknowledged")
        return self

    @field_validator("bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for part in value.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{part!r} is not host:port (e.g. 127.0.0.1:9092)")
        return value


class InfluxSettings(BaseModel):
    url: str = "http://127.0.0.1:8086"
    org: str = "citystream"
    token: SecretStr | None = None
    read_token: SecretStr | None = Field(None, description="token for reading (report, "
                                         "baseline learn); CITYSTREAM_INFLUX__TOKEN when unset")
    bucket_telemetry: str = "telemetry"
    bucket_kpi: str = "kpi"


class CitySettings(BaseModel):
    file: Path | None = Field(None, description="city model TOML; the Milton Keynes example "
                                                "when unset")


class DashboardSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address the web server binds to")
    port: int = Field(8080, ge=1, le=65535)
    token: SecretStr | None = Field(None, description="read-only InfluxDB token; "
                                    "CITYSTREAM_INFLUX__TOKEN when unset")
    poll_s: float = Field(5.0, gt=0, le=3600, description="seconds between InfluxDB polls")
    history_h: int = Field(24, ge=1, le=168, description="hours of history in the small charts")
    history_refresh_s: float = Field(60.0, gt=0, description="re-read the history at least "
                                     "this often, and whenever a new KPI point arrived")
    lookback_d: int = Field(7, ge=1, le=3650, description="how far back the latest KPI point "
                            "and active alerts are looked for")
    query_timeout_s: float = Field(10.0, gt=0, le=300)


class OpenDataSettings(BaseModel):
    host: str = Field("127.0.0.1", description="address the open-data server binds to")
    port: int = Field(8090, ge=1, le=65535)
    token: SecretStr | None = Field(None, description="read-only InfluxDB token; "
                                    "CITYSTREAM_INFLUX__READ_TOKEN when unset")
    min_meters: int = Field(5, ge=1, le=100_000, description="water and energy windows with "
                            "fewer meters reporting are withheld (GDPR)")
    public_url: str | None = Field(None, pattern=r"^https?://[^\s\"<>]+$",
                                   description="the URL the public reaches the service at "
                                   "(behind a proxy); http://<host>:<port> when unset")
    publisher: str | None = Field(None, max_length=200, description="the publishing "
                                  "organisation in the catalogue; the city's name when unset")
    max_rows: int = Field(100_000, ge=1, le=10_000_000, description="most rows per request")
    query_timeout_s: float = Field(10.0, gt=0, le=300)
    lookback_d: int = Field(7, ge=1, le=3650, description="how far back the latest final "
                            "window of an NGSI-LD entity is looked for")
    cache_mb: int = Field(64, ge=0, le=65536, description="memory for cached answers")
    live_cache_s: float = Field(0.0, ge=0, le=3600, description="cache answers about recent "
                                "windows this long (0: computed per request)")


class QualitySettings(BaseModel):
    min_score: float = Field(80.0, ge=0, le=100, description="a sensor scoring below this in "
                             "an hour's sensor_quality needs attention")
    alert_hours: int = Field(2, ge=1, le=168, description="hours in a row below min_score "
                             "before a sensor_quality alert is raised")


class AuditSettings(BaseModel):
    log: Path | None = Field(None, description="where destructive operator commands "
                             "(`citystream erase`) append one JSON line each; audit.log in "
                             "the local stack's home when unset")


class Settings(BaseSettings):
    """All of citystream's service settings."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="ignore")

    mqtt: MqttSettings = MqttSettings()
    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    city: CitySettings = CitySettings()
    dashboard: DashboardSettings = DashboardSettings()
    opendata: OpenDataSettings = OpenDataSettings()
    quality: QualitySettings = QualitySettings()
    audit: AuditSettings = AuditSettings()

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment (`overrides` win), else from the local stack when
        the environment has no connection settings (module docstring)."""
        found = discover_local_stack(os.environ)
        values = _nested(found[1]) if found else {}
        for section, fields in overrides.items():
            values[section] = ({**values[section], **fields}
                               if isinstance(fields, dict) and section in values else fields)
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc)) from None
        if found:
            print(f"using the local stack at {found[0]} (no CITYSTREAM_* settings in the "
                  "environment)", file=sys.stderr, flush=True)
        return settings

    def redacted(self) -> dict[str, Any]:
        """The effective settings for a start-up log line, secrets masked."""
        return self.model_dump(mode="json")


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"])
        secret = any(word in name for word in ("PASSWORD", "TOKEN"))
        got = "***" if secret else repr(err.get("input"))
        lines.append(f"{name}: {err['msg']} (got {got})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def default_stack_home() -> Path:
    """Where `citystream up` keeps the local stack unless ``CITYSTREAM_STACK__HOME`` says."""
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "citystream"


def local_stack_env(info: Mapping[str, Any], secrets: Mapping[str, Any]) -> dict[str, str]:
    """The ``CITYSTREAM_*`` settings that point a service at the local stack (what
    `citystream env` prints): `info` is the stack's status object (``stack.json``, as
    `citystream status --json` prints it), `secrets` its ``secrets.json``. The InfluxDB token is
    the pipeline's write-only one, present once InfluxDB has been onboarded."""
    influx = info["influxdb"]
    read_token = str(secrets.get("influxdb_read_token", ""))
    write_token = str(secrets.get("influxdb_write_token", ""))
    return {
        "CITYSTREAM_MQTT__HOST": str(info["mqtt"]["host"]),
        "CITYSTREAM_MQTT__PORT": str(info["mqtt"]["port"]),
        "CITYSTREAM_MQTT__USERNAME": LOCAL_STACK_SERVICE_USER,
        "CITYSTREAM_MQTT__PASSWORD": str(secrets.get("mqtt_service_password", "")),
        "CITYSTREAM_KAFKA__BOOTSTRAP": str(info["kafka"]["bootstrap"]),
        "CITYSTREAM_INFLUX__URL": str(influx["url"]),
        "CITYSTREAM_INFLUX__ORG": str(influx["org"]),
        "CITYSTREAM_INFLUX__BUCKET_TELEMETRY": str(influx["buckets"]["telemetry"]),
        "CITYSTREAM_INFLUX__BUCKET_KPI": str(influx["buckets"]["kpi"]),
        "CITYSTREAM_DASHBOARD__TOKEN": read_token,
        "CITYSTREAM_INFLUX__READ_TOKEN": read_token,
    } | ({"CITYSTREAM_INFLUX__TOKEN": write_token} if write_token else {})


def discover_local_stack(environ: Mapping[str, str]) -> tuple[Path, dict[str, str]] | None:
    """The local stack's home and the settings it gives, when `environ` has no connection
    settings and the home has a ``stack.json``; variables set in `environ` are left out (they
    win), and so are empty secrets."""
    names = {name.upper() for name in environ}
    if any(name.startswith(f"{ENV_PREFIX}{section}__")
           for name in names for section in CONNECTION_SECTIONS):
        return None
    home_var = next((v for k, v in environ.items() if k.upper() == "CITYSTREAM_STACK__HOME"), "")
    home = Path(home_var).expanduser() if home_var else default_stack_home()
    state = home / "stack.json"
    if not state.exists():
        return None
    try:
        info = json.loads(state.read_text())
        secrets_file = home / "secrets.json"
        secrets = json.loads(secrets_file.read_text()) if secrets_file.exists() else {}
        env = local_stack_env(info, secrets)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the local stack's {state} ({type(exc).__name__}: "
                          f"{exc}): run `citystream up`, or set CITYSTREAM_MQTT__*, "
                          "CITYSTREAM_KAFKA__* and CITYSTREAM_INFLUX__*") from None
    return home, {k: v for k, v in env.items() if v and k not in names}


def _nested(env: Mapping[str, str]) -> dict[str, Any]:
    """``CITYSTREAM_INFLUX__URL=...`` -> ``{"influx": {"url": ...}}``."""
    out: dict[str, Any] = {}
    for name, value in env.items():
        section, _, field = name.removeprefix(ENV_PREFIX).lower().partition("__")
        out.setdefault(section, {})[field] = value
    return out


def settings_and_city() -> tuple[Settings, City]:
    """What every service command does first: the `Settings` from the environment and the city
    file they name; on a bad setting or city file, print ``error: ...`` naming what to fix and
    exit with status 2."""
    try:
        settings = Settings.load()
        return settings, load_city(settings.city.file)
    except (ConfigError, CityModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
