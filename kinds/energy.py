"""Energy: district electricity meters' import registers and demand, use against hour-of-week
baselines, the MK:Smart 3 % saving target (contract sections 1-3)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from kinds.meters import RegisterEngine, off_track
from kpi.alerts import AlertSettings
from kpi.numbers import bounded, saving_pct
from models.kinds import KindSpec
from models.raw import SEQ, RawSchema
from models.readings import BaseReading, NonNegative
from models.records import AlertCheck, Count, Kpi, Slug, WindowTag


class EnergyReading(BaseReading):
    """An electricity meter: cumulative import register plus optional demand."""

    kind: Literal["energy"] = "energy"
    energy_kwh: NonNegative
    power_kw: NonNegative | None = None


class EnergyKpi(Kpi):
    """Electricity use and peak demand of a district over one window against its baseline."""

    measurement: ClassVar[str] = "energy_kpi"
    tag_names: ClassVar[tuple[str, ...]] = ("district", "window")

    district: Slug
    window: WindowTag = "30m"
    energy_kwh: float
    baseline_kwh: float
    saving_pct: float | None
    saving_pct_24h: float | None
    target_pct: float = 3.0
    on_track: bool
    peak_kw: float | None
    meters_reporting: Count

    def alert_checks(self, settings: AlertSettings,
                     night: list[tuple[float, float]] | None = None) -> list[AlertCheck]:
        """`off_track`."""
        return [off_track("energy", self.district, self.on_track, self.saving_pct_24h,
                          self.target_pct, "energy saving")]


RAW = RawSchema("energy", (("district", "district"), ("sensor_id", "sensor_id")),
                (("energy_kwh", "float", True), ("power_kw", "float", False), SEQ))


class EnergyEngine(RegisterEngine):
    kind = "energy"
    window_s = 1800
    window_tag = "30m"
    unit_field = "energy_kwh"

    def add(self, acc: dict[str, Any], reading: Any, delta: float | None) -> None:
        super().add(acc, reading, delta)
        power = reading.power_kw
        if power is not None and (acc["peak"] is None or power > acc["peak"]):
            acc["peak"] = power

    def baseline(self, entity: str, start: int) -> float:
        d = self._district(entity)
        return d.energy_baseline_kwh(start, self.window_s) if d else 0.0

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        actual, baseline = self.actual(acc), self.baseline(entity, start)
        target = (self.city.energy_target_pct(entity) if self._district(entity)
                  else self.city.targets.energy_saving_pct)
        rolling_pct = saving_pct(*rolling)
        return bounded(EnergyKpi, district=entity, window=self.window_tag,
                       window_end_ms=start + self.window_ms, energy_kwh=actual,
                       baseline_kwh=baseline, saving_pct=saving_pct(actual, baseline),
                       saving_pct_24h=rolling_pct, target_pct=float(target),
                       on_track=rolling_pct >= target,
                       peak_kw=float(acc["peak"] or 0.0), meters_reporting=acc["n"])


KIND = KindSpec("energy", "Energy", EnergyReading, EnergyKpi, "district", RAW, EnergyEngine,
                units={"energy_kwh": "kWh", "baseline_kwh": "kWh", "saving_pct": "%",
                       "saving_pct_24h": "%", "target_pct": "%", "peak_kw": "kW"})
