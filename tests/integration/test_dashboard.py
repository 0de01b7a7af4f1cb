"""The dashboard against the real InfluxDB 2.7: the stack's read-only token can read the two
buckets and nothing else, and the dashboard's Flux runs and shows exactly what was written."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from dashboard.live import Hub, Poller, PollerOptions
from dashboard.queries import alerts_query, history_query, latest_query
from dashboard.source import InfluxSource, SourceError
from deploy.local.stack import Credentials, Stack
from models.city import load_city
from tests.support import MIN, city_kpis, create_bucket, feed_entities, feed_kpis, new_bucket

pytestmark = [pytest.mark.influxdb]


def call(stack: Stack, method: str, path: str, token: str, body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    url = stack.client_info()["influxdb"]["url"] + path
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Token {token}")
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def flux(stack: Stack, token: str, bucket: str) -> tuple[int, Any]:
    query = f'from(bucket: "{bucket}") |> range(start: -1h) |> limit(n: 1)'
    return call(stack, "POST", "/api/v2/query?org=citystream", token, query.encode(),
                "application/vnd.flux")


def test_the_dashboard_token_reads_the_two_buckets_and_nothing_else(stack: Stack) -> None:
    creds = Credentials.load_or_create(stack.home)
    read = creds.influxdb_read_token
    assert read and read != creds.influxdb_token
    buckets = stack.client_info()["influxdb"]["buckets"]
    for bucket in buckets.values():
        assert flux(stack, read, bucket)[0] == 200
        status, body = call(stack, "POST", f"/api/v2/write?org=citystream&bucket={bucket}",
                            read, b"water_kpi,district=x saving_pct=1.0", "text/plain")
        assert status == 403, body
    status, body = call(stack, "GET", "/api/v2/buckets?org=citystream", read)
    assert status == 200 and {b["name"] for b in json.loads(body)["buckets"]} == set(
        buckets.values())
    other = f"other-{int(time.time() * 1000)}"
    create_bucket(stack, other)
    assert flux(stack, read, other)[0] == 404
    orgs = json.loads(call(stack, "GET", "/api/v2/orgs?org=citystream",
                           creds.influxdb_token)[1])["orgs"]
    status, _ = call(stack, "POST", "/api/v2/buckets", read,
                     json.dumps({"orgID": orgs[0]["id"], "name": other + "x"}).encode())
    assert status in (401, 403)
    status, body = call(stack, "GET", "/api/v2/authorizations", read)
    assert status == 200 and json.loads(body)["authorizations"] == []   # sees no tokens


def test_the_read_token_is_kept_and_made_again_when_influxdb_lost_it(stack: Stack) -> None:
    creds = Credentials.load_or_create(stack.home)
    first = creds.influxdb_read_token
    assert stack.ensure_read_token(creds) == first                     # idempotent
    _status, body = call(stack, "GET", "/api/v2/authorizations?org=citystream",
                         creds.influxdb_token)
    mine = [a for a in json.loads(body)["authorizations"] if a["token"] == first]
    assert len(mine) == 1
    assert call(stack, "DELETE", f"/api/v2/authorizations/{mine[0]['id']}",
                creds.influxdb_token)[0] == 204
    again = stack.ensure_read_token(Credentials.load_or_create(stack.home))
    assert again != first
    assert Credentials.load_or_create(stack.home).influxdb_read_token == again
    assert flux(stack, first, "kpi")[0] == 401
    assert flux(stack, again, "kpi")[0] == 200


def test_the_dashboard_shows_what_influxdb_holds(stack: Stack) -> None:
    bucket = new_bucket(stack)
    city = load_city()
    end = int(time.time() * 1000) - 5 * MIN
    records = city_kpis(city, end, skip_districts=("stony-stratford",))
    bucket.write(records)
    bucket.write(feed_kpis(city, end, skip_districts=("stony-stratford",)))
    url = stack.client_info()["influxdb"]["url"]
    source = InfluxSource(url, "citystream", bucket.read_token)
    hub = Hub()
    poller = Poller(source, city, hub, PollerOptions(bucket=bucket.name))
    try:
        asyncio.run(poller.poll_once())
    finally:
        source.close()
    snap = json.loads(hub.last("snapshot") or b"{}")
    assert snap["influx"]["ok"] is True, snap["influx"]
    water = bucket.latest("water_kpi", "district")
    for d in snap["districts"]:
        if d["id"] == "stony-stratford":
            assert d["water"] is None and d["energy"] is None
            continue
        ts, fields = water[d["id"]]
        assert d["water"]["time_ms"] == ts and d["water"]["fields"] == fields
    traffic = bucket.latest("traffic_kpi", "junction")
    assert {j["id"]: j["traffic"]["fields"] for j in snap["junctions"]} == {
        k: v[1] for k, v in traffic.items()}
    assert [r["shuttle"]["fields"]["occupancy_pct"] for r in snap["routes"]] == [35.0]
    assert [(a["entity"], a["rule"]) for a in snap["alerts"]] == [
        (city.districts[1].slug, "off_track"), (city.districts[0].slug, "leak")]
    assert [c["component"] for c in snap["pipeline"]] == ["ingest"]
    history = json.loads(hub.last("history") or b"{}")
    by_key = {(s["measurement"], s["entity"], s["field"]): s for s in history["series"]}
    assert len(by_key[("water_kpi", "central-mk", "saving_pct_24h")]["t"]) == 12
    assert len(by_key[("energy_kpi", "central-mk", "saving_pct_24h")]["t"]) == 6
    # 36 five-minute traffic windows averaged into 15-minute points (12 or 13 of them)
    assert 12 <= len(by_key[("traffic_kpi", "j-portway-h5", "congestion_index")]["t"]) <= 13
    assert ("shuttle_kpi", "station-centre", "mean_battery_pct") in by_key
    # every declared feed: its panel holds what InfluxDB holds, its chart KPI is charted
    assert [f["kind"] for f in snap["feeds"]] == [f.kind for f in city.feeds]
    for feed, view in zip(city.feeds, snap["feeds"], strict=True):
        written = bucket.latest(feed.measurement, feed.entity)
        shown = {e["id"]: e["point"] for e in view["entities"]}
        if feed.entity == "district":
            assert list(shown) == [d.slug for d in city.districts]
            assert shown.pop("stony-stratford") is None
        assert list(shown) == feed_entities(city, feed, ("stony-stratford",))
        for entity, point in shown.items():
            ts, fields = written[entity]
            assert point["time_ms"] == ts and point["fields"] == fields
            assert point["window"] == feed.window_tag
            chart = by_key[(feed.measurement, entity, view["chart"])]
            assert len(chart["t"]) == 3 * 3600 // feed.window_s


def test_each_query_parses_and_runs(stack: Stack) -> None:
    bucket = new_bucket(stack)
    source = InfluxSource(stack.client_info()["influxdb"]["url"], "citystream",
                          bucket.read_token)
    try:
        feeds = load_city().feeds
        for query in (latest_query(bucket.name, 7), alerts_query(bucket.name, 30),
                      history_query(bucket.name, 24), latest_query(bucket.name, 7, feeds),
                      history_query(bucket.name, 24, feeds)):
            assert source.query(query) == []
    finally:
        source.close()


def refusal(stack: Stack, token: str, bucket: str) -> str:
    source = InfluxSource(stack.client_info()["influxdb"]["url"], "citystream", token)
    try:
        with pytest.raises(SourceError) as info:
            source.query(latest_query(bucket, 1))
    finally:
        source.close()
    return str(info.value)


def test_influxdb_refusals_name_the_fix_and_never_the_token(stack: Stack) -> None:
    wrong = "not-a-token-but-secret-anyway-42"
    message = refusal(stack, wrong, "kpi")
    assert "HTTP 401" in message and "CITYSTREAM_DASHBOARD__TOKEN" in message
    assert wrong not in message
    read = Credentials.load_or_create(stack.home).influxdb_read_token
    message = refusal(stack, read, "no-such-bucket")
    assert "HTTP 404" in message and "CITYSTREAM_INFLUX__BUCKET_KPI" in message


def test_a_feed_with_short_windows_is_charted_in_15_minute_means(stack: Stack) -> None:
    city = load_city()
    feed = city.feeds[0].model_copy(update={"kind": "noise", "window_s": 300})
    bucket = new_bucket(stack)
    end = int(time.time() * 1000) - 5 * MIN
    bucket.write(feed_kpis(city.model_copy(update={"feeds": [feed]}), end, hours=2))
    source = InfluxSource(stack.client_info()["influxdb"]["url"], "citystream",
                          bucket.read_token)
    try:
        rows = source.query(history_query(bucket.name, 24, (feed,)))
    finally:
        source.close()
    points = {(r["_measurement"], r["district"]) for r in rows}
    assert points == {("noise_kpi", d.slug) for d in city.districts}
    per_district = len(rows) // len(city.districts)
    assert {r["_field"] for r in rows} == {"pm25_mean_ugm3"}
    assert 8 <= per_district <= 9          # 24 five-minute windows in 15-minute means
