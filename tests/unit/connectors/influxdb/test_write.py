"""`InfluxWriter` against a stub HTTP server (request, refusals, backpressure) and its fake,
`MemoryWriter` (moved from tests/unit/streams/test_sink.py with the writer)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from pydantic import SecretStr

from connectors.influxdb.write import InfluxWriter, MemoryWriter, PointsRejected, SinkBackpressure
from models.settings import InfluxSettings

# -- InfluxWriter against a stub server -------------------------------------------------------

@dataclass
class Stub:
    url: str
    requests: list[tuple[str, dict[str, str], bytes]]
    respond: list[tuple[int, dict[str, str], bytes]]


@pytest.fixture
def stub() -> Iterator[Stub]:
    requests: list[tuple[str, dict[str, str], bytes]] = []
    respond: list[tuple[int, dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            requests.append((self.path, dict(self.headers), body))
            status, headers, payload = respond.pop(0) if respond else (204, {}, b"")
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Stub(f"http://127.0.0.1:{server.server_address[1]}", requests, respond)
    finally:
        server.shutdown()
        server.server_close()


def influx(url: str, **kw: Any) -> InfluxWriter:
    return InfluxWriter(InfluxSettings(url=url, org="city org", token=SecretStr("t0k")), **kw)


def error(message: str) -> bytes:
    return orjson.dumps({"code": "invalid", "message": message})


class TestInfluxWriter:
    def test_request(self, stub: Stub) -> None:
        influx(stub.url).write("telemetry", ["a v=1.0 1", "b v=2.0 2"])
        path, headers, body = stub.requests[0]
        url = urlsplit(path)
        assert url.path == "/api/v2/write"
        assert parse_qs(url.query) == {"org": ["city org"], "bucket": ["telemetry"],
                                       "precision": ["ms"]}
        assert headers["Authorization"] == "Token t0k"
        assert body == b"a v=1.0 1\nb v=2.0 2"

    @pytest.mark.parametrize(("status", "message", "dropped"), [
        (400, "unable to parse 'x': bad timestamp", None),
        (422, "partial write: field type conflict ... dropped=2", 2),
        (413, "request too large", None)])
    def test_refused(self, stub: Stub, status: int, message: str, dropped: int | None) -> None:
        stub.respond.append((status, {}, error(message)))
        with pytest.raises(PointsRejected) as info:
            influx(stub.url).write("b", ["x"])
        assert (info.value.status, info.value.message, info.value.dropped) == (
            status, message, dropped)

    @pytest.mark.parametrize(("status", "headers", "retry_after"), [
        (429, {"Retry-After": "7"}, 7.0), (503, {}, 1.0), (500, {}, 1.0),
        (401, {}, 1.0), (404, {}, 1.0)])
    def test_backpressure(self, stub: Stub, status: int, headers: dict[str, str],
                          retry_after: float) -> None:
        stub.respond.append((status, headers, error("go away")))
        with pytest.raises(SinkBackpressure) as info:
            influx(stub.url).write("b", ["x"])
        assert info.value.retry_after_s == retry_after
        assert "go away" in str(info.value) and str(status) in str(info.value)

    def test_unreachable(self) -> None:
        with pytest.raises(SinkBackpressure, match="unreachable"):
            influx("http://127.0.0.1:9").write("b", ["x"])

    def test_nothing_to_write_sends_nothing(self, stub: Stub) -> None:
        influx(stub.url).write("b", [])
        assert stub.requests == []


def test_memory_writer_fails_then_works() -> None:
    writer = MemoryWriter(fail_next=2)
    attempt: Callable[[], None] = lambda: writer.write("b", ["x"])  # noqa: E731
    for _ in range(2):
        with pytest.raises(SinkBackpressure):
            attempt()
    attempt()
    assert writer.lines == {"b": ["x"]} and writer.calls == 3
