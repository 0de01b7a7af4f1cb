"""Kafka for the local stack: broker jars from Maven Central, one KRaft node (broker and
controller), ready once an admin DescribeCluster request lists the broker."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import uuid
from pathlib import Path

from deploy.local.credentials import Credentials
from deploy.local.settings import LOOPBACK, StackSettings
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


def kafka_properties(s: StackSettings, data: Path) -> str:
    """server.properties of a single KRaft node keeping its logs in `data`."""
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{LOOPBACK}:{s.kafka_controller_port}",
        f"listeners=PLAINTEXT://{LOOPBACK}:{s.kafka_port},"
        f"CONTROLLER://{LOOPBACK}:{s.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{s.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data}",
        f"num.partitions={s.kafka_partitions}",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
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
    check_port(s.kafka_port, "KAFKA_PORT")
    check_port(s.kafka_controller_port, "KAFKA_CONTROLLER_PORT")
    java = java_binary()
    lib = install(s, say)
    d = home / "kafka"
    data = d / "data"
    data.mkdir(parents=True, exist_ok=True)
    props = d / "server.properties"
    props.write_text(kafka_properties(s, data))
    log4j = d / "log4j.properties"
    log4j.write_text(KAFKA_LOG4J)
    cp = f"{lib}/*"
    if not (data / "meta.properties").exists():
        # one id in 64 starts with "-": given as --cluster-id=ID, never as a separate word
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        run([java, f"-Dlog4j.configuration=file:{log4j}", "-cp", cp,
             "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)],
            "formatting Kafka storage")
    svc.spawn([java, f"-Xmx{s.kafka_heap}", f"-Xms{s.kafka_heap}",
               "-XX:+AlwaysPreTouch", "-XX:+UseG1GC",
               "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{log4j}",
               "-cp", cp, "kafka.Kafka", str(props)])
    wait_ready("kafka", svc, lambda: _ready(s), s.ready_timeout_s)


def _ready(s: StackSettings) -> bool:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    if not port_in_use(s.kafka_port):
        return False
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{LOOPBACK}:{s.kafka_port}",
                                    request_timeout_ms=3000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return bool(cluster.get("brokers"))
        finally:
            await admin.close()

    return asyncio.run(asyncio.wait_for(probe(), timeout=5))
