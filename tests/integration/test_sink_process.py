"""`citystream sink` as a process of its own beside `citystream worker --no-sink`: KPIs still
equal the oracle when the sink is killed with SIGKILL mid-run and started again."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest

from tests.integration.helpers import Lane, oracle_points, start_of_run
from tests.integration.test_pipeline import FAULTS, SIM
from tests.support import IngestProcess, influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.influxdb]


class SinkProcess(IngestProcess):
    """`citystream sink` as a child process, publishing its counters every second."""

    component = "sink"
    start_timeout_s = 60.0

    def start(self, *, wait: bool = True) -> Self:
        self.env["CITYSTREAM_SINK_COUNTERS_S"] = "1"
        return super().start(wait=wait)


def test_a_separate_sink_killed_mid_run_loses_nothing(lane: Lane, tmp_path: Path) -> None:
    lane.ingest()
    lane.env["CITYSTREAM_WORKER_SINK"] = "false"
    lane.worker()
    sink = SinkProcess(lane.stack, "0", log_dir=lane.dir, extra_env=lane.env).start()
    lane.processes.append(sink)
    record = tmp_path / "run.jsonl"
    sim = threading.Thread(target=lane.simulate, args=(
        *SIM, *FAULTS, "--start", start_of_run(), "--count", "20000", "--rate", "3000"),
        kwargs={"record": record})
    sim.start()
    time.sleep(6)
    sink.kill()
    lane.processes.remove(sink)
    lane.processes.append(SinkProcess(lane.stack, "0", log_dir=lane.dir,
                                      extra_env=lane.env).start())
    sim.join(300)
    lane.wait_equal(oracle_points(record), timeout=300)
    counters = influx_points(lane.stack, lane.kpi_bucket, ("pipeline",))
    latest: dict[str, dict[str, Any]] = {}
    for (_m, tags, _ts), fields in sorted(counters.items(), key=lambda kv: kv[0][2]):
        latest[dict(tags)["component"]] = fields
    assert latest["sink"]["written"] > 0, latest
    assert latest["worker"]["written"] == 0, "the worker was told not to run a sink"
