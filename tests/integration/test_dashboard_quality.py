"""The dashboard's sensors needing attention and its KPI coverage against the real InfluxDB 2.7.

`sensor_quality` points (contract 6) are written as the worker and the dead-letter count write
them: one point per sensor and hour stamped at the hour's end, `rejected` by a separate write
into the same series and timestamp, and only for hours that had rejected readings. What the
page must list is worked out here from the scenarios below, independently of the code:
`citystream dashboard` (the process a council runs) serves it on `/api/quality`, and its
snapshot says how many sensors each KPI was computed from.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboard.live import Hub, Poller, PollerOptions
from dashboard.queries import attention_query, coverage_query
from dashboard.source import InfluxSource
from deploy.local.stack import Stack, free_port
from models.city import City, load_city
from models.quality import SensorQuality
from models.records import Record
from tests.integration.browser import DashboardProcess
from tests.support import MIN, Bucket, city_kpis, new_bucket

pytestmark = [pytest.mark.influxdb]

HOUR = 60 * MIN
GOOD: dict[str, Any] = {"readings": 4, "duplicates": 0, "late": 0, "completeness_pct": 100.0,
                        "stuck": False, "score": 100.0}


def hour_point(kind: str, district: str, sensor: str, end: int, **fields: Any) -> SensorQuality:
    return SensorQuality(kind=kind, district=district, sensor_id=sensor, hour_end_ms=end,
                         **fields)


def scenarios(last: int) -> list[Record]:
    """Hourly points ending at `last` (the newest complete hour) and the 25 hours before.

    Needing attention in the newest hour, and since when (the start of the current bad run):
    - `tc-all-rejected`: only a `rejected` point (9): every reading rejected; 2 hours before it
      was good. Since last - 1 h; no score: listed first.
    - `tc-silent`: 0 readings, score 0 (the worker's point for a silent sensor). Since last - 1 h.
    - `wm-stuck`: stuck for the last 2 hours (score 25). Since last - 2 h.
    - `wm-incomplete`: 42 % complete with 5 duplicates and 3 late for the last 3 hours, good
      before. Since last - 3 h.
    - `tc-rejected`: scores 95, and 17 readings rejected in the newest hour (a separate write).
    Not listed: `wm-ok` (always good), `wm-recovered` (bad 3 to 5 hours ago, good since),
    `tc-gone` (last heard 5 hours ago, good then), `wm-long-ago` (bad 30 hours ago only).
    """
    out: list[Record] = []
    for k in range(26):
        end = last - k * HOUR
        out.append(hour_point("water", "central-mk", "wm-ok", end, **GOOD))
        bad = k < 3
        out.append(hour_point("water", "central-mk", "wm-incomplete", end, **(
            {**GOOD, "readings": 2, "duplicates": 5, "late": 3, "completeness_pct": 42.0,
             "score": 42.0} if bad else GOOD)))
        out.append(hour_point("water", "bletchley", "wm-stuck", end, **(
            {**GOOD, "stuck": True, "score": 25.0} if k < 2 else GOOD)))
        out.append(hour_point("water", "central-mk", "wm-recovered", end, **(
            {**GOOD, "completeness_pct": 10.0, "score": 10.0} if 3 <= k <= 5 else GOOD)))
        out.append(hour_point("traffic", "bletchley", "tc-rejected", end,
                              **{**GOOD, "score": 95.0}))
    out.append(hour_point("traffic", "bletchley", "tc-rejected", last, rejected=17))
    out.append(hour_point("traffic", "bletchley", "tc-all-rejected", last, rejected=9))
    out.append(hour_point("traffic", "bletchley", "tc-all-rejected", last - 2 * HOUR, **GOOD))
    out.append(hour_point("traffic", "bletchley", "tc-silent", last, readings=0, duplicates=0,
                          late=0, completeness_pct=0.0, stuck=False, score=0.0))
    out.append(hour_point("traffic", "bletchley", "tc-silent", last - HOUR, **GOOD))
    out.append(hour_point("traffic", "bletchley", "tc-gone", last - 5 * HOUR, **GOOD))
    out.append(hour_point("water", "bletchley", "wm-long-ago", last - 30 * HOUR,
                          **{**GOOD, "score": 5.0}))
    return out


def expected(last: int) -> list[tuple[str, float | None, list[str], int, int]]:
    """(sensor, score, problems, hour end, since) of the sensors needing attention (min 80),
    worst first."""
    return [
        ("tc-all-rejected", None, ["no readings accepted", "9 rejected"], last, last - HOUR),
        ("tc-silent", 0.0, ["no readings"], last, last - HOUR),
        ("wm-stuck", 25.0, ["stuck"], last, last - 2 * HOUR),
        ("wm-incomplete", 42.0, ["42 % complete", "5 duplicates", "3 late"], last,
         last - 3 * HOUR),
        ("tc-rejected", 95.0, ["17 rejected"], last, last - HOUR),
    ]


def shown(quality: dict[str, Any]) -> list[tuple[str, float | None, list[str], int, int]]:
    return [(s["sensor_id"], s["score"], s["problems"], s["hour_ms"], s["since_ms"])
            for s in quality["sensors"]]


@dataclass
class Seeded:
    stack: Stack
    bucket: Bucket
    city: City
    last: int


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Seeded:
    stack.ensure("influxdb")
    city = load_city()
    bucket = new_bucket(stack)
    now = int(time.time() * 1000)
    last = now // HOUR * HOUR
    bucket.write(city_kpis(city, now - 5 * MIN))
    bucket.write(scenarios(last))
    return Seeded(stack, bucket, city, last)


def poll(seeded: Seeded, min_score: float = 80.0) -> Hub:
    source = InfluxSource(seeded.stack.client_info()["influxdb"]["url"], "citystream",
                          seeded.bucket.read_token)
    hub = Hub()
    try:
        asyncio.run(Poller(source, seeded.city, hub,
                           PollerOptions(bucket=seeded.bucket.name, min_score=min_score))
                    .poll_once())
    finally:
        source.close()
    return hub


def test_the_quality_queries_parse_and_run_on_an_empty_bucket(stack: Stack) -> None:
    bucket = new_bucket(stack)
    source = InfluxSource(stack.client_info()["influxdb"]["url"], "citystream",
                          bucket.read_token)
    try:
        assert source.query(attention_query(bucket.name, 24, 80.0)) == []
        assert source.query(coverage_query(bucket.name, 24)) == []
    finally:
        source.close()


def test_the_sensors_needing_attention_are_worked_out_by_influxdb(seeded: Seeded) -> None:
    hub = poll(seeded)
    quality = json.loads(hub.last("quality") or b"{}")
    assert (quality["min_score"], quality["hours"], quality["total"]) == (80.0, 24, 5)
    assert shown(quality) == expected(seeded.last)
    names = {d.slug: d.name for d in seeded.city.districts}
    for sensor in quality["sensors"]:
        assert sensor["district_name"] == names[sensor["district"]]
        assert sensor["kind_title"] == sensor["kind"].capitalize()    # Water, Traffic
    # a lower threshold: the 42 % complete sensor no longer needs attention, the others still do
    quality = json.loads(poll(seeded, min_score=30.0).last("quality") or b"{}")
    assert [s[0] for s in shown(quality)] == [
        "tc-all-rejected", "tc-silent", "wm-stuck", "tc-rejected"]


def test_each_kpi_says_how_many_sensors_it_comes_from(seeded: Seeded) -> None:
    snap = json.loads(poll(seeded).last("snapshot") or b"{}")
    for d, view in zip(seeded.city.districts, snap["districts"], strict=False):
        meters = d.water_meters       # city_kpis: every meter in the newest window
        assert view["water"]["coverage"] == {
            "counted": meters, "of": meters, "text": f"computed from {meters} of {meters} meters"}
    for j in snap["junctions"]:
        coverage = j["traffic"]["coverage"]
        if j["district"] == "bletchley":
            # tc-rejected had readings in the newest hour; tc-all-rejected, tc-silent, tc-gone
            # did not (wm-* are water meters, another kind)
            assert coverage == {"counted": 1, "of": 4,
                                "text": "1 of 4 district counters reporting"}
        else:
            assert coverage is None           # no sensor_quality of its district's counters
    route = snap["routes"][0]
    fleet = seeded.city.routes[0].fleet_size
    assert route["shuttle"]["coverage"]["text"] == f"computed from {fleet} of {fleet} vehicles"


@pytest.fixture(scope="module")
def dashboard(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory,
              ) -> Iterator[DashboardProcess]:
    log: Path = tmp_path_factory.mktemp("dashboard-quality") / "dashboard.log"
    process = DashboardProcess({
        **seeded.stack.dashboard_env(),
        "CITYSTREAM_INFLUX__BUCKET_KPI": seeded.bucket.name,
        "CITYSTREAM_DASHBOARD__TOKEN": seeded.bucket.read_token,
        "CITYSTREAM_DASHBOARD__POLL_S": "0.5",
        "CITYSTREAM_QUALITY__MIN_SCORE": "80",
    }, free_port(), log).start()
    try:
        yield process
    finally:
        process.stop()


def get_json(process: DashboardProcess, path: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return json.loads(process.get(path))
        except urllib.error.HTTPError as exc:   # 503 until the first poll answered
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def test_the_dashboard_serves_them_on_its_quality_endpoint(seeded: Seeded,
                                                           dashboard: DashboardProcess) -> None:
    quality = get_json(dashboard, "/api/quality")
    assert quality["total"] == 5 and quality["min_score"] == 80.0
    assert shown(quality) == expected(seeded.last)
    events = dashboard.events(4).decode()
    assert "event: quality\ndata: " in events
    snap = get_json(dashboard, "/api/snapshot")
    assert snap["districts"][0]["water"]["coverage"]["text"].startswith("computed from ")
    page = dashboard.get("/").decode()
    assert 'id="attention"' in page and "Sensors needing attention" in page
