"""The peers citystream is measured against, each given the same input on the same machine:

- Telegraf (built from its Go module by bench/build-telegraf.sh): `inputs.mqtt_consumer` with
  the JSON parser into `outputs.influxdb_v2`, the raw MQTT-to-InfluxDB path; and the same
  with citystream's durability, Kafka in the path (`outputs.kafka` in one process,
  `inputs.kafka_consumer` into InfluxDB in another);
- Quix Streams (from PyPI, in its own venv: it pins pydantic below citystream's): the 15-minute
  water consumption per district from the same Kafka topic (bench/quix_job.py);
- the floor: one process that only parses, validates and line-protocol-encodes the readings.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from connectors.influxdb.lineproto import reading_line
from deploy.local.stack import StackSettings
from ingest.decode import decode
from tests.support import ROOT, Process

from .load import Sensor
from .procs import BenchStack, Namespace

TELEGRAF_VERSION = os.environ.get("CITYSTREAM_TELEGRAF_VERSION", "1.37.2")
QUIX_VERSION = "3.28.1"


# -- Telegraf ---------------------------------------------------------------------------------


@functools.cache
def telegraf_binary(say: Any = print) -> Path:
    """The cached Telegraf build with the plugins the layouts need; built first if missing
    (about 2 min, once per plugin set)."""
    cache = StackSettings().cache.expanduser()
    binary = cache / f"telegraf-{TELEGRAF_VERSION}" / "bin" / "telegraf"
    say(f"Telegraf {TELEGRAF_VERSION}: the cached build, else built from its Go module "
        "(about 2 min, once per plugin set)")
    env = {**os.environ, "CITYSTREAM_CACHE": str(cache),
           "CITYSTREAM_TELEGRAF_VERSION": TELEGRAF_VERSION}
    done = subprocess.run(["bash", str(ROOT / "bench" / "build-telegraf.sh")], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0 or not binary.exists():
        raise RuntimeError(f"building Telegraf failed:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return binary


# Per kind: the JSON parser's time format and which keys are tags or string fields, so the
# points match citystream's raw schema (measurement per kind, district from the topic).
_TELEGRAF_KINDS = {
    "water": ("unix_ms", ["sensor_id"], []),
    "energy": ("2006-01-02T15:04:05Z07:00", ["sensor_id"], []),
    "traffic": ("unix_ms", ["sensor_id", "junction"], []),
    "shuttle": ("2006-01-02T15:04:05Z07:00", ["sensor_id", "route_id"], ["status", "stop_id"]),
}


def _agent() -> str:
    return """[agent]
  interval = "10s"
  round_interval = false
  metric_batch_size = 5000
  metric_buffer_limit = 1000000
  flush_interval = "1s"
  flush_jitter = "0s"
  omit_hostname = true
"""


def _influx_output(stack: BenchStack, ns: Namespace) -> str:
    influx = stack.info["influxdb"]
    return f"""
[[outputs.influxdb_v2]]
  urls = ["{influx['url']}"]
  token = "{influx['token']}"
  organization = "{influx['org']}"
  bucket = "{ns.telemetry}"
  content_encoding = "identity"
  timeout = "30s"
"""


def _mqtt_inputs(stack: BenchStack, client_tag: str) -> str:
    user, password = stack.service_login()
    mqtt = stack.info["mqtt"]
    out = []
    for kind, (time_format, tags, strings) in _TELEGRAF_KINDS.items():
        out.append(f"""
[[inputs.mqtt_consumer]]
  name_override = "{kind}"
  servers = ["tcp://{mqtt['host']}:{mqtt['port']}"]
  topics = ["city/+/{kind}/+"]
  topic_tag = ""
  qos = 1
  persistent_session = true
  client_id = "telegraf-{client_tag}-{kind}"
  username = "{user}"
  password = "{password}"
  max_undelivered_messages = 5000
  data_format = "json"
  tag_keys = {tags!r}
  json_string_fields = {strings!r}
  json_time_key = "ts"
  json_time_format = "{time_format}"
  [[inputs.mqtt_consumer.topic_parsing]]
    topic = "city/+/{kind}/+"
    tags = "_/district/_/_"
""".replace("'", '"'))
    return "".join(out)


def telegraf_kafka_topic(ns: Namespace) -> str:
    """The topic between the two Telegraf processes of the Kafka layout."""
    return f"{ns.prefix}telegraf"


def _kafka_output(stack: BenchStack, ns: Namespace) -> str:
    return f"""
[[outputs.kafka]]
  brokers = ["{stack.bootstrap}"]
  topic = "{telegraf_kafka_topic(ns)}"
  routing_tag = "sensor_id"
  required_acks = -1
  idempotent_writes = true
  compression_codec = 0
  data_format = "influx"
"""


def _kafka_input(stack: BenchStack, ns: Namespace) -> str:
    return f"""
