"""Alert rules on KPI records and sensor health: pure, raised and cleared by transitions.

`AlertRules.evaluate(record, active)` looks at one final KPI record and returns the alerts whose
state changed (`active` true = raised, false = cleared); `active` is the caller's persisted
set of currently raised (kind, entity, rule) keys, updated in place.

Rules (thresholds in `AlertSettings`), each with its kind (kinds/<kind>.py, the KPI record's
`alert_checks`):
- `leak` (water): the district's minimum 15-minute consumption between 02:00 and 04:00 local
  time is above `leak_factor` × its baseline: water flowing when nobody uses it.
- `off_track` (water, energy, traffic): the rolling 24 h saving or reduction is below target.
- `congestion` (traffic): the congestion index is above `congestion_factor` × baseline.
- `battery_low` (shuttle): the route's mean battery is below `battery_low_pct`.
- declared feeds: their `[[feeds.alerts]]` rules, above or below a KPI (kinds/feed.py).
- `silent` (any): a sensor sent nothing for `silent_intervals` × its usual interval of event
  time while its entity kept reporting (evaluated by the engine, see `silent_sensors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from models.records import Alert, Kpi


@dataclass(frozen=True)
class AlertSettings:
    leak_factor: float = 1.5
    congestion_factor: float = 2.0
    battery_low_pct: float = 20.0
    silent_intervals: int = 5
    timezone: str = "Europe/London"
    quality_min_score: float = 80.0
    quality_alert_hours: int = 2


AlertKey = tuple[str, str, str]


class AlertRules:
    """Evaluates the rules; keeps no state of its own."""

    def __init__(self, settings: AlertSettings | None = None) -> None:
        self.s = settings or AlertSettings()
        self.tz = ZoneInfo(self.s.timezone)

    def evaluate(self, record: Kpi, active: set[AlertKey],
                 night: list[tuple[float, float]] | None = None) -> list[Alert]:
        """Alerts that changed state because of `record`, by the rules of its kind (its
        `alert_checks`); `night` is the (consumption, baseline) of the district's 02:00-04:00
        local windows once that period is complete (water's leak rule)."""
        ts = record.time_ms
        return [a for c in record.alert_checks(self.s, night)
                if (a := self.transition(ts, active, *c)) is not None]

    def silent(self, kind: str, sensor_id: str, ts_ms: int, silent: bool, gap_s: float,
               limit_s: float, active: set[AlertKey]) -> Alert | None:
        """A `silent` alert transition for one sensor."""
        return self.transition(ts_ms, active, kind, sensor_id, "silent", silent, gap_s,
                                limit_s, f"no reading for {gap_s:.0f} s (usual interval "
                                f"{limit_s / self.s.silent_intervals:.0f} s)")

    def is_night_end(self, window_end_ms: int) -> bool:
        """True for the window that ends at 04:00 local time (the night period is complete)."""
        local = datetime.fromtimestamp(window_end_ms / 1000, UTC).astimezone(self.tz)
        return local.hour == 4 and local.minute == 0

    def night_starts(self, window_end_ms: int, window_ms: int) -> list[int]:
        """Window starts covering 02:00-04:00 local that end by `window_end_ms` (04:00)."""
        return list(range(window_end_ms - 2 * 3_600_000, window_end_ms, window_ms))

    @staticmethod
    def transition(ts_ms: int, active: set[AlertKey], kind: str, entity: str, rule: str,
                   firing: bool, value: float, threshold: float, message: str) -> Alert | None:
        """The alert if `firing` changes the (kind, entity, rule) state in `active`, else None;
        `active` is updated."""
        key = (kind, entity, rule)
        if firing == (key in active):
            return None
        if firing:
            active.add(key)
        else:
            active.discard(key)
        return Alert(kind=kind, entity=entity, rule=rule, ts_ms=ts_ms, value=float(value),
                     threshold=float(threshold), message=message, active=firing)
