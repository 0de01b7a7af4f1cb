"""One poller for every page: what it publishes, when it re-reads the history, how it reports
InfluxDB failures, and how the hub treats slow and surplus pages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dashboard.live import Hub, HubFull, Poller, PollerOptions
from tests.unit.dashboard.fakes import FakeSource, feed_city, row, small_city

T0 = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def water(saving: float, time_ms: int) -> list[dict[str, Any]]:
    return [row("water_kpi", "saving_pct_24h", saving, time_ms, district="bletchley",
                window="15m")]


def setup(source: FakeSource) -> tuple[Poller, Hub, Clock]:
    hub, clock = Hub(), Clock()
    poller = Poller(source, small_city(), hub, PollerOptions(history_refresh_s=60), clock)
    return poller, hub, clock


def last(hub: Hub, event: str) -> Any:
    data = hub.last(event)
    assert data is not None, f"no {event} published"
    return json.loads(data)


def test_a_poll_publishes_snapshot_history_and_tick() -> None:
    source = FakeSource(rows={"latest": water(21.0, T0 - 60_000),
                              "history": water(21.0, T0 - 60_000)})
    poller, hub, _clock = setup(source)
    asyncio.run(poller.poll_once())
    assert source.asked == ["latest", "alerts", "attention", "coverage", "history"]
    snap = last(hub, "snapshot")
    assert snap["influx"] == {"ok": True, "down_since_ms": None, "error": None}
    assert snap["districts"][0]["water"]["fields"]["saving_pct_24h"] == 21.0
    assert last(hub, "history")["series"][0]["v"] == [21.0]
    assert last(hub, "tick") == {"checked_ms": T0, "ok": True}
    assert last(hub, "quality") == {"min_score": 80.0, "hours": 24, "total": 0, "sensors": []}


def test_history_is_read_again_only_for_new_points_or_when_old() -> None:
    source = FakeSource(rows={"latest": water(21.0, T0 - 60_000)})
    poller, hub, clock = setup(source)
    asyncio.run(poller.poll_once())
    sent = hub.last("snapshot")
    clock.now += 5000
    asyncio.run(poller.poll_once())                       # nothing new
    assert source.asked.count("history") == 1
    assert hub.last("snapshot") is sent                   # unchanged: not sent again
    source.rows["latest"] = water(22.0, T0 + 840_000)     # a new window
    clock.now += 5000
    asyncio.run(poller.poll_once())
    assert source.asked.count("history") == 2
    assert last(hub, "snapshot")["districts"][0]["water"]["time_ms"] == T0 + 840_000
    clock.now += 60_000                                   # late corrections: re-read anyway
    asyncio.run(poller.poll_once())
    assert source.asked.count("history") == 3


def car_park(occupancy: float, time_ms: int) -> list[dict[str, Any]]:
    return [row("car_park_kpi", "occupancy_pct", occupancy, time_ms, car_park="cp-1",
                window="5m")]


def test_the_city_s_feeds_are_polled_and_a_new_feed_window_redraws_the_charts() -> None:
    source = FakeSource(rows={"latest": car_park(80.0, T0 - 60_000),
                              "history": car_park(80.0, T0 - 60_000)})
    hub, clock = Hub(), Clock()
    poller = Poller(source, feed_city(), hub, PollerOptions(history_refresh_s=60), clock)
    asyncio.run(poller.poll_once())
    latest, _alerts, _attention, _coverage, history = source.flux
    assert 'r._measurement == "car_park_kpi"' in latest and '"noise_kpi"' in latest
    assert 'r._measurement == "car_park_kpi" and (r._field == "occupancy_pct")' in history
    snap = last(hub, "snapshot")
    assert [f["kind"] for f in snap["feeds"]] == ["noise", "car_park"]
    entity = snap["feeds"][1]["entities"][0]
    assert (entity["id"], entity["point"]["fields"]) == ("cp-1", {"occupancy_pct": 80.0})
    assert last(hub, "history")["series"] == [{
        "measurement": "car_park_kpi", "entity": "cp-1", "field": "occupancy_pct",
        "t": [T0 - 60_000], "v": [80.0]}]
    clock.now += 5000
    asyncio.run(poller.poll_once())
    assert source.asked.count("history") == 1
    source.rows["latest"] = car_park(85.0, T0 + 240_000)  # a new car park window
    clock.now += 5000
    asyncio.run(poller.poll_once())
    assert source.asked.count("history") == 2


def test_influxdb_down_keeps_the_last_data_and_says_since_when() -> None:
    source = FakeSource(rows={"latest": water(21.0, T0 - 60_000)})
    poller, hub, clock = setup(source)
    asyncio.run(poller.poll_once())
    source.fail = "cannot reach InfluxDB at http://127.0.0.1:8086: connection refused"
    clock.now = T0 + 5000
    asyncio.run(poller.poll_once())
    clock.now = T0 + 10_000
    asyncio.run(poller.poll_once())
    snap = last(hub, "snapshot")
    assert snap["influx"] == {"ok": False, "down_since_ms": T0 + 5000, "error": source.fail}
    assert snap["districts"][0]["water"]["fields"]["saving_pct_24h"] == 21.0
    assert last(hub, "tick") == {"checked_ms": T0 + 10_000, "ok": False}
    source.fail = None
    asked = source.asked.count("history")
    clock.now = T0 + 15_000
    asyncio.run(poller.poll_once())
    assert last(hub, "snapshot")["influx"]["ok"] is True
    assert source.asked.count("history") == asked + 1     # back: the charts are re-read


def test_influxdb_down_from_the_start_is_an_explicit_state() -> None:
    source = FakeSource(fail="InfluxDB refused the token (HTTP 401)")
    poller, hub, _clock = setup(source)
    asyncio.run(poller.poll_once())
    snap = last(hub, "snapshot")
    assert snap["influx"]["ok"] is False and snap["influx"]["down_since_ms"] == T0
    assert all(d["water"] is None for d in snap["districts"])
    assert hub.last("history") is None


def test_run_polls_until_stopped_and_survives_a_bug() -> None:
    source = FakeSource()
    calls: list[str] = []

    def explode_once(kind: str) -> None:
        calls.append(kind)
        if len(calls) == 1:
            raise RuntimeError("bug")

    source.on_query = explode_once
    poller, hub, _clock = setup(source)
    poller.o = PollerOptions(poll_s=0.01)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        while hub.last("tick") is None:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(calls) > 1


def test_a_slow_page_gets_only_the_newest_event_of_each_kind() -> None:
    async def main() -> None:
        hub = Hub()
        hub.publish("history", b"h1")
        sub = hub.subscribe()
        for i in range(50):
            hub.publish("snapshot", f"s{i}".encode())
        hub.publish("tick", b"t")
        assert not hub.publish("tick", b"t")              # same data: not sent again
        got = await sub.next(1)
        assert got == [("snapshot", b"s49"), ("history", b"h1"), ("tick", b"t")]
        assert await sub.next(0.01) == []
        hub.unsubscribe(sub)
        assert hub.clients == 0

    asyncio.run(main())


def test_the_hub_limits_pages_and_wakes_them_on_close() -> None:
    async def main() -> None:
        hub = Hub(max_clients=2)
        a, _b = hub.subscribe(), hub.subscribe()
        with pytest.raises(HubFull):
            hub.subscribe()
        waiting = asyncio.create_task(a.next(30))
        await asyncio.sleep(0)
        hub.close()
        assert await asyncio.wait_for(waiting, 1) == []
        assert hub.closed

    asyncio.run(main())


def test_one_poll_serves_every_page() -> None:
    async def main() -> None:
        source = FakeSource(rows={"latest": water(21.0, T0 - 60_000)})
        poller, hub, _clock = setup(source)
        pages = [hub.subscribe() for _ in range(25)]
        await poller.poll_once()
        assert source.asked == ["latest", "alerts", "attention", "coverage",
                                "history"]                          # not once per page
        for page in pages:
            assert [name for name, _ in await page.next(1)] == [
                "snapshot", "history", "quality", "tick"]

    asyncio.run(main())
