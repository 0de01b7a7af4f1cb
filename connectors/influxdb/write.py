"""Writing points to InfluxDB 2.x: `PointWriter`, over HTTP (`InfluxWriter`) or in memory.

`InfluxWriter.write` sends line-protocol lines (`connectors.influxdb.lineproto`, ms timestamps)
to one bucket and returns once InfluxDB stored them. Its failures say what to do next:
`SinkBackpressure` (retry the same lines later: InfluxDB is unavailable, overloaded or, for
401/403/404, misconfigured) or `PointsRejected` (InfluxDB refused the data itself: retrying the
same request is pointless). `MemoryWriter` is the fake for tests and benchmarks. The InfluxDB
sink (streams/sink.py) is the production user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import urlencode

import urllib3

from connectors.influxdb.errors import server_message
from models.errors import BackpressureError, SinkError
from models.settings import InfluxSettings


class SinkBackpressure(BackpressureError):
    """InfluxDB cannot take the write now (429, 503, other 5xx, unreachable, timeout, or a
    401/403/404 configuration problem); nothing is known to be written: retry the same lines
    after `retry_after_s`."""


class PointsRejected(SinkError):
    """InfluxDB refused the data itself (400, 413, 422): retrying the same request is pointless.

    `status` is the HTTP status, `message` the server's; `dropped` is InfluxDB's count of
    refused points for a 422 partial write (the rest of the request was written), else None.
    """

    def __init__(self, message: str, status: int = 400, dropped: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.dropped = dropped


class PointWriter(Protocol):
    """Writes line-protocol lines (ms timestamps) to a bucket.

    `write` is called from a worker thread with at most `batch_points` lines; on return they are
    durable in InfluxDB. It raises `SinkBackpressure` for transient failures and `PointsRejected`
    when the server refuses the data.
    """

    def write(self, bucket: str, lines: list[str]) -> None: ...

    def close(self) -> None: ...


_DROPPED_RE: Final = re.compile(r"dropped=(\d+)")


def _retry_after(value: str | None, default: float) -> float:
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:  # an HTTP date; rare enough to ignore
        return default


class InfluxWriter:
    """`PointWriter` over InfluxDB 2.x's HTTP API: ``POST /api/v2/write?precision=ms``.

    Plain HTTP with a keep-alive pool (measured faster than influxdb-client's synchronous
    `WriteApi`, see bench/sink_bench.py) and full control of status codes. A connection dropped
    mid-request is retried once at once (a write is idempotent); any other transport error is
    `SinkBackpressure`.
    """

    def __init__(self, settings: InfluxSettings, *, timeout_s: float = 30.0,
                 unavailable_retry_s: float = 1.0) -> None:
        self.base = settings.url.rstrip("/") + "/api/v2/write?"
        self.org = settings.org
        self.unavailable_retry_s = unavailable_retry_s
        self.headers = {"Content-Type": "text/plain; charset=utf-8",
                        "Accept": "application/json"}
        if settings.token is not None:
            self.headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        self._http = urllib3.PoolManager(
            num_pools=2, maxsize=2, timeout=urllib3.Timeout(connect=5.0, read=timeout_s),
            retries=False)

    def write(self, bucket: str, lines: list[str]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode()
        url = self.base + urlencode({"org": self.org, "bucket": bucket, "precision": "ms"})
        try:
            try:
                response = self._http.request("POST", url, body=body, headers=self.headers)
            except urllib3.exceptions.ProtocolError:  # a kept-alive connection went stale
                response = self._http.request("POST", url, body=body, headers=self.headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkBackpressure(f"InfluxDB unreachable: {exc}",
                                   self.unavailable_retry_s) from exc
        status = response.status
        if status < 300:
            return
        message = server_message(response.data) or response.data.decode("utf-8", "replace")[:2000]
        if status in (400, 413, 422):
            dropped = _DROPPED_RE.search(message) if status == 422 else None
            raise PointsRejected(message, status, int(dropped.group(1)) if dropped else None)
        raise SinkBackpressure(
            f"InfluxDB answered {status}: {message}",
            _retry_after(response.headers.get("Retry-After"), self.unavailable_retry_s))

    def close(self) -> None:
        self._http.clear()


def write_isolating(writer: PointWriter, bucket: str, lines: list[str]
                    ) -> list[tuple[int, str]]:
    """Write `lines`; if InfluxDB refuses some, bisect until each refused line stands alone.

    Returns (index, server message) for every refused line; all others are written when it
    returns. `SinkBackpressure` propagates (retry the whole call: rewriting is idempotent).
    A 422 whose `dropped` count is the whole request (e.g. every point outside the bucket's
    retention) is taken at its word, without bisecting. Used by the sink and by
    `citystream import`.
    """
    try:
        writer.write(bucket, lines)
    except PointsRejected as exc:
        if len(lines) == 1 or exc.dropped == len(lines):
            return [(i, exc.message) for i in range(len(lines))]
        mid = len(lines) // 2
        left = write_isolating(writer, bucket, lines[:mid])
        right = write_isolating(writer, bucket, lines[mid:])
        return left + [(i + mid, message) for i, message in right]
    return []


@dataclass
class MemoryWriter:
    """Fake `PointWriter`: keeps lines per bucket. `fail_next` makes the next N writes raise
    `SinkBackpressure`; lines containing a `reject` substring make a write raise
    `PointsRejected` (400, nothing written), like InfluxDB refusing a bad line."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    fail_next: int = 0
    reject: tuple[str, ...] = ()
    calls: int = 0

    def write(self, bucket: str, lines: list[str]) -> None:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise SinkBackpressure("simulated outage", 0.0)
        bad = [line for line in lines if any(r in line for r in self.reject)]
        if bad:
            raise PointsRejected(f"unable to parse {bad[0]!r}: simulated", 400)
        self.lines.setdefault(bucket, []).extend(lines)

    def close(self) -> None:
        return None
