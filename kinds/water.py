"""Water: district meters' cumulative registers, consumption against hour-of-week baselines,
the MK:Smart 20 % saving target, night-flow leaks (contract sections 1-3)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from kinds.meters import RegisterEngine, off_track
from kpi.alerts import AlertSettings
from kpi.numbers import bounded, saving_pct
from models.kinds import KindSpec
from models.raw import SEQ, RawSchema
from models.readings import BaseReading, NonNegative
from models.records import AlertCheck, Count, Kpi, Slug, WindowTag


class WaterReading(BaseReading):
    """A water meter: cumulative register plus optional flow and pressure."""

    kind: Literal["water"] = "water"
    volume_m3: NonNegative
    flow_l_min: NonNegative | None = None
    pressure_bar: Annotated[float, Field(ge=0, le=25)] | None = None


class WaterKpi(Kpi):
    """Water use of a district over one window against its baseline."""

    measurement: ClassVar[str] = "water_kpi"
    tag_names: ClassVar[tuple[str, ...]] = ("district", "window")

    district: Slug
    window: WindowTag = "15m"
    consumption_l: float
    baseline_l: float
    saving_pct: float | None
    saving_pct_24h: float | None
    target_pct: float = 20.0
    on_track: bool
    meters_reporting: Count

    def alert_checks(self, settings: AlertSettings,
                     night: list[tuple[float, float]] | None = None) -> list[AlertCheck]:
        """`off_track`, and `leak` once the night (02:00-04:00 local) is complete: the
        district's minimum window use then is above `leak_factor` x its baseline."""
        checks = [off_track("water", self.district, self.on_track, self.saving_pct_24h,
                            self.target_pct, "water saving")]
        if night is not None:
            minimum = min(c for c, _ in night)
            baseline = min(b for _, b in night)
            limit = settings.leak_factor * baseline
            checks.append(("water", self.district, "leak", baseline > 0 and minimum > limit,
                           minimum, limit,
                           f"minimum night flow {minimum:.0f} L per 15 min, "
                           f"{minimum / baseline if baseline else 0:.1f}x baseline"))
        return checks


RAW = RawSchema("water", (("district", "district"), ("sensor_id", "sensor_id")),
                (("volume_m3", "float", True), ("flow_l_min", "float", False),
                 ("pressure_bar", "float", False), SEQ))


class WaterEngine(RegisterEngine):
    kind = "water"
    window_s = 900
    window_tag = "15m"
    unit_field = "volume_m3"

    def actual(self, acc: dict[str, Any]) -> float:
        return 1000.0 * float(acc["use"])

    def baseline(self, entity: str, start: int) -> float:
        d = self._district(entity)
        return d.water_baseline_l(start, self.window_s) if d else 0.0

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        actual, baseline = self.actual(acc), self.baseline(entity, start)
        target = (self.city.water_target_pct(entity) if self._district(entity)
                  else self.city.targets.water_saving_pct)
        rolling_pct = saving_pct(*rolling)
        return bounded(WaterKpi, district=entity, window=self.window_tag,
                       window_end_ms=start + self.window_ms, consumption_l=actual,
                       baseline_l=baseline, saving_pct=saving_pct(actual, baseline),
                       saving_pct_24h=rolling_pct, target_pct=float(target),
                       on_track=rolling_pct >= target, meters_reporting=acc["n"])

    def night(self, wins: dict[int, dict[str, Any]],
              record: Kpi) -> list[tuple[float, float]] | None:
        """The (consumption, baseline) of the night windows that end with `record`, when it
        is the one ending at 04:00 local and all of them have data; else None."""
        if not self.rules.is_night_end(record.time_ms):
            return None
        starts = self.rules.night_starts(record.time_ms, self.window_ms)
        night = [(wins[s]["s"][0], wins[s]["s"][1]) for s in starts if s in wins]
        return night if len(night) == len(starts) else None


KIND = KindSpec("water", "Water", WaterReading, WaterKpi, "district", RAW, WaterEngine,
                units={"consumption_l": "L", "baseline_l": "L", "saving_pct": "%",
                       "saving_pct_24h": "%", "target_pct": "%"})
