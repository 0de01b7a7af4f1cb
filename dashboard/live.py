"""Live updates: one `Poller` reads InfluxDB for everybody, a `Hub` fans its events out.

Events (each a JSON object, sent over Server-Sent Events by `dashboard.server`):

- ``snapshot``: `views.Snapshot` (with a panel per feed the city declares), published when its
  content changed;
- ``history``: `views.History`, re-read when a KPI point changed, after InfluxDB came back, and
  at least every `history_refresh_s` (late corrections rewrite old windows);
- ``quality``: `views.QualityView`, the sensors needing attention (`sensor_quality`, hourly
  points), re-read with the KPI coverage (`coverage_query`) at least every `history_refresh_s`
  and after InfluxDB came back;
- ``tick``: ``{"checked_ms": ..., "ok": ...}`` after every poll, so a page knows the server is
  alive and when InfluxDB was last asked.

A page that connects gets the latest event of each kind at once. A slow page never holds the
poller up: each subscriber keeps only the newest event of each kind (every event carries the
whole state of its kind, so skipping an older one loses nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import orjson

from dashboard.queries import (
    Row,
    alerts_query,
    attention_query,
    coverage_query,
    history_query,
    latest_query,
)
from dashboard.source import FluxSource, SourceError
from dashboard.views import (
    Snapshot,
    SourceStatus,
    build_history,
    build_quality,
    build_snapshot,
)
from models.city import City
from models.errors import CitystreamError

log = logging.getLogger(__name__)

EVENTS: Final = ("snapshot", "history", "quality", "tick")
# The sensors needing attention and the coverage are judged over this many hours.
QUALITY_HOURS: Final = 24


class HubFull(CitystreamError):
    """Too many pages are connected."""


@dataclass(eq=False)
class Subscriber:
    """One connected page: the newest unsent event of each kind."""

    pending: dict[str, bytes] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: str, data: bytes) -> None:
        self.pending[event] = data
        self.wake.set()

    async def next(self, timeout: float) -> list[tuple[str, bytes]]:
        """The events waiting now, or after at most `timeout` seconds (then maybe none)."""
        if not self.pending:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return []
        self.wake.clear()
        events = sorted(self.pending.items(), key=lambda kv: EVENTS.index(kv[0]))
        self.pending.clear()
        return events


class Hub:
    """The latest event of each kind and the pages that want them."""

    def __init__(self, max_clients: int = 100) -> None:
        self.max_clients = max_clients
        self._last: dict[str, bytes] = {}
        self._subscribers: set[Subscriber] = set()
        self.closed = False

    def publish(self, event: str, data: bytes) -> bool:
        """Send `data` to every page unless it equals the last `event`; True if sent."""
        if self._last.get(event) == data:
            return False
        self._last[event] = data
        for sub in self._subscribers:
            sub.offer(event, data)
        return True

    def last(self, event: str) -> bytes | None:
        return self._last.get(event)

    def subscribe(self) -> Subscriber:
        """A new page, primed with the latest event of each kind; `HubFull` past the limit."""
        if len(self._subscribers) >= self.max_clients:
            raise HubFull(f"{self.max_clients} pages are connected already")
        sub = Subscriber()
        for event in EVENTS:
            if event in self._last:
                sub.offer(event, self._last[event])
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        """Server shutdown: wake every page's stream so it ends."""
        self.closed = True
        for sub in self._subscribers:
            sub.wake.set()

    @property
    def clients(self) -> int:
        return len(self._subscribers)


@dataclass(frozen=True)
class PollerOptions:
    bucket: str = "kpi"
    poll_s: float = 5.0
    lookback_d: int = 7
    history_h: int = 24
    history_refresh_s: float = 60.0
    min_score: float = 80.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class Poller:
    """Polls InfluxDB every `poll_s` and publishes to the hub (see module doc)."""

    def __init__(self, source: FluxSource, city: City, hub: Hub,
                 options: PollerOptions | None = None,
                 clock: Callable[[], int] = _now_ms) -> None:
        self.source = source
        self.city = city
        self.hub = hub
        self.o = options or PollerOptions()
        self.clock = clock
        self.status = SourceStatus(ok=True)
        self._latest: list[Row] = []
        self._alerts: list[Row] = []
        self._coverage: list[Row] = []
        self._kpis: bytes | None = None
        self._history_at: int | None = None
        self._quality_at: int | None = None
        self._queries = (latest_query(self.o.bucket, self.o.lookback_d, city.feeds),
                         alerts_query(self.o.bucket, self.o.lookback_d),
                         history_query(self.o.bucket, self.o.history_h, city.feeds),
                         attention_query(self.o.bucket, QUALITY_HOURS, self.o.min_score),
                         coverage_query(self.o.bucket, QUALITY_HOURS))

    async def _query(self, flux: str) -> list[Row]:
        return await asyncio.to_thread(self.source.query, flux)

    async def poll_once(self) -> None:
        """One round: read, publish what changed, and a `tick`."""
        now = self.clock()
        q_latest, q_alerts, q_history, q_attention, q_coverage = self._queries
        refresh_ms = self.o.history_refresh_s * 1000
        try:
            self._latest = await self._query(q_latest)
            self._alerts = await self._query(q_alerts)
            recovered = not self.status.ok
            if recovered or self._quality_at is None or now - self._quality_at >= refresh_ms:
                attention = await self._query(q_attention)
                self._coverage = await self._query(q_coverage)
                quality = build_quality(self.city, attention, self.o.min_score, QUALITY_HOURS)
                self.hub.publish("quality", quality.model_dump_json().encode())
                self._quality_at = now
            self.status = SourceStatus(ok=True)
            snapshot = self._publish_snapshot(now)
            kpis = snapshot.model_dump_json(
                include={"districts", "junctions", "routes", "feeds"}).encode()
            stale = self._history_at is None or now - self._history_at >= refresh_ms
            if recovered or kpis != self._kpis or stale:
                rows = await self._query(q_history)
                history = build_history(rows, now - self.o.history_h * 3_600_000, now,
                                        self.city.feeds)
                self.hub.publish("history", history.model_dump_json().encode())
                self._history_at, self._kpis = now, kpis
            if recovered:
                log.info("InfluxDB answers again")
        except SourceError as exc:
            if self.status.ok:
                log.warning("InfluxDB query failed, showing the last data read: %s", exc)
            self.status = SourceStatus(ok=False, down_since_ms=self.status.down_since_ms or now,
                                       error=str(exc))
            self._publish_snapshot(now)
        self.hub.publish("tick", orjson.dumps({"checked_ms": now, "ok": self.status.ok}))

    def _publish_snapshot(self, now: int) -> Snapshot:
        snapshot = build_snapshot(self.city, self._latest, self._alerts, self.status, now,
                                  self._coverage)
        self.hub.publish("snapshot", snapshot.model_dump_json().encode())
        return snapshot

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set."""
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception:  # a bug must not stop the page from updating its error state
                log.exception("dashboard poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.o.poll_s)
