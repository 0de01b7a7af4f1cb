"""A replicated Kafka cluster on one machine, for fault tests: three Kafka nodes (KRaft, each a
broker and a controller) in network namespaces of their own, Mosquitto and InfluxDB on the
bridge between them, and namespaces for the pipeline's processes, all started by the code
behind `citystream up` (mosquitto.py, kafka.py, influxdb.py). `citystream up` stays one node.

    root namespace: tests, simulator      bridge cs<pid>br 10.213.<n>.1/24
      Mosquitto  10.213.<n>.1:<port>   ─┐
      InfluxDB   10.213.<n>.1:<port>   ─┤
    netns cs<pid>-k1  10.213.<n>.11  ───┤  Kafka node 1  :9092 clients, :9093 controllers
    netns cs<pid>-k2  10.213.<n>.12  ───┤  Kafka node 2
    netns cs<pid>-k3  10.213.<n>.13  ───┤  Kafka node 3
    netns cs<pid>-in  10.213.<n>.21  ───┤  ingest     } where the caller runs them
    netns cs<pid>-w0  10.213.<n>.31  ───┤  worker 0   } (`Cluster.netns`, e.g. through
    netns cs<pid>-w1  10.213.<n>.32  ───┘  worker 1   }  `supervision.in_netns`)

Kafka's own topics and every topic citystream creates get 3 replicas and
``min.insync.replicas=2`` (`Cluster.kafka_env` gives the pipeline
``CITYSTREAM_KAFKA__REPLICATION_FACTOR`` and ``__MIN_INSYNC_REPLICAS``); every producer of
citystream uses acks=all. So one node may die and nothing stops; with two gone producers
stop (and, the controllers having lost their majority, nothing changes leader) until one is
back.

Faults: `kill` / `start` a node; `isolate` / `rejoin` a node (it keeps running, nothing
reaches it); `cut_from_kafka` / `heal` a pipeline namespace (it keeps Mosquitto and InfluxDB).
`down` (also on leaving the `with` block) stops everything and removes the namespaces and the
bridge; `up` first removes those of an earlier run whose process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from deploy.local import kafka
from deploy.local.credentials import Credentials
from deploy.local.netns import Network
from deploy.local.settings import StackSettings
from deploy.local.stack import Stack
from deploy.local.supervision import Progress, Service, free_port, say
from models.errors import StackError

NODES = 3
PIPELINE = {"in": 21, "w0": 31, "w1": 32}
"""The pipeline's namespaces by default: member -> last octet of its address."""


def node_member(node_id: int) -> str:
    return f"k{node_id}"


def node_service(node_id: int) -> str:
    return f"kafka-{node_id}"


class ClusterStack(Stack):
    """Mosquitto and InfluxDB of a `Cluster` (on the bridge's address) and its Kafka nodes as
    the services ``kafka-<id>``: a `Stack` whose clients (`client_info`, `service_env`) use the
    cluster."""

    SERVICES = ("mosquitto", "influxdb")

    def __init__(self, settings: StackSettings, quorum: kafka.Quorum, network: Network,
                 say: Progress = say) -> None:
        super().__init__(settings, say)
        self.quorum = quorum
        for node in quorum.nodes:
            name = node_service(node.node_id)
            self.services[name] = Service(name, self.home,
                                          netns=network.netns(node_member(node.node_id)))

    def kafka_env(self) -> dict[str, str]:
        """What points a citystream process at the cluster, with its replication."""
        return {"CITYSTREAM_KAFKA__BOOTSTRAP": self.quorum.bootstrap,
                "CITYSTREAM_KAFKA__REPLICATION_FACTOR": str(self.quorum.replication_factor),
                "CITYSTREAM_KAFKA__MIN_INSYNC_REPLICAS": str(self.quorum.min_insync_replicas)}

    def client_info(self, creds: Credentials | None = None) -> dict[str, Any]:
        info = super().client_info(creds)
        info["kafka"] = {"bootstrap": self.quorum.bootstrap,
                         "replication_factor": self.quorum.replication_factor,
                         "min_insync_replicas": self.quorum.min_insync_replicas}
        return info

    def service_env(self) -> dict[str, str]:
        return {**super().service_env(), **self.kafka_env()}

    def node(self, name: str) -> kafka.Node | None:
        return next((n for n in self.quorum.nodes if node_service(n.node_id) == name), None)

    def start_service(self, name: str) -> None:
        node = self.node(name)
        if node is None:
            super().start_service(name)
            return
        kafka.start_node(self.s, self.home / name, self.services[name], node, self.quorum,
                         self.say)
        self._save()


