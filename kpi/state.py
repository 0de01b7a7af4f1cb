"""The stored format of the KPI engine's state: what one entity keeps in a store, and how.

A store is a `str -> bytes` mapping (a Faust table in the worker, a dict in tests). Per entity:
- `d|<entity>|<slot>`: one delta per applied batch (changed windows and sensors, and the small
  fields) in a ring of `DELTA_SLOTS`: the batch's commit point, one write;
- `s|<entity>`: a snapshot of the whole state, rewritten after at most `DELTA_SLOTS` - 1 deltas
  and once the deltas since the last outweigh it, so writes stay in proportion to the readings;
- `c|<entity>|<window start>|<n>`: the (sensor, ts) pairs a batch added to a window, written
  once: read back only for readings that arrive out of order (dedupe).

Values are JSON. The layout of a window's accumulator and a sensor's record is named below
(`WINDOW_*`, `SENSOR_*`); the bytes are those every earlier version wrote, so state and
changelogs written before still load.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Final

import orjson

from kpi.quality import QualityState
from models.quality import SensorQuality
from models.records import Alert

Store = MutableMapping[str, bytes]
DELTA_SLOTS: Final = 64

WINDOW_SENSORS: Final = "n"  # distinct sensors with a reading in the window
WINDOW_CHUNKS: Final = "c"  # dedupe chunks written for the window (c|entity|start|0..c-1)
WINDOW_SUMMARY: Final = "s"  # what the rolling 24 h figures need of it (`KindEngine.summary`)
"""Keys the engine adds to every window's accumulator, beside the kind's own."""

SENSOR_TS: Final = 0  # the sensor's newest accepted ts
SENSOR_INTERVAL: Final = 1  # its usual interval (smallest gap seen), 0 until known
SENSOR_VALUE: Final = 2  # its unit value (register ...) or the values `add_in_order` carries
"""Positions in a sensor's record, a JSON array [ts, interval, value]."""


class Entity:
    """One entity's state (district, junction or route).

    In memory: the newest event time, the last applied source offset, the windows (sums, a
    distinct-sensor count, a summary for the 24 h figures, how many dedupe chunks they have),
    which were emitted, the active alerts, and per sensor [newest ts, usual interval, value].

    In the store, per entity, only what batches change (the module docstring).
    Writes of one table reach its changelog in order, so after a crash the store holds a prefix
    of them: a batch whose delta is missing never happened, and its redelivery writes the same
    chunks again.
    """

    __slots__ = ("alerts", "delta_bytes", "emitted", "max", "next_silence", "off", "quality",
                 "resent_off", "sensors", "seq", "snap_bytes", "snap_seq", "wins")

    def __init__(self) -> None:
        self.seq = 0
        self.off = -1
        self.max: int | None = None
        self.emitted: list[int] = []
        self.alerts: list[list[str]] = []
        self.wins: dict[int, dict[str, Any]] = {}
        self.sensors: dict[str, list[Any]] = {}
        self.snap_seq = 0
        self.snap_bytes = 0
        self.delta_bytes = 0
        self.next_silence = -1  # event time after which a sensor may fall silent; -1: sweep
        self.resent_off = -2  # `off` when the emitted windows were last sent again (memory only)
        self.quality = QualityState()

    def to_json(self) -> dict[str, Any]:
        data = {"seq": self.seq, "off": self.off, "max": self.max, "emitted": self.emitted,
                "alerts": self.alerts, "wins": {str(s): a for s, a in self.wins.items()},
                "sensors": self.sensors}
        quality = self.quality
        if quality.hours or quality.sensors or quality.done is not None:
            data.update(qh={str(h): t for h, t in quality.hours.items()}, qs=quality.sensors,
                        qdone=quality.done)
        return data

    def quality_delta(self, tallies: set[tuple[int, str]], judged: list[int],
                      histories: set[str]) -> dict[str, Any]:
        """The delta keys of a batch's quality changes (none if it changed nothing)."""
        quality = self.quality
        if not (tallies or judged or histories):
            return {}
        changed: dict[str, dict[str, Any]] = {}
        for hour, sensor_id in tallies:
            if hour in quality.hours:
                changed.setdefault(str(hour), {})[sensor_id] = quality.hours[hour][sensor_id]
        hours: dict[str, dict[str, Any] | None] = {**changed, **{str(h): None for h in judged}}
        return {"qh": hours, "qs": {s: quality.sensors.get(s) for s in histories},
                "qdone": quality.done}

    def apply(self, data: dict[str, Any]) -> None:
        """Apply a snapshot or a delta read back from the store."""
        self.seq, self.off, self.max = data["seq"], data["off"], data["max"]
        self.emitted, self.alerts = data["emitted"], data["alerts"]
        for s, acc in data["wins"].items():
            if acc is None:
                self.wins.pop(int(s), None)
            else:
                self.wins[int(s)] = acc
        self.sensors.update(data["sensors"])
        quality = self.quality
        for h, tallies in data.get("qh", {}).items():
            if tallies is None:
                quality.hours.pop(int(h), None)
            else:
                quality.hours.setdefault(int(h), {}).update(tallies)
        for sensor_id, history in data.get("qs", {}).items():
            if history is None:
                quality.sensors.pop(sensor_id, None)
            else:
                quality.sensors[sensor_id] = history
        if "qdone" in data:
            quality.done = data["qdone"]

    @classmethod
    def read(cls, store: Store, entity: str) -> Entity:
        ent = cls()
        raw = store.get(skey(entity))
        if raw is not None:
            ent.apply(orjson.loads(raw))
            ent.snap_seq, ent.snap_bytes = ent.seq, len(raw)
        deltas = []
        for slot in range(DELTA_SLOTS):
            raw = store.get(dkey(entity, slot))
            if raw is not None and (delta_seq(raw) or 0) > ent.seq:
                deltas.append(orjson.loads(raw))
        for delta in sorted(deltas, key=lambda d: int(d["seq"])):
            if delta["seq"] != ent.seq + 1:
                break
            ent.apply(delta)
        return ent


