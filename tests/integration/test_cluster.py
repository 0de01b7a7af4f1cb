"""Faults of a replicated Kafka cluster and of the network, against the real services: three
Kafka nodes (KRaft, each broker and controller) in network namespaces of their own, topics with
3 replicas and min.insync.replicas=2, acks=all producers; ingest and the workers in namespaces
of their own too (deploy/local/cluster.py draws the topology). Marked `cluster` (needs root;
not in the default run): ``.venv/bin/pytest -m cluster tests/integration/test_cluster.py -s``.

Each test runs the pipeline under the simulator and a canary (tests/integration/faults.py),
breaks something, measures how long until fresh data passed each stage again, and then
accounts for every published reading and compares every KPI point with the oracle (`settle`).
Each writes `timeline.log` and `recovery.json` in its directory; the figures are in
docs/cluster.md.

1. The Kafka node that leads the busiest partitions is SIGKILLed; later a second one, which
   leaves one copy, under min.insync.replicas: producers must stop, not lose; then both come
   back.
2. A worker is cut off Kafka (it keeps InfluxDB) for longer than its session timeout: its
   partitions move to the other; back, it must not write stale windows.
3. Ingest is cut off Kafka (it keeps Mosquitto) for a minute: MQTT flow control holds the
   backlog in Mosquitto, nothing is lost; the drain is measured.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from deploy.local.cluster import Cluster
from deploy.local.settings import StackSettings
from tests.integration.faults import (
    BackgroundSim,
    Probe,
    Recovery,
    save_report,
    settle,
)
from tests.integration.helpers import Lane, city_kinds, start_of_run
from tests.support import IngestProcess

pytestmark = [pytest.mark.cluster]

RATE = os.environ.get("CITYSTREAM_CLUSTER_RATE", "60")  # simulator messages per second
SIM = ["--seed", "13", "--speed", "0", "--gateways", "4", "--faults", "0.004",
       "--fault", "duplicate=0.02", "--fault", "reorder=0.02", "--rate", RATE]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The topology of deploy/local/cluster.py, torn down (namespaces too) whatever happens."""
    assert os.geteuid() == 0, "the cluster tests need root: network namespaces (ip netns)"
    home = tmp_path_factory.mktemp("cluster")
    topology = Cluster(StackSettings(home=home, kafka_heap="512m", ready_timeout_s=180),
                       say=lambda msg: print(f"[cluster] {msg}", flush=True))
    try:
        yield topology.up()
    finally:
        topology.down()


@pytest.fixture
def lane(cluster: Cluster, tmp_path: Path) -> Iterator[Lane]:
    """A lane of its own (topics, groups, buckets) on the cluster; one plain-subscription
    ingest (a Mosquitto restart loses nothing, see test_faults.py)."""
    lane = Lane.create(cluster.stack, tmp_path / "lane", plain_subscription=True)
    try:
        yield lane
    finally:
        lane.stop()


def lane_topics(lane: Lane) -> list[str]:
    p = lane.prefix
    return [*(f"{p}telemetry.{k}" for k in city_kinds()), f"{p}telemetry.deadletter",
            f"{p}kpi.records", f"{p}pipeline.counters"]


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    async def run() -> dict[tuple[str, int], int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in topics
                   for p in consumer.partitions_for_topic(t) or ()]
            ends = await consumer.end_offsets(tps)
            return {(tp.topic, tp.partition): n for tp, n in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(run(), 60))


def busiest_leader(cluster: Cluster, lane: Lane) -> tuple[int, int, int]:
    """The node leading the partitions with the most records: (node, its records, all)."""
    topics = lane_topics(lane)
    ends = end_offsets(cluster.bootstrap, topics)
    led: dict[int, int] = {}
    for p in cluster.partitions(topics):
        led[p.leader] = led.get(p.leader, 0) + ends.get((p.topic, p.partition), 0)
    node = max(led, key=lambda n: led[n])
    return node, led[node], sum(led.values())


def wait_led_elsewhere(cluster: Cluster, topics: list[str], node: int,
                       timeout_s: float = 120.0) -> float:
    """Seconds until no partition of `topics` is led by `node` or leaderless."""
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout_s:
        try:
            parts = cluster.partitions(topics)
        except Exception:  # metadata from a node going away: ask again
            parts = []
        if parts and all(p.leader not in (node, -1) for p in parts):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"partitions still led by node {node} after {timeout_s:.0f}s")


def group_hosts(bootstrap: str, group: str) -> list[str]:
    """The addresses of a consumer group's members, e.g. ['10.213.1.31']."""

    async def run() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([group])
            members = response.groups[0][5]
            return sorted(str(m[2]).lstrip("/") for m in members)
        finally:
            await admin.close()

    return asyncio.run(asyncio.wait_for(run(), 30))


