"""A worker keeps its table stores across restarts (streams/store.py). When Kafka lost their
changelogs (the topics deleted and recreated empty, as after a reset of Kafka's data), Faust's
recovery finds the stores ahead of them: the worker must exit (status 70), start over from no
stores, read every reading Kafka still holds again, and end with the oracle's KPIs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.lease import EXIT_CRASHED
from streams.worker import PREFIX_MARK
from tests.integration.helpers import Lane, oracle_points, start_of_run
from tests.support import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]

SIM = ["--speed", "0", "--gateways", "4", "--count", "3000"]


def delete_changelogs(lane: Lane) -> list[str]:
    """Delete the worker group's changelog topics and wait until Kafka no longer lists them."""
    bootstrap = lane.stack.client_info()["kafka"]["bootstrap"]
    group = f"{lane.prefix}citystream-worker-"

    async def run() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            changelogs = [t for t in await admin.list_topics()
                          if t.startswith(group) and t.endswith("-changelog")]
            assert changelogs, f"no changelog topics of {group}*"
            await admin.delete_topics(changelogs)
            deadline = time.monotonic() + 60
            while set(changelogs) & set(await admin.list_topics()):
                assert time.monotonic() < deadline, "Kafka did not delete the changelogs"
                await asyncio.sleep(1)
            return changelogs
        finally:
            await admin.close()

    return asyncio.run(run())


def test_a_worker_whose_changelogs_were_lost_starts_over_and_ends_with_the_oracle_s_kpis(
        lane: Lane, tmp_path: Path) -> None:
    lane.ingest()
    worker = lane.worker()
    recordings: list[Path] = []

    def simulate(seed: int, hours_back: float) -> None:
        recordings.append(tmp_path / f"sim-{seed}.jsonl")
        lane.simulate("--seed", str(seed), *SIM, "--start", start_of_run(hours_back),
                      record=recordings[-1])

    def want() -> dict[Any, Any]:
        return oracle_points([json.loads(line) for path in recordings
                              for line in path.read_text().splitlines()])

    simulate(21, 12)
    lane.wait_equal(want(), timeout=300)
    worker.stop()  # a clean stop: the stores are kept
    deleted = delete_changelogs(lane)

    again = WorkerProcess(lane.stack, "0", log_dir=lane.dir, extra_env=lane.env)
    logged = again.log.stat().st_size
    again.start(wait=False)
    assert again.proc is not None
    try:
        code = again.proc.wait(timeout=180)
    except Exception:
        again.kill()
        raise
    log = again.log.read_text()[logged:]
    assert code == EXIT_CRASHED, f"exit {code}, {len(deleted)} changelogs deleted:\n{log[-3000:]}"
    assert "a table store is ahead of its changelog" in log
    assert not (lane.dir / "worker-state" / "0" / PREFIX_MARK).exists(), (
        "the next start must not keep the stores")

    lane.processes.append(again.start())  # a supervisor's restart: no stores, read from the start
    assert "rebuilding its state from the Kafka changelogs" in again.log.read_text()[logged:]
    simulate(22, 6)
    lane.wait_equal(want(), timeout=300)
