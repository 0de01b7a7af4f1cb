"""`citystream opendata` against the real InfluxDB 2.7, through HTTP like any client.

One server process per module (`citystream opendata`, the CLI a council runs) reads a bucket of
its own with a token that may only read it. The bucket holds three hours of every KPI of the
shipped Milton Keynes (built-in kinds and its declared feeds), windows of household meters with
too few meters, per-sensor quality points, a settled day three days back, and canaries: a raw
reading and an alert written into the same bucket, which must never come out.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.local.stack import Credentials, Stack, StackSettings, free_port
from kinds.energy import EnergyKpi
from kinds.water import WaterKpi
from models.city import City, load_city
from models.records import Alert, Record
from opendata.datasets import DATA_QUALITY, Dataset, published
from opendata.store import MemoryStore
from opendata.tables import rows
from tests.opendata_checks import (
    DCAT,
    DCT,
    LICENSE_LINK,
    OGL,
    catalog_graph,
    expanded,
    read_csv,
    validate_kpi_entity,
)
from tests.support import MIN, Bucket, city_kpis, feed_kpis, new_bucket

pytestmark = [pytest.mark.influxdb]

ROOT = Path(__file__).resolve().parents[2]
HOUR = 60 * MIN
DAY = 24 * HOUR
QUIET = "stony-stratford"             # its household windows have too few meters
CANARIES = ("wm-canary-77", "4242.4242", "sq-canary-88", "alert-canary")
SUPPRESSED = ("613.12345678", "38.87654321", "27.13579246", "88.86420975", "11.12121212",
              "3.37373737")


@dataclass
class Served:
    url: str
    bucket: Bucket
    city: City
    datasets: dict[str, Dataset]
    oracle: MemoryStore
    end_ms: int
    first_ms: int
    proc: subprocess.Popen[bytes]
    log: Path


def get(url: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _quiet_district(end: int) -> list[Record]:
    """Water and energy of QUIET: the newest two windows of each with 2 meters (withheld), the
    older ones with 12."""
    out: list[Record] = []
    for k in range(12):
        t = end // (15 * MIN) * (15 * MIN) - k * 15 * MIN
        few = k < 2
        out.append(WaterKpi(district=QUIET, window_end_ms=t,
                            consumption_l=613.12345678 if few else 700.0, baseline_l=1000.0,
                            saving_pct=38.87654321 if few else 30.0,
                            saving_pct_24h=27.13579246 if few else 25.0, on_track=True,
                            meters_reporting=2 if few else 12))
        if k % 2 == 0:
            out.append(EnergyKpi(district=QUIET, window_end_ms=end // (30 * MIN) * (30 * MIN)
                                 - k // 2 * 30 * MIN,
                                 energy_kwh=88.86420975 if few else 90.0, baseline_kwh=100.0,
                                 saving_pct=11.12121212 if few else 10.0,
                                 saving_pct_24h=3.37373737 if few else 4.0, on_track=True,
                                 peak_kw=50.0, meters_reporting=1 if few else 12))
    return out


def _quality_lines(end: int) -> tuple[list[str], list[tuple[int, dict[str, str],
                                                            dict[str, Any]]]]:
    """`sensor_quality` points (as the worker will write them) for the last 3 hours."""
    lines, points = [], []
    hour = end // HOUR * HOUR
    for k in range(3):
        t = hour - k * HOUR
        sensors = [("water", "central-mk", f"wm-{i:04d}") for i in range(7)]
        sensors += [("water", QUIET, "sq-canary-88"), ("traffic", "bletchley", "tc-01"),
                    ("traffic", "bletchley", "tc-02")]
        for i, (kind, district, sensor) in enumerate(sensors):
            fields = {"readings": 4 + i + k, "duplicates": i % 2, "rejected": i % 3,
                      "late": 0, "completeness_pct": 100.0 - 2.5 * i, "stuck": i == 3,
                      "score": 90.0 - i}
            tags = {"kind": kind, "district": district, "sensor_id": sensor, "window": "1h"}
            lines.append("sensor_quality," + ",".join(f"{k2}={v}" for k2, v in sorted(
                tags.items())) + " " + ",".join(
                f"{n}={'true' if v is True else 'false' if v is False else v}"
                + ("i" if isinstance(v, int) and not isinstance(v, bool) else "")
                for n, v in fields.items()) + f" {t}")
            points.append((t, tags, fields))
    return lines, points


def _start(bucket: Bucket, stack: Stack, log: Path, **env: str) -> tuple[subprocess.Popen[bytes],
                                                                        str]:
    info = stack.client_info()["influxdb"]
    port = free_port()
    full = {**os.environ, "CITYSTREAM_INFLUX__URL": info["url"],
            "CITYSTREAM_INFLUX__ORG": info["org"], "CITYSTREAM_INFLUX__BUCKET_KPI": bucket.name,
            "CITYSTREAM_INFLUX__TOKEN": "", "CITYSTREAM_INFLUX__READ_TOKEN": "",
            "CITYSTREAM_OPENDATA__TOKEN": bucket.read_token,
            "CITYSTREAM_OPENDATA__PORT": str(port), **env}
    out = log.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "citystream", "-v", "opendata"], env=full,
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if b"opendata running" in log.read_bytes():
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"citystream opendata did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    stack.ensure("influxdb")
    city = load_city()
    bucket = new_bucket(stack)
    now = int(time.time() * 1000)
    end = now - 5 * MIN
    records: list[Record] = [*city_kpis(city, end, skip_districts=(QUIET,)),
                             *feed_kpis(city, end), *_quiet_district(end)]
    settled = now - 3 * DAY
    records += city_kpis(city, settled, hours=24, seed=9, skip_districts=(QUIET,))
    records.append(Alert(kind="water", entity="alert-canary", rule="leak", ts_ms=end,
                         value=1.0, threshold=0.5, message="alert-canary", active=True))
    bucket.write(records)
    lines, quality = _quality_lines(end)
    lines.append(f"water,district=central-mk,sensor_id=wm-canary-77 volume_m3=4242.4242 {end}")
    bucket.write_lines(lines)
    oracle = MemoryStore()
    for r in records:
        oracle.add(r.measurement, r.time_ms, r.tags(), r.fields())
    for t, tags, fields in quality:
        oracle.add("sensor_quality", t, tags, fields)
    log = tmp_path_factory.mktemp("opendata") / "opendata.log"
    proc, url = _start(bucket, stack, log)
    try:
        yield Served(url, bucket, city, published(city), oracle, end,
                     min(r.time_ms for r in records if r.measurement == "water_kpi"), proc,
                     log)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _expected(served: Served, name: str, start_ms: int, stop_ms: int) -> list[dict[str, Any]]:
    dataset = served.datasets[name]
    points = asyncio.run(served.oracle.points(dataset, start_ms * 10**6, stop_ms * 10**6,
                                              10**9))
    return rows(dataset, points, 5)


def same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """Equal rows; floats equal to 1e-12 relative (a mean computed by Flux and by Python may
    differ in the last bit)."""
    if len(got) != len(want):
        return False
    for mine, theirs in zip(got, want, strict=True):
        if list(mine) != list(theirs):
            return False
        for key, value in theirs.items():
            have = mine[key]
            if isinstance(value, float) and isinstance(have, float):
                if not math.isclose(have, value, rel_tol=1e-12):
                    return False
            elif have != value or type(have) is not type(value):
                return False
    return True


def _range(start_ms: int, stop_ms: int) -> str:
    def iso(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

    return urllib.parse.urlencode({"from": iso(start_ms), "to": iso(stop_ms)})


def test_every_dataset_equals_what_influxdb_holds_in_csv_and_json(served: Served) -> None:
    """CSV and JSON of every dataset (built-in, declared feeds, data_quality computed by Flux)
    equal the rows computed offline from the points written; CSV reads back with csv and with
    pandas in the declared types."""
    import pandas as pd

    start = served.end_ms - 4 * HOUR
    stop = served.end_ms + MIN
    dtypes = {"number": "float64", "integer": "Int64", "boolean": "boolean",
              "string": "string"}
    for name, dataset in served.datasets.items():
        want = _expected(served, name, start, stop)
        assert want, name
        status, headers, body = get(f"{served.url}/data/{name}.json?{_range(start, stop)}")
        assert status == 200, body
        got = json.loads(body)
        assert same_rows(got, want), (name, json.dumps([(g, w) for g, w in zip(
            got, want, strict=False) if g != w][:2]))
        status, headers, body = get(f"{served.url}/data/{name}.csv?{_range(start, stop)}")
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        lines = read_csv(body.decode())
        assert list(lines[0]) == list(dataset.columns)
        assert len(lines) == len(got)
        for line, obj in zip(lines, got, strict=True):
            assert line == {k: "" if v is None else "true" if v is True else "false"
                            if v is False else str(v) for k, v in obj.items()}, name
        frame = pd.read_csv(
            io.BytesIO(body), parse_dates=["window_end"],
            dtype={**{c.name: dtypes[c.type] for c in dataset.fields},
                   **dict.fromkeys((*dataset.tags, "window"), "string"),
                   "suppressed": "boolean"})
        assert str(frame["window_end"].dtype) == "datetime64[ns, UTC]" or str(
            frame["window_end"].dtype).startswith("datetime64")
        assert len(frame) == len(got)
        for column in dataset.fields:
            values = [o[column.name] for o in got]
            read = [None if pd.isna(v) else v for v in frame[column.name].tolist()]
            assert read == values, (name, column.name)
    quality = _expected(served, DATA_QUALITY, start, stop)
    central = [r for r in quality if r["district"] == "central-mk"]
    assert {r["sensors"] for r in central} == {7} and not any(r["suppressed"] for r in central)


def test_household_windows_with_too_few_meters_cannot_be_recovered(served: Served) -> None:
    """Every endpoint and parameter: no figure of a withheld window, no sensor id, no raw
    reading, no alert comes out."""
    base = served.url
    start = served.end_ms - 30 * HOUR
    paths = ["/", "/catalog.jsonld", "/healthz"]
    for name in served.datasets:
        for fmt in ("csv", "json"):
            recent = _range(served.end_ms - 31 * MIN, served.end_ms + MIN)
            paths += [f"/data/{name}.{fmt}", f"/data/{name}.{fmt}?{_range(start, start + DAY)}",
                      f"/data/{name}.{fmt}?{recent}"]
    for options in ("", "&options=keyValues", "&options=sysAttrs", "&format=normalized",
                    "&count=true&limit=1000"):
        paths.append(f"/ngsi-ld/v1/entities?type=KeyPerformanceIndicator{options}")
    for form in ("", "?options=keyValues"):
        for field in ("water_kpi", "energy_kpi"):
            paths.append(f"/ngsi-ld/v1/entities/urn:ngsi-ld:KeyPerformanceIndicator:{field}:"
                         f"{QUIET}:saving_pct_24h{form}")
    for name in ("alert", "pipeline", "sensor_quality", "water", "telemetry"):
        paths += [f"/data/{name}.csv", f"/data/{name}.json"]
    for path in paths:
        status, _headers, body = get(base + path)
        assert status in (200, 404), (path, status)
        for secret in (*CANARIES, *SUPPRESSED, "wm-0001"):
            assert secret.encode() not in body, (path, secret)
    status, _h, body = get(f"{base}/data/water_kpi.json")
    quiet = [r for r in json.loads(body) if r["district"] == QUIET]
    withheld = [r for r in quiet if r["suppressed"]]
    assert len(withheld) == 2 and len(quiet) > 2
    assert all(r[c] is None for r in withheld for c in served.datasets["water_kpi"].field_names)
    _s, _h, body = get(f"{base}/data/water_kpi.csv")
    withheld_lines = [line for line in read_csv(body.decode()) if line["suppressed"] == "true"]
    assert len(withheld_lines) == 2
    assert all(line[c] == "" for line in withheld_lines
               for c in served.datasets["water_kpi"].field_names)
    _s, _h, body = get(f"{base}/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
                       "&options=keyValues")
    assert QUIET not in {e["area"] for e in json.loads(body) if "water_kpi" in e["id"]}


def test_ngsi_ld_entities_validate_against_the_data_model(served: Served) -> None:
    query = f"{served.url}/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
    status, headers, body = get(query)
    assert status == 200 and headers["Content-Type"] == "application/ld+json"
    normalized = json.loads(body)
    status, headers, body = get(query + "&options=keyValues")
    key_values = json.loads(body)
    for entity in normalized:
        validate_kpi_entity(entity, normalized=True)
    for entity in key_values:
        validate_kpi_entity(entity, normalized=False)
    ids = {e["id"] for e in key_values}
    assert ids == {e["id"] for e in normalized}
    city = served.city
    prefix = "urn:ngsi-ld:KeyPerformanceIndicator:"
    want = {f"{prefix}water_kpi:{d.slug}:saving_pct_24h" for d in city.districts
            if d.slug != QUIET}
    want |= {f"{prefix}energy_kpi:{d.slug}:saving_pct_24h" for d in city.districts
             if d.slug != QUIET}
    want |= {f"{prefix}traffic_kpi:{j.id}:reduction_pct_24h" for j in city.junctions}
    for feed in city.feeds:
        assert feed.target is not None
        entities = ([d.slug for d in city.districts] if feed.entity == "district"
                    else [f"{feed.entity.replace('_', '-')}-{n}" for n in (1, 2)])
        want |= {f"{prefix}{feed.measurement}:{e}:{feed.target.kpi}_24h" for e in entities}
    assert ids == want
    latest = served.bucket.latest("water_kpi", "district")
    central = next(e for e in key_values if e["id"] == f"{prefix}water_kpi:central-mk:"
                                                       "saving_pct_24h")
    ts, fields = latest["central-mk"]
    assert central["kpiValue"] == fields["saving_pct_24h"]
    assert central["currentStanding"] == ("good" if fields["on_track"] else "bad")
    assert central["dateModified"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts / 1000))
    assert central["businessTarget"] == "water use 20 % below baseline"
    car_parks = [e for e in key_values if "car_park_kpi" in e["id"]]
    assert sorted(e["currentStanding"] for e in car_parks) == ["bad", "good"]


def test_the_catalogue_is_dcat_and_covers_every_dataset(served: Served) -> None:
    import rdflib
    from rdflib.namespace import RDF

    status, headers, body = get(f"{served.url}/catalog.jsonld")
    assert status == 200 and headers["Content-Type"] == "application/ld+json"
    document = json.loads(body)
    graph = catalog_graph(document)
    assert expanded(document)
    dcat, dct = rdflib.Namespace(DCAT), rdflib.Namespace(DCT)
    nodes = {str(graph.value(d, dct.identifier)): d
             for d in graph.subjects(RDF.type, dcat.Dataset)}
    assert set(nodes) == set(served.datasets)
    assert {"air_quality_kpi", "car_park_kpi", "bus_occupancy_kpi", DATA_QUALITY} <= set(nodes)
    for name, node in nodes.items():
        for term in (dct.title, dct.description, dct.temporal):
            assert graph.value(node, term) is not None, (name, term)
        assert graph.value(node, dct.license) == rdflib.URIRef(OGL)
        assert list(graph.objects(node, dcat.keyword))
        for dist in graph.objects(node, dcat.distribution):
            url = str(graph.value(dist, dcat.accessURL))
            media = str(graph.value(dist, dcat.mediaType))
            status, headers, _body = get(url)
            assert status == 200, url
            assert headers["Content-Type"].startswith(media), (url, media)
    period = graph.value(nodes["water_kpi"], dct.temporal)
    start = graph.value(period, dcat.startDate).toPython()
    assert int(start.timestamp() * 1000) == served.first_ms


def test_bounds_conditional_get_cors_and_licence(served: Served) -> None:
    base = served.url
    status, headers, body = get(f"{base}/data/water_kpi.csv?from=2026-01-01T00:00:00Z"
                                "&to=2026-02-01T00:00:01Z")
    assert status == 400 and "31 days" in json.loads(body)["error"]
    assert LICENSE_LINK in headers.get_all("Link")
    status, headers, body = get(f"{base}/data/water_kpi.csv?from=2026-01-01T00:00:00Z"
                                "&to=2026-02-01T00:00:00Z")
    assert status == 200
    for path in ("/data/traffic_kpi.csv", "/catalog.jsonld",
                 "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"):
        status, headers, _body = get(base + path)
        assert status == 200
        etag, modified = headers["ETag"], headers["Last-Modified"]
        status, again, body = get(base + path, {"If-None-Match": etag})
        assert status == 304 and body == b"" and again["ETag"] == etag
        assert LICENSE_LINK in again.get_all("Link")
        assert again["Access-Control-Allow-Origin"] == "*"
        assert get(base + path, {"If-Modified-Since": modified})[0] == 304
    settled = served.end_ms - 3 * DAY - 12 * HOUR
    status, headers, body = get(f"{base}/data/water_kpi.csv?{_range(settled, settled + HOUR)}")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=3600"
    assert len(read_csv(body.decode())) == 4 * (len(served.city.districts) - 1)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _body = get(f"{base}/data/water_kpi.csv", method=method)
        assert status == 405 and LICENSE_LINK in headers.get_all("Link")
    status, headers, _body = get(f"{base}/data/water_kpi.csv", method="OPTIONS",
                                 headers={"Origin": "https://example.org",
                                          "Access-Control-Request-Method": "GET"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in headers["Access-Control-Allow-Methods"]
    for path in ("/nothing", "/data/alert.csv", "/ngsi-ld/v1/entities"):
        status, headers, _body = get(base + path)
        assert status in (400, 404) and LICENSE_LINK in headers.get_all("Link")
        assert headers["Access-Control-Allow-Origin"] == "*"


HOSTILE = ('") |> yield(name: "x") from(bucket: "telemetry', '${"x"}', "\\", '"', "%00",
           'water_kpi" or r._measurement == "water', "1d", "-3650d", "now()", "<script>")


def test_injection_through_every_parameter_is_refused(served: Served) -> None:
    base = served.url
    for bad in HOSTILE:
        quoted = urllib.parse.quote(bad, safe="")
        probes = [f"/data/{quoted}.csv", f"/data/water_kpi.{quoted}",
                  f"/ngsi-ld/v1/entities/{quoted}"]
        for param in ("from", "to", "options", "type", "format", "id", "limit", "offset"):
            value = urllib.parse.urlencode({param: bad})
            probes += [f"/data/water_kpi.csv?{value}", f"/data/data_quality.json?{value}",
                       f"/ngsi-ld/v1/entities?type=KeyPerformanceIndicator&{value}"]
        for path in probes:
            status, headers, body = get(base + path)
            assert status in (200, 400, 404), (path, status, body[:200])
            assert LICENSE_LINK in headers.get_all("Link")
            for secret in CANARIES:
                assert secret.encode() not in body, (path, secret)
    assert b"InfluxDB query failed" not in served.log.read_bytes()


def test_a_row_limit_and_a_token_that_can_write_are_refused(served: Served, stack: Stack,
                                                            tmp_path: Path) -> None:
    proc, url = _start(served.bucket, stack, tmp_path / "limited.log",
                       CITYSTREAM_OPENDATA__MAX_ROWS="50")
    try:
        status, _h, body = get(f"{url}/data/traffic_kpi.csv")
        assert status == 400 and "more than 50 rows" in json.loads(body)["error"]
        assert get(f"{url}/data/shuttle_kpi.csv")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    admin = stack.client_info()["influxdb"]["token"]
    env = {**os.environ, "CITYSTREAM_INFLUX__URL": stack.client_info()["influxdb"]["url"],
           "CITYSTREAM_INFLUX__BUCKET_KPI": served.bucket.name,
           "CITYSTREAM_OPENDATA__TOKEN": admin, "CITYSTREAM_OPENDATA__PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "citystream", "opendata"], env=env, cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"READ-ONLY" in done.stderr and admin.encode() not in done.stderr


def test_citystream_up_starts_it_and_status_names_it(stack: Stack) -> None:
    """The stack's pipeline entry (what `citystream up` runs): the stack's read token, its
    opendata port, and `status --json` naming the URL."""
    port = free_port()
    mine = Stack(StackSettings(home=stack.home, opendata_port=port), say=lambda _m: None)
    assert mine.s.influxdb_port == stack.s.influxdb_port
    mine.start_pipeline(("opendata",))
    try:
        assert mine.client_info()["opendata"] == {"url": f"http://127.0.0.1:{port}/"}
        done = subprocess.run([sys.executable, "-m", "citystream", "status", "--json",
                               "--home", str(stack.home)], capture_output=True, cwd=ROOT,
                              env={**os.environ, "CITYSTREAM_STACK__OPENDATA_PORT": str(port)},
                              timeout=60)
        assert json.loads(done.stdout)["opendata"]["url"] == f"http://127.0.0.1:{port}/"
        status, headers, body = get(f"http://127.0.0.1:{port}/catalog.jsonld")
        assert status == 200 and LICENSE_LINK in headers.get_all("Link")
        assert Credentials.load_or_create(stack.home).influxdb_token.encode() not in body
        environ = Path(f"/proc/{mine.services['opendata'].pid}/environ").read_bytes()
        creds = Credentials.load_or_create(stack.home)
        assert f"CITYSTREAM_OPENDATA__TOKEN={creds.influxdb_read_token}".encode() in environ
        assert creds.influxdb_token.encode() not in environ
    finally:
        mine.stop_service("opendata")
