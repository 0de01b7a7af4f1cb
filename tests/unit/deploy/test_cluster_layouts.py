"""The replicated Kafka layouts shipped for production (deploy/compose/kafka-cluster.yml,
deploy/k8s/kafka/kafka.yaml) agree with each other, with citystream's settings and with the
layout the cluster fault tests run (deploy/local/cluster.py); checked statically, no Docker or
Kubernetes runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deploy.local import cluster
from deploy.local.kafka import Node, Quorum, kafka_properties
from deploy.local.settings import StackSettings
from models.settings import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
TESTED = Quorum(tuple(Node(i, f"10.0.0.{i}", 9092, 9093) for i in range(1, cluster.NODES + 1)),
                min_insync_replicas=2)


def merged_compose() -> dict[str, Any]:
    """docker-compose.yml with kafka-cluster.yml over it (mappings merged as Compose does)."""
    base = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    over = yaml.safe_load((COMPOSE / "kafka-cluster.yml").read_text())

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge(a.get(k), b[k]) if k in a else b[k] for k in b} | {
                k: v for k, v in a.items() if k not in b}
        return b

    return dict(merge(base, over))


def config_of_the_tested_layout() -> dict[str, str]:
    props = kafka_properties(StackSettings(), Path("/data"), TESTED.nodes[0], TESTED)
    return dict(line.split("=", 1) for line in props.splitlines() if line)


REPLICATION_KEYS = ("default.replication.factor", "min.insync.replicas",
                    "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                    "transaction.state.log.min.isr")


def test_compose_cluster_is_three_voting_nodes_of_one_cluster() -> None:
    services = merged_compose()["services"]
    nodes = {name: svc["environment"] for name, svc in services.items()
             if name.startswith("kafka")}
    assert len(nodes) == cluster.NODES
    voters = {v.split("@")[1].split(":")[0]: int(v.split("@")[0])
              for v in nodes["kafka"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")}
    assert voters == {name: int(env["KAFKA_NODE_ID"]) for name, env in nodes.items()}
    for name, env in nodes.items():
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == nodes["kafka"][
            "KAFKA_CONTROLLER_QUORUM_VOTERS"]
        assert env["CLUSTER_ID"] == nodes["kafka"]["CLUSTER_ID"]
        assert f"INTERNAL://{name}:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_compose_cluster_replicates_as_the_tested_layout() -> None:
    services = merged_compose()["services"]
    tested = config_of_the_tested_layout()
    for name in ("kafka", "kafka-2", "kafka-3"):
        env = services[name]["environment"]
        for key in REPLICATION_KEYS:
            assert str(env[f"KAFKA_{key.replace('.', '_').upper()}"]) == tested[key], (name, key)
        assert str(env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"]) == "false"


def test_compose_pipeline_uses_every_node_and_the_replication() -> None:
    services = merged_compose()["services"]
    for name in ("ingest", "worker"):
        env = services[name]["environment"]
        kafka = KafkaSettings(bootstrap=env["CITYSTREAM_KAFKA__BOOTSTRAP"],
                              replication_factor=int(env["CITYSTREAM_KAFKA__REPLICATION_FACTOR"]),
                              min_insync_replicas=int(env["CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS"]))
        assert kafka.bootstrap.split(",") == [f"{n}:29092" for n in ("kafka", "kafka-2",
                                                                     "kafka-3")]
        assert (kafka.replication_factor, kafka.min_insync_replicas) == (
            TESTED.replication_factor, TESTED.min_insync_replicas)
        assert {"kafka-2", "kafka-3"} <= set(services[name]["depends_on"])
        assert services[name]["environment"]["CITYSTREAM_MQTT__HOST"] == "mosquitto"


def test_k8s_kafka_replicates_as_the_config_expects() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((K8S / "kafka" / "kafka.yaml").read_text())}
    pool, kafka = docs["KafkaNodePool"], docs["Kafka"]
    assert pool["spec"]["replicas"] == cluster.NODES
    assert set(pool["spec"]["roles"]) == {"broker", "controller"}
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    tested = config_of_the_tested_layout()
    config = kafka["spec"]["kafka"]["config"]
    for key in REPLICATION_KEYS:
        assert str(config[key]) == tested[key], key
    assert config["unclean.leader.election.enable"] is False
    settings = yaml.safe_load((K8S / "config.yaml").read_text())["data"]
    assert int(settings["CITYSTREAM_KAFKA__REPLICATION_FACTOR"]) == config[
        "default.replication.factor"]
    assert int(settings["CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS"]) == config[
        "min.insync.replicas"]
    assert int(settings["CITYSTREAM_KAFKA__PARTITIONS"]) == config["num.partitions"]


def test_the_defaults_stay_single_node() -> None:
    """`citystream up` and a bare `citystream ingest` keep one copy."""
    kafka = Settings().kafka
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (1, 1)