class Seen:
    """The (sensor, ts) pairs and the sensors of one window, and how many chunks they hold."""

    __slots__ = ("count", "pairs", "sensors")

    def __init__(self) -> None:
        self.count = 0
        self.pairs: set[tuple[str, int]] = set()
        self.sensors: set[str] = set()

    def add(self, sensor_id: str, ts: int) -> None:
        self.pairs.add((sensor_id, ts))
        self.sensors.add(sensor_id)


def _delta_of_batch(store: Store, entity: str, offset: int) -> dict[str, Any]:
    """The delta of the applied batch at `offset`, if it is still in the ring (a redelivery
    after a crash comes within the last few batches); empty otherwise."""
    for slot in range(DELTA_SLOTS):
        raw = store.get(dkey(entity, slot))
        if raw is not None:
            delta: dict[str, Any] = orjson.loads(raw)
            if delta["off"] == offset:
                return delta
    return {}


def alerts_of_batch(store: Store, entity: str, offset: int) -> list[Alert]:
    """The alert transitions of the applied batch at `offset` (see `_delta_of_batch`)."""
    return [Alert.model_validate(a)
            for a in _delta_of_batch(store, entity, offset).get("raised", ())]


def quality_of_batch(store: Store, entity: str, offset: int) -> list[SensorQuality]:
    """The `sensor_quality` points the applied batch at `offset` judged (see
    `_delta_of_batch`)."""
    return [SensorQuality.model_validate(p)
            for p in _delta_of_batch(store, entity, offset).get("judged", ())]


def stored(obj: Any) -> bytes:
    """JSON for the store, right-sized: orjson (3.12 on) returns a buffer of at least 4 KiB
    whatever the length, and a memory store keeps each value for days (measured: 15 MB per
    hour of the city's event time, against 1 MB of JSON)."""
    return bytes(memoryview(orjson.dumps(obj)))


def delta_seq(raw: bytes | None) -> int | None:
    """The seq of a delta without parsing it all (deltas start with {"seq":N,)."""
    if raw is None:
        return None
    head = bytes(raw[7:27]).split(b",", 1)[0]
    return int(head)


def skey(entity: str) -> str:
    return f"s|{entity}"


def dkey(entity: str, slot: int) -> str:
    return f"d|{entity}|{slot}"


def ckey(entity: str, start: int, n: int) -> str:
    return f"c|{entity}|{start}|{n}"
