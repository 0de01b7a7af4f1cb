"""The open-data web service over a `MemoryStore`: routes, formats, licence and CORS headers,
conditional GET, limits, caching, errors, privacy and the NGSI-LD forms against the schema."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from opendata.catalog import OGL
from opendata.store import MemoryStore, StoreError, StoreTimeout
from tests.opendata_checks import (
    DCAT,
    DCT,
    LICENSE_LINK,
    catalog_graph,
    expanded,
    read_csv,
    validate_kpi_entity,
)
from tests.unit.opendata.fakes import (
    BASE,
    MIN,
    NOW_MS,
    NOW_NS,
    SECRET_SENSOR,
    seeded,
    service,
    with_client,
)

Client = TestClient[Any, Any]
DAY_MS = 86_400_000
PATHS = ("/", "/catalog.jsonld", "/data/water_kpi.csv", "/data/water_kpi.json",
         "/data/data_quality.csv", "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator",
         "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator&options=keyValues", "/healthz")


def public_headers(resp: Any) -> None:
    assert LICENSE_LINK in resp.headers.getall("Link"), resp.headers
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_every_answer_carries_the_licence_and_cors_headers() -> None:
    async def check(client: Client) -> None:
        for path in (*PATHS, "/nope", "/data/alert.csv", "/data/water_kpi.csv?from=x",
                     "/ngsi-ld/v1/entities"):
            for method in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"):
                resp = await client.request(method, path)
                public_headers(resp)
                if method in ("POST", "PUT", "DELETE", "PATCH"):
                    assert resp.status == 405, (method, path)
                    assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
                elif method == "OPTIONS":
                    assert resp.status == 204
                    assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
        resp = await client.get("/data/water_kpi.csv", headers={"Origin": "https://x.example"})
        assert "ETag" in resp.headers["Access-Control-Expose-Headers"]

    with_client(service(), check)


def test_head_answers_like_get_without_a_body() -> None:
    async def check(client: Client) -> None:
        for path in PATHS:
            got, head = await client.get(path), await client.head(path)
            assert head.status == got.status == 200, path
            assert await head.read() == b""
            for name in ("ETag", "Content-Type", "Last-Modified"):
                assert head.headers.get(name) == got.headers.get(name), (path, name)

    with_client(service(), check)


async def _get(client: Client, path: str, status: int = 200, **kw: Any) -> Any:
    resp = await client.get(path, **kw)
    body = await resp.read()
    assert resp.status == status, (path, body[:300])
    public_headers(resp)
    return resp, body


def test_csv_and_json_of_a_dataset_hold_the_same_rows() -> None:
    async def check(client: Client) -> None:
        resp, body = await _get(client, "/data/traffic_kpi.csv")
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
        lines = read_csv(body.decode())
        resp, body = await _get(client, "/data/traffic_kpi.json")
        assert resp.headers["Content-Type"] == "application/json"
        objects = json.loads(body)
        assert len(lines) == len(objects) == 16
        assert list(objects[0]) == list(lines[0])
        for line, obj in zip(lines, objects, strict=True):
            assert line["window_end"] == obj["window_end"]
            assert int(line["vehicles"]) == obj["vehicles"]
            assert float(line["flow_veh_h"]) == obj["flow_veh_h"]
            assert (line["on_track"] == "true") is obj["on_track"]
        assert body.decode().count("j-0") == 8

    with_client(service(), check)


def test_the_default_is_the_last_24_hours_and_from_to_is_half_open() -> None:
    store = MemoryStore()
    for hours in (0, 1, 23, 24, 25):
        t = NOW_MS // 1000 * 1000 - hours * 3_600_000
        store.add("shuttle_kpi", t, {"route": "r-1", "window": "15m"}, {"boardings": hours})

    async def check(client: Client) -> None:
        _resp, body = await _get(client, "/data/shuttle_kpi.json")
        # [now - 24 h, now): the window ending now is not in, the one 24 h before is
        assert [r["boardings"] for r in json.loads(body)] == [24, 23, 1]
        start = "2026-09-21T13:15:00Z"   # exactly one of the window ends
        _resp, body = await _get(client, f"/data/shuttle_kpi.json?from={start}"
                                         "&to=2026-09-21T14:15:00Z")
        assert [r["window_end"] for r in json.loads(body)] == [start]

    # [from, to): `to` defaults to now (whole seconds), `from` to `to` minus 24 h
    with_client(service(store), check)


def test_range_errors_say_what_is_wrong() -> None:
    async def check(client: Client) -> None:
        cases = {
            "from=2026-08-01T00:00:00Z&to=2026-09-02T00:00:00Z": "at most 31 days",
            "from=2026-09-02T00:00:00Z&to=2026-09-01T00:00:00Z": "before `to`",
            "from=yesterday": "RFC 3339",
            "to=2026-09-01": "RFC 3339",
            "from=2026-09-01T00:00:00Z&from=2026-09-02T00:00:00Z": "once",
        }
        for query, words in cases.items():
            resp, body = await _get(client, f"/data/water_kpi.csv?{query}", 400)
            assert resp.headers["Content-Type"] == "application/json"
            assert words in json.loads(body)["error"], (query, body)
            assert resp.headers["Cache-Control"] == "no-store"
        await _get(client, "/data/water_kpi.csv?from=2026-08-01T00:00:00Z"
                           "&to=2026-09-01T00:00:00Z")                      # 31 days: fine

    with_client(service(), check)


def test_unknown_and_unpublished_datasets_are_404() -> None:
    async def check(client: Client) -> None:
        for name in ("alert", "pipeline", "sensor_quality", "telemetry", "water",
                     "Water_kpi", "water_kpi.csv", "nothing_kpi", "water_kpi\"", "..%2Fx"):
            for fmt in ("csv", "json"):
                _resp, body = await _get(client, f"/data/{name}.{fmt}", 404)
                assert json.loads(body)["status"] == 404
        await _get(client, "/data/water_kpi.xml", 404)
        await _get(client, "/data/water_kpi", 404)

    store = seeded()
    with_client(service(store), check)
    assert store.queries == 0      # none of those reached the store


def test_row_limit_is_a_clear_error() -> None:
    async def check(client: Client) -> None:
        _resp, body = await _get(client, "/data/traffic_kpi.csv", 400)
        assert "more than 10 rows" in json.loads(body)["error"]
        await _get(client, "/data/shuttle_kpi.csv")                       # 8 rows: fine

    with_client(service(max_rows=10), check)


def test_conditional_get_with_etag_and_last_modified() -> None:
    async def check(client: Client) -> None:
        for path in PATHS[:-1]:
            resp, _ = await _get(client, path)
            etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
            assert etag.startswith('"') and "public" in resp.headers["Cache-Control"]
            again, body = await _get(client, path, 304, headers={"If-None-Match": etag})
            assert body == b"" and again.headers["ETag"] == etag
            await _get(client, path, 304, headers={"If-None-Match": f'"x", W/{etag}'})
            await _get(client, path, 304, headers={"If-None-Match": "*"})
            await _get(client, path, 200, headers={"If-None-Match": '"other"'})
            await _get(client, path, 304, headers={"If-Modified-Since": modified})
            await _get(client, path, 200, headers={"If-Modified-Since":
                                                   "Thu, 01 Jan 2015 00:00:00 GMT"})
            await _get(client, path, 200, headers={"If-Modified-Since": "not a date"})
            # If-None-Match wins over If-Modified-Since
            await _get(client, path, 200, headers={"If-None-Match": '"other"',
                                                   "If-Modified-Since": modified})
        resp, _ = await _get(client, "/data/water_kpi.csv")
        newest = (NOW_MS - 5 * MIN) // (15 * MIN) * (15 * MIN)
        assert resp.headers["Last-Modified"] == _http_date(newest // 1000)

    with_client(service(), check)


def _http_date(seconds: int) -> str:
    import email.utils

    return email.utils.formatdate(seconds, usegmt=True)


def test_settled_periods_are_cached_and_recent_ones_are_not() -> None:
    store = seeded(NOW_MS - 5 * DAY_MS)
    svc = service(store)

    async def check(client: Client) -> None:
        old = "/data/water_kpi.csv?from=2026-09-15T00:00:00Z&to=2026-09-17T00:00:00Z"
        first, body = await _get(client, old)
        assert b"wolverton" in body
        assert first.headers["Cache-Control"] == "public, max-age=3600"
        asked = store.queries
        for _ in range(3):
            resp, again = await _get(client, old)
            assert again == body and resp.headers["ETag"] == first.headers["ETag"]
        assert store.queries == asked
        recent = "/data/water_kpi.csv"
        resp, _ = await _get(client, recent)
        assert resp.headers["Cache-Control"] == "public, max-age=60"
        await _get(client, recent)
        assert store.queries == asked + 2

    with_client(svc, check)
    assert svc.cache.hits == 3


def test_concurrent_cold_requests_are_computed_once() -> None:
    import asyncio

    store = seeded(NOW_MS - 5 * DAY_MS)
    original = store.points

    async def slow(*args: Any) -> Any:
        await asyncio.sleep(0.05)
        return await original(*args)

    store.points = slow  # type: ignore[method-assign]

    async def check(client: Client) -> None:
        path = "/data/water_kpi.json?from=2026-09-15T00:00:00Z&to=2026-09-16T00:00:00Z"
        answers = await asyncio.gather(*(client.get(path) for _ in range(10)))
        assert {a.status for a in answers} == {200}
        assert len({a.headers["ETag"] for a in answers}) == 1

    with_client(service(store), check)
    assert store.queries == 1


def test_influxdb_failures_are_503_and_504_without_details() -> None:
    async def check(client: Client) -> None:
        store.fail = StoreError("InfluxDB refused the token (HTTP 401): check "
                                "CITYSTREAM_OPENDATA__TOKEN")
        for path in ("/data/water_kpi.csv", "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"):
            resp, body = await _get(client, path, 503)
            assert b"TOKEN" not in body and b"401" not in body
            assert resp.headers["Retry-After"] == "30"
        resp, body = await _get(client, "/catalog.jsonld")      # degrades: no coverage
        assert json.loads(body)["dcat:dataset"]
        store.fail = StoreTimeout("slow")
        _resp, body = await _get(client, "/data/water_kpi.json", 504)
        assert "did not answer in time" in json.loads(body)["error"]
        store.fail = None
        await _get(client, "/data/water_kpi.json")

    store = seeded()
    with_client(service(store), check)


def test_the_catalogue_is_dcat_json_ld() -> None:
    async def check(client: Client) -> None:
        resp, body = await _get(client, "/catalog.jsonld")
        assert resp.headers["Content-Type"] == "application/ld+json"
        document = json.loads(body)
        graph = catalog_graph(document)
        import rdflib
        from rdflib.namespace import RDF

        dcat, dct = rdflib.Namespace(DCAT), rdflib.Namespace(DCT)
        catalogs = list(graph.subjects(RDF.type, dcat.Catalog))
        assert len(catalogs) == 1
        datasets = {str(graph.value(d, dct.identifier)): d
                    for d in graph.objects(catalogs[0], dcat.dataset)}
        assert set(datasets) == {"water_kpi", "energy_kpi", "traffic_kpi", "shuttle_kpi",
                                 "noise_kpi", "data_quality"}
        for name, node in datasets.items():
            assert (node, RDF.type, dcat.Dataset) in graph
            assert graph.value(node, dct.title) and graph.value(node, dct.description)
            assert graph.value(node, dct.license) == rdflib.URIRef(OGL)
            period = graph.value(node, dct.temporal)
            assert (period, RDF.type, dct.PeriodOfTime) in graph
            assert graph.value(period, dcat.startDate) is not None
            assert len(list(graph.objects(node, dcat.keyword))) >= 3
            media = {}
            for dist in graph.objects(node, dcat.distribution):
                assert (dist, RDF.type, dcat.Distribution) in graph
                url = graph.value(dist, dcat.accessURL)
                assert isinstance(url, rdflib.URIRef) and str(url).startswith(BASE)
                media[str(graph.value(dist, dcat.mediaType))] = str(url)
            assert media["text/csv"] == f"{BASE}/data/{name}.csv"
            assert media["application/json"] == f"{BASE}/data/{name}.json"
            has_target = name in ("water_kpi", "energy_kpi", "traffic_kpi", "noise_kpi")
            assert ("application/ld+json" in media) is has_target, name
        water = datasets["water_kpi"]
        period = graph.value(water, dct.temporal)
        assert str(graph.value(period, dcat.endDate)).startswith("2026-09-21T14:00:00")
        assert expanded(document)[0]["@type"] == [DCAT + "Catalog"]

    with_client(service(), check)


def test_ngsi_ld_entities_validate_in_both_forms() -> None:
    async def check(client: Client) -> None:
        resp, body = await _get(client, "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator")
        assert resp.headers["Content-Type"] == "application/ld+json"
        normalized = json.loads(body)
        _resp, body = await _get(client, "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
                                         "&options=keyValues")
        key_values = json.loads(body)
        for entity in normalized:
            validate_kpi_entity(entity, normalized=True)
        for entity in key_values:
            validate_kpi_entity(entity, normalized=False)
        ids = [e["id"] for e in key_values]
        assert ids == [e["id"] for e in normalized] == sorted(ids)
        prefix = "urn:ngsi-ld:KeyPerformanceIndicator:"
        # bletchley's water and energy windows are withheld: no entity for them
        assert ids == [prefix + "noise_kpi:wolverton:laeq_mean_db_24h",
                       prefix + "traffic_kpi:j-0:reduction_pct_24h",
                       prefix + "traffic_kpi:j-1:reduction_pct_24h",
                       prefix + "water_kpi:wolverton:saving_pct_24h"]
        water = key_values[-1]
        newest = (NOW_MS - 5 * MIN) // (15 * MIN) * (15 * MIN)
        assert water["kpiValue"] == 22.5
        assert water["businessTarget"] == "water use 20 % below baseline"
        assert water["currentStanding"] == "good"
        assert water["calculationPeriod"] == {"from": "2026-09-20", "to": "2026-09-21"}
        assert water["category"] == ["quantitative"] and water["area"] == "wolverton"
        assert water["dateModified"] == "2026-09-21T14:00:00Z" and newest % 1000 == 0
        assert key_values[2]["businessTarget"] == "congestion 40 % below baseline"
        noise = key_values[0]
        assert noise["businessTarget"].endswith("laeq_mean_db at most 55 as a 24 h mean")
        assert normalized[-1]["kpiValue"] == {"type": "Property", "value": 22.5,
                                              "observedAt": "2026-09-21T14:00:00Z"}
        one = f"/ngsi-ld/v1/entities/{ids[1]}"
        _resp, body = await _get(client, one + "?options=keyValues")
        assert json.loads(body) == key_values[1]
        _resp, body = await _get(client, one)
        validate_kpi_entity(json.loads(body), normalized=True)
        await _get(client, "/ngsi-ld/v1/entities/" + prefix + "water_kpi:bletchley:"
                           "saving_pct_24h", 404)
        resp, body = await _get(client, "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
                                        "&limit=1&offset=1&count=true&options=keyValues")
        assert [e["id"] for e in json.loads(body)] == ids[1:2]
        assert resp.headers["NGSILD-Results-Count"] == "4"
        _resp, body = await _get(client, "/ngsi-ld/v1/entities?type=Building")
        assert json.loads(body) == []

    with_client(service(), check)


def test_only_final_windows_feed_ngsi_ld() -> None:
    store = MemoryStore()
    end = NOW_MS // (15 * MIN) * (15 * MIN)           # ended 15 s ago: still within the grace
    for t, saving in ((end - 15 * MIN, 30.0), (end, 10.0)):
        store.add("water_kpi", t, {"district": "wolverton", "window": "15m"}, {
            "saving_pct_24h": saving, "target_pct": 20.0, "on_track": saving >= 20,
            "meters_reporting": 50})

    async def check(client: Client) -> None:
        _resp, body = await _get(client, "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
                                         "&options=keyValues")
        (entity,) = json.loads(body)
        assert entity["kpiValue"] == 30.0 and entity["currentStanding"] == "good"

    with_client(service(store), check)


def test_ngsi_ld_parameters_are_checked() -> None:
    async def check(client: Client) -> None:
        base = "/ngsi-ld/v1/entities"
        for query in ("", "?options=keyValues", "?type=KeyPerformanceIndicator&options=x",
                      "?type=KeyPerformanceIndicator&format=y",
                      "?type=KeyPerformanceIndicator&limit=-1",
                      "?type=KeyPerformanceIndicator&limit=abc",
                      "?type=KeyPerformanceIndicator&count=maybe"):
            _resp, body = await _get(client, base + query, 400)
            problem = json.loads(body)
            assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
            assert problem["title"]

    with_client(service(), check)


HOSTILE = ['") |> drop(columns: ["_value"]) |> yield(name: "x', '${x}', "\\", '"',
           "r._measurement == \"telemetry\"", "' or 1=1 --", "%22%29", "\n", "\u2028",
           'from(bucket: "telemetry")']


def test_nothing_a_client_sends_reaches_the_store() -> None:
    store = seeded()

    async def check(client: Client) -> None:
        for bad in HOSTILE:
            for path in (f"/data/{bad}.csv", "/data/water_kpi.csv", "/ngsi-ld/v1/entities",
                         f"/ngsi-ld/v1/entities/{bad}"):
                for param in ("from", "to", "options", "type", "format", "id", "limit"):
                    resp = await client.get(path, params={param: bad})
                    assert resp.status in (200, 400, 404), (path, param, bad, resp.status)
                    public_headers(resp)
                    assert SECRET_SENSOR.encode() not in await resp.read()

    with_client(service(store), check)


def test_no_suppressed_value_or_sensor_id_can_be_recovered() -> None:
    """Everything the service answers, for every dataset, format and parameter we can think
    of, holds neither a withheld window's figures nor a sensor id nor per-sensor values."""
    store = seeded()
    secrets = [b"687.5", b"31.25", b"31.75", b"97.0", b"40.0", SECRET_SENSOR.encode(), b"71.5",
               b"12.5"]

    async def check(client: Client) -> None:
        paths = ["/", "/catalog.jsonld"]
        for name in ("water_kpi", "energy_kpi", "data_quality", "traffic_kpi"):
            for fmt in ("csv", "json"):
                paths += [f"/data/{name}.{fmt}",
                          f"/data/{name}.{fmt}?from=2026-09-20T14:00:00Z",
                          f"/data/{name}.{fmt}?from=2026-09-21T13:59:59Z"
                          "&to=2026-09-21T14:00:01Z"]
        for options in ("", "&options=keyValues", "&options=sysAttrs",
                        "&format=simplified", "&id=urn:ngsi-ld:KeyPerformanceIndicator:"
                                              "water_kpi:bletchley:saving_pct_24h"):
            paths.append(f"/ngsi-ld/v1/entities?type=KeyPerformanceIndicator{options}")
        for path in paths:
            _resp, body = await _get(client, path)
            text = body.replace(b"40.0,480.0", b"")      # traffic's own 40.0 km/h is public
            if "traffic" in path:
                continue
            for secret in secrets:
                assert secret not in text, (path, secret)
        _resp, body = await _get(client, "/data/water_kpi.json")
        hidden = [r for r in json.loads(body) if r["district"] == "bletchley"
                  and r["suppressed"]]
        assert len(hidden) == 2 and all(r["meters_reporting"] is None for r in hidden)

    with_client(service(store), check)