def wait_group(bootstrap: str, group: str, hosts: list[str], timeout_s: float = 180.0) -> float:
    """Seconds until the members of `group` are exactly `hosts`."""
    t0 = time.monotonic()
    seen: list[str] = []
    while time.monotonic() < t0 + timeout_s:
        try:
            seen = group_hosts(bootstrap, group)
        except Exception:  # coordinator moving: ask again
            seen = []
        if seen == sorted(hosts):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"group {group}: members {seen}, want {sorted(hosts)}")


def canaries_seen_between(probe: Probe, start: float, end: float) -> int:
    """Canary readings that reached Kafka (as the probe saw them) between two moments."""
    return sum(start <= seen <= end for _offset, seen in probe.in_kafka.values())


def restart_exited(probe: Probe, lane: Lane) -> list[str]:
    """Start again (as a supervisor would) every lane process that exited; their names."""
    restarted = []
    for proc in lane.processes:
        if proc.proc is not None and proc.proc.poll() is not None:
            probe.mark(f"{proc.name} had exited ({proc.proc.returncode}): started again")
            proc.start()
            restarted.append(proc.name)
    return restarted


def figure(probe: Probe, what: str, seconds: float, stage: str = "took") -> None:
    """A measured duration beside the canary's recoveries (printed and in recovery.json)."""
    probe.recoveries.append(Recovery(what, 0.0, {stage: seconds}))
    probe.mark(f"{what}: {seconds:.1f} s")


SESSION_TIMEOUT_S = "20"
"""The workers' session timeout here: twice the 8-12 s a node failover took, so that a failover
does not lapse their group leases (streams/lease.py: 80 % of it); the lanes of the single-node
tests use 10 s."""


def start_lane(cluster: Cluster, lane: Lane, tmp_path: Path, workers: int = 2
               ) -> tuple[IngestProcess, Probe, BackgroundSim, Path]:
    lane.env["CITYSTREAM_WORKER_SESSION_TIMEOUT_S"] = SESSION_TIMEOUT_S
    ingest = lane.ingest(netns=cluster.netns("in"))
    for i in range(workers):
        lane.worker(str(i), netns=cluster.netns(f"w{i}"))
    probe = Probe(lane).start()
    record = tmp_path / "run.jsonl"
    sim = BackgroundSim(lane, *SIM, "--start", start_of_run(), record=record)
    probe.wait_recovered(probe.mark(f"pipeline started ({workers} workers, sim {RATE} msg/s)"),
                         "start-up (steady state)", timeout=300)
    return ingest, probe, sim, record


# -- 1. Kafka nodes killed ---------------------------------------------------------------------