@dataclass(frozen=True)
class PartitionState:
    """One partition as the cluster's metadata describes it."""

    topic: str
    partition: int
    leader: int  # -1: none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class Cluster:
    """The topology of the module docstring under `settings.home` (see there)."""

    def __init__(self, settings: StackSettings, *, pipeline: Mapping[str, int] = PIPELINE,
                 min_insync_replicas: int = 2, say: Progress = say) -> None:
        self.base = settings
        self.pipeline = dict(pipeline)
        self.min_insync_replicas = min_insync_replicas
        self.say = say
        self.network: Network | None = None
        self._stack: ClusterStack | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def up(self) -> Cluster:
        """Network, Mosquitto, InfluxDB and the three Kafka nodes, each waited for; on any
        failure everything started is taken down again before the error propagates."""
        t0 = time.monotonic()
        members = {node_member(i): 10 + i for i in range(1, NODES + 1)} | self.pipeline
        try:
            self.network = net = Network.create(members, self.say)
            home = self.base.home.expanduser().resolve()
            home.mkdir(parents=True, exist_ok=True)
            quorum = kafka.Quorum(
                tuple(kafka.Node(i, net.address(node_member(i)), 9092, 9093)
                      for i in range(1, NODES + 1)),
                min_insync_replicas=self.min_insync_replicas, cluster_id=_cluster_id(home))
            settings = self.base.model_copy(update={
                "home": home, "host": net.gateway, "mqtt_port": free_port(),
                "mqtt_tls_port": 0, "influxdb_port": free_port()})
            self._stack = ClusterStack(settings, quorum, net, self.say)
            kafka.install(settings, self.say)
            self.start(*range(1, NODES + 1))
            self.stack.ensure("mosquitto")
            self.stack.ensure("influxdb")
        except BaseException:
            self.down()
            raise
        self.say(f"cluster up in {time.monotonic() - t0:.1f}s: Kafka {quorum.bootstrap}, "
                 f"MQTT {settings.host}:{settings.mqtt_port}, InfluxDB {settings.influxdb_url}")
        return self

    def down(self) -> None:
        """Stop every service (Kafka nodes together: SIGTERM, SIGKILL after 10 s) and remove
        the namespaces (killing what still runs in them) and the bridge."""
        try:
            if self._stack is not None:
                nodes = [self.stack.services[node_service(n.node_id)]
                         for n in self.stack.quorum.nodes]
                for svc in nodes:  # at once: one by one, the last would wait for a quorum
                    if svc.running() and svc.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(svc.pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                for svc in nodes:
                    svc.stop(timeout=max(0.0, deadline - time.monotonic()))
                self.stack.down()
        finally:
            if self.network is not None:
                self.network.destroy()
                self.network = None

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.down()

    # -- what clients need ---------------------------------------------------------------------

    @property
    def stack(self) -> ClusterStack:
        if self._stack is None:
            raise StackError("the cluster is not up")
        return self._stack

    @property
    def bootstrap(self) -> str:
        return self.stack.quorum.bootstrap

    def kafka_env(self) -> dict[str, str]:
        return self.stack.kafka_env()

    def netns(self, member: str) -> str:
        """The network namespace of a pipeline member (``in``, ``w0``...)."""
        assert self.network is not None and member in self.network.members, member
        return self.network.netns(member)

    def address(self, member: str) -> str:
        """The address of a pipeline member (``in``, ``w0``...) on the bridge."""
        assert self.network is not None and member in self.network.members, member
        return self.network.address(member)

    # -- faults --------------------------------------------------------------------------------

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Stop Kafka node `node_id` (by default as a crash would)."""
        self.stack.stop_service(node_service(node_id), sig)

    def start(self, *node_ids: int) -> None:
        """Start the given Kafka nodes together and wait until each sees all three."""
        for i in node_ids:
            node = self.stack.quorum.nodes[i - 1]
            name = node_service(i)
            kafka.start_node(self.stack.s, self.stack.home / name, self.stack.services[name],
                             node, self.stack.quorum, self.say, wait=False)
        self.stack._save()
        for i in node_ids:
            node = self.stack.quorum.nodes[i - 1]
            t0 = time.monotonic()
            kafka.wait_node(self.stack.s, self.stack.services[node_service(i)], node,
                            self.stack.quorum)
            self.say(f"kafka node {i}: ready in {time.monotonic() - t0:.1f}s at {node.address}")

    def running(self) -> list[int]:
        return [n.node_id for n in self.stack.quorum.nodes
                if self.stack.services[node_service(n.node_id)].running()]

    def cut_from_kafka(self, member: str) -> None:
        """Cut a pipeline namespace off every Kafka node (it keeps Mosquitto and InfluxDB)."""
        assert self.network is not None
        self.network.cut(member, [n.host for n in self.stack.quorum.nodes])

    def heal(self, member: str) -> None:
        assert self.network is not None
        self.network.heal(member)

    def isolate(self, node_id: int) -> None:
        """Take Kafka node `node_id` off the network (it keeps running: a partition, not a
        crash); `rejoin` puts it back."""
        assert self.network is not None
        self.network.isolate(node_member(node_id))

    def rejoin(self, node_id: int) -> None:
        """Undo `isolate` (again is harmless)."""
        assert self.network is not None
        self.network.rejoin(node_member(node_id))

    # -- the cluster's view --------------------------------------------------------------------

    def partitions(self, topics: list[str]) -> list[PartitionState]:
        """Leader, replicas and in-sync replicas of every partition of `topics`."""
        return asyncio.run(asyncio.wait_for(self._describe(topics), 30))

    async def _describe(self, topics: list[str]) -> list[PartitionState]:
        from aiokafka.admin import AIOKafkaAdminClient

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        return [PartitionState(t["topic"], p["partition"], p["leader"], tuple(p["replicas"]),
                               tuple(p["isr"]))
                for t in described for p in t["partitions"]]

    def wait_in_sync(self, topics: list[str], timeout_s: float = 180.0) -> float:
        """Wait until every partition of `topics` has a leader and all its replicas in sync;
        the seconds it took."""
        t0 = time.monotonic()
        lagging: list[PartitionState] = []
        while time.monotonic() < t0 + timeout_s:
            try:
                parts = self.partitions(topics)
            except Exception:  # a node going away mid-request: ask again
                time.sleep(1)
                continue
            lagging = [p for p in parts if p.leader < 0 or len(p.isr) < len(p.replicas)]
            if parts and not lagging:
                return time.monotonic() - t0
            time.sleep(1)
        raise StackError(f"{len(lagging)} partitions not in sync after {timeout_s:.0f}s, e.g. "
                         f"{lagging[:3]}")


def _cluster_id(home: Path) -> str:
    """The cluster id every node's storage is formatted with, kept in the home."""
    path = home / "kafka-cluster-id"
    if not path.exists():
        path.write_text(kafka.new_cluster_id())
    return path.read_text().strip()
