"""The dashboard that `citystream up` starts, in a real browser, fed by the real pipeline: the
simulator publishes over MQTT, ingest and the Faust worker write KPIs to InfluxDB, and the page
(reading with the stack's read-only token) equals InfluxDB and moves on to new windows without a
reload. A module of its own: playwright's sync API must not be running while the stack starts
Kafka (its readiness probe runs its own event loop)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from playwright.sync_api import Page

from deploy.local.stack import Stack
from models.city import City, load_city
from tests.integration.browser import chromium, new_page, screenshot, wait_rendered
from tests.integration.dashboard_data import shown
from tests.support import MIN, ROOT, influx_points

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.mqtt, pytest.mark.kafka,
              pytest.mark.influxdb]


def simulate(stack: Stack, start_ms: int, count: int) -> None:
    """Publish the seeded city from `start_ms` as fast as possible: with the same seed and
    start, a longer run repeats a shorter one message for message and then goes on."""
    gateway = stack.client_info()["mqtt"]
    env = {**os.environ, **stack.service_env(), "CITYSTREAM_MQTT__USERNAME": gateway["username"],
           "CITYSTREAM_MQTT__PASSWORD": gateway["password"]}
    done = subprocess.run(
        [sys.executable, "-m", "citystream", "sim", "--no-progress", "--seed", "11",
         "--speed", "0", "--start", str(start_ms), "--count", str(count)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"sim failed:\n{done.stdout}\n{done.stderr}"


def page_values(page: Page, city: City) -> dict[str, str]:
    selectors = {f"{d.slug}/{kind}":
                 f"[data-district='{d.slug}'] [data-field='{kind}.saving_pct_24h']"
                 for d in city.districts for kind in ("water", "energy")}
    selectors.update({f"{j.id}/traffic": f"[data-junction='{j.id}'] "
                      "[data-field='traffic.congestion_index']" for j in city.junctions})
    got = {}
    for key, selector in selectors.items():
        found = page.locator(selector)
        got[key] = (found.text_content() or "").strip() if found.count() == 1 else "(none)"
    return got


def influx_values(stack: Stack, city: City) -> tuple[dict[str, str], int]:
    """What the page should show for the city's districts and junctions, and the newest
    window end, from InfluxDB (admin token, the stack's kpi bucket)."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    points = influx_points(stack, "kpi", ("water_kpi", "energy_kpi", "traffic_kpi"))
    for (measurement, tags, ts), fields in points.items():
        tag = dict(tags)
        key = (f"{tag['district']}/{measurement[:-4]}" if measurement != "traffic_kpi"
               else f"{tag['junction']}/traffic")
        if key not in latest or ts > latest[key][0]:
            latest[key] = (ts, fields)
    want: dict[str, str] = {}
    for d in city.districts:
        for kind in ("water", "energy"):
            point = latest.get(f"{d.slug}/{kind}")
            want[f"{d.slug}/{kind}"] = shown_field(point, "saving_pct_24h", 1)
    for j in city.junctions:
        point = latest.get(f"{j.id}/traffic")
        want[f"{j.id}/traffic"] = shown_field(point, "congestion_index", 2)
    return want, max((ts for ts, _ in latest.values()), default=0)


def shown_field(point: tuple[int, dict[str, Any]] | None, name: str, digits: int) -> str:
    """The page's text for a field of an entity's newest point: "(none)" without a point, the
    dash the page shows for a field left out as undefined (e.g. a traffic window with no
    vehicle speed), else the number."""
    if point is None:
        return "(none)"
    fields = point[1]
    return shown(fields[name], digits) if name in fields else "\u2013"


def wait_page_equals_influxdb(page: Page, stack: Stack, city: City, newer_than: int = 0,
                              timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    want: dict[str, str] = {}
    got: dict[str, str] = {}
    newest = 0
    while time.monotonic() < deadline:
        want, newest = influx_values(stack, city)
        got = page_values(page, city)
        if newest > newer_than and want == got and "(none)" not in want.values():
            return newest
        time.sleep(2)
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    raise AssertionError(f"page != InfluxDB after {timeout_s:.0f}s (newest window {newest}, "
                         f"wanted newer than {newer_than}): {diff}")


def test_the_running_pipeline_feeds_the_page_live(stack: Stack,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`citystream up`'s pipeline (ingest, worker, dashboard with the stack's read-only token)
    fed by the simulator: the page equals InfluxDB, and new windows arrive without reload."""
    city = load_city()
    names = ("ingest", "worker", "dashboard")
    # Topics and MQTT group of this test only (other tests leave readings in the default ones).
    tag = uuid.uuid4().hex[:8]
    monkeypatch.setenv("CITYSTREAM_KAFKA__TOPIC_PREFIX", f"d{tag}.")
    monkeypatch.setenv("CITYSTREAM_MQTT__SHARED_GROUP", f"d{tag}")
    stack.start_pipeline(names)
    start = (int(time.time() * 1000) - 90 * MIN) // (15 * MIN) * (15 * MIN)
    try:
        simulate(stack, start, 8000)
        with chromium() as browser:
            page, errors = new_page(browser)
            page.goto(stack.client_info()["dashboard"]["url"])
            wait_rendered(page)
            page.evaluate("window.__loadedOnce = 'yes'")
            first = wait_page_equals_influxdb(page, stack, city)
            simulate(stack, start, 14000)          # the same 8000 again, then 6000 new ones
            later = wait_page_equals_influxdb(page, stack, city, newer_than=first)
            assert later > first
            assert page.evaluate("window.__loadedOnce") == "yes"
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            screenshot(page, "dashboard-pipeline.png")
            assert errors == []
    finally:
        for name in names:
            stack.stop_service(name)
