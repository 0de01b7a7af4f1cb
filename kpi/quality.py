"""Data quality per sensor and hour (contract 6, `sensor_quality`): what the engine tallies
while an hour is open, and how it judges the hour once it is final.

Definitions (docs/quality.md):
- `readings`: readings accepted in time, counted in the hour of their timestamp;
- `duplicates`: readings dropped as already seen (same sensor and timestamp);
- `late`: readings accepted after their window (or hour) was final, and readings beyond the
  late-data horizon; duplicates and late readings count in the hour they arrived in event time
  (the entity's newest reading) when their own hour was already judged, so a judged hour never
  changes;
- `completeness_pct`: 100 x readings / (one hour / the sensor's usual interval), capped at
  100; the usual interval is the median of the sensor's mean gaps (between its readings) over
  its last 5 hours with two readings or more, this hour's own until there is one (left out
  until the sensor has sent two readings in an hour);
- `stuck`: for kinds whose value is a register (water, energy): at least 3 readings in the hour,
  none changing the value, where each of the sensor's last 3 judged hours changed it;
- `score`: completeness x the share of the sensor's messages that were usable
  (readings / (readings + duplicates + late)), at most 25 when stuck, 0 with no reading.

A sensor the entity has heard from in the last 24 h and that sent nothing in an hour gets a
point with 0 readings (a silent sensor). An `AlertRules` raises `sensor_quality` for a sensor
whose score stayed below `quality_min_score` for `quality_alert_hours` hours in a row.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from kpi.alerts import AlertKey, AlertRules
from models.quality import HOUR_MS, SensorQuality
from models.readings import parse_ts
from models.records import Alert

# A sensor-hour's tally, a JSON array:
READINGS: Final = 0
DUPLICATES: Final = 1
LATE: Final = 2
CHANGES: Final = 3  # in-order readings that changed the sensor's value
FIRST_TS: Final = 4  # the hour's earliest and newest accepted timestamps (-1: none yet)
LAST_TS: Final = 5
DISTRICT: Final = 6

# A sensor's history, a JSON array:
HIST_GAPS: Final = 0  # mean gap (ms) of its last hours with two readings or more
HIST_MOVES: Final = 1  # 1/0: did the value change, for its last hours judged not stuck
HIST_BAD: Final = 2  # hours in a row scored below the threshold
HIST_FIRST_HOUR: Final = 3  # the first hour it was heard in
HIST_LAST_HOUR: Final = 4  # the last hour it sent a reading in
HIST_DISTRICT: Final = 5

GAPS_KEPT: Final = 5
MOVES_KEPT: Final = 3
STUCK_MIN_READINGS: Final = 3
STUCK_SCORE_CAP: Final = 25.0
FORGET_AFTER_MS: Final = 24 * HOUR_MS
RULE: Final = "sensor_quality"


def hour_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS


def new_tally(district: str) -> list[Any]:
    return [0, 0, 0, 0, -1, -1, district]


@dataclass
class QualityState:
    """One entity's quality bookkeeping: the tallies of its open hours, each sensor's history
    and the last hour judged. Stored with the entity (kpi/state.py: keys `qh`, `qs`, `qdone`)."""

    hours: dict[int, dict[str, list[Any]]] = field(default_factory=dict)
    sensors: dict[str, list[Any]] = field(default_factory=dict)
    done: int | None = None

    def tally(self, hour: int, sensor_id: str, district: str,
              changed: set[tuple[int, str]]) -> list[Any]:
        """The tally of `sensor_id` in `hour`, created if new; marked changed."""
        sensors = self.hours.get(hour)
        if sensors is None:
            sensors = self.hours[hour] = {}
        tally = sensors.get(sensor_id)
        if tally is None:
            tally = sensors[sensor_id] = new_tally(district)
        changed.add((hour, sensor_id))
        return tally

    def is_judged(self, hour: int) -> bool:
        return self.done is not None and hour <= self.done

    def final_hours(self, newest: int, grace_ms: int) -> list[int]:
        """Hours not judged yet whose end plus grace event time has passed (the oldest at most
        24 h before the newest)."""
        last = hour_of(newest - grace_ms - HOUR_MS - 1)  # end + grace < newest
        if self.done is not None:
            first = self.done + HOUR_MS
        elif self.hours:
            first = min(self.hours)
        else:
            return []
        first = max(first, last - FORGET_AFTER_MS + HOUR_MS)
        return list(range(first, last + 1, HOUR_MS))


def judge_hour(kind: str, sensor_id: str, hour: int, tally: list[Any] | None,
               history: list[Any], judges_stuck: bool) -> SensorQuality:
    """The `sensor_quality` point of one sensor's final hour; `history` is updated (gaps,
    moves, last hour heard). `tally` None: the sensor sent nothing in the hour."""
    tally = tally if tally is not None else new_tally(history[HIST_DISTRICT])
    readings, duplicates, late = tally[READINGS], tally[DUPLICATES], tally[LATE]
    gaps: list[int] = history[HIST_GAPS]
    own_gap = round((tally[LAST_TS] - tally[FIRST_TS]) / (readings - 1)) if readings >= 2 else None
    usual = float(statistics.median(gaps)) if gaps else own_gap
    if own_gap is not None:
        gaps.append(own_gap)
        del gaps[:-GAPS_KEPT]
    if readings:
        history[HIST_LAST_HOUR] = hour
    completeness = None
    if usual is not None and usual > 0:
        completeness = round(min(100.0, 100.0 * readings * usual / HOUR_MS), 1)
    elif readings == 0:
        completeness = 0.0
    moves: list[int] = history[HIST_MOVES]
    stuck = (judges_stuck and readings >= STUCK_MIN_READINGS and tally[CHANGES] == 0
             and len(moves) == MOVES_KEPT and all(moves))
    if judges_stuck and readings >= STUCK_MIN_READINGS and not stuck:
        moves.append(1 if tally[CHANGES] else 0)
        del moves[:-MOVES_KEPT]
    score = 0.0
    if readings:
        usable = readings / (readings + duplicates + late)
        score = (100.0 if completeness is None else completeness) * usable
        if stuck:
            score = min(score, STUCK_SCORE_CAP)
    return SensorQuality(kind=kind, district=tally[DISTRICT], sensor_id=sensor_id,
                         hour_end_ms=hour + HOUR_MS, readings=readings, duplicates=duplicates,
                         late=late, completeness_pct=completeness, stuck=stuck,
                         score=round(score, 1))


def problems(point: SensorQuality) -> str:
    """What is wrong with a sensor's hour, in words ("42 % complete, stuck, 3 late")."""
    words = []
    if point.readings == 0:
        words.append("silent")
    elif point.completeness_pct is not None and point.completeness_pct < 100:
        words.append(f"{point.completeness_pct:g} % complete")
    if point.stuck:
        words.append("stuck")
    for name in ("duplicates", "late", "rejected"):
        count = getattr(point, name)
        if count:
            words.append(f"{count} {name}")
    return ", ".join(words) or "ok"


