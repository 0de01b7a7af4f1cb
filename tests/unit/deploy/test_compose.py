"""deploy/compose is checked statically: no Docker engine runs here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local.mosquitto import MOSQUITTO_ACL_FILE
from deploy.local.stack import StackSettings
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_stack_services_present(compose: dict[str, Any]) -> None:
    assert {"mosquitto", "kafka", "influxdb", "grafana", "ingest", "worker"} <= set(
        compose["services"])


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        assert any(ch.isdigit() for ch in tag), f"{name}: tag {tag!r} is not a version"


def test_versions_match_local_stack(compose: dict[str, Any]) -> None:
    local = StackSettings()
    images = {n: s["image"] for n, s in compose["services"].items()}
    assert images["kafka"] == f"apache/kafka:{local.kafka_version}"
    assert images["influxdb"] == f"influxdb:{local.influxdb_version}"
    assert images["mosquitto"] == f"eclipse-mosquitto:{local.mosquitto_version}"


def _host_ports(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-2]) for p in svc.get("ports", [])}


def test_ports_match_local_defaults(compose: dict[str, Any]) -> None:
    local = StackSettings()
    services = compose["services"]
    assert local.mqtt_port in _host_ports(services["mosquitto"])
    assert local.kafka_port in _host_ports(services["kafka"])
    assert local.influxdb_port in _host_ports(services["influxdb"])
    assert local.dashboard_port in _host_ports(services["dashboard"])
    kafka_env = services["kafka"]["environment"]
    assert f"127.0.0.1:{local.kafka_port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def test_citystream_env_names_real_settings(compose: dict[str, Any]) -> None:
    fields = {
        f"CITYSTREAM_{section.upper()}__{name.upper()}"
        for section, model in Settings.model_fields.items()
        for name in (model.annotation.model_fields if model.annotation else {})  # type: ignore[union-attr]
    }
    for name in ("ingest", "worker"):
        env = compose["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("CITYSTREAM_")} - fields
        assert not unknown, f"{name}: env vars that no setting reads: {unknown}"


def test_buckets_match_contract(compose: dict[str, Any]) -> None:
    env = compose["services"]["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "telemetry"
    init = (ROOT / "deploy" / "influxdb" / "init" / "10-citystream.sh").read_text()
    assert "--name kpi" in init


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to deploy/compose)."""
    return {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}


def test_grafana_provisions_the_dashboards(compose: dict[str, Any]) -> None:
    mounts = _mounts(compose["services"]["grafana"])
    provider = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" /
                               "citystream.yml").read_text())["providers"][0]
    folder = provider["options"]["path"]
    assert mounts[folder] == "../grafana/dashboards"
    assert list((COMPOSE.parent / mounts[folder]).glob("*.json"))
    assert mounts["/etc/grafana/provisioning"] == "../grafana/provisioning"
    datasource = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" /
                                 "influxdb.yml").read_text())["datasources"][0]
    assert datasource["jsonData"]["organization"] == StackSettings().influxdb_org
    env = compose["services"]["grafana"]["environment"]
    assert datasource["secureJsonData"]["token"].lstrip("$") in env


def test_influxdb_init_sets_retention_mappings_and_task(compose: dict[str, Any]) -> None:
    svc = compose["services"]["influxdb"]
    mounts = _mounts(svc)
    init = (ROOT / "deploy" / "influxdb" / "init" / "10-citystream.sh").read_text()
    task_file = re.search(r"--file (\S+)", init)
    assert task_file
    folder, name = task_file.group(1).rsplit("/", 1)
    assert (COMPOSE.parent / mounts[folder] / name).exists()
    local = StackSettings()
    env = svc["environment"]
    assert env["DOCKER_INFLUXDB_INIT_RETENTION"].endswith(f":-{local.retention_telemetry}}}")
    assert env["KPI_RETENTION"].endswith(f":-{local.retention_kpi}}}")
    assert env["KPI_1H_RETENTION"].endswith(f":-{local.retention_kpi_1h}}}")
    assert f"--name {local.bucket_kpi_1h} " in init
    for bucket in (local.bucket_telemetry, local.bucket_kpi, local.bucket_kpi_1h):
        assert f'"{bucket} $' in init, f"no InfluxQL mapping for {bucket}"


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    base = COMPOSE.parent
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (base / src).exists(), f"{name}: mounts missing {src}"


def test_acl_lets_sensors_write_only_their_own_topics() -> None:
    acl = MOSQUITTO_ACL_FILE.read_text()
    assert "pattern write city/+/+/%u" in acl
    assert "allow_anonymous false" in (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()


def test_image_copies_every_package() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"][
        "include"]}
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert packages <= copied, f"Dockerfile misses {packages - copied}"