[[inputs.kafka_consumer]]
  brokers = ["{stack.bootstrap}"]
  topics = ["{telegraf_kafka_topic(ns)}"]
  consumer_group = "{ns.prefix}telegraf"
  offset = "oldest"
  max_undelivered_messages = 5000
  data_format = "influx"
"""


def telegraf_config(stack: BenchStack, ns: Namespace, client_tag: str) -> str:
    """Telegraf's config: one `mqtt_consumer` per reading kind (QoS 1, persistent session,
    acknowledged once written: Telegraf's tracking metrics), JSON parsing of our payloads,
    batches of 5,000 points flushed every second to the measurement's raw bucket, no gzip on
    loopback (as citystream's sink)."""
    return _agent() + _influx_output(stack, ns) + _mqtt_inputs(stack, client_tag)


def telegraf_kafka_configs(stack: BenchStack, ns: Namespace, client_tag: str) -> dict[str, str]:
    """Telegraf with citystream's durability: an edge process (`mqtt_consumer` ->
    `outputs.kafka`, acks=all, idempotent; an MQTT message is acknowledged once Kafka has its
    metrics) and a sink process (`kafka_consumer` -> `outputs.influxdb_v2`; offsets committed
    once written), line protocol on the topic between them."""
    return {"edge": _agent() + _kafka_output(stack, ns) + _mqtt_inputs(stack, client_tag),
            "sink": _agent() + _influx_output(stack, ns) + _kafka_input(stack, ns)}


def _telegraf_process(name: str, config: str, ns: Namespace, log_dir: Path,
                      ready: str) -> Process:
    conf = log_dir / f"{name}-{ns.tag}.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(config)
    conf.chmod(0o600)
    return Process(name, [str(telegraf_binary()), "--config", str(conf)], {**os.environ},
                   log_dir / f"{name}-{ns.tag}.log", ready=ready)


def telegraf_child(stack: BenchStack, ns: Namespace, log_dir: Path, client_tag: str) -> Process:
    return _telegraf_process("telegraf", telegraf_config(stack, ns, client_tag), ns, log_dir,
                             "Connected [tcp://")


def telegraf_kafka_children(stack: BenchStack, ns: Namespace, log_dir: Path,
                            client_tag: str) -> list[Process]:
    """The Kafka layout's two processes, sink first (it waits for the topic's records)."""
    configs = telegraf_kafka_configs(stack, ns, client_tag)
    return [_telegraf_process("telegraf-sink", configs["sink"], ns, log_dir,
                              "Loaded outputs"),
            _telegraf_process("telegraf-edge", configs["edge"], ns, log_dir,
                              "Connected [tcp://")]


# -- Quix Streams -----------------------------------------------------------------------------


def quix_python(venv: Path, say: Any = print) -> Path:
    """The Python of the bench venv with Quix Streams (created and installed on first use)."""
    python = venv / "bin" / "python"
    marker = venv / f".quixstreams-{QUIX_VERSION}"
    if marker.exists():
        return python
    say(f"installing quixstreams {QUIX_VERSION} into {venv} (first run only)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q",
                           f"quixstreams=={QUIX_VERSION}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install quixstreams failed:\n{done.stdout}\n{done.stderr}")
    marker.write_text(QUIX_VERSION)
    return python


def quix_child(python: Path, stack: BenchStack, ns: Namespace, log_dir: Path,
               group: str) -> Process:
    env = {**os.environ, "BENCH_KAFKA": stack.bootstrap,
           "BENCH_INPUT": f"{ns.prefix}telemetry.water", "BENCH_OUTPUT": f"{ns.prefix}quix.water",
           "BENCH_GROUP": group, "BENCH_STATE": str(log_dir / f"quix-state-{ns.tag}")}
    env.pop("PYTHONPATH", None)
    return Process("quix", [str(python), str(ROOT / "bench" / "quix_job.py")], env,
                   log_dir / f"quix-{ns.tag}.log", ready="quix job running")


# -- the floor --------------------------------------------------------------------------------


def floor(messages: list[tuple[Sensor, bytes, int]], min_seconds: float = 3.0,
          ) -> dict[str, float]:
    """Parse, validate and line-protocol-encode `messages` in this process, as often as fits in
    `min_seconds`: citystream's own decoder (`ingest.decode.decode`) and line builder
    (`connectors.influxdb.lineproto.reading_line`), nothing else: no MQTT, no Kafka, no HTTP."""
    now = int(time.time() * 1000)
    prepared = [(s.topic, body) for s, body, _ in messages]
    readings = 0
    lines = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        for topic, body in prepared:
            result = decode(topic, body, now)
            readings += len(result.readings)
            for r in result.readings:
                reading_line(r.__dict__, r.kind)
                lines += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if lines != readings or not readings:
        raise RuntimeError("the floor loop rejected some of the benchmark's input")
    return {"readings": readings, "readings_per_s": readings / wall,
            "readings_per_cpu_s": readings / cpu, "cpu_s_per_1k": 1000 * cpu / readings}
