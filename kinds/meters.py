"""What water and energy share: cumulative meter registers per district, use against
hour-of-week baselines, a saving target over 24 h (contract section 3)."""

from __future__ import annotations

from typing import Any

from kpi.engine import KindEngine
from kpi.numbers import fadd
from models.city import District


class RegisterEngine(KindEngine):
    """Register deltas per meter (a drop is a reset: the new value is the use), summed per
    district and window; the window's [actual, baseline] feed the 24 h saving."""

    has_rolling = True
    judges_stuck = True

    def entity(self, reading: Any) -> str:
        return str(reading.district)

    def _district(self, entity: str) -> District | None:
        try:
            return self.city.district(entity)
        except KeyError:
            return None

    def new_acc(self, entity: str) -> dict[str, Any]:
        return {"use": 0.0, "peak": None}

    def add(self, acc: dict[str, Any], reading: Any, delta: float | None) -> None:
        if delta is not None:
            used = delta if delta >= 0 else getattr(reading, self.unit_field or "")
            acc["use"] = fadd(acc["use"], used)

    def baseline(self, entity: str, start: int) -> float:
        raise NotImplementedError

    def actual(self, acc: dict[str, Any]) -> float:
        return float(acc["use"])

    def summary(self, entity: str, start: int, acc: dict[str, Any]) -> list[float]:
        return [self.actual(acc), self.baseline(entity, start)]


def off_track(kind: str, entity: str, on_track: bool, saving_24h: float | None,
              target_pct: float, what: str) -> tuple[str, str, str, bool, float, float, str]:
    """The `off_track` rule: the 24 h saving (or reduction) is below target."""
    return (kind, entity, "off_track", not on_track, float(saving_24h or 0.0), target_pct,
            f"{what} over 24 h is {saving_24h or 0:.1f} %, target {target_pct:.0f} %")
