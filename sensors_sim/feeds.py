"""Declared feeds (CONTRACT section 5) simulated from their field definitions: no code per feed.

For every `[[feeds]]` table of the city file a `FeedFleet` lays out sensors and turns the group
of them due at one tick into reading dicts. Everything follows from the spec, so a feed added to
a city file is simulated as it stands:

* sensors: with `entity = "district"` two per district (`aq-bletchley-1`); with a string entity
  field four entity values named after the field (`cp-1` ... `cp-4` for `car_park`, `route-1`
  for `route`), each in one district, with 1-3 sensors each (`cp-1-1`, `bo-route-1-2`), every
  sensor bound to one value for the whole run. The sensor prefix is the initials of a
  multi-word kind (`aq` for `air_quality`), else the kind itself (`noise`).
* interval: max(60, window_s // 4) seconds (`interval_s`).
* each field plays a role (`roles`), decided from its type, its name and the KPIs using it:

  - the entity field: the sensor's entity value;
  - other strings: short ids named after the field (`stop_id` -> `stop-3`);
  - booleans: random;
  - counters: fields of a `delta` KPI, names ending in `_total`, and fields of an `increase`
    KPI that are not also the `field` of a `ratio_pct`: cumulative, never decreasing for a
    sensor, growing with the time of day; a `meter_reset` sensor fault (or reaching `max`, a
    rollover labelled the same way) restarts them near `min`;
  - capacities: the `of` of a `ratio_pct`: constant per sensor, 20-50 % into the range;
  - shares: the `field` of a `ratio_pct`: a daily occupancy (about 15 % at night, up to 98 %
    at peaks) times the capacity, never above it;
  - gauges: every other number or integer: a smooth daily profile (`profiles.activity_shape`)
    around a level inside the range plus slowly wandering noise, clipped short of the bounds.
    The level sits 35 % into a narrow range; wide ranges, whose bounds only reject sensor
    faults (PM2.5 0..1000), keep to their lower part (about 10); a range around zero (a delay,
    -3600..7200) stays near zero, slightly positive.

* optional fields are present in about 70 % of readings.

Random numbers come from the generator handed in (one per feed), so values depend only on the
city, the seed and the feed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from models.city import City
from models.feeds import FeedSpec, FieldSpec
from sensors_sim import profiles
from sensors_sim.profiles import F64, I64, Bools

INTERVAL_MIN_S: Final = 60
DISTRICT_SENSORS: Final = 2
ENTITY_VALUES: Final = 4
ENTITY_SENSORS: Final = (1, 3)
OPTIONAL_P: Final = 0.7
BOOLEAN_P: Final = 0.5
STRING_VALUES: Final = 12
NARROW_SPAN: Final = 120.0
"""Ranges up to this wide are used as they are; wider ones are sanity limits (see module doc)."""
NOISE_TAU_MS: Final = 3_600_000
"""Correlation time of a gauge's noise: it wanders over about an hour, not reading by reading."""
GAUGE_SWING: Final = 0.6
"""How strongly a gauge follows the activity shape (0: flat, 1: fully)."""
BUILTIN_PREFIXES: Final = frozenset({"wm", "em", "tc", "sh"})
_ID_SUFFIXES: Final = ("_id", "_name", "_code")

Role = Literal["entity", "string", "boolean", "counter", "capacity", "share", "gauge"]


