"""The processes a benchmark run starts: a private stack (Mosquitto, Kafka, InfluxDB on free
loopback ports in a temporary home, never a user's stack) and the measured programs as child
processes with their logs (tests/support.py's `Process`, the harness the tests use too)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from deploy.local.stack import MQTT_SERVICE_USER, Credentials, Stack, StackSettings, free_port
from models.settings import KafkaSettings
from tests.support import Process

from .influx import Influx


class BenchStack:
    """`deploy.local.stack.Stack` in `home` with free ports (or, `attach`, the ports that home
    was started with); `close()` stops it."""

    SERVICES: tuple[str, ...] = Stack.SERVICES
    """The services whose CPU a measurement counts."""

    def __init__(self, home: Path, say: Any = None, *, attach: bool = False) -> None:
        settings = StackSettings(home=home) if attach else StackSettings(
            home=home, mqtt_port=free_port(), kafka_port=free_port(),
            kafka_controller_port=free_port(), influxdb_port=free_port(),
            dashboard_port=free_port())
        self.stack = Stack(settings, say=say or (lambda msg: print(f"[stack] {msg}",
                                                                   file=sys.stderr)))
        self.home = home

    def up(self, only: tuple[str, ...] = Stack.SERVICES) -> BenchStack:
        self.stack.up(only)
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

    def kafka(self, prefix: str, partitions: int | None = None) -> KafkaSettings:
        """Settings for clients of the stack's Kafka under `prefix`: its replication (one node,
        or a cluster's) and `partitions` per topic (default: citystream's)."""
        info = self.info["kafka"]
        return KafkaSettings(
            bootstrap=info["bootstrap"], topic_prefix=prefix,
            replication_factor=info.get("replication_factor", 1),
            min_insync_replicas=info.get("min_insync_replicas", 1),
            **({"partitions": partitions} if partitions else {}))

    def service_pids(self) -> dict[str, int]:
        return {name: svc.pid for name, svc in self.stack.services.items()
                if svc.pid is not None and name in self.SERVICES}

    def service_login(self) -> tuple[str, str]:
        """The MQTT user the services (and Telegraf) use: may read city/#."""
        return MQTT_SERVICE_USER, Credentials.load_or_create(self.home).mqtt_service_password


class Namespace:
    """Fresh names for one measurement: Kafka topic prefix, MQTT shared group, InfluxDB
    buckets; so measurements never see each other's data."""

    def __init__(self, label: str, partitions: int | None = None) -> None:
        self.partitions = partitions
        self.tag = f"{label}-{uuid.uuid4().hex[:6]}"
        self.prefix = f"{self.tag}."
        self.group = self.tag.replace("-", "")
        self.telemetry = f"tel-{self.tag}"
        self.kpi = f"kpi-{self.tag}"

    def env(self) -> dict[str, str]:
        return {"CITYSTREAM_KAFKA__TOPIC_PREFIX": self.prefix,
                "CITYSTREAM_MQTT__SHARED_GROUP": self.group,
                "CITYSTREAM_INFLUX__BUCKET_TELEMETRY": self.telemetry,
                "CITYSTREAM_INFLUX__BUCKET_KPI": self.kpi,
                **({"CITYSTREAM_KAFKA__PARTITIONS": str(self.partitions)}
                   if self.partitions else {})}


def _operator_token(stack: BenchStack) -> dict[str, str]:
    """The stack's pipeline token may write only the stack's own two buckets; a measurement
    writes buckets of its own, so its processes get the (private) stack's operator token."""
    return {"CITYSTREAM_INFLUX__TOKEN": stack.info["influxdb"]["token"]}


def citystream(name: str, args: list[str], stack: BenchStack, ns: Namespace, log_dir: Path,
               extra: dict[str, str] | None = None) -> Process:
    """A `citystream <args>` child pointed at the bench stack and the measurement's names;
    `ingest`, `worker` and `sink` are ready when they log that they run."""
    env = {**os.environ, **stack.stack.service_env(), **ns.env(), **_operator_token(stack),
           "CITYSTREAM_MQTT__SESSION_EXPIRY_S": "600", **(extra or {})}
    ready = None
    if args[0] in ("ingest", "worker", "sink"):
        ready = f"{args[0]} {args[args.index('--instance') + 1]} running;"
    return Process(name, [sys.executable, "-m", "citystream", "-v", *args], env,
                   log_dir / f"{name}.log", ready)
