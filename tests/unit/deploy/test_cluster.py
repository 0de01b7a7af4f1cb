"""The replicated topology's pieces that need no root: each Kafka node's configuration, the
cluster as its clients see it, and where a namespaced service runs (the cluster itself is
started by tests/integration/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deploy.local import netns
from deploy.local.cluster import ClusterStack
from deploy.local.kafka import Node, Quorum, kafka_properties
from deploy.local.settings import StackSettings
from deploy.local.supervision import Service

QUORUM = Quorum(tuple(Node(i, f"10.213.9.1{i}", 9092, 9093) for i in (1, 2, 3)),
                min_insync_replicas=2, cluster_id="abc")


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_each_node_is_a_voter_listening_on_its_own_address(tmp_path: Path) -> None:
    props = properties(kafka_properties(StackSettings(), tmp_path, QUORUM.nodes[1], QUORUM))
    assert props["node.id"] == "2"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == (
        "1@10.213.9.11:9093,2@10.213.9.12:9093,3@10.213.9.13:9093")
    assert props["listeners"] == "PLAINTEXT://10.213.9.12:9092,CONTROLLER://10.213.9.12:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://10.213.9.12:9092"
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"


def test_the_local_stack_stays_one_node(tmp_path: Path) -> None:
    s = StackSettings(kafka_port=19092, kafka_controller_port=19093)
    props = properties(kafka_properties(s, tmp_path))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"


def test_the_stack_address_must_be_an_ip_address() -> None:
    assert StackSettings(host="10.213.9.1").influxdb_url == "http://10.213.9.1:8086"
    with pytest.raises(ValidationError):
        StackSettings(host="localhost; rm -rf /")


def test_clients_of_the_cluster_get_its_nodes_and_replication(tmp_path: Path) -> None:
    net = netns.Network("4242", 9, {"k1": 11, "k2": 12, "k3": 13})
    stack = ClusterStack(StackSettings(home=tmp_path, host="10.213.9.1", mqtt_port=1884),
                         QUORUM, net)
    bootstrap = "10.213.9.11:9092,10.213.9.12:9092,10.213.9.13:9092"
    assert stack.client_info()["kafka"] == {"bootstrap": bootstrap, "replication_factor": 3,
                                            "min_insync_replicas": 2}
    env = stack.service_env()
    assert env["CITYSTREAM_KAFKA__BOOTSTRAP"] == bootstrap
    assert env["CITYSTREAM_KAFKA__REPLICATION_FACTOR"] == "3"
    assert env["CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS"] == "2"
    assert (env["CITYSTREAM_MQTT__HOST"], env["CITYSTREAM_MQTT__PORT"]) == ("10.213.9.1", "1884")
    assert stack.services["kafka-2"].netns == "cs4242-k2"
    assert "kafka" not in stack.services


def test_a_service_with_a_namespace_enters_only_its_network_namespace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class Popen:
        pid = os.getpid()

        def __init__(self, argv: list[str], **_: Any) -> None:
            seen.append(argv)

    monkeypatch.setattr(subprocess, "Popen", Popen)
    Service("kafka-1", tmp_path, netns="cs1-k1").spawn(["java", "kafka.Kafka"])
    Service("mosquitto", tmp_path).spawn(["mosquitto"])
    assert seen == [["nsenter", "--net=/run/netns/cs1-k1", "--", "java", "kafka.Kafka"],
                    ["mosquitto"]]


def test_leftovers_are_told_by_their_owner_pid() -> None:
    assert netns._owner_alive(f"cs{os.getpid()}-k1")
    assert netns._owner_alive("not-ours")  # never touched
    dead = 2**22 + 7  # above pid_max's default ceiling
    assert not netns._owner_alive(f"cs{dead}-w0")
    assert not netns._owner_alive(f"cs{dead}br")