def interval_s(feed: FeedSpec) -> int:
    """Seconds between a feed sensor's readings: max(60, window_s // 4)."""
    return max(INTERVAL_MIN_S, feed.window_s // 4)


def roles(feed: FeedSpec) -> dict[str, Role]:
    """The role of every field of a feed (see the module docstring)."""
    delta = {k.field for k in feed.kpis if k.agg == "delta"}
    increase = {k.field for k in feed.kpis if k.agg == "increase"}
    ratios = [(k.field, k.of) for k in feed.kpis if k.agg == "ratio_pct"]
    numeric = {n for n, f in feed.fields.items() if f.type in ("number", "integer")}
    numerators = {f for f, of in ratios if f in numeric and of in numeric and f != of}
    capacities = {of for f, of in ratios if f in numerators and of not in numerators}
    numerators = {f for f, of in ratios if f in numerators and of in capacities}
    out: dict[str, Role] = {}
    for name, spec in feed.fields.items():
        if name == feed.entity:
            out[name] = "entity"
        elif spec.type == "string":
            out[name] = "string"
        elif spec.type == "boolean":
            out[name] = "boolean"
        elif name in delta or name.endswith("_total"):
            out[name] = "counter"
        elif name in capacities:
            out[name] = "capacity"
        elif name in numerators:
            out[name] = "share"
        elif name in increase:
            out[name] = "counter"
        else:
            out[name] = "gauge"
    return out


def sensor_prefixes(kinds: Iterable[str]) -> dict[str, str]:
    """A distinct sensor-id prefix per feed kind: initials or the kind (see module doc)."""
    used = set(BUILTIN_PREFIXES)
    out: dict[str, str] = {}
    for kind in kinds:
        dashed = kind.replace("_", "-")
        for candidate in itertools.chain((_short(kind), dashed),
                                         (f"{dashed}-{i}" for i in itertools.count(2))):
            if candidate not in used:
                break
        used.add(candidate)
        out[kind] = candidate
    return out


def _words(name: str) -> list[str]:
    return [w for w in name.split("_") if w]


def _short(name: str) -> str:
    """Initials of a multi-word name (`car_park` -> `cp`), else the word (at most 12 chars)."""
    words = _words(name) or [name]
    if len(words) > 1:
        return "".join(w[0] for w in words)
    return words[0][:12]


def _stem(field_name: str) -> str:
    """A field name without an id-like suffix (`stop_id` -> `stop`)."""
    for suffix in _ID_SUFFIXES:
        if field_name.endswith(suffix) and len(field_name) > len(suffix):
            return field_name[: -len(suffix)]
    return field_name


def _cut_id(stem: str, number: int) -> str:
    """`<stem>-<number>`, the stem cut so the id fits the contract's 64 characters."""
    tail = f"-{number}"
    return f"{stem[: 64 - len(tail)].rstrip('-')}{tail}"


@dataclass(frozen=True)
class _Gauge:
    anchor: float
    level: float
    spread: float | None
    """Absolute noise sd, or None for a share of (level - anchor)."""


def _gauge(spec: FieldSpec) -> _Gauge:
    """Where a gauge field sits: value = anchor + (level - anchor) x daily profile + noise."""
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        span = hi - lo
        if lo < 0 < hi:  # a signed quantity: near zero, slightly positive
            wide = span > NARROW_SPAN
            return _Gauge(0.0, (0.01 if wide else 0.1) * hi,
                          (0.02 if wide else 0.1) * min(-lo, hi))
        if span <= NARROW_SPAN:
            return _Gauge(lo, lo + 0.35 * span, None)
        return _Gauge(lo, lo + 0.35 * span * (NARROW_SPAN / span) ** 1.5, None)
    if lo is not None:
        return _Gauge(lo, lo + 20.0, None)
    if hi is not None:
        return _Gauge(hi - 40.0, hi - 20.0, None)
    return _Gauge(0.0, 20.0, None)


def _inner(spec: FieldSpec, scale: float) -> tuple[float, float]:
    """The range a value is clipped to: the field's bounds less a small margin (0.5 % of the
    range, at most a tenth of `scale`, the size of the values: no pile-up at the margin)."""
    lo = -math.inf if spec.min is None else spec.min
    hi = math.inf if spec.max is None else spec.max
    scale = max(abs(scale), 1e-9)
    span = hi - lo if math.isfinite(hi - lo) else scale
    margin = min(0.005 * span, 0.1 * scale)
    lo_m, hi_m = lo + margin, hi - margin
    if spec.type == "integer":
        lo_i = float(math.ceil(lo_m)) if math.isfinite(lo_m) else lo_m
        hi_i = float(math.floor(hi_m)) if math.isfinite(hi_m) else hi_m
        return (lo_i, hi_i) if lo_i <= hi_i else (lo, hi)  # too narrow to keep off the bounds
    return lo_m, hi_m


def _decimals(spec: FieldSpec, scale: float) -> int:
    """Decimals a number field is written with: about four significant digits of its range."""
    if spec.min is not None and spec.max is not None and spec.max > spec.min:
        scale = spec.max - spec.min
    scale = max(abs(scale), 1e-9)
    return int(np.clip(3 - math.floor(math.log10(scale)), 1, 8))


class FeedFleet:
    """The sensors of one declared feed and the state behind their readings."""

    def __init__(self, feed: FeedSpec, city: City, rng: np.random.Generator,
                 prefix: str) -> None:
        self.feed = feed
        self.kind = feed.kind
        self.interval_ms = interval_s(feed) * 1000
        self.rng = rng
        self.roles = roles(feed)
        self.ids: list[str] = []
        self.districts: list[str] = []
        self.entities: list[str] = []
        slugs = [d.slug for d in city.districts]
        if feed.entity == "district":
            for slug in slugs:
                for n in range(1, DISTRICT_SENSORS + 1):
                    self.ids.append(_cut_id(f"{prefix}-{slug}", n))
                    self.districts.append(slug)
                    self.entities.append(slug)
        elif slugs:
            entity_prefix = _short(_stem(feed.entity))
            for k in range(ENTITY_VALUES):
                value = _cut_id(entity_prefix, k + 1)
                stem = value if value.startswith(prefix + "-") else f"{prefix}-{value}"
                count = int(rng.integers(ENTITY_SENSORS[0], ENTITY_SENSORS[1] + 1))
                for n in range(1, count + 1):
                    self.ids.append(_cut_id(stem, n))
                    self.districts.append(slugs[k % len(slugs)])
                    self.entities.append(value)
        n = self.n = len(self.ids)
        self.has_counters = "counter" in self.roles.values()
        self.prev_ts = np.full(n, -1, dtype=np.int64)
        self.shape = profiles.activity_shape()
        self.optional = [name for name, spec in feed.fields.items() if spec.optional]
        self.string_stems = {name: "-".join(_words(_stem(name)))[:24] or "id"
                             for name, role in self.roles.items() if role == "string"}

        # per-sensor state, drawn in field order
        self.gauges: dict[str, tuple[_Gauge, F64, F64, tuple[float, float], int]] = {}
        self.counters: dict[str, tuple[F64, F64, float, float]] = {}
        self.capacities: dict[str, F64] = {}
        self.shares: dict[str, tuple[list[str], F64, tuple[float, float]]] = {}
        for name, spec in feed.fields.items():
            role = self.roles[name]
            if role == "gauge":
                g = _gauge(spec)
                level = g.anchor + (g.level - g.anchor) * rng.lognormal(0.0, 0.25, n)
                noise = rng.normal(0.0, 1.0, n)
                self.gauges[name] = (g, np.asarray(level, dtype=np.float64), noise,
                                     _inner(spec, g.level - g.anchor),
                                     _decimals(spec, g.level - g.anchor))
            elif role == "counter":
                self.counters[name] = self._counter_state(spec, n)
            elif role == "capacity":
                self.capacities[name] = self._capacity(spec, n)
            elif role == "share":
                of = [k.of for k in feed.kpis if k.agg == "ratio_pct" and k.field == name
                      and k.of is not None and self.roles.get(k.of) == "capacity"]
                self.shares[name] = (of, rng.uniform(0.3, 0.5, n), _inner(spec, 1.0))
        self.share_noise = rng.normal(0.0, 1.0, n)

    def _counter_state(self, spec: FieldSpec, n: int) -> tuple[F64, F64, float, float]:
        """Start values, mean increase per minute, restart value and rollover limit of a
        counter field."""
        rng = self.rng
        lo = spec.min if spec.min is not None else 0.0
        per_min = rng.uniform(1.0, 4.0, n)
        if spec.max is not None:
            span = max(spec.max - lo, 0.0)
            start = lo + span * rng.uniform(0.001, 0.01, n)
            per_min = np.minimum(per_min, span / (30 * 1440))  # a month or more to the top
        else:
            start = lo + rng.uniform(500.0, 20000.0, n)
        if spec.type == "integer":
            start = np.floor(start)
        top = _inner(spec, float(np.max(per_min, initial=1.0)) * 1440)[1]
        return (np.asarray(start, dtype=np.float64), np.asarray(per_min, dtype=np.float64),
                lo, top)

    def _capacity(self, spec: FieldSpec, n: int) -> F64:
        rng = self.rng
        lo, hi = spec.min, spec.max
        if lo is not None and hi is not None:
            value = lo + (hi - lo) * rng.uniform(0.2, 0.5, n)
        elif hi is not None:
            value = (hi * rng.uniform(0.2, 0.5, n)) if hi > 0 else hi - rng.uniform(50, 500, n)
        else:
            value = (lo or 0.0) + rng.uniform(50.0, 500.0, n)
        value = np.round(value) if spec.type == "integer" else np.round(value, 1)
        lo_c, hi_c = _inner(spec, float(np.mean(value)) if n else 1.0)
        return np.asarray(np.clip(value, lo_c, hi_c), dtype=np.float64)

    def step(self, idx: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None) -> tuple[list[dict[str, Any]], Bools | None]:
        """Readings of sensors `idx` at `ts`; `reset` marks sensors whose counters restart.

        Returns the readings and the positions whose counters rolled over at `max` (a reset
        too), or None.
        """
        rng = self.rng
        feed = self.feed
        n = len(idx)
        prev = self.prev_ts[idx]
        dt_ms = np.where(prev < 0, self.interval_ms, np.maximum(ts - prev, 0))
        self.prev_ts[idx] = ts
        activity = self.shape[profiles.minute_of_week(ts)]
        rho = np.exp(-dt_ms / NOISE_TAU_MS)
        kick = np.sqrt(1.0 - rho ** 2)

        values: dict[str, list[Any]] = {}
        numeric: dict[str, F64] = {}
        rolled: Bools | None = None
        for name, spec in feed.fields.items():
            role = self.roles[name]
            if role == "entity":
                values[name] = [self.entities[i] for i in idx.tolist()]
            elif role == "string":
                stem = self.string_stems[name]
                values[name] = [f"{stem}-{k}" for k in
                                rng.integers(1, STRING_VALUES + 1, n).tolist()]
            elif role == "boolean":
                values[name] = (rng.random(n) < BOOLEAN_P).tolist()
            elif role == "gauge":
                g, level, noise, (lo, hi), _ = self.gauges[name]
                z = rho * noise[idx] + kick * rng.normal(0.0, 1.0, n)
                noise[idx] = z
                centre = g.anchor + (level[idx] - g.anchor) * (1.0 + GAUGE_SWING
                                                               * (activity - 1.0))
                spread = g.spread if g.spread is not None \
                    else 0.12 * np.abs(level[idx] - g.anchor)
                numeric[name] = np.clip(centre + spread * z, lo, hi)
            elif role == "counter":
                start, per_min, lo, hi = self.counters[name]
                mean = per_min[idx] * activity * dt_ms / 60_000
                if spec.type == "integer":
                    inc = rng.poisson(mean).astype(np.float64)
                else:
                    inc = rng.gamma(4.0, 0.25, n) * mean
                base = np.where(reset, lo, start[idx]) if reset is not None else start[idx]
                value = base + inc
                over = value > hi
                if over.any():
                    value = np.where(over, lo + inc, value)
                    rolled = over if rolled is None else rolled | over
                start[idx] = value
                numeric[name] = value
            elif role == "capacity":
                numeric[name] = self.capacities[name][idx]
        for name, (of, base_share, (lo, hi)) in self.shares.items():
            z = rho * self.share_noise[idx] + kick * rng.normal(0.0, 1.0, n)
            self.share_noise[idx] = z
            share = np.clip(base_share[idx] * activity ** 1.3 + 0.04 * z, 0.02, 0.98)
            cap = np.min(np.vstack([numeric[o] for o in of]), axis=0)
            value = share * cap
            if feed.fields[name].type == "integer":
                value = np.floor(value)
            top = np.minimum(hi, cap)  # never above its `of`
            numeric[name] = np.clip(value, np.minimum(lo, np.floor(top / 2)), top)

        for name, array in numeric.items():
            spec = feed.fields[name]
            if spec.type == "integer":
                values[name] = np.rint(array).astype(np.int64).tolist()
            elif self.roles[name] == "counter":
                values[name] = np.round(array, 3).tolist()
            elif name in self.gauges:
                values[name] = np.round(array, self.gauges[name][4]).tolist()
            else:
                values[name] = np.round(array, 2).tolist()

        present = rng.random((n, len(self.optional))) < OPTIONAL_P if self.optional else None
        skip = {name: present[:, k].tolist() for k, name in enumerate(self.optional)} \
            if present is not None else {}
        order = list(feed.fields)
        out: list[dict[str, Any]] = []
        for j in range(n):
            r: dict[str, Any] = {"sensor_id": ids[j], "ts": ts_values[j], "seq": seqs[j]}
            for name in order:
                shown = skip.get(name)
                if shown is None or shown[j]:
                    r[name] = values[name][j]
            out.append(r)
        return out, rolled
