"""Traffic: junction counters, flow, vehicle-weighted harmonic space-mean speed, congestion
against free flow and an hour-of-week baseline, the MK:Smart target of halving congestion
(contract sections 1-3)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from kinds.meters import off_track
from kpi.alerts import AlertSettings
from kpi.engine import KindEngine
from kpi.numbers import bounded, fadd, iadd, saving_pct
from models.city import Junction
from models.kinds import KindSpec
from models.raw import SEQ, RawSchema
from models.readings import BaseReading, Count, EntityId, Pct
from models.records import AlertCheck, Kpi, Slug, WindowTag
from models.records import EntityId as EntityTag

DEFAULT_FREE_FLOW_KMH = 48.0


class TrafficReading(BaseReading):
    """A junction counter: vehicles and mean spot speed over the interval ending at `ts`."""

    kind: Literal["traffic"] = "traffic"
    junction: EntityId
    vehicle_count: Count
    interval_s: Annotated[float, Field(gt=0, le=3600)]
    mean_speed_kmh: Annotated[float, Field(ge=0, le=250)]
    occupancy_pct: Pct | None = None

    partition_field: ClassVar[str] = "junction"


class TrafficKpi(Kpi):
    """Flow, speed and congestion at a junction over one window against its baseline."""

    measurement: ClassVar[str] = "traffic_kpi"
    tag_names: ClassVar[tuple[str, ...]] = ("district", "junction", "window")

    district: Slug
    junction: EntityTag
    window: WindowTag = "5m"
    vehicles: Count
    flow_veh_h: float
    space_mean_speed_kmh: float | None
    congestion_index: float | None
    baseline_congestion_index: float | None
    reduction_pct: float | None
    reduction_pct_24h: float | None
    target_pct: float = 50.0
    on_track: bool

    def alert_checks(self, settings: AlertSettings,
                     night: list[tuple[float, float]] | None = None) -> list[AlertCheck]:
        """`congestion` (the index above `congestion_factor` x baseline) and `off_track`."""
        index = float(self.congestion_index or 0.0)
        baseline = float(self.baseline_congestion_index or 0.0)
        limit = settings.congestion_factor * baseline
        return [("traffic", self.junction, "congestion", baseline > 0 and index > limit, index,
                 limit, f"congestion index {index:.2f} against baseline {baseline:.2f}"),
                off_track("traffic", self.junction, self.on_track, self.reduction_pct_24h,
                          self.target_pct, "congestion reduction")]


RAW = RawSchema("traffic",
                (("district", "district"), ("junction", "junction"), ("sensor_id", "sensor_id")),
                (("vehicle_count", "int", True), ("interval_s", "float", True),
                 ("mean_speed_kmh", "float", True), ("occupancy_pct", "float", False), SEQ))


class TrafficEngine(KindEngine):
    """Flow, vehicle-weighted harmonic space-mean speed, congestion against free flow."""

    kind = "traffic"
    window_s = 300
    window_tag = "5m"
    has_rolling = True

    def entity(self, reading: Any) -> str:
        return f"{reading.district}/{reading.junction}"

    def _junction(self, entity: str) -> Junction | None:
        try:
            return self.city.junction(entity.split("/", 1)[1])
        except KeyError:
            return None

    def new_acc(self, entity: str) -> dict[str, Any]:
        return {"vehicles": 0, "weights": 0, "inverse": 0.0}

    def add(self, acc: dict[str, Any], reading: Any, delta: float | None) -> None:
        count, speed = reading.vehicle_count, reading.mean_speed_kmh
        acc["vehicles"] = iadd(acc["vehicles"], count)
        if count > 0 and speed > 0:
            acc["weights"] = iadd(acc["weights"], count)
            acc["inverse"] = fadd(acc["inverse"], count / speed)

    def _free_flow(self, entity: str) -> float:
        j = self._junction(entity)
        return j.free_flow_speed_kmh if j else DEFAULT_FREE_FLOW_KMH

    def _speed_and_index(self, entity: str, acc: dict[str, Any]) -> tuple[float, float]:
        free_flow = self._free_flow(entity)
        speed = acc["weights"] / acc["inverse"] if acc["weights"] else free_flow
        return speed, max(0.0, free_flow / speed - 1.0)

    def _baseline(self, entity: str, start: int) -> float:
        j = self._junction(entity)
        return j.baseline_congestion_index(start) if j else 0.0

    def summary(self, entity: str, start: int, acc: dict[str, Any]) -> list[float]:
        return [self._speed_and_index(entity, acc)[1], self._baseline(entity, start)]

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        district, junction = entity.split("/", 1)
        speed, index = self._speed_and_index(entity, acc)
        baseline = self._baseline(entity, start)
        j = self._junction(entity)
        target = (self.city.congestion_target_pct(junction) if j
                  else self.city.targets.congestion_reduction_pct)
        rolling_pct = saving_pct(*rolling)
        return bounded(TrafficKpi, district=district, junction=junction, window=self.window_tag,
                       window_end_ms=start + self.window_ms, vehicles=acc["vehicles"],
                       flow_veh_h=3600.0 * acc["vehicles"] / self.window_s,
                       space_mean_speed_kmh=speed, congestion_index=index,
                       baseline_congestion_index=baseline,
                       reduction_pct=saving_pct(index, baseline),
                       reduction_pct_24h=rolling_pct, target_pct=float(target),
                       on_track=rolling_pct >= target)


KIND = KindSpec("traffic", "Traffic", TrafficReading, TrafficKpi, "junction", RAW, TrafficEngine,
                units={"flow_veh_h": "veh/h", "space_mean_speed_kmh": "km/h",
                       "reduction_pct": "%", "reduction_pct_24h": "%", "target_pct": "%"})