def test_doubled_slashes_reach_the_same_routes() -> None:
    async def check(client: Client) -> None:
        import aiohttp

        root = str(client.make_url("/"))
        async with aiohttp.ClientSession() as raw:
            for path in ("/catalog.jsonld", "/data/water_kpi.csv"):
                async with raw.get(root + path) as resp:
                    assert resp.status == 200, path
                    assert LICENSE_LINK in resp.headers.getall("Link")

    with_client(service(), check)


def test_index_lists_every_dataset() -> None:
    async def check(client: Client) -> None:
        _resp, body = await _get(client, "/")
        index = orjson.loads(body)
        assert index["license"] == OGL and index["catalog"] == f"{BASE}/catalog.jsonld"
        assert index["datasets"]["noise_kpi"]["csv"] == f"{BASE}/data/noise_kpi.csv"

    with_client(service(), check)


@pytest.mark.parametrize("live", [0.0, 30.0])
def test_live_answers_are_cached_only_when_asked(live: float) -> None:
    store = seeded()

    async def check(client: Client) -> None:
        for _ in range(3):
            await _get(client, "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator")
            await _get(client, "/catalog.jsonld")

    with_client(service(store, live_cache_s=live), check)
    assert store.queries == (2 if live else 6)


def test_clock_is_respected() -> None:
    assert NOW_NS // 1_000_000 == NOW_MS