def quality_alert(rules: AlertRules, point: SensorQuality, history: list[Any],
                  active: set[AlertKey]) -> Alert | None:
    """The `sensor_quality` transition of a judged hour: raised once the score has been below
    `quality_min_score` for `quality_alert_hours` hours in a row, cleared by an hour at or
    above it."""
    minimum, hours = rules.s.quality_min_score, rules.s.quality_alert_hours
    score = point.score or 0.0
    history[HIST_BAD] = history[HIST_BAD] + 1 if score < minimum else 0
    firing = history[HIST_BAD] >= hours
    return rules.transition(
        point.hour_end_ms, active, point.kind, point.sensor_id, RULE, firing, score, minimum,
        f"quality score {score:g} below {minimum:g} for {history[HIST_BAD]} h: "
        f"{problems(point)}" if firing else f"quality score back to {score:g}")


def new_history(hour: int, district: str) -> list[Any]:
    return [[], [], 0, hour, hour, district]


def judge(kind: str, state: QualityState, newest: int, grace_ms: int, judges_stuck: bool,
          rules: AlertRules, active: set[AlertKey],
          changed: set[str]) -> tuple[list[SensorQuality], list[Alert], list[int]]:
    """Judge every hour that became final: a point per sensor heard in the hour or in the 24 h
    before it, alert transitions; judged hours leave `state.hours`, sensors unheard for 24 h
    leave `state.sensors`. `changed` gets the sensors whose history changed. Returns the
    points, the alert transitions and the hours judged."""
    points: list[SensorQuality] = []
    alerts: list[Alert] = []
    hours = state.final_hours(newest, grace_ms)
    for hour in hours:
        tallies = state.hours.pop(hour, {})
        for sensor_id, first in tallies.items():
            if sensor_id not in state.sensors:
                state.sensors[sensor_id] = new_history(hour, first[DISTRICT])
        for sensor_id in sorted(state.sensors):
            history = state.sensors[sensor_id]
            tally = tallies.get(sensor_id)
            if tally is None and (history[HIST_FIRST_HOUR] > hour
                                  or history[HIST_LAST_HOUR] < hour - FORGET_AFTER_MS):
                continue
            point = judge_hour(kind, sensor_id, hour, tally, history, judges_stuck)
            points.append(point)
            alert = quality_alert(rules, point, history, active)
            if alert is not None:
                alerts.append(alert)
            changed.add(sensor_id)
        for sensor_id in [s for s, h in state.sensors.items()
                          if h[HIST_LAST_HOUR] < hour - FORGET_AFTER_MS]:
            del state.sensors[sensor_id]
            changed.add(sensor_id)
        state.done = hour
    return points, alerts, hours


def rejected_hour(raw: bytes, received_at_ms: int, horizon_ms: int) -> int:
    """The hour a dead letter of a sensor counts in: its reading's own `ts` (epoch ms or RFC
    3339) when the payload is an object with one within the late-data horizon before it was
    received (and at most an hour after), else the hour it was received in."""
    try:
        ts = orjson.loads(raw).get("ts")
        if type(ts) is str:
            ts = parse_ts(ts)
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        ts = None
    if type(ts) is int and received_at_ms - horizon_ms <= ts <= received_at_ms + HOUR_MS:
        return hour_of(ts)
    return hour_of(received_at_ms)


REJECTED_HOURS_KEPT: Final = 48


def add_rejected(stored: bytes | None, offset: int, hour: int) -> tuple[bytes | None, int]:
    """Count one dead letter (at source `offset`) in a sensor's `hour`. `stored` is the
    sensor's count record ({"off": last offset counted, "h": {hour: count}}, the last 48 hours),
    None at first. Returns the record to store (None when the letter was counted before: a
    redelivery) and the hour's count, absolute, so writing it again is harmless."""
    state: dict[str, Any] = orjson.loads(stored) if stored is not None else {"off": -1, "h": {}}
    hours: dict[str, int] = state["h"]
    if offset <= int(state["off"]):
        return None, hours.get(str(hour), 0)
    hours[str(hour)] = count = hours.get(str(hour), 0) + 1
    oldest = hour - REJECTED_HOURS_KEPT * HOUR_MS
    kept = {h: n for h, n in hours.items() if int(h) > oldest}
    return orjson.dumps({"off": offset, "h": kept}), count