def test_kafka_nodes_killed_one_then_two_lose_nothing(
        cluster: Cluster, lane: Lane, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _ingest, probe, sim, record = start_lane(cluster, lane, tmp_path)
    topics = lane_topics(lane)
    restarted: list[str] = []
    try:
        time.sleep(20)  # mid-run: KPIs flowing, windows open
        first, records, total = busiest_leader(cluster, lane)
        t1 = probe.mark(f"SIGKILL Kafka node {first} (leads partitions with {records} of "
                        f"{total} records)")
        cluster.kill(first)
        figure(probe, f"leaders moved off node {first}", wait_led_elsewhere(
            cluster, topics, first), "metadata")
        probe.wait_recovered(t1, f"Kafka node {first} SIGKILLed (2 of 3 left)", timeout=300)
        restarted += restart_exited(probe, lane)

        time.sleep(15)
        second = next(n for n in cluster.running() if n != first)
        t2 = probe.mark(f"SIGKILL Kafka node {second}: 1 of 3 left, under "
                        "min.insync.replicas=2 (and no controller majority)")
        cluster.kill(second)
        time.sleep(45)
        t3 = probe.mark(f"Kafka nodes {first} and {second} started")
        stalled = canaries_seen_between(probe, t2 + 5, t3)
        cluster.start(first, second)
        end = probe.mark(f"Kafka nodes {first} and {second} ready")
        probe.wait_recovered(end, f"Kafka nodes {first} and {second} back (one node left "
                             f"{t3 - t2:.0f} s)", duration_s=end - t2, timeout=400)
        probe.wait_recovered(t3, "the same, counted from the start command",
                             duration_s=end - t2, timeout=60)
        cluster.wait_in_sync(topics)
        figure(probe, "every partition in sync again", time.monotonic() - end, "after ready")
        restarted += restart_exited(probe, lane)
    finally:
        sim.stop()
        probe.stop()
        save_report(probe, lane.dir / "recovery.json")
    assert stalled == 0, (f"{stalled} canary readings reached Kafka with one node of three: "
                          "acks=all with min.insync.replicas=2 should have stopped producers")
    settle(lane, probe, record, capsys)
    if restarted:
        print(f"restarted after exiting: {restarted}")


# -- 2. a worker cut off Kafka -----------------------------------------------------------------

def test_worker_cut_off_kafka_past_its_session_timeout(
        cluster: Cluster, lane: Lane, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _ingest, probe, sim, record = start_lane(cluster, lane, tmp_path)
    group = f"{lane.prefix}citystream-worker"
    w0, w1 = cluster.address("w0"), cluster.address("w1")
    worker0, worker1 = (p for p in lane.processes if p.name in ("worker-0", "worker-1"))
    restarted: list[str] = []
    try:
        wait_group(cluster.bootstrap, group, [w0, w1])
        time.sleep(20)
        t = probe.mark("worker 1 cut off Kafka for 60 s (keeps InfluxDB and Mosquitto); "
                       f"session timeout {lane.env['CITYSTREAM_WORKER_SESSION_TIMEOUT_S']} s")
        cluster.cut_from_kafka("w1")
        figure(probe, "worker 1's partitions moved to worker 0", wait_group(
            cluster.bootstrap, group, [w0]), "group")
        probe.wait_recovered(t, "worker 1 cut off Kafka (partitions moved)", timeout=300)
        time.sleep(max(0.0, 60 - (time.monotonic() - t)))
        cluster.heal("w1")
        end = probe.mark("worker 1 reconnected (network healed)")
        restarted += restart_exited(probe, lane)
        figure(probe, "worker 1 back in the group", wait_group(cluster.bootstrap, group,
                                                                [w0, w1]), "group")
        probe.wait_recovered(end, "worker 1 healed after 60 s", duration_s=end - t,
                             timeout=300)
        time.sleep(20)  # let a zombie write what it held, if it would

        t = probe.mark("SIGKILL worker 0, started again: the partitions it took over are "
                       "restored from the changelogs worker 1 wrote to before the cut")
        worker0.kill()
        worker0.start()
        end = probe.mark("worker 0 running again")
        probe.wait_recovered(t, "SIGKILL worker 0 after the heal", duration_s=end - t,
                             stages=("kafka", "worker"), timeout=300)
        restarted += restart_exited(probe, lane)
    finally:
        cluster.heal("w1")
        sim.stop()
        probe.stop()
        save_report(probe, lane.dir / "recovery.json")
    fenced = [line for line in worker1.log.read_text(errors="replace").splitlines()
              if "restarting in place" in line]
    print("worker 1 fenced itself:", *fenced, sep="\n  ")
    settle(lane, probe, record, capsys)  # a stale window written last differs from the oracle
    if restarted:
        print(f"restarted after exiting: {restarted}")


# -- 3. ingest cut off Kafka -------------------------------------------------------------------


def test_ingest_cut_off_kafka_for_a_minute(
        cluster: Cluster, lane: Lane, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # flow control must engage within the minute: fewer unacknowledged messages than arrive
    lane.env["CITYSTREAM_INGEST_RECEIVE_MAXIMUM"] = "500"
    ingest, probe, sim, record = start_lane(cluster, lane, tmp_path, workers=1)
    try:
        time.sleep(15)
        rss_before = max((s.rss_mb.get("ingest", 0.0) for s in probe.samples[-10:]),
                         default=0.0)
        t = probe.mark("ingest cut off Kafka for 60 s (keeps Mosquitto)")
        cluster.cut_from_kafka("in")
        time.sleep(60)
        cut_at = time.monotonic()
        leaked = canaries_seen_between(probe, t + 5, cut_at)
        rss_during = max((s.rss_mb.get("ingest", 0.0) for s in probe.samples
                          if t - probe.t0 <= s.t <= cut_at - probe.t0), default=0.0)
        cluster.heal("in")
        end = probe.mark("ingest reconnected (network healed)")
        probe.wait_recovered(end, "ingest cut off Kafka 60 s", duration_s=end - t, timeout=300)
        published = [ts for at, ts in probe.published if t <= at < end]
        deadline = time.monotonic() + 300
        while any(ts not in probe.in_kafka for ts in published):
            assert time.monotonic() < deadline, "the backlog never reached Kafka"
            time.sleep(0.25)
        drained = max(probe.in_kafka[ts][1] for ts in published) - end
        figure(probe, f"backlog of the cut ({len(published)} canaries) all in Kafka",
               drained, "after heal")
        assert ingest.running(), f"ingest exited during the cut:\n{ingest.tail()}"
    finally:
        cluster.heal("in")
        sim.stop()
        probe.stop()
        save_report(probe, lane.dir / "recovery.json")
    probe.mark(f"ingest RSS {rss_before:.0f} MB before, at most {rss_during:.0f} MB during")
    assert leaked == 0, f"{leaked} canaries reached Kafka while ingest was cut off"
    assert rss_during < rss_before + 100, "ingest's memory grew with the backlog"
    settle(lane, probe, record, capsys, exact_counters=True)
