"""Where and how the local stack runs: `StackSettings`, from ``CITYSTREAM_STACK__<NAME>``."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.influxdb.provision import Bucket, Plan, parse_retention
from models.settings import default_stack_home

LOOPBACK = "127.0.0.1"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "citystream"


class StackSettings(BaseSettings):
    """Where and how the local stack runs. Env vars: ``CITYSTREAM_STACK__<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CITYSTREAM_STACK__", extra="ignore")

    home: Path = Field(default_factory=default_stack_home, description="data, logs and stack.json")
    cache: Path = Field(default_factory=_default_cache, description="downloads and builds")
    host: str = Field(LOOPBACK, description="the address every service listens on (the "
                      "replicated topology of deploy/local/cluster.py gives its bridge's)")
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
    mosquitto_version: str = Field("2.1.2", description="the broker build-mosquitto.sh builds "
                                   "into the cache (another version also needs "
                                   "CITYSTREAM_MOSQUITTO_SHA256 for its tarball)")
    mosquitto_binary: Path | None = Field(None, description="a Mosquitto >= 2.1 broker to run "
                                          "instead of the one built into the cache")
    mosquitto_persist_plugin: Path | None = Field(None, description="its "
                                                  "mosquitto_persist_sqlite.so (default: "
                                                  "../lib/ beside MOSQUITTO_BINARY)")
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

    @field_validator("host")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

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

    @property
    def influxdb_url(self) -> str:
        return f"http://{self.host}:{self.influxdb_port}"
