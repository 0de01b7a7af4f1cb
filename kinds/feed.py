"""A feed declared in the city file (CONTRACT section 5) as a kind: `feed_kind(spec)`.

Its reading model and KPI record come from `models.feeds`; its raw points are measurement
`<kind>` with tags district, sensor_id and the entity field. `FeedEngine`, its KPI maths, is a
`KindEngine` built from the `FeedSpec`: windows, dedupe, lateness, late
correction, the quiet-window timer and the store layout are the shared engine's; this module
only says what a window accumulates and how its KPIs, target figures and alerts follow.

A window's accumulator (JSON in the store), besides the engine's own `n`, `c` and `s`:
- `r`: accepted readings;
- `f<i>`: per field used by sum/mean/min/max, `[count, sum, min, max]` of its values, or None;
- `k<j>`: per KPI that needs its own counter: count_above `[carrying, above]`, share_between
  `[carrying, inside]`, ratio_pct `[sum of field, sum of of]` or None, delta/increase the sum
  of deltas (None until a reading carries the field).

Per sensor the engine keeps, for delta and increase, the latest value of each such field
(`add_in_order`); a reading older than its sensor's newest adds no delta and changes nothing.
Boolean fields count as 1 and 0.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Final

from kpi.alerts import AlertKey, AlertRules
from kpi.engine import KindEngine
from kpi.numbers import bounded
from kpi.state import Entity
from models.city import City
from models.feeds import FeedSpec, FieldType, kpi_model, reading_model
from models.kinds import KindSpec
from models.raw import SEQ, PointType, RawSchema
from models.records import Alert, Kpi

_STAT_AGGS = ("sum", "mean", "min", "max")


class FeedEngine(KindEngine):
    """The engine of one declared feed."""

    carries_values = True

    def __init__(self, feed: FeedSpec, kpi_type: type[Kpi], city: City, *,
                 grace_s: int | None = None, horizon_s: int | None = None,
                 rules: AlertRules | None = None) -> None:
        self.feed = feed
        self.kind = feed.kind
        self.window_s = feed.window_s
        self.window_tag = feed.window_tag
        self.has_rolling = feed.target is not None
        self.kpi_type = kpi_type
        super().__init__(city, grace_s=grace_s, horizon_s=horizon_s, rules=rules)
        self._entity_field = feed.entity
        stat_fields = sorted({k.field for k in feed.kpis if k.agg in _STAT_AGGS and k.field})
        self._stat_key = {name: f"f{i}" for i, name in enumerate(stat_fields)}
        booleans = {n for n, spec in feed.fields.items() if spec.type == "boolean"}
        self._stats = tuple((name, key, name in booleans) for name, key in self._stat_key.items())
        self._above: list[tuple[str, str, float]] = []
        self._between: list[tuple[str, str, float, float]] = []
        self._ratios: list[tuple[str, str, str]] = []
        self._marks: list[tuple[str, str]] = []  # delta/increase: carried-field markers
        deltas: dict[str, list[tuple[str, bool]]] = {}  # field -> [(key, is_delta)]
        for j, kpi in enumerate(feed.kpis):
            key = f"k{j}"
            if kpi.agg == "count_above":
                self._above.append((key, kpi.field or "", float(kpi.threshold or 0.0)))
            elif kpi.agg == "share_between":
                self._between.append((key, kpi.field or "", float(kpi.min or 0.0),
                                       float(kpi.max or 0.0)))
            elif kpi.agg == "ratio_pct":
                self._ratios.append((key, kpi.field or "", kpi.of or ""))
            elif kpi.agg in ("delta", "increase"):
                self._marks.append((key, kpi.field or ""))
                deltas.setdefault(kpi.field or "", []).append((key, kpi.agg == "delta"))
        self._deltas = tuple((name, tuple(keys)) for name, keys in deltas.items())
        self._extra_keys = [f"k{j}" for j, kpi in enumerate(feed.kpis)
                            if kpi.agg not in (*_STAT_AGGS, "count", "sensors")]

    # -- accumulating ------------------------------------------------------------------------

    def entity(self, reading: Any) -> str:
        entity: str = getattr(reading, self._entity_field)  # a validated str field
        return entity

    def new_acc(self, entity: str) -> dict[str, Any]:
        acc: dict[str, Any] = {"r": 0}
        for _, key, _ in self._stats:
            acc[key] = None
        for key in self._extra_keys:
            acc[key] = None
        return acc

    def add(self, acc: dict[str, Any], reading: Any, delta: float | None) -> None:
        acc["r"] += 1
        for name, key, boolean in self._stats:
            value = getattr(reading, name)
            if value is None:
                continue
            if boolean:
                value = int(value)
            stat = acc[key]
            if stat is None:
                acc[key] = [1, value, value, value]
                continue
            stat[0] += 1
            stat[1] += value
            if value < stat[2]:
                stat[2] = value
            elif value > stat[3]:
                stat[3] = value
        for key, name, threshold in self._above:
            value = getattr(reading, name)
            if value is not None:
                counts = acc[key] or [0, 0]
                counts[0] += 1
                counts[1] += value > threshold
                acc[key] = counts
        for key, name, low, high in self._between:
            value = getattr(reading, name)
            if value is not None:
                counts = acc[key] or [0, 0]
                counts[0] += 1
                counts[1] += low <= value <= high
                acc[key] = counts
        for key, name, of in self._ratios:
            value, whole = getattr(reading, name), getattr(reading, of)
            if value is not None and whole is not None:
                sums = acc[key] or [0, 0]
                sums[0] += value
                sums[1] += whole
                acc[key] = sums
        for key, name in self._marks:
            if acc[key] is None and getattr(reading, name) is not None:
                acc[key] = 0.0

    def add_in_order(self, acc: dict[str, Any], reading: Any, carried: Any) -> Any:
        self.add(acc, reading, None)
        if not self._deltas:
            return None
        latest = carried if carried is not None else [None] * len(self._deltas)
        for i, (name, keys) in enumerate(self._deltas):
            value = getattr(reading, name)
            if value is None:
                continue
            previous = latest[i]
            latest[i] = value
            if previous is None:
                continue
            change = float(value - previous)
            for key, is_delta in keys:
                if is_delta:
                    acc[key] += change if change >= 0 else float(value)
                elif change > 0:
                    acc[key] += change
        return latest

    # -- results -----------------------------------------------------------------------------

    def kpis(self, acc: dict[str, Any]) -> dict[str, float | int | None]:
        """The window's KPI values by name (None: no reading carried the field)."""
        out: dict[str, float | int | None] = {}
        for j, kpi in enumerate(self.feed.kpis):
            agg, key = kpi.agg, f"k{j}"
            value: float | int | None = None
            if agg == "count":
                value = acc["r"]
            elif agg == "sensors":
                value = acc["n"]
            elif agg in _STAT_AGGS:
                stat = acc[self._stat_key[kpi.field or ""]]
                if stat is not None:
                    value = float({"sum": stat[1], "mean": stat[1] / stat[0],
                                   "min": stat[2], "max": stat[3]}[agg])
            elif agg in ("delta", "increase"):
                value = None if acc[key] is None else float(acc[key])
            elif agg == "count_above":
                value = None if acc[key] is None else acc[key][1]
            elif agg == "share_between":
                counts = acc[key]
                value = None if counts is None else 100.0 * counts[1] / counts[0]
            elif agg == "ratio_pct":
                sums = acc[key]
                value = (None if sums is None or sums[1] == 0
                         else 100.0 * float(sums[0]) / float(sums[1]))
            if kpi.scale is not None and value is not None:
                value = float(value) * kpi.scale
            out[kpi.name] = value
        return out

    def summary(self, entity: str, start: int, acc: dict[str, Any]) -> list[float]:
        if self.feed.target is None:
            return []
        value = self.kpis(acc)[self.feed.target.kpi]
        return [0.0, 0.0] if value is None else [float(value), 1.0]

    def record(self, entity: str, start: int, acc: dict[str, Any],
               rolling: list[float]) -> Kpi:
        fields: dict[str, Any] = {self.feed.entity: entity, "window": self.window_tag,
                                  "window_end_ms": start + self.window_ms, **self.kpis(acc)}
        target = self.feed.target
        if target is not None and rolling and rolling[1] > 0:
            mean = rolling[0] / rolling[1]
            fields[f"{target.kpi}_24h"] = mean
            fields["on_track"] = target.met(mean)
        return bounded(self.kpi_type, **fields)

    # -- alerts ------------------------------------------------------------------------------

    def _emissions(self, entity: str, ent: Entity, touched: set[int]) -> list[Kpi]:
        self._newest_before = max(ent.emitted, default=-1)
        return super()._emissions(entity, ent, touched)

    def record_alerts(self, ent: Entity, records: list[Kpi], active: set[AlertKey],
                      ) -> list[Alert]:
        """Rules are judged on windows newer than every window emitted before, in order; a
        late correction of an older window does not raise or clear an alert again."""
        alerts: list[Alert] = []
        if not self.feed.alerts:
            return alerts
        newest = self._newest_before
        for record in records:
            if record.time_ms - self.window_ms <= newest:
                continue
            newest = record.time_ms - self.window_ms
            entity = str(getattr(record, self.feed.entity))
            for rule in self.feed.alerts:
                value = getattr(record, rule.kpi)
                if value is None:
                    continue
                word = "above" if rule.above is not None else "below"
                alert = self.rules.transition(
                    record.time_ms, active, self.kind, entity, rule.rule,
                    rule.fires(float(value)), float(value), rule.threshold,
                    f"{self.feed.title}: {rule.kpi} is {float(value):g}, "
                    f"{'' if rule.fires(float(value)) else 'no longer '}{word} {rule.threshold:g}")
                if alert is not None:
                    alerts.append(alert)
        return alerts


_POINT_TYPES: Final[dict[FieldType, PointType]] = {
    "number": "float", "integer": "int", "boolean": "bool", "string": "str"}


def raw_schema(feed: FeedSpec) -> RawSchema:
    """A declared feed's raw points: measurement `<kind>`, tags district, the entity field (when
    it is not the district) and sensor_id; every other declared field a field of its type."""
    tags = (("district", "district"), *((name, name) for name in feed.entity_fields),
            ("sensor_id", "sensor_id"))
    fields = tuple((name, _POINT_TYPES[spec.type], not spec.optional)
                   for name, spec in feed.fields.items() if name not in feed.entity_fields)
    return RawSchema(feed.kind, tags, (*fields, SEQ))


def feed_kind(feed: FeedSpec) -> KindSpec:
    """The registry entry of a declared feed."""
    kpi_type = kpi_model(feed)
    return KindSpec(feed.kind, feed.title, reading_model(feed), kpi_type, feed.entity,
                    raw_schema(feed), partial(FeedEngine, feed, kpi_type), feed=feed)
