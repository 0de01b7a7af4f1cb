"""The web server: the page and its files with a strict CSP, the event stream, the JSON views,
and no credential anywhere in what it serves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from citystream.cli import main
from dashboard.live import Hub, Poller, PollerOptions
from dashboard.server import PAGES, SECURITY_HEADERS, create_app
from dashboard.source import InfluxSource
from deploy.local.stack import free_port
from tests.unit.dashboard.fakes import FakeSource, row, small_city

SECRET = "dashboard-test-secret-token-0123456789"


def with_client(hub: Hub, test: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(create_app(hub, heartbeat_s=0.05))) as client:
            await test(client)

    asyncio.run(main())


def polled_hub(source: Any) -> Hub:
    hub = Hub()
    asyncio.run(Poller(source, small_city(), hub, PollerOptions()).poll_once())
    return hub


async def read_events(client: TestClient[Any, Any], count: int) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    async with client.get("/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS[
            "Content-Security-Policy"]
        name = None
        while len(events) < count:
            line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
                name = None
    return events


def test_page_and_files_are_served_with_security_headers() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        for path, (_name, content_type) in PAGES.items():
            resp = await client.get(path)
            assert resp.status == 200, path
            assert resp.headers["Content-Type"] == content_type
            for header, value in SECURITY_HEADERS.items():
                assert resp.headers[header] == value, (path, header)
        csp = SECURITY_HEADERS["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        page = await (await client.get("/")).text()
        assert "http://" not in page and "https://" not in page   # nothing from elsewhere
        for path in ("/static/../server.py", "/static/index.html", "/server.py", "/static/"):
            resp = await client.get(path)
            assert resp.status == 404, path
            assert resp.headers["X-Content-Type-Options"] == "nosniff"

    with_client(Hub(), check)


def test_no_inline_script_and_no_html_parsing_of_data_in_the_page_code() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        page = await (await client.get("/")).text()
        assert page.count("<script") == 1 and 'src="/static/dashboard.js"' in page
        js = await (await client.get("/static/dashboard.js")).text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function"):
            assert sink not in js, sink

    with_client(Hub(), check)


def test_events_stream_the_latest_state_then_changes() -> None:
    source = FakeSource(rows={"latest": [row("water_kpi", "saving_pct_24h", 21.0, 1000,
                                             district="bletchley", window="15m")]})
    hub = polled_hub(source)

    async def check(client: TestClient[Any, Any]) -> None:
        first = await read_events(client, 4)
        assert [name for name, _ in first] == ["snapshot", "history", "quality", "tick"]
        assert first[0][1]["districts"][0]["water"]["fields"]["saving_pct_24h"] == 21.0
        snapshot = await client.get("/api/snapshot")
        assert (await snapshot.json())["city"] == "Testville"
        assert (await client.get("/api/history")).status == 200
        assert (await (await client.get("/api/quality")).json())["total"] == 0
        health = await (await client.get("/healthz")).json()
        assert health == {"ok": True, "influx_ok": True, "pages": 0}

    with_client(hub, check)


def test_api_says_when_nothing_was_read_yet() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/api/snapshot")
        assert resp.status == 503 and "retry" in await resp.text()

    with_client(Hub(), check)


def test_no_token_in_any_page_event_or_view_when_influxdb_fails() -> None:
    source = InfluxSource(f"http://127.0.0.1:{free_port()}", "citystream", SECRET, timeout_s=2)
    hub = polled_hub(source)
    source.close()

    async def check(client: TestClient[Any, Any]) -> None:
        events = await read_events(client, 2)
        snap = dict(events)["snapshot"]
        assert snap["influx"]["ok"] is False
        assert "connection refused" in snap["influx"]["error"]
        bodies = [json.dumps(events)]
        for path in (*PAGES, "/api/snapshot", "/api/quality", "/healthz"):
            bodies.append(await (await client.get(path)).text())
        assert all(SECRET not in body for body in bodies)

    with_client(hub, check)


def test_help_shows_the_settings_and_a_missing_token_names_the_fix() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["dashboard", "--help"]).output
    for name in ("CITYSTREAM_DASHBOARD__HOST", "CITYSTREAM_DASHBOARD__PORT",
                 "CITYSTREAM_DASHBOARD__POLL_S", "CITYSTREAM_DASHBOARD__TOKEN", "READ-ONLY"):
        assert name in out
    env = {"CITYSTREAM_DASHBOARD__TOKEN": "", "CITYSTREAM_INFLUX__TOKEN": ""}
    result = runner.invoke(main, ["dashboard"], env=env)
    assert result.exit_code == 2
    assert "set CITYSTREAM_DASHBOARD__TOKEN" in result.output


def test_a_quiet_stream_sends_pings_so_the_page_knows_it_is_alive() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        assert await read_events(client, 2) == [("ping", {}), ("ping", {})]

    with_client(Hub(), check)
