"""The dashboard in a real browser (headless Chromium) against the real InfluxDB: the values shown
are the ones InfluxDB holds (the built-in kinds and a panel per feed the city file declares), a
new window appears without a reload, hostile names render as text and run nothing, no secret
reaches the browser, and InfluxDB going down is shown as such.

KPI points are written through the sink's path (records -> `to_line_protocol` ->
`InfluxWriter`) into a bucket of this module, read by `citystream dashboard` with a token that
may only read that bucket. Screenshots go to artifacts/ (paths printed)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page

from dashboard.views import readable
from deploy.local.stack import Credentials, Stack, free_port
from kinds.water import WaterKpi
from models.city import DEFAULT_CITY_FILE, City, load_city
from models.feeds import kpi_model
from models.records import Alert
from tests.integration.browser import (
    DashboardProcess,
    chromium,
    new_page,
    screenshot,
    wait_rendered,
)
from tests.integration.dashboard_data import shown, shown_count, shown_kpi
from tests.support import MIN, Bucket, city_kpis, feed_entities, feed_kpis, new_bucket

pytestmark = [pytest.mark.browser, pytest.mark.influxdb]

HOSTILE_DISTRICT = "Bletchley <script>window.__xss = 1</script>"
HOSTILE_ROUTE = '<img src=x onerror="window.__xss = 2"> Station & centre:mk'
HOSTILE_JUNCTION = "<svg onload=window.__xss=3>Elder Gate</svg>"
HOSTILE_TAG = "<img/src=x/onerror=window.__xss=4>"
HOSTILE_MESSAGE = "<script>window.__xss = 5</script><b>bold?</b>"
HOSTILE_FEED = 'Car parks <img src=x onerror="window.__xss = 6"> & <b>co</b>'
HOSTILE_ENTITY = "<svg/onload=window.__xss=7>cp</svg>"
HOSTILE_SENSOR = "<img/src=x/onerror=window.__xss=8>"
EMPTY = "stony-stratford"
NO_DATA_FEED = "bus_occupancy"


@dataclass
class Env:
    stack: Stack
    bucket: Bucket
    city: City
    dashboard: DashboardProcess
    page: Page
    errors: list[str]
    end_ms: int


def hostile_city(path: Path) -> Path:
    text = DEFAULT_CITY_FILE.read_text()
    for old, new in (('name = "Bletchley and Fenny Stratford"', f"name = '{HOSTILE_DISTRICT}'"),
                     ('name = "Milton Keynes Central station - centre:mk"',
                      f"name = '{HOSTILE_ROUTE}'"),
                     ('name = "Elder Gate / Portway (H5) roundabout, Milton Keynes Central"',
                      f"name = '{HOSTILE_JUNCTION}'"),
                     ('title = "Car parks"', f"title = '{HOSTILE_FEED}'")):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def env(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    stack.ensure("influxdb")
    tmp = tmp_path_factory.mktemp("dashboard")
    city_file = hostile_city(tmp / "city.toml")
    city = load_city(city_file)
    bucket = new_bucket(stack)
    end = int(time.time() * 1000) - 20 * MIN
    bucket.write(city_kpis(city, end, skip_districts=(EMPTY,)))
    bucket.write(feed_kpis(city, end, skip_districts=(EMPTY,), skip_feeds=(NO_DATA_FEED,)))
    bucket.write([Alert(kind="water", entity="bletchley", rule="silent", ts_ms=end - 5 * MIN,
                        value=900.0, threshold=300.0, message=HOSTILE_MESSAGE, active=True),
                  Alert(kind="car_park", entity="car-park-2", rule="full", ts_ms=end - 10 * MIN,
                        value=97.0, threshold=95.0,
                        message=f"{HOSTILE_FEED}: occupancy_pct is 97, above 95", active=True)])
    tag = HOSTILE_TAG.replace("=", "\\=")
    bucket.write_lines([f"traffic_kpi,district=bletchley,junction={tag},window=5m "
                        f"congestion_index=0.25,baseline_congestion_index=0.5,vehicles=10i,"
                        f"flow_veh_h=120.0,reduction_pct_24h=55.0,target_pct=50.0,"
                        f"on_track=true {end - 5 * MIN}"])
    entity = HOSTILE_ENTITY.replace("=", "\\=")
    bucket.write_lines([f"car_park_kpi,car_park={entity},window=15m occupancy_pct=50.0,"
                        f"sensors_reporting=2i,target=85.0,occupancy_pct_24h=48.5,"
                        f"on_track=true {end - 15 * MIN}"])
    sensor = HOSTILE_SENSOR.replace("=", "\\=")
    bucket.write_lines([f"sensor_quality,district=bletchley,kind=water,sensor_id={sensor},"
                        f"window=1h readings=1i,duplicates=0i,late=0i,completeness_pct=25.0,"
                        f"stuck=false,score=25.0 {end // (60 * MIN) * (60 * MIN)}"])
    dashboard = DashboardProcess({
        **stack.dashboard_env(),
        "CITYSTREAM_INFLUX__BUCKET_KPI": bucket.name,
        "CITYSTREAM_DASHBOARD__TOKEN": bucket.read_token,
        "CITYSTREAM_DASHBOARD__POLL_S": "0.5",
        "CITYSTREAM_DASHBOARD__HISTORY_REFRESH_S": "5",
        "CITYSTREAM_CITY__FILE": str(city_file),
    }, free_port(), tmp / "dashboard.log").start()
    try:
        with chromium() as browser:
            page, errors = new_page(browser)
            page.goto(dashboard.url)
            wait_rendered(page)
            page.evaluate("window.__loadedOnce = 'yes'")
            yield Env(stack, bucket, city, dashboard, page, errors, end)
    finally:
        dashboard.stop()
        if not stack.services["influxdb"].running():
            stack.start_service("influxdb")


def text(page: Page, selector: str) -> str:
    found = page.locator(selector)
    assert found.count() == 1, f"{found.count()} elements match {selector}"
    return (found.text_content() or "").strip()


def field(page: Page, scope: str, name: str) -> str:
    return text(page, f"{scope} [data-field='{name}']")


def test_values_shown_equal_influxdb(env: Env) -> None:
    page = env.page
    water = env.bucket.latest("water_kpi", "district")
    energy = env.bucket.latest("energy_kpi", "district")
    for d in env.city.districts:
        scope = f"[data-district='{d.slug}']"
        if d.slug == EMPTY:
            assert f"No data yet for {d.name}" in text(page, scope)
            continue
        assert field(page, scope, "water.saving_pct_24h") == shown(
            water[d.slug][1]["saving_pct_24h"], 1)
        assert field(page, scope, "water.saving_pct") == shown(
            water[d.slug][1]["saving_pct"], 1) + " %"
        assert field(page, scope, "energy.saving_pct_24h") == shown(
            energy[d.slug][1]["saving_pct_24h"], 1)
        badges = text(page, f"{scope} [data-kpi='water'] .badge")
        assert badges.lower() == ("on track" if water[d.slug][1]["on_track"] else "off track")
    traffic = env.bucket.latest("traffic_kpi", "junction")
    for j in env.city.junctions:
        scope = f"[data-junction='{j.id}']"
        fields = traffic[j.id][1]
        assert field(page, scope, "traffic.congestion_index") == shown(
            fields["congestion_index"], 2)
        assert field(page, scope, "traffic.reduction_pct_24h") == shown(
            fields["reduction_pct_24h"], 1)
        assert field(page, scope, "traffic.flow_veh_h") == shown_count(
            fields["flow_veh_h"])
    shuttle = env.bucket.latest("shuttle_kpi", "route")
    for r in env.city.routes:
        for name in ("occupancy_pct", "on_time_pct", "mean_battery_pct"):
            assert field(page, f"[data-route='{r.id}']", f"shuttle.{name}") == shown(
                shuttle[r.id][1][name], 0)
    shown_alerts = {a.get_attribute("data-alert") for a in page.locator("[data-alert]").all()}
    assert shown_alerts == {"water/central-mk/leak", "energy/bletchley/off_track",
                            "water/bletchley/silent", "car_park/car-park-2/full"}
    assert text(page, "#alert-count") == "4"
    assert env.errors == []


def test_each_declared_feed_has_a_panel_with_its_kpis_and_target(env: Env) -> None:
    page = env.page
    assert [p.get_attribute("data-feed") for p in page.locator("[data-feed]").all()] == [
        f.kind for f in env.city.feeds]
    names = {d.slug: d.name for d in env.city.districts}
    for feed in env.city.feeds:
        panel = f"[data-feed='{feed.kind}']"
        assert text(page, f"{panel} .feed-title") == feed.title
        if feed.kind == NO_DATA_FEED:
            assert f"No data yet for {feed.title}" in text(page, panel)
            continue
        written = env.bucket.latest(feed.measurement, feed.entity)
        for entity in feed_entities(env.city, feed):
            card = f"{panel} [data-entity='{entity}']"
            if entity == EMPTY:
                assert f"No data yet for {names[entity]}" in text(page, card)
                continue
            fields = written[entity][1]
            for kpi in feed.kpis:
                assert field(page, card, f"{feed.kind}.{kpi.name}") == shown_kpi(
                    fields[kpi.name], kpi.is_integer), (feed.kind, entity, kpi.name)
                assert text(page, f"{card} [data-kpi='{kpi.name}'] dt") == readable(
                    kpi.name)[0]
            assert page.locator(f"{card} svg.spark").count() == 1   # the 24 h chart
            if feed.target is None:
                continue
            rolling = f"{feed.target.kpi}_24h"
            assert field(page, card, f"{feed.kind}.{rolling}") == shown_kpi(
                fields[rolling], False)
            direction = "at most" if feed.target.at_most is not None else "at least"
            assert field(page, card, f"{feed.kind}.target").startswith(
                f"target {direction} {feed.target.limit:g}")
            badge = text(page, f"{card} [data-target] .badge").lower()
            assert badge == ("on track" if fields["on_track"] else "off track")
    car_parks = "[data-feed='car_park']"
    assert text(page, f"{car_parks} [data-entity='car-park-1'] .badge").lower() == "on track"
    assert text(page, f"{car_parks} [data-entity='car-park-2'] .badge").lower() == "off track"
    assert field(page, f"{car_parks} [data-entity='car-park-1']",
                 "car_park.target") == "target at most 85 %"
    assert text(page, f"{car_parks} .count") == "1"
    alert = f"{car_parks} [data-feed-alert='car_park/car-park-2/full']"
    assert text(page, f"{alert} .rule") == "Full"
    air = "[data-feed='air_quality']"
    assert text(page, f"{air} [data-entity='bletchley'] h3") == HOSTILE_DISTRICT
    pm25 = f"{air} [data-entity='central-mk'] [data-kpi='pm25_mean_ugm3']"
    assert text(page, f"{pm25} dt") == "PM2.5 mean"
    assert text(page, f"{pm25} dd").endswith(" µg/m³")
    assert env.errors == []


def test_hostile_names_render_as_text_and_run_nothing(env: Env) -> None:
    page = env.page
    assert text(page, "[data-district='bletchley'] h3") == HOSTILE_DISTRICT
    assert text(page, "[data-route='station-centre'] h3") == HOSTILE_ROUTE
    assert text(page, "[data-junction='j-elder-gate'] .name") == HOSTILE_JUNCTION
    assert page.locator(f"[data-junction='{HOSTILE_TAG}'] .name").text_content() == HOSTILE_TAG
    assert HOSTILE_MESSAGE in text(page, "[data-alert='water/bletchley/silent'] .msg")
    car_parks = "[data-feed='car_park']"
    assert text(page, f"{car_parks} .feed-title") == HOSTILE_FEED
    assert page.locator(f"{car_parks}").get_attribute("aria-label") == HOSTILE_FEED
    assert text(page, f"{car_parks} [data-entity='{HOSTILE_ENTITY}'] h3") == HOSTILE_ENTITY
    assert field(page, f"{car_parks} [data-entity='{HOSTILE_ENTITY}']",
                 "car_park.occupancy_pct_24h") == "48.5"
    assert text(page, "[data-alert='car_park/car-park-2/full'] .kind") == HOSTILE_FEED
    assert HOSTILE_FEED in text(page, f"{car_parks} [data-feed-alert] .msg")
    page.wait_for_function("document.body.dataset.qualityEvents", timeout=20_000)
    assert text(page, "#attention .sid") == HOSTILE_SENSOR        # the one sensor listed
    assert text(page, "#attention .why") == "25 % complete"
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.scripts.length") == 1
    assert page.evaluate("document.images.length") == 1              # the logo
    assert page.evaluate("document.querySelectorAll('[onerror], [onload], #alerts b, "
                         "#feeds b, #feeds img, #feeds script, #attention img').length") == 0
    assert env.errors == []


def test_a_new_window_appears_without_reload(env: Env) -> None:
    page = env.page
    before = int(page.evaluate("document.body.dataset.snapshotEvents"))
    new_end = (env.end_ms // (15 * MIN) + 1) * 15 * MIN
    env.bucket.write([WaterKpi(district="central-mk", window_end_ms=new_end, consumption_l=700.0,
                               baseline_l=1000.0, saving_pct=30.0, saving_pct_24h=33.3,
                               target_pct=20.0, on_track=True, meters_reporting=40)])
    page.wait_for_function(
        "document.querySelector(\"[data-district='central-mk'] "
        "[data-field='water.saving_pct_24h']\").textContent === '33.3'", timeout=20_000)
    assert page.evaluate("window.__loadedOnce") == "yes"                # the same page
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert int(page.evaluate("document.body.dataset.snapshotEvents")) > before
    assert field(page, "[data-district='central-mk']", "water.saving_pct") == "30.0 %"
    assert re.fullmatch(r"\d\d:\d\d", text(page, "#latest"))
    car_park = next(f for f in env.city.feeds if f.kind == "car_park")
    env.bucket.write([kpi_model(car_park).model_validate({
        "car_park": "car-park-1", "window_end_ms": new_end, "occupancy_pct": 42.25,
        "sensors_reporting": 3, "occupancy_pct_24h": 88.0, "on_track": False})])
    card = "[data-feed='car_park'] [data-entity='car-park-1']"
    page.wait_for_function(
        f"document.querySelector(\"{card} [data-field='car_park.occupancy_pct']\")"
        ".textContent === '42.3'", timeout=20_000)     # toFixed: an exact half rounds up
    assert field(page, card, "car_park.occupancy_pct_24h") == "88.0"
    assert text(page, f"{card} .badge").lower() == "off track"
    assert field(page, card, "car_park.entries") == "–"          # left out of the new window
    screenshot(page, "dashboard-test.png")


def secrets_of(stack: Stack, env: Env) -> list[str]:
    creds = Credentials.load_or_create(stack.home)
    return [env.bucket.read_token, creds.influxdb_read_token, creds.influxdb_token,
            creds.influxdb_password, creds.mqtt_gateway_password, creds.mqtt_service_password]


def served(env: Env) -> dict[str, bytes]:
    paths = ("/", "/static/dashboard.js", "/static/dashboard.css", "/static/favicon.svg",
             "/api/snapshot", "/api/history", "/api/quality", "/healthz")
    out = {path: env.dashboard.get(path) for path in paths}
    out["/events"] = env.dashboard.events(3)
    out["page"] = env.page.content().encode()
    return out


def test_no_secret_reaches_the_browser(env: Env) -> None:
    for path, body in served(env).items():
        for secret in secrets_of(env.stack, env):
            assert secret.encode() not in body, f"a credential is in {path}"


def test_influxdb_down_is_shown_and_recovers(env: Env) -> None:
    page = env.page
    env.stack.stop_service("influxdb")
    try:
        page.wait_for_function("!document.getElementById('banner').hidden", timeout=30_000)
        banner = text(page, "#banner")
        assert re.search(r"InfluxDB unreachable since \d\d:\d\d", banner), banner
        influx_url = env.stack.client_info()["influxdb"]["url"]
        assert f"cannot reach InfluxDB at {influx_url}" in banner    # refused, or dropped
        assert text(page, "#conn-text") == "InfluxDB down"
        # the last data read stays on the page
        assert field(page, "[data-district='central-mk']", "water.saving_pct_24h") == "33.3"
        screenshot(page, "dashboard-influxdb-down.png")
        for path, body in served(env).items():
            for secret in secrets_of(env.stack, env):
                assert secret.encode() not in body, f"a credential is in {path} (InfluxDB down)"
    finally:
        env.stack.start_service("influxdb")
    page.wait_for_function("document.getElementById('banner').hidden", timeout=30_000)
    assert text(page, "#conn-text") == "live"
    assert env.errors == []


