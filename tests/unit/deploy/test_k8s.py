"""deploy/k8s is checked statically: manifests parse, reference each other, name only real
settings and the same image as Compose (no cluster runs here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from citystream.cli import main
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def workloads() -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] in ("Deployment", "StatefulSet")]


def setting_env_names() -> set[str]:
    names = set()
    for section, model in Settings.model_fields.items():
        assert model.annotation is not None
        for name in model.annotation.model_fields:
            names.add(f"CITYSTREAM_{section.upper()}__{name.upper()}")
    return names


def command_env_names(command: str) -> set[str]:
    cmd = main.get_command(click.Context(main), command)
    assert cmd is not None
    return {p.envvar for p in cmd.params if isinstance(p, click.Option) and isinstance(
        p.envvar, str)}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for doc in documents():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _env_names(workload: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for container in _containers(workload):
        names |= {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                names |= set(of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
            if "secretRef" in source:
                names |= set(of_kind("Secret")[source["secretRef"]["name"]]["stringData"])
    return names


@pytest.mark.parametrize("workload", workloads(), ids=lambda w: w["metadata"]["name"])
def test_env_vars_name_real_settings(workload: dict[str, Any]) -> None:
    (container,) = _containers(workload)
    command = container["command"]
    assert command[0] == "citystream" and command[1] in main.list_commands(click.Context(main))
    known = setting_env_names() | command_env_names(command[1])
    unknown = {n for n in _env_names(workload) if n.startswith("CITYSTREAM_")} - known
    assert not unknown, f"{workload['metadata']['name']}: env vars no setting reads: {unknown}"
    secrets = {n for n in _env_names(workload) if "PASSWORD" in n or "TOKEN" in n}
    in_secret = set().union(*(set(s["stringData"]) for s in of_kind("Secret").values()))
    assert secrets <= in_secret, "credentials belong in the Secret, not the ConfigMap"


def test_images_match_compose() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    for workload in workloads():
        name = workload["metadata"]["name"]
        (container,) = _containers(workload)
        assert container["image"] == services[name]["image"], name
        assert container["command"] == services[name]["command"], name


def test_selectors_match_and_services_exist() -> None:
    services = of_kind("Service")
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if workload["kind"] == "StatefulSet":
            service = services[workload["spec"]["serviceName"]]
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["selector"].items() <= labels.items()


def test_replicas_have_stable_distinct_instance_names() -> None:
    """Ingest's instance name is its MQTT client id: it must be the stable pod name."""
    ingest = next(w for w in workloads() if w["metadata"]["name"] == "ingest")
    assert ingest["kind"] == "StatefulSet"
    for workload in workloads():
        (container,) = _containers(workload)
        env = {e["name"]: e for e in container["env"]}
        name = f"CITYSTREAM_{workload['metadata']['name'].upper()}_INSTANCE"
        if name not in command_env_names(container["command"][1]):
            continue  # a stateless service (open data): no instance name
        instance = env[name]
        assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    env = {e["name"]: e.get("value") for e in _containers(ingest)[0]["env"]}
    assert env["CITYSTREAM_INGEST_LEAVE_ON_EXIT"] == "1"


def test_worker_state_dir_is_a_mounted_volume() -> None:
    worker = next(w for w in workloads() if w["metadata"]["name"] == "worker")
    (container,) = _containers(worker)
    data_dir = next(e["value"] for e in container["env"]
                    if e["name"] == "CITYSTREAM_WORKER_DATA_DIR")
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(data_dir.startswith(m) for m in mounts)


def test_config_matches_defaults() -> None:
    config = of_kind("ConfigMap")["citystream-config"]["data"]
    defaults = Settings()
    assert int(config["CITYSTREAM_KAFKA__PARTITIONS"]) == defaults.kafka.partitions
    assert config["CITYSTREAM_INFLUX__BUCKET_KPI"] == defaults.influx.bucket_kpi
    assert config["CITYSTREAM_INFLUX__BUCKET_TELEMETRY"] == defaults.influx.bucket_telemetry
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values must be strings"


def test_every_manifest_is_valid_against_the_kubernetes_api_schemas() -> None:
    """Every built-in resource of deploy/k8s (and deploy/k8s/kafka) against the published
    OpenAPI schemas of the newest Kubernetes version kubernetes-validate ships, strict (no
    unknown fields). Strimzi's custom resources have no schema there:
    test_cluster_layouts.py checks what they say."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    checked, custom = [], []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = f"{path.relative_to(K8S)}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                custom.append(doc["apiVersion"].split("/")[0])
                continue
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")
            checked.append(name)
    assert {"Deployment", "StatefulSet", "ConfigMap", "Secret", "Service"} <= {
        n.split(": ")[1].split()[0] for n in checked}
    assert set(custom) <= {"kafka.strimzi.io", "kustomize.config.k8s.io"}, custom
