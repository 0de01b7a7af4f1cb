"""Kafka for the local stack: broker jars from Maven Central, one KRaft node (broker and
controller), ready once an admin DescribeCluster request lists the broker. The same code starts
each node of a replicated `Quorum` (deploy/local/cluster.py): `start_node`, `wait_node`."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.local.credentials import Credentials
from deploy.local.settings import StackSettings
from deploy.local.supervision import (
    Progress,
    Service,
    check_port,
    port_in_use,
    run,
    say,
    wait_ready,
)
from models.errors import StackError

HERE = Path(__file__).resolve().parent

KAFKA_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError("Java not found: Kafka needs a Java 11+ runtime. Install one "
                         "(apt-get install -y openjdk-17-jre-headless) or set JAVA_HOME.")
    return java


def install(s: StackSettings, say: Progress = say) -> Path:
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
    run([mvn, "-q", "-B", "-f", str(HERE / "kafka-pom.xml"), f"-Dkafka.version={s.kafka_version}",
         "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={tmp}"], "fetching Kafka jars with Maven")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    marker.write_text(s.kafka_version)
    return lib


@dataclass(frozen=True)
class Node:
    """One Kafka node in KRaft combined mode (broker and controller): its id and addresses."""

    node_id: int
    host: str
    port: int
    controller_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Quorum:
    """The nodes of one Kafka cluster, each a broker and a controller (the KRaft voters).

    Kafka's own topics (consumer offsets, transactions) and auto-created ones get
    `replication_factor` copies, one per node up to three; `min_insync_replicas` of them must
    have a record before it is acknowledged to an acks=all producer. `cluster_id` formats every
    node's storage alike (random when empty: one node)."""

    nodes: tuple[Node, ...]
    min_insync_replicas: int = 1
    cluster_id: str = ""

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.nodes))

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)


def single_node(s: StackSettings) -> Quorum:
    """The local stack's Kafka: one node on the stack's address and ports."""
    return Quorum((Node(1, s.host, s.kafka_port, s.kafka_controller_port),))


def kafka_properties(s: StackSettings, data: Path, node: Node | None = None,
                     quorum: Quorum | None = None) -> str:
    """server.properties of `node` of `quorum` (by default the single node of `s`) keeping its
    logs in `data`."""
    quorum = quorum or single_node(s)
    node = node or quorum.nodes[0]
    rf, isr = quorum.replication_factor, quorum.min_insync_replicas
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        f"controller.quorum.voters={quorum.voters}",
        f"listeners=PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port}",
        f"advertised.listeners=PLAINTEXT://{node.address}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        f"num.partitions={s.kafka_partitions}",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={isr}",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=10",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        "transaction.state.log.num.partitions=4",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        "num.network.threads=2",
        "num.io.threads=4",
        "",
    ])


def start(s: StackSettings, home: Path, svc: Service, creds: Credentials,
          say: Progress = say) -> None:
    """Write the broker's files under ``<home>/kafka`` (formatting its storage on the first
    start), start it, wait until it answers. Kafka takes no credentials on loopback."""
    quorum = single_node(s)
    start_node(s, home / "kafka", svc, quorum.nodes[0], quorum, say)


def start_node(s: StackSettings, d: Path, svc: Service, node: Node, quorum: Quorum,
               say: Progress = say, *, wait: bool = True) -> None:
    """Start `node` of `quorum` with its files under `d` (formatting its storage on the first
    start); with `wait`, return once it answers and sees every node of the quorum as a broker
    (a node of several cannot be ready before a majority of them runs: start them all first
    with ``wait=False``, then `wait_node` for each)."""
    check_port(node.port, "KAFKA_PORT", node.host)
    check_port(node.controller_port, "KAFKA_CONTROLLER_PORT", node.host)
    java = java_binary()
    lib = install(s, say)
    data = d / "data"
    data.mkdir(parents=True, exist_ok=True)
    props = d / "server.properties"
    props.write_text(kafka_properties(s, data, node, quorum))
    log4j = d / "log4j.properties"
    log4j.write_text(KAFKA_LOG4J)
    cp = f"{lib}/*"
    if not (data / "meta.properties").exists():
        # one id in 64 starts with "-": given as --cluster-id=ID, never as a separate word
        cluster_id = quorum.cluster_id or new_cluster_id()
        run([java, f"-Dlog4j.configuration=file:{log4j}", "-cp", cp,
             "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)],
            "formatting Kafka storage")
    svc.spawn([java, f"-Xmx{s.kafka_heap}", f"-Xms{s.kafka_heap}",
               "-XX:+AlwaysPreTouch", "-XX:+UseG1GC",
               "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{log4j}",
               "-cp", cp, "kafka.Kafka", str(props)])
    if wait:
        wait_node(s, svc, node, quorum)


def wait_node(s: StackSettings, svc: Service, node: Node, quorum: Quorum) -> None:
    """Wait until `node` answers a DescribeCluster request listing every node of `quorum`."""
    wait_ready(f"kafka node {node.node_id}" if len(quorum.nodes) > 1 else "kafka", svc,
               lambda: brokers(node.host, node.port) >= len(quorum.nodes), s.ready_timeout_s)


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def brokers(host: str, port: int) -> int:
    """How many brokers the node at `host`:`port` knows of (0 while its port is closed)."""
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    if not port_in_use(port, host):
        return 0
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def probe() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{host}:{port}",
                                    request_timeout_ms=3000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return len(cluster.get("brokers") or ())
        finally:
            await admin.close()

    return asyncio.run(asyncio.wait_for(probe(), timeout=5))
