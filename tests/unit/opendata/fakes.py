"""A small city with a declared feed, a `MemoryStore` with points, and an in-process client
for the open-data unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from models.city import City
from models.kinds import activate
from opendata.datasets import published
from opendata.server import OpenData, Options, create_app
from opendata.store import MemoryStore
from tests.unit.dashboard.fakes import NOISE, small_city

NOW_MS = 1_790_000_100_000          # 2026-09-21T14:15:00.100Z
NOW_NS = NOW_MS * 1_000_000
MIN = 60_000
BASE = "http://opendata.test"
SECRET_SENSOR = "wm-secret-0042"


def city() -> City:
    """`small_city` with the noise feed (a target, per district) declared and activated."""
    made = small_city(feeds=[NOISE])
    activate(made.feeds)
    return made


def water(store: MemoryStore, end_ms: int, district: str, meters: int, saving: float = 25.0,
          consumption: float = 750.0) -> None:
    store.add("water_kpi", end_ms, {"district": district, "window": "15m"}, {
        "consumption_l": consumption, "baseline_l": 1000.0, "saving_pct": saving,
        "saving_pct_24h": saving + 0.5, "target_pct": 20.0, "on_track": saving + 0.5 >= 20,
        "meters_reporting": meters})


def seeded(now_ms: int = NOW_MS) -> MemoryStore:
    """Water and energy for two districts (the newest bletchley windows have 3 meters),
    traffic for one junction, shuttle, a noise feed and sensor quality points; window ends at
    or before `now_ms` minus 5 minutes."""
    store = MemoryStore()
    last = (now_ms - 5 * MIN) // (15 * MIN) * (15 * MIN)
    for k in range(8):
        t = last - k * 15 * MIN
        water(store, t, "wolverton", 12 + k, saving=22.0 + k, consumption=780.0 + k)
        if k < 2:   # the newest two: 3 meters, withheld
            water(store, t, "bletchley", 3, saving=31.25, consumption=687.5)
        else:
            water(store, t, "bletchley", 9, saving=35.0, consumption=650.0)
        if k % 2 == 0:
            store.add("energy_kpi", t, {"district": "bletchley", "window": "30m"}, {
                "energy_kwh": 97.0, "baseline_kwh": 100.0, "saving_pct": 3.0,
                "saving_pct_24h": 2.5, "target_pct": 3.0, "on_track": False, "peak_kw": 40.0,
                "meters_reporting": 2})
        for junction, district in (("j-1", "bletchley"), ("j-0", "wolverton")):
            store.add("traffic_kpi", t, {"district": district, "junction": junction,
                                         "window": "5m"}, {
                "vehicles": 40 + k, "flow_veh_h": 480.0, "space_mean_speed_kmh": 40.0,
                "congestion_index": 0.2, "baseline_congestion_index": 0.5,
                "reduction_pct": 60.0, "reduction_pct_24h": 55.0, "target_pct": 40.0,
                "on_track": True})
        store.add("shuttle_kpi", t, {"route": "r-1", "window": "15m"}, {
            "boardings": 5, "occupancy_pct": 30.0, "on_time_pct": 90.0,
            "availability_pct": 75.0, "mean_battery_pct": 80.0, "disengagements": 0,
            "vehicles_reporting": 3})
    hour = last // 3_600_000 * 3_600_000
    for k in range(3):
        t = hour - k * 3_600_000
        store.add("noise_kpi", t, {"district": "wolverton", "window": "1h"}, {
            "laeq_mean_db": 52.0 + k, "readings": 12, "target": 55.0,
            "laeq_mean_db_24h": 53.0, "on_track": True})
        for i in range(6):
            store.add("sensor_quality", t, {"kind": "water", "district": "wolverton",
                                            "sensor_id": f"wm-{i}", "window": "1h"}, {
                "readings": 4, "duplicates": 0, "rejected": i % 2, "late": 0,
                "completeness_pct": 100.0 - i, "stuck": False, "score": 97.0})
        store.add("sensor_quality", t, {"kind": "water", "district": "bletchley",
                                        "sensor_id": SECRET_SENSOR, "window": "1h"}, {
            "readings": 3, "duplicates": 1, "rejected": 7, "late": 0,
            "completeness_pct": 71.5, "stuck": True, "score": 12.5})
        store.add("sensor_quality", t, {"kind": "traffic", "district": "bletchley",
                                        "sensor_id": "tc-9", "window": "1h"}, {
            "readings": 60, "rejected": 0, "completeness_pct": 100.0})
    return store


def service(store: MemoryStore | None = None, now_ns: int = NOW_NS,
            **options: Any) -> OpenData:
    made = city()
    return OpenData(store if store is not None else seeded(now_ns // 1_000_000),
                    published(made), Options(base_url=BASE, title="Testville open data",
                                             publisher="Testville Council", **options),
                    clock=lambda: now_ns)


def with_client(svc: OpenData,
                test: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with TestClient(TestServer(create_app(svc))) as client:
            await test(client)

    asyncio.run(main())
