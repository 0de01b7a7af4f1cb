"""Shuttle: autonomous shuttles of a route, boardings, occupancy, punctuality, availability,
battery and disengagements (contract sections 1-3)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from kpi.alerts import AlertSettings
from kpi.engine import KindEngine
from kpi.numbers import bounded, iadd
from models.city import Route
from models.kinds import KindSpec
from models.raw import SEQ, RawSchema
from models.readings import INT64_MAX, BaseReading, Count, EntityId, Pct
from models.records import AlertCheck, Kpi, WindowTag
from models.records import Count as CountField
from models.records import EntityId as EntityTag

Status = Literal["in_service", "charging", "out_of_service"]
ON_TIME_RANGE_S = (-60.0, 180.0)


class ShuttleReading(BaseReading):
    """An autonomous shuttle's position, load, battery and service state."""

    kind: Literal["shuttle"] = "shuttle"
    route_id: EntityId
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    speed_kmh: Annotated[float, Field(ge=0, le=120)]
    passengers: Count
    capacity: Annotated[int, Field(gt=0, le=INT64_MAX)]
    battery_pct: Pct
    status: Status
    stop_id: Annotated[str, Field(pattern=r"^[^\n\r]*$")] | None = None
    delay_s: float | None = None
    disengaged: bool | None = None

    partition_field: ClassVar[str] = "route_id"

    @model_validator(mode="after")
    def _within_capacity(self) -> ShuttleReading:
        if self.passengers > self.capacity:
            raise PydanticCustomError(
                "passengers_over_capacity",
                "passengers ({passengers}) exceeds capacity ({capacity})",
                {"passengers": self.passengers, "capacity": self.capacity})
        return self


class ShuttleKpi(Kpi):
    """Service quality of a shuttle route over one window."""

    measurement: ClassVar[str] = "shuttle_kpi"
    tag_names: ClassVar[tuple[str, ...]] = ("route", "window")

    route: EntityTag
    window: WindowTag = "15m"
    boardings: CountField
    occupancy_pct: float | None
    on_time_pct: float | None
    availability_pct: float
    mean_battery_pct: float | None
    disengagements: CountField
    vehicles_reporting: CountField

    def alert_checks(self, settings: AlertSettings,
                     night: list[tuple[float, float]] | None = None) -> list[AlertCheck]:
        """`battery_low`: the route's mean battery is below `battery_low_pct`."""
        if self.mean_battery_pct is None:
            return []
        battery = float(self.mean_battery_pct)
        return [("shuttle", self.route, "battery_low", battery < settings.battery_low_pct,
                 battery, settings.battery_low_pct, f"mean battery {battery:.0f} %")]


RAW = RawSchema("shuttle",
                (("district", "district"), ("route", "route_id"), ("sensor_id", "sensor_id")),
                (("lat", "float", True), ("lon", "float", True), ("speed_kmh", "float", True),
                 ("passengers", "int", True), ("capacity", "int", True),
                 ("battery_pct", "float", True), ("status", "str", True),
                 ("stop_id", "str", False), ("delay_s", "float", False),
                 ("disengaged", "bool", False), SEQ))


class ShuttleEngine(KindEngine):
    """Boardings, occupancy, punctuality, availability, battery and disengagements per route."""

    kind = "shuttle"
    window_s = 900
    window_tag = "15m"
    unit_field = "passengers"

    def entity(self, reading: Any) -> str:
        return str(reading.route_id)

    def _route(self, entity: str) -> Route | None:
        try:
            return self.city.route(entity)
        except KeyError:
            return None

    def new_acc(self, entity: str) -> dict[str, Any]:
        return {"boardings": 0, "passengers": 0, "capacity": 0, "battery": 0.0,
                "readings": 0, "disengagements": 0, "arrivals": 0, "on_time": 0,
                "in_service": []}

    def add(self, acc: dict[str, Any], reading: Any, delta: float | None) -> None:
        if delta is not None and delta > 0:
            acc["boardings"] = iadd(acc["boardings"], int(delta))
        if reading.status == "in_service":
            acc["passengers"] = iadd(acc["passengers"], reading.passengers)
            acc["capacity"] = iadd(acc["capacity"], reading.capacity)
            if reading.sensor_id not in acc["in_service"]:
                acc["in_service"].append(reading.sensor_id)
        acc["battery"] += reading.battery_pct
        acc["readings"] += 1
        acc["disengagements"] += reading.disengaged is True
        if reading.stop_id is not None and reading.delay_s is not None:
            acc["arrivals"] += 1
            low, high = ON_TIME_RANGE_S
            acc["on_time"] += low <= reading.delay_s <= high

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        route = self._route(entity)
        fleet = route.fleet_size if route else 0
        available = min(len(acc["in_service"]), fleet)
        return bounded(
            ShuttleKpi,
            route=entity, window=self.window_tag, window_end_ms=start + self.window_ms,
            boardings=acc["boardings"],
            occupancy_pct=100.0 * acc["passengers"] / acc["capacity"] if acc["capacity"] else 0.0,
            on_time_pct=100.0 * acc["on_time"] / acc["arrivals"] if acc["arrivals"] else 100.0,
            availability_pct=100.0 * available / fleet if fleet > 0 else 0.0,
            mean_battery_pct=acc["battery"] / acc["readings"] if acc["readings"] else 0.0,
            disengagements=acc["disengagements"], vehicles_reporting=acc["n"])


KIND = KindSpec("shuttle", "Shuttle", ShuttleReading, ShuttleKpi, "route", RAW, ShuttleEngine,
                units={"occupancy_pct": "%", "on_time_pct": "%", "availability_pct": "%",
                       "mean_battery_pct": "%"})
