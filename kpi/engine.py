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

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import astuple, dataclass, field
from typing import Any

import orjson

from kpi.alerts import AlertKey, AlertRules
from kpi.numbers import fadd
from kpi.quality import CHANGES, DUPLICATES, FIRST_TS, LAST_TS, LATE, READINGS, hour_of, judge
from kpi.state import (
    DELTA_SLOTS,
    Entity,
    Seen,
    Store,
    alerts_of_batch,
    ckey,
    delta_seq,
    dkey,
    quality_of_batch,
    skey,
    stored,
)
from models.city import City
from models.kinds import engines_for
from models.quality import SensorQuality
from models.readings import BaseReading
from models.records import Alert, Kpi

DAY_MS = 86_400_000
__all__ = ["DAY_MS", "Held", "KindEngine", "Outcome", "engines_for"]


@dataclass
class Outcome:
    """What one `process` call did."""

    records: list[Kpi] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    quality: list[SensorQuality] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    beyond_horizon: int = 0


@dataclass(frozen=True)
class Held:
    """What an engine keeps in memory: entities read from their stores, the windows and the
    sensors those hold (windows grow with event time up to the horizon plus a day), and the
    dedupe cache's windows with their (sensor, ts) pairs (`SEEN_CACHE_PAIRS`)."""

    entities: int = 0
    windows: int = 0
    sensors: int = 0
    dedupe_windows: int = 0
    dedupe_pairs: int = 0

    def __add__(self, other: Held) -> Held:
        return Held(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


SEEN_CACHE_WINDOWS = 256
SEEN_CACHE_PAIRS = 200_000
"""The dedupe cache's bounds per engine: windows, and (sensor, ts) pairs (about 230 bytes
each: 46 MB). Past either, the least recently used windows are dropped after each batch; the
most recently used stays, whatever its size. A dropped window is read back from its chunks when
it next gets a reading out of order."""


class KindEngine:
    """Shared window, dedupe, lateness, emission and state logic; each kind's subclass
    (kinds/<kind>.py, `kinds.feed.FeedEngine` for a declared feed) holds its KPI maths.

    The engine keeps each entity's state in memory and writes, per applied batch, only what the
    batch changed; see `Entity` for the layout in the store.
    """

    kind: str = ""
    window_s: int = 0
    window_tag: str = ""
    has_rolling: bool = False
    unit_field: str | None = None  # the per-sensor value whose increases count (registers ...)
    carries_values: bool = False  # per-sensor values kept by `add_in_order` instead
    judges_stuck: bool = False  # `unit_field` is a register: a frozen one is `stuck`

    def __init__(self, city: City, *, grace_s: int | None = None,
                 horizon_s: int | None = None, rules: AlertRules | None = None) -> None:
        self.city = city
        self.rules = rules or AlertRules()
        self.window_ms = self.window_s * 1000
        self.grace_ms = 1000 * (city.windows.grace_s if grace_s is None else grace_s)
        self.horizon_ms = 1000 * (city.windows.horizon_s if horizon_s is None else horizon_s)
        self._entities: dict[tuple[int, str], Entity] = {}
        self._seen: OrderedDict[tuple[int, str, int], Seen] = OrderedDict()

    # -- per kind ----------------------------------------------------------------------------

    def entity(self, reading: Any) -> str:
        """The entity a reading counts for (district, `district/junction`, route, a feed's
        entity value); called once per reading. Readings of one entity share a Kafka key."""
        raise NotImplementedError

    def new_acc(self, entity: str) -> dict[str, Any]:
        """A fresh accumulator for a window of `entity`, called when its first reading comes:
        JSON-serialisable, without the engine's own keys (`kpi.state.WINDOW_*`)."""
        raise NotImplementedError

    def add(self, acc: dict[str, Any], reading: Any, delta: float | None) -> None:
        """Add a reading to its window; `delta` is the increase of `unit_field` since the
        sensor's latest earlier reading (None for a first or an out-of-order reading)."""
        raise NotImplementedError

    def add_in_order(self, acc: dict[str, Any], reading: Any, carried: Any) -> Any:
        """For kinds with `carries_values`: add a reading newer than its sensor's newest one;
        `carried` is what the previous call returned for the sensor (None for its first
        reading); returns what to keep for the sensor's next reading (JSON-serialisable)."""
        raise NotImplementedError

    def summary(self, entity: str, start: int, acc: dict[str, Any]) -> list[float]:
        """What the rolling 24 h figures need of a window, e.g. [actual, baseline]; called
        after every batch that touched the window. The engine sums the summaries of an
        entity's windows of the last 24 h element-wise and hands them to `record`."""
        return []

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        """The KPI point of a window (stamped at its end) from its accumulator and the summed
        `summary` of the 24 h ending at its end. Called whenever the window is (re)emitted:
        it must be a pure function of its arguments, so a re-emission is the same point."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    def process(self, readings: Iterable[BaseReading], store: Store,
                offset: int | None = None) -> Outcome:
        """Apply readings in arrival order; return the records to (re)write.

        `offset` is the source position of this batch (increasing per entity, e.g. the Kafka
        offset). A batch at or below an entity's last applied offset was applied already: it
        changes nothing, and the first such batch of an entity since its state was read from
        the store emits the entity's final windows again (the records of the batches applied
        before a crash may not have reached Kafka); later ones emit only their alerts and
        quality records. A caller that could not send what `process` returned calls
        `forget_all`, so that the next such batch emits them again.
        """
        out = Outcome()
        by_entity: dict[str, list[Any]] = {}
        for r in readings:
            by_entity.setdefault(self.entity(r), []).append(r)
        try:
            for entity, items in by_entity.items():
                ent = self._state(store, entity)
                if offset is None or offset > ent.off:
                    self._process_entity(entity, items, ent, store, out, offset)
                    continue
                out.duplicates += len(items)
                out.alerts.extend(alerts_of_batch(store, entity, offset))
                out.quality.extend(quality_of_batch(store, entity, offset))
                if ent.resent_off != ent.off:
                    out.records.extend(self._record_at(entity, s, ent) for s in ent.emitted)
                    ent.resent_off = ent.off
            if self._seen:  # windows loaded, or grown by the batch's readings
                self._bound_seen()
        except BaseException:
            self._forget(store)  # memory may be ahead of the store, or of what was sent again
            raise
        return out

    def _process_entity(self, entity: str, items: list[Any], ent: Entity, store: Store,
                        out: Outcome, offset: int | None) -> None:
        wins, sensors = ent.wins, ent.sensors
        wms, late_after = self.window_ms, self.window_ms + self.grace_ms
        unit_field, carries = self.unit_field, self.carries_values
        silent_factor = self.rules.s.silent_intervals
        quality, judges_stuck = ent.quality, self.judges_stuck
        judged_before = -1 if quality.done is None else quality.done
        tallied: set[tuple[int, str]] = set()
        pending: dict[int, list[list[Any]]] = {}
        touched: set[int] = set()
        changed: set[str] = set()
        gaps: list[tuple[str, int, int, int]] = []
        newest = ent.max
        accepted = 0
        store_id = id(store)
        # Hot loop: a sensor's record `rec` is [ts, interval, value] (state.SENSOR_*) and a
        # window's own keys are "n", "c", "s" (state.WINDOW_*), indexed literally for speed.
        for r in items:
            ts = r.ts_ms
            sid = r.sensor_id
            hour = ts - ts % 3_600_000
            if newest is not None and ts < newest - self.horizon_ms:
                out.beyond_horizon += 1
                quality.tally(hour_of(newest), sid, r.district, tallied)[LATE] += 1
                continue
            start = ts - ts % wms
            rec = sensors.get(sid)
            if rec is None or ts > rec[0]:
                # in order for this sensor: new, and first in its window unless the sensor's
                # newest reading already lies in this window
                first_in_window = rec is None or rec[0] < start
            else:
                seen = None if ts == rec[0] else self._seen_in(store, entity, start,
                                                               wins.get(start), pending)
                if seen is None or (sid, ts) in seen.pairs:
                    out.duplicates += 1
                    quality.tally(hour if hour > judged_before else hour_of(newest or ts), sid,
                                  r.district, tallied)[DUPLICATES] += 1
                    continue
                first_in_window = sid not in seen.sensors
            acc = wins.get(start)
            if acc is None:
                acc = wins[start] = {**self.new_acc(entity), "n": 0, "c": 0}
            if first_in_window:
                acc["n"] += 1
            pending.setdefault(start, []).append([sid, ts])
            cached = self._seen.get((store_id, entity, start)) if self._seen else None
            if cached is not None:
                cached.add(sid, ts)
            if newest is not None and (newest > start + late_after or hour <= judged_before):
                if newest > start + late_after:
                    out.late += 1
                quality.tally(hour_of(newest), sid, r.district, tallied)[LATE] += 1
            else:
                tally = quality.tally(hour, sid, r.district, tallied)
                tally[READINGS] += 1
                if tally[FIRST_TS] < 0 or ts < tally[FIRST_TS]:
                    tally[FIRST_TS] = ts
                if ts > tally[LAST_TS]:
                    tally[LAST_TS] = ts
                if judges_stuck and rec is not None and ts > rec[0] and \
                        getattr(r, unit_field or "") != rec[2]:
                    tally[CHANGES] += 1
            value = getattr(r, unit_field) if unit_field else None
            if rec is None:
                if carries:
                    value = self.add_in_order(acc, r, None)
                else:
                    self.add(acc, r, None)
                sensors[sid] = [ts, 0, value]
                changed.add(sid)
            elif ts > rec[0]:
                if carries:
                    value = self.add_in_order(acc, r, rec[2])
                else:
                    self.add(acc, r, None if value is None else float(value - rec[2]))
                gap = ts - rec[0]
                if rec[1] > 0 and gap > silent_factor * rec[1]:
                    gaps.append((sid, rec[0], ts, rec[1]))
                rec[0], rec[1], rec[2] = ts, gap if rec[1] == 0 else min(rec[1], gap), value
                changed.add(sid)
            else:
                self.add(acc, r, None)
            accepted += 1
            touched.add(start)
            if newest is None or ts > newest:
                newest = ts
        out.accepted += accepted
        if not touched or newest is None:
            if tallied:
                self._commit(store, entity, ent, offset, pending, touched, changed, {}, [],
                             ent.quality_delta(tallied, [], set()))
            return
        ent.max = newest
        for start in touched:
            wins[start]["s"] = self.summary(entity, start, wins[start])
        records = self._emissions(entity, ent, touched)
        out.records.extend(records)
        alerts = self._alerts(entity, ent, records, gaps, changed)
        histories: set[str] = set()
        active: set[AlertKey] = {(k[0], k[1], k[2]) for k in ent.alerts}
        points, quality_alerts, judged = judge(self.kind, quality, newest, self.grace_ms,
                                               judges_stuck, self.rules, active, histories)
        if quality_alerts:
            ent.alerts = sorted(list(k) for k in active)
            alerts.extend(quality_alerts)
        out.alerts.extend(alerts)
        out.quality.extend(points)
        pruned = self._prune(ent)
        self._commit(store, entity, ent, offset, pending, touched, changed, pruned, alerts,
                     {**ent.quality_delta(tallied, judged, histories),
                      **({"judged": [p.model_dump() for p in points]} if points else {})})

    def _commit(self, store: Store, entity: str, ent: Entity, offset: int | None,
                pending: dict[int, list[list[Any]]], touched: set[int], changed: set[str],
                pruned: dict[int, int], alerts: list[Alert], extra: dict[str, Any]) -> None:
        """Write the batch: its dedupe chunks, then the delta (the commit point), then maybe a
        snapshot, then the deletes of pruned windows' chunks."""
        key = id(store)
        for start, pairs in pending.items():
            acc = ent.wins.get(start)
            if acc is None:  # accepted, then pruned in the same batch
                continue
            store[ckey(entity, start, acc["c"])] = stored(pairs)
            acc["c"] += 1
            cached = self._seen.get((key, entity, start))
            if cached is not None:
                cached.count = acc["c"]
        ent.seq += 1
        if offset is not None:
            ent.off = offset
        delta = stored({
            "seq": ent.seq, "off": ent.off, "max": ent.max, "emitted": ent.emitted,
            "alerts": ent.alerts,
            "wins": {str(s): ent.wins.get(s) for s in touched | set(pruned)},
            "sensors": {sid: ent.sensors[sid] for sid in changed},
            # the batch's alert transitions, sent again if the batch is redelivered
            "raised": [a.model_dump() for a in alerts], **extra})
        store[dkey(entity, ent.seq % DELTA_SLOTS)] = delta
        ent.delta_bytes += len(delta)
        if ent.seq - ent.snap_seq >= DELTA_SLOTS - 1 or ent.delta_bytes >= ent.snap_bytes:
            snapshot = stored(ent.to_json())
            store[skey(entity)] = snapshot
            ent.snap_seq, ent.snap_bytes, ent.delta_bytes = ent.seq, len(snapshot), 0
        for start, chunks in pruned.items():
            self._seen.pop((key, entity, start), None)
            for n in range(chunks):
                store.pop(ckey(entity, start, n), None)

    def _seen_in(self, store: Store, entity: str, start: int, acc: dict[str, Any] | None,
                 pending: dict[int, list[list[Any]]]) -> Seen:
        """The (sensor, ts) pairs and sensors of a window, for readings that arrive out of
        order: loaded from the window's chunks once, then kept current."""
        key = (id(store), entity, start)
        seen = self._seen.get(key)
        chunks = 0 if acc is None else acc["c"]
        if seen is None:
            seen = self._seen[key] = Seen()
            for sid, ts in pending.get(start, ()):
                seen.add(sid, ts)
        else:
            self._seen.move_to_end(key)
        while seen.count < chunks:  # chunks written since (by this worker or another one)
            for sid, ts in orjson.loads(store.get(ckey(entity, start, seen.count)) or b"[]"):
                seen.add(sid, ts)
            seen.count += 1
        return seen

    def _bound_seen(self) -> None:
        """Drop the least recently used windows of the dedupe cache past its bounds; the most
        recently used stays, however many pairs it holds."""
        pairs = sum(len(seen.pairs) for seen in self._seen.values())
        while len(self._seen) > 1 and (len(self._seen) > SEEN_CACHE_WINDOWS or
                                       pairs > SEEN_CACHE_PAIRS):
            pairs -= len(self._seen.popitem(last=False)[1].pairs)

    def _state(self, store: Store, entity: str) -> Entity:
        """The entity's state: from memory while it matches the store, else read back."""
        key = (id(store), entity)
        ent = self._entities.get(key)
        if ent is not None and ent.seq > 0:
            now = delta_seq(store.get(dkey(entity, ent.seq % DELTA_SLOTS)))
            after = delta_seq(store.get(dkey(entity, (ent.seq + 1) % DELTA_SLOTS)))
            if now == ent.seq and (after is None or after < ent.seq):
                return ent
            self._forget(store)
        ent = Entity.read(store, entity)
        self._entities[key] = ent
        return ent

    def held(self) -> Held:
        """What this engine holds in memory now; called with the worker's counters."""
        entities = list(self._entities.values())
        return Held(len(entities), sum(len(e.wins) for e in entities),
                    sum(len(e.sensors) for e in entities), len(self._seen),
                    sum(len(seen.pairs) for seen in self._seen.values()))

    def forget_all(self) -> None:
        """Drop every entity cached in memory (state is read back from the store when next
        needed): for a worker whose partitions were revoked, so it does not keep entities that
        now belong to another worker."""
        self._entities.clear()
        self._seen.clear()

    def _forget(self, store: Store) -> None:
        key = id(store)
        for k in [k for k in self._entities if k[0] == key]:
            del self._entities[k]
        for k2 in [k for k in self._seen if k[0] == key]:
            del self._seen[k2]

    def _alerts(self, entity: str, ent: Entity, records: list[Kpi],
                gaps: list[tuple[str, int, int, int]], changed: set[str]) -> list[Alert]:
        active: set[AlertKey] = {(k[0], k[1], k[2]) for k in ent.alerts}
        alerts: list[Alert] = []
        factor = self.rules.s.silent_intervals
        for sensor_id, last, resumed, interval in gaps:
            limit = factor * interval
            for at, silent in ((last + limit, True), (resumed, False)):
                alert = self.rules.silent(self.kind, sensor_id, at, silent,
                                          (at - last) / 1000, limit / 1000, active)
                if alert is not None:
                    alerts.append(alert)
        alerts.extend(self.record_alerts(ent, records, active))
        alerts.extend(self._silences(ent, changed, active))
        ent.alerts = sorted(list(k) for k in active)
        return alerts

    def record_alerts(self, ent: Entity, records: list[Kpi], active: set[AlertKey],
                      ) -> list[Alert]:
        """The alert transitions the batch's emitted records cause (`active` updated)."""
        alerts: list[Alert] = []
        for record in records:
            alerts.extend(self.rules.evaluate(record, active, self.night(ent.wins, record)))
        return alerts

    def night(self, wins: dict[int, dict[str, Any]],
              record: Kpi) -> list[tuple[float, float]] | None:
        """What a kind's night rule needs of the windows before `record` (water's leak)."""
        return None

    def _silences(self, ent: Entity, changed: set[str], active: set[AlertKey]) -> list[Alert]:
        """Silent-sensor transitions at the entity's newest event time. Until event time passes
        the earliest deadline (newest reading + limit) of a sensor not yet silent, only the
        sensors this batch heard from can change, so the full sweep is rarely needed."""
        newest = ent.max
        assert newest is not None
        factor, kind = self.rules.s.silent_intervals, self.kind
        sweep = newest > ent.next_silence
        if sweep:
            ent.next_silence = 2**62
        alerts = []
        for sensor_id in ent.sensors if sweep else changed:
            last, interval, _ = ent.sensors[sensor_id]
            if interval <= 0:
                continue
            limit = factor * interval
            silent = newest - last > limit
            if not silent:
                ent.next_silence = min(ent.next_silence, last + limit)
            if silent == ((kind, sensor_id, "silent") in active):
                continue  # no transition: skip building the message
            alert = self.rules.silent(kind, sensor_id, newest, silent,
                                      (newest - last) / 1000, limit / 1000, active)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _final(self, newest: int | None, start: int) -> bool:
        return newest is not None and newest > start + self.window_ms + self.grace_ms

    def _emissions(self, entity: str, ent: Entity, touched: set[int]) -> list[Kpi]:
        emitted = set(ent.emitted)
        emit: set[int] = {s for s in ent.wins if s not in emitted and self._final(ent.max, s)}
        emit |= touched & emitted
        if self.has_rolling:
            for changed in touched:
                emit |= {s for s in emitted if changed < s < changed + DAY_MS}
        ent.emitted = sorted(emitted | emit)
        return [self._record_at(entity, s, ent) for s in sorted(emit)]

    def _record_at(self, entity: str, start: int, ent: Entity) -> Kpi:
        acc = ent.wins.get(start)
        assert acc is not None, f"window {start} of {entity} has no state"
        return self.record(entity, start, acc, self._rolling(ent, start))

    def _rolling(self, ent: Entity, start: int) -> list[float]:
        end = start + self.window_ms
        total: list[float] = []
        for s, acc in ent.wins.items():
            summary = acc["s"]
            if end - DAY_MS <= s < end and summary:
                if not total:
                    total = [0.0] * len(summary)
                for i, v in enumerate(summary):
                    total[i] = fadd(total[i], v)
        return total

    def _prune(self, ent: Entity) -> dict[int, int]:
        """Drop windows beyond the horizon plus the 24 h they feed; {start: chunks} dropped."""
        assert ent.max is not None
        keep_from = ent.max - self.horizon_ms - DAY_MS - self.window_ms
        pruned = {s: ent.wins.pop(s)["c"] for s in [s for s in ent.wins if s < keep_from]}
        if pruned:
            ent.emitted = [s for s in ent.emitted if s >= keep_from]
        return pruned

    def due(self, entity: str, store: Store) -> list[Kpi]:
        """Records for the windows of `entity` not yet emitted as final: for the timer that
        closes windows on wall-clock time when the entity goes quiet. Changes no state."""
        ent = self._state(store, entity)
        emitted = set(ent.emitted)
        return [self._record_at(entity, s, ent) for s in sorted(ent.wins) if s not in emitted]

    def entities(self, store: Store) -> list[str]:
        """Every entity with state (scans all keys: for tests and tools, not hot paths)."""
        names = {k[2:] if k[0] == "s" else k[2:].rsplit("|", 1)[0]
                 for k in store if k.startswith(("s|", "d|"))}
        return sorted(names)

    def version(self, entity: str, store: Store) -> int | None:
        """Changes with every applied batch of `entity`; None if it has no state."""
        seq = self._state(store, entity).seq
        return seq or None


