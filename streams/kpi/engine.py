"""Event-time KPI engine: pure, typed, no Faust or Kafka import.

State lives in two key-value stores given by the caller (Faust tables in the worker, dicts in
tests), so a worker that dies is replaced by one that restores them:

- the *index* store, one small entry per entity (district, junction or route): newest event time,
  the per-window summaries needed for the rolling 24 h figures, and which windows were emitted;
- the *state* store: one accumulator per (entity, window) with the (sensor_id, ts) pairs seen in
  it (dedupe and distinct-sensor counts), and one entry per meter or vehicle with its latest
  reading (register deltas, boardings).

`process(readings)` applies readings in arrival order and returns the KPI records to write:
windows that became final (event time passed end + grace), windows a late reading corrected,
and the already emitted windows whose 24 h figures that correction changed. `due(...)` gives the
open windows of an entity that went quiet, for the wall-clock timer. Applying a reading twice
changes nothing (dedupe by (sensor_id, ts)), so replays after a crash are harmless, and a
re-emitted window is the same InfluxDB point (same measurement, tags and window end).

The semantics are those of CONTRACT.md section 3; where it leaves room the choices match the
offline oracle (tests/oracle) and are listed in docs/contract.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.city import City, District, Junction, Route
from models.readings import Reading
from models.records import Alert, EnergyKpi, Kpi, ShuttleKpi, TrafficKpi, WaterKpi
from streams.kpi.alerts import AlertRules

Store = MutableMapping[str, bytes]
DAY_MS = 86_400_000
DEFAULT_FREE_FLOW_KMH = 48.0


def window_start(ts_ms: int, window_ms: int) -> int:
    """Start of the epoch-aligned tumbling window holding `ts_ms` (a boundary starts a window)."""
    return ts_ms - ts_ms % window_ms


def saving_pct(actual: float, baseline: float) -> float:
    """100 × (1 − actual / baseline); 0.0 when there is no positive baseline."""
    return 100.0 * (1.0 - actual / baseline) if baseline > 0 else 0.0


@dataclass
class Outcome:
    """What one `process` call did."""

    records: list[Kpi] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    beyond_horizon: int = 0


class KindEngine:
    """Shared window, dedupe, lateness and emission logic; subclasses hold the KPI maths."""

    kind: str = ""
    window_s: int = 0
    window_tag: str = ""
    has_rolling: bool = False

    def __init__(self, city: City, *, grace_s: int | None = None,
                 horizon_s: int | None = None, rules: AlertRules | None = None) -> None:
        self.city = city
        self.rules = rules or AlertRules()
        self.window_ms = self.window_s * 1000
        self.grace_ms = 1000 * (city.windows.grace_s if grace_s is None else grace_s)
        self.horizon_ms = 1000 * (city.windows.horizon_s if horizon_s is None else horizon_s)

    # -- per kind ----------------------------------------------------------------------------

    def entity(self, reading: Any) -> str:
        raise NotImplementedError

    def new_acc(self, entity: str) -> dict[str, Any]:
        raise NotImplementedError

    def add(self, acc: dict[str, Any], reading: Any, units: _Units) -> None:
        raise NotImplementedError

    def summary(self, entity: str, start: int, acc: dict[str, Any]) -> list[float]:
        """What the rolling 24 h figures need of a window, e.g. [actual, baseline]."""
        return []

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    def process(self, readings: Iterable[Reading], store: Store,
                offset: int | None = None) -> Outcome:
        """Apply readings in arrival order; return the records to (re)write.

        `offset` is the source position of this batch (increasing per entity, e.g. the Kafka
        offset). A batch at or below an entity's last applied offset was applied already: it
        changes nothing and its entity's final windows are emitted again. Each entity's
        changes are written journal first and index last, so a crash part-way leaves a state
        that the batch's redelivery rolls back and re-applies.
        """
        out = Outcome()
        by_entity: dict[str, list[Any]] = {}
        for r in readings:
            by_entity.setdefault(self.entity(r), []).append(r)
        for entity, items in by_entity.items():
            txn = _Txn(store, entity)
            if txn.applied(offset):
                # Redelivered after a crash: the state has it, but the records it emitted may
                # not have reached Kafka. Write every final window again (same points).
                out.duplicates += len(items)
                out.records.extend(self._record_at(entity, s, txn.idx, txn)
                                   for s in txn.idx["emitted"])
                continue
            self._process_entity(entity, items, txn, out)
            txn.commit(offset)
        return out

    def _process_entity(self, entity: str, items: list[Any], state: _Txn, out: Outcome) -> None:
        idx = state.idx
        wins: dict[int, dict[str, Any]] = {}
        units = _Units(state)
        touched: set[int] = set()
        gaps: list[tuple[str, int, int, int]] = []
        newest = idx["max"]
        for r in items:
            ts = r.ts_ms
            if newest is not None and ts < newest - self.horizon_ms:
                out.beyond_horizon += 1
                continue
            start = window_start(ts, self.window_ms)
            acc = wins.get(start)
            if acc is None:
                acc = _load(state, _wkey(entity, start)) or self.new_acc(entity)
                wins[start] = acc
            seen = acc["seen"].setdefault(r.sensor_id, [])
            if ts in seen:
                out.duplicates += 1
                continue
            seen.append(ts)
            if newest is not None and newest > start + self.window_ms + self.grace_ms:
                out.late += 1
            self.add(acc, r, units)
            self._heard(idx["sensors"], r.sensor_id, ts, gaps)
            out.accepted += 1
            touched.add(start)
            newest = ts if newest is None else max(newest, ts)
        if not touched:
            return
        idx["max"] = newest
        for start in touched:
            state[_wkey(entity, start)] = orjson.dumps(wins[start])
            idx["win"][str(start)] = self.summary(entity, start, wins[start])
        units.save()
        records = self._emissions(entity, idx, state, touched, wins)
        out.records.extend(records)
        out.alerts.extend(self._alerts(entity, idx, records, gaps))
        self._prune(entity, idx, state)
        idx["v"] += 1

    def _heard(self, sensors: dict[str, list[int]], sensor_id: str, ts: int,
               gaps: list[tuple[str, int, int, int]]) -> None:
        """Track each sensor's newest reading and its usual interval (smallest gap seen), and
        note silences that a reading just ended (whatever the batching)."""
        last = sensors.get(sensor_id)
        if last is None:
            sensors[sensor_id] = [ts, 0]
        elif ts > last[0]:
            gap = ts - last[0]
            if last[1] > 0 and gap > self.rules.s.silent_intervals * last[1]:
                gaps.append((sensor_id, last[0], ts, last[1]))
            sensors[sensor_id] = [ts, gap if last[1] == 0 else min(last[1], gap)]

    def _alerts(self, entity: str, idx: dict[str, Any], records: list[Kpi],
                gaps: list[tuple[str, int, int, int]]) -> list[Alert]:
        active = {tuple(k) for k in idx["alerts"]}
        alerts: list[Alert] = []
        for sensor_id, last, resumed, interval in gaps:
            limit = self.rules.s.silent_intervals * interval
            for at, silent in ((last + limit, True), (resumed, False)):
                alert = self.rules.silent(self.kind, sensor_id, at, silent,
                                          (at - last) / 1000, limit / 1000, active)
                if alert is not None:
                    alerts.append(alert)
        for record in records:
            night = None
            if self.kind == "water" and self.rules.is_night_end(record.time_ms):
                starts = self.rules.night_starts(record.time_ms, self.window_ms)
                night = [tuple(idx["win"][str(s)]) for s in starts if str(s) in idx["win"]]
                night = night if len(night) == len(starts) else None
            alerts.extend(self.rules.evaluate(record, active, night))
        newest = idx["max"]
        for sensor_id, (last, interval) in idx["sensors"].items():
            if interval <= 0:
                continue
            limit = self.rules.s.silent_intervals * interval
            alert = self.rules.silent(self.kind, sensor_id, newest, newest - last > limit,
                                      (newest - last) / 1000, limit / 1000, active)
            if alert is not None:
                alerts.append(alert)
        idx["alerts"] = sorted(list(k) for k in active)
        return alerts

    def _final(self, idx: dict[str, Any], start: int) -> bool:
        newest = idx["max"]
        return newest is not None and newest > start + self.window_ms + self.grace_ms

    def _emissions(self, entity: str, idx: dict[str, Any], state: Store, touched: set[int],
                   wins: dict[int, dict[str, Any]]) -> list[Kpi]:
        emitted = set(idx["emitted"])
        starts = sorted(int(s) for s in idx["win"])
        emit: set[int] = {s for s in starts if s not in emitted and self._final(idx, s)}
        emit |= touched & emitted
        if self.has_rolling:
            for changed in touched:
                emit |= {s for s in emitted if changed < s < changed + DAY_MS}
        idx["emitted"] = sorted(emitted | emit)
        return [self._record_at(entity, s, idx, state, wins) for s in sorted(emit)]

    def _record_at(self, entity: str, start: int, idx: dict[str, Any], state: Store,
                   wins: dict[int, dict[str, Any]] | None = None) -> Kpi:
        acc = (wins or {}).get(start) or _load(state, _wkey(entity, start))
        assert acc is not None, f"window {start} of {entity} has no state"
        return self.record(entity, start, acc, self._rolling(idx, start))

    def _rolling(self, idx: dict[str, Any], start: int) -> list[float]:
        end = start + self.window_ms
        total: list[float] = []
        for s, summary in idx["win"].items():
            if end - DAY_MS <= int(s) < end and summary:
                if not total:
                    total = [0.0] * len(summary)
                for i, v in enumerate(summary):
                    total[i] += v
        return total

    def _prune(self, entity: str, idx: dict[str, Any], state: Store) -> None:
        keep_from = idx["max"] - self.horizon_ms - DAY_MS - self.window_ms
        for s in [s for s in idx["win"] if int(s) < keep_from]:
            del idx["win"][s]
            state.pop(_wkey(entity, int(s)), None)
        idx["emitted"] = [s for s in idx["emitted"] if s >= keep_from]

    def due(self, entity: str, state: Store) -> list[Kpi]:
        """Records for the windows of `entity` not yet emitted as final: for the timer that
        closes windows on wall-clock time when the entity goes quiet. Changes no state."""
        idx = _load(state, _ikey(entity))
        if idx is None:
            return []
        emitted = set(idx["emitted"])
        return [self._record_at(entity, int(s), idx, state)
                for s in sorted(int(s) for s in idx["win"]) if int(s) not in emitted]

    def entities(self, store: Store) -> list[str]:
        """Every entity with state (scans all keys: for tests and tools, not hot paths)."""
        return [k[2:] for k in store if k.startswith("i|")]

    def version(self, entity: str, store: Store) -> int | None:
        """Changes with every applied batch of `entity`; None if it has no state."""
        idx = _load(store, _ikey(entity))
        return None if idx is None else int(idx["v"])


class _Txn(MutableMapping[str, bytes]):
    """One entity's changes for one batch, buffered, then written in a crash-safe order.

    Reads see the buffered writes. `commit` writes a journal (`j|<entity>`: the batch's offset
    and the previous value of every key it changes), then the changes, then the index entry
    with the offset. Writes of one Faust table reach its changelog in order, so after a crash
    the changelog holds a prefix of them: without the index, a journal newer than the index
    offset means a partial batch, and `_Txn` restores the previous values before the batch is
    applied again.
    """

    def __init__(self, store: Store, entity: str) -> None:
        self.store = store
        self.entity = entity
        self.writes: dict[str, bytes | None] = {}
        journal = _load(store, f"j|{entity}")
        raw = store.get(_ikey(entity))
        idx = None if raw is None else orjson.loads(raw)
        if journal is not None and journal["off"] > (idx or {}).get("off", -1):
            for key, before in journal["pre"].items():
                if before is None:
                    store.pop(key, None)
                else:
                    store[key] = before.encode()
            raw = store.get(_ikey(entity))
            idx = None if raw is None else orjson.loads(raw)
        self.idx: dict[str, Any] = idx or {"max": None, "win": {}, "emitted": [], "v": 0,
                                           "alerts": [], "sensors": {}, "off": -1}

    def applied(self, offset: int | None) -> bool:
        return offset is not None and offset <= self.idx.get("off", -1)

    def __getitem__(self, key: str) -> bytes:
        if key in self.writes:
            value = self.writes[key]
            if value is None:
                raise KeyError(key)
            return value
        return self.store[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def __delitem__(self, key: str) -> None:
        self.writes[key] = None

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        self.writes[key] = None
        return value

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError("a transaction is not iterable")

    def __len__(self) -> int:
        raise NotImplementedError("a transaction has no length")

    def commit(self, offset: int | None) -> None:
        if offset is not None:
            self.idx["off"] = offset
        ikey = _ikey(self.entity)
        changes = {k: v for k, v in self.writes.items() if k != ikey}
        if changes:
            pre = {}
            for key in changes:
                before = self.store.get(key)
                pre[key] = None if before is None else bytes(before).decode()
            self.store[f"j|{self.entity}"] = orjson.dumps({"off": self.idx.get("off", -1),
                                                           "pre": pre})
            for key, value in changes.items():
                if value is None:
                    self.store.pop(key, None)
                else:
                    self.store[key] = value
        self.store[ikey] = orjson.dumps(self.idx)


class _Units:
    """Latest reading per meter or vehicle, loaded on demand and saved once per batch."""

    def __init__(self, state: Store) -> None:
        self.state = state
        self.cache: dict[str, list[Any]] = {}

    def get(self, sensor_id: str) -> list[Any] | None:
        if sensor_id not in self.cache:
            value = _load(self.state, f"u|{sensor_id}")
            if value is None:
                return None
            self.cache[sensor_id] = value
        return self.cache[sensor_id]

    def set(self, sensor_id: str, value: list[Any]) -> None:
        self.cache[sensor_id] = value

    def save(self) -> None:
        for sensor_id, value in self.cache.items():
            self.state[f"u|{sensor_id}"] = orjson.dumps(value)


def _advance(units: _Units, sensor_id: str, ts: int, value: float) -> float | None:
    """Move a unit's latest reading forward. Returns value − latest (None for a first or an
    out-of-order reading, which changes nothing)."""
    latest = units.get(sensor_id)
    if latest is None:
        units.set(sensor_id, [ts, value])
        return None
    if ts <= latest[0]:
        return None
    units.set(sensor_id, [ts, value])
    return float(value - latest[1])


def _ikey(entity: str) -> str:
    return f"i|{entity}"


def _wkey(entity: str, start: int) -> str:
    return f"w|{entity}|{start}"


def _load(store: Store, key: str) -> Any:
    raw = store.get(key)
    return None if raw is None else orjson.loads(raw)


# ---------------------------------------------------------------------------------------------
# kinds


class _RegisterEngine(KindEngine):
    """Water and energy: register deltas per meter, saving against hour-of-week baselines."""

    register_field = ""
    has_rolling = True

    def entity(self, reading: Any) -> str:
        return str(reading.district)

    def _district(self, entity: str) -> District | None:
        try:
            return self.city.district(entity)
        except KeyError:
            return None

    def new_acc(self, entity: str) -> dict[str, Any]:
        return {"seen": {}, "use": 0.0, "peak": None}

    def add(self, acc: dict[str, Any], reading: Any, units: _Units) -> None:
        delta = _advance(units, reading.sensor_id, reading.ts_ms,
                         getattr(reading, self.register_field))
        if delta is not None:
            acc["use"] += delta if delta >= 0 else getattr(reading, self.register_field)

    def baseline(self, entity: str, start: int) -> float:
        raise NotImplementedError

    def actual(self, acc: dict[str, Any]) -> float:
        return float(acc["use"])

    def summary(self, entity: str, start: int, acc: dict[str, Any]) -> list[float]:
        return [self.actual(acc), self.baseline(entity, start)]


class WaterEngine(_RegisterEngine):
    kind = "water"
    window_s = 900
    window_tag = "15m"
    register_field = "volume_m3"

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
        return WaterKpi(district=entity, window=self.window_tag,
                        window_end_ms=start + self.window_ms, consumption_l=actual,
                        baseline_l=baseline, saving_pct=saving_pct(actual, baseline),
                        saving_pct_24h=rolling_pct, target_pct=float(target),
                        on_track=rolling_pct >= target, meters_reporting=len(acc["seen"]))


class EnergyEngine(_RegisterEngine):
    kind = "energy"
    window_s = 1800
    window_tag = "30m"
    register_field = "energy_kwh"

    def add(self, acc: dict[str, Any], reading: Any, units: _Units) -> None:
        super().add(acc, reading, units)
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
        return EnergyKpi(district=entity, window=self.window_tag,
                         window_end_ms=start + self.window_ms, energy_kwh=actual,
                         baseline_kwh=baseline, saving_pct=saving_pct(actual, baseline),
                         saving_pct_24h=rolling_pct, target_pct=float(target),
                         on_track=rolling_pct >= target,
                         peak_kw=float(acc["peak"] or 0.0), meters_reporting=len(acc["seen"]))


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
        return {"seen": {}, "vehicles": 0, "weights": 0, "inverse": 0.0}

    def add(self, acc: dict[str, Any], reading: Any, units: _Units) -> None:
        count, speed = reading.vehicle_count, reading.mean_speed_kmh
        acc["vehicles"] += count
        if count > 0 and speed > 0:
            acc["weights"] += count
            acc["inverse"] += count / speed

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
        return TrafficKpi(district=district, junction=junction, window=self.window_tag,
                          window_end_ms=start + self.window_ms, vehicles=acc["vehicles"],
                          flow_veh_h=3600.0 * acc["vehicles"] / self.window_s,
                          space_mean_speed_kmh=speed, congestion_index=index,
                          baseline_congestion_index=baseline,
                          reduction_pct=saving_pct(index, baseline),
                          reduction_pct_24h=rolling_pct, target_pct=float(target),
                          on_track=rolling_pct >= target)


ON_TIME_RANGE_S = (-60.0, 180.0)


class ShuttleEngine(KindEngine):
    """Boardings, occupancy, punctuality, availability, battery and disengagements per route."""

    kind = "shuttle"
    window_s = 900
    window_tag = "15m"

    def entity(self, reading: Any) -> str:
        return str(reading.route_id)

    def _route(self, entity: str) -> Route | None:
        try:
            return self.city.route(entity)
        except KeyError:
            return None

    def new_acc(self, entity: str) -> dict[str, Any]:
        return {"seen": {}, "boardings": 0, "passengers": 0, "capacity": 0, "battery": 0.0,
                "readings": 0, "disengagements": 0, "arrivals": 0, "on_time": 0,
                "in_service": []}

    def add(self, acc: dict[str, Any], reading: Any, units: _Units) -> None:
        increase = _advance(units, reading.sensor_id, reading.ts_ms, reading.passengers)
        if increase is not None and increase > 0:
            acc["boardings"] += int(increase)
        if reading.status == "in_service":
            acc["passengers"] += reading.passengers
            acc["capacity"] += reading.capacity
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
        return ShuttleKpi(
            route=entity, window=self.window_tag, window_end_ms=start + self.window_ms,
            boardings=acc["boardings"],
            occupancy_pct=100.0 * acc["passengers"] / acc["capacity"] if acc["capacity"] else 0.0,
            on_time_pct=100.0 * acc["on_time"] / acc["arrivals"] if acc["arrivals"] else 100.0,
            availability_pct=100.0 * available / fleet if fleet > 0 else 0.0,
            mean_battery_pct=acc["battery"] / acc["readings"] if acc["readings"] else 0.0,
            disengagements=acc["disengagements"], vehicles_reporting=len(acc["seen"]))


ENGINES: dict[str, type[KindEngine]] = {
    "water": WaterEngine, "energy": EnergyEngine, "traffic": TrafficEngine,
    "shuttle": ShuttleEngine,
}


def engines_for(city: City, **kw: Any) -> dict[str, KindEngine]:
    """One engine per reading kind."""
    return {kind: cls(city, **kw) for kind, cls in ENGINES.items()}


