"""The simulation: a deterministic stream of MQTT messages for simulated time, no transport.

`Simulation(city, config).messages()` yields `Message`s in publish order. Sensors form two
lanes: the built-in kinds (water, energy, traffic, shuttle) and the city file's declared feeds
(`sensors_sim.feeds`, every `[[feeds]]` table, no code per feed). A lane advances in ticks (the
greatest common divisor of its sensor intervals; the feed lane's also divides the built-in
one); every sensor reports once per interval at a fixed phase and a fixed sub-tick jitter, so a
reading's `ts` is at most one tick of its lane before the simulated clock
(`Message.sim_time_ms`) and never after it. Everything random comes from one seed through
separate numpy generators (meters, traffic, shuttles, sensor faults, message faults, layout;
the feed lane has its own sensor-fault, message-fault and layout generators and one value
generator per feed), so the stream depends only on the city, the config and the seed: the same
inputs give the same bytes, and the built-in kinds' messages are the same whatever feeds the
city declares (feed messages are interleaved in publish order). Faults follow
`sensors_sim.faults`.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from models.city import City
from sensors_sim import faults, feeds, profiles
from sensors_sim.faults import DUPLICATE, VALID, Expected, FeedFaults
from sensors_sim.feeds import FeedFleet
from sensors_sim.fleets import MeterFleet, TrafficCounters
from sensors_sim.profiles import F64, I64, Bools
from sensors_sim.shuttle import ShuttleFleet

Scenario = Literal["baseline", "savings"]
TsFormat = Literal["ms", "utc", "local"]

TS_FORMATS: Final[dict[str, TsFormat]] = {
    "water": "ms", "energy": "utc", "traffic": "ms", "shuttle": "local"}
"""How each kind writes `ts`: epoch ms, RFC 3339 in UTC (`Z`), RFC 3339 with the city's offset."""
FEED_TS_FORMAT: Final[TsFormat] = "ms"
"""How declared feeds write `ts`."""
FEED_SEEDS: Final = 7
"""Spawn key of the feed lane's generators: the built-in ones are children 0-6 of the seed."""
SILENT_S: Final = (600, 3600)
SKEW_S: Final = (900, 5400)
SKEW_MS: Final = (5_001, 90_999)
HOLD_INTERVALS: Final = (1.0, 3.0)
"""A reordered message is held for this many of its sensor's message intervals."""
POOL_SIZE: Final = 512


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Only `start_ms` has no default."""

    start_ms: int
    seed: int = 1
    size: float = 1.0
    batch: int = 1
    gateways: int = 1
    meter_interval_s: int = 60
    traffic_interval_s: int = 60
    shuttle_interval_s: int = 10
    scenario: Scenario = "baseline"
    ramp_s: float = 86400.0
    leak_districts: tuple[str, ...] = ()
    fault_rates: Mapping[str, float] = field(default_factory=dict)
    horizon_s: int | None = None
    """Late-data horizon for too_old / future_timestamp faults; default the city file's."""


def lookback_ms(config: SimConfig) -> int:
    """How much older than its sim time a message's oldest reading can be: a batch spans
    `batch` intervals, a reordered message is held up to 3 more, a duplicate repeats a message
    at most this old, and clock skew adds up to 91 s.

    Declared feeds stay within the same bound whatever their interval: a feed sensor's batch
    never spans more than `batch` built-in intervals and its reordered messages are held for
    at most 3 of those (`Simulation`), so the city's feeds never narrow `--start`."""
    longest = max(config.meter_interval_s, config.traffic_interval_s, config.shuttle_interval_s)
    return (4 * config.batch * longest + 91) * 1000


@dataclass(slots=True)
class Message:
    """One MQTT message and what ingest must make of it."""

    topic: str
    payload: bytes
    gateway: int
    readings: int
    faults: tuple[str, ...]
    expected: tuple[Expected, ...]
    oldest_ts_ms: int
    """Oldest timestamp the message relies on being inside the horizon when published."""
    sim_time_ms: int = 0
    """The simulated clock when the message is handed to the broker (never before any `ts`)."""


class _Lane:
    """Kinds that tick together and share their fault streams: the sensor-fault generator, the
    message-fault uniforms, the pool duplicates come from and the queue of held messages."""

    def __init__(self, step_ms: int, rng_sensor: np.random.Generator,
                 rng_msg: np.random.Generator, pool_age_ms: int) -> None:
        self.step_ms = step_ms
        self.rng_sensor = rng_sensor
        self.uniform = _Uniforms(rng_msg)
        self.pool: deque[Message] = deque(maxlen=POOL_SIZE)
        self.pool_age_ms = pool_age_ms  # duplicates repeat recent messages
        self.held: list[tuple[int, int, Message]] = []  # (due sim ms, order, message)
        self.held_count = 0
        self.kinds: list[_Kind] = []


class _Kind:
    """The sensors of one kind: ids, topics, phases and the fleet that makes their readings."""

    def __init__(self, name: str, ids: list[str], districts: list[str], interval_s: int,
                 lane: _Lane, offset: int, layout: np.random.Generator, *, batch: int,
                 longest_s: int, counters: bool, feed: FeedFleet | None = None) -> None:
        self.name = name
        self.ids = ids
        self.topics = [f"city/{d}/{name}/{s}" for d, s in zip(districts, ids, strict=True)]
        self.districts = districts
        self.interval_ms = interval_s * 1000
        self.batch = max(1, min(batch, batch * longest_s // interval_s))
        """Readings per message: `--batch`, but never spanning more than `--batch` intervals of
        the longest built-in kind (so long-interval feeds keep within `lookback_ms`)."""
        self.hold_interval_ms = min(interval_s, longest_s) * 1000
        """A reordered message is held for 1-3 x batch of these."""
        self.lane = lane
        self.offset = offset
        self.fmt = TS_FORMATS.get(name, FEED_TS_FORMAT)
        self.counters = counters
        """Whether `meter_reset` applies (registers, feed counters)."""
        self.feed = feed
        self.feed_faults = FeedFaults(feed.feed) if feed is not None else None
        self.sensor_cuts = (0.0, 0.0, 0.0)
        self.phases = self.interval_ms // lane.step_ms
        phase = layout.integers(0, self.phases, len(ids))
        self.groups = {p: np.flatnonzero(phase == p).astype(np.int64)
                       for p in range(self.phases) if np.any(phase == p)}
        lane.kinds.append(self)


class _Uniforms:
    """Scalar uniforms from a generator, drawn in blocks (numpy scalar calls are slow)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.block: list[float] = []
        self.i = 0

    def __call__(self) -> float:
        if self.i == len(self.block):
            self.block = self.rng.random(4096).tolist()
            self.i = 0
        self.i += 1
        return self.block[self.i - 1]


class Simulation:
    """A seeded city simulation; iterate `messages()` (endless) for what to publish."""

    def __init__(self, city: City, config: SimConfig) -> None:
        if config.batch < 1:
            raise ValueError("batch must be at least 1")
        if config.gateways < 1:
            raise ValueError("gateways must be at least 1")
        intervals = (config.meter_interval_s, config.traffic_interval_s,
                     config.shuttle_interval_s)
        if min(intervals) < 1:
            raise ValueError("sensor intervals must be at least 1 s")
        if config.traffic_interval_s > 3600:
            raise ValueError("traffic interval must be at most 3600 s (the contract's limit)")
        unknown = [s for s in config.leak_districts if s not in {d.slug for d in city.districts}]
        if unknown:
            raise ValueError(f"--leak-district {', '.join(unknown)}: no such district in "
                             f"{city.name} (districts: "
                             f"{', '.join(d.slug for d in city.districts)})")
        rates = faults.check_rates(config.fault_rates)
        self.city = city
        self.config = config
        self.horizon_ms = 1000 * (config.horizon_s if config.horizon_s is not None
                                  else city.windows.horizon_s)
        self.tz = ZoneInfo(city.timezone)
        self.step_ms = 1000 * math.gcd(*intervals)  # the built-in lane's tick
        seeds = np.random.SeedSequence(config.seed).spawn(7)
        rng_water, rng_energy, rng_traffic, rng_shuttle, rng_sensor, rng_msg, rng_layout = (
            np.random.default_rng(s) for s in seeds)
        self.longest_s = max(intervals)
        self.builtin = _Lane(self.step_ms, rng_sensor, rng_msg,
                             config.batch * 1000 * self.longest_s)
        self.lanes = [self.builtin]
        self.message_rates = {k: v for k, v in rates.items() if k in faults.MESSAGE_FAULTS}
        self.sensor_rates = {k: v for k, v in rates.items() if k in faults.SENSOR_FAULTS}

        progress = self._progress_fn()
        traffic_shape = profiles.traffic_shape()
        self.water = MeterFleet("water", city, config.size, config.meter_interval_s, rng_water,
                                progress, config.leak_districts, self.local_offset_s)
        self.energy = MeterFleet("energy", city, config.size, config.meter_interval_s,
                                 rng_energy, progress, (), self.local_offset_s)
        self.traffic = TrafficCounters(city, config.size, config.traffic_interval_s,
                                       rng_traffic, progress, traffic_shape)
        demand = profiles.shuttle_demand()
        self.shuttles: list[ShuttleFleet] = []
        shuttle_ids: list[str] = []
        shuttle_districts: list[str] = []
        self._shuttle_of: list[tuple[int, int]] = []  # local shuttle index -> (fleet, vehicle)
        for route in city.routes:
            if len(route.stops) < 2:
                continue
            fleet = ShuttleFleet(route, config.shuttle_interval_s, rng_shuttle, self.tz,
                                 config.start_ms, demand, traffic_shape)
            for v in range(route.fleet_size):
                shuttle_ids.append(_route_vehicle_id(route.id, v + 1))
                shuttle_districts.append(route.district)
                self._shuttle_of.append((len(self.shuttles), v))
            self.shuttles.append(fleet)

        self.kinds: list[_Kind] = []
        offset = 0
        for name, ids, districts, interval in (
                ("water", self.water.ids, self.water.districts, config.meter_interval_s),
                ("energy", self.energy.ids, self.energy.districts, config.meter_interval_s),
                ("traffic", self.traffic.ids, self.traffic.districts,
                 config.traffic_interval_s),
                ("shuttle", shuttle_ids, shuttle_districts, config.shuttle_interval_s)):
            self.kinds.append(_Kind(name, ids, districts, interval, self.builtin, offset,
                                    rng_layout, batch=config.batch, longest_s=self.longest_s,
                                    counters=name in ("water", "energy")))
            offset += len(ids)
        jitters = [rng_layout.integers(0, self.step_ms, offset).astype(np.int64)]
        self.loop_step_ms = self.step_ms
        if city.feeds:
            offset = self._add_feeds(city, offset, jitters)
        self.n_sensors = offset
        for kind in self.kinds:
            kind.sensor_cuts = self._sensor_cuts(kind)
        if offset == 0:
            raise ValueError(f"{city.name} has no sensors to simulate")
        all_ids = [s for k in self.kinds for s in k.ids]
        if len(set(all_ids)) != len(all_ids):
            raise ValueError("sensor ids collide; shorten district or junction ids")
        self.jitter = np.concatenate(jitters)
        self.gateway = self._gateways(config.gateways)
        self.gateway_of: list[int] = self.gateway.tolist()
        self.seq = np.zeros(offset, dtype=np.int64)
        self.silent_until = np.full(offset, -1, dtype=np.int64)
        self.skew_until = np.full(offset, -1, dtype=np.int64)
        self.skew_ms = np.zeros(offset, dtype=np.int64)
        self._buffers: list[list[dict[str, Any]]] = [[] for _ in range(offset)]
        self._buffer_ts: list[list[int]] = [[] for _ in range(offset)]
        self._buffer_labels: list[set[str] | None] = [None] * offset
        self._flush_at = [(g % k.batch) + 1 for k in self.kinds  # staggered first batches
                          for g in range(k.offset, k.offset + len(k.ids))]
        self._out: list[Message] = []
        self._tick = 0
        self._valid: dict[int, tuple[Expected, ...]] = {}
        self.first_tick_ms = (config.start_ms // self.loop_step_ms + 1) * self.loop_step_ms

    # -- set-up helpers -------------------------------------------------------------------

    def _add_feeds(self, city: City, offset: int, jitters: list[I64]) -> int:
        """The declared feeds' kinds, on a lane of their own with generators of their own
        (children of the seed that the built-in kinds never use), so the built-in kinds'
        messages stay the same byte for byte. Returns the new sensor count."""
        seed = self.config.seed
        rng_sensor, rng_msg, rng_layout = (
            np.random.default_rng(s)
            for s in np.random.SeedSequence(seed, spawn_key=(FEED_SEEDS,)).spawn(3))
        intervals = [feeds.interval_s(f) for f in city.feeds]
        step_ms = 1000 * math.gcd(self.step_ms // 1000, *intervals)
        lane = _Lane(step_ms, rng_sensor, rng_msg, self.config.batch * 1000 * self.longest_s)
        prefixes = feeds.sensor_prefixes(f.kind for f in city.feeds)
        start = offset
        for feed, interval in zip(city.feeds, intervals, strict=True):
            rng = np.random.default_rng(np.random.SeedSequence(
                seed, spawn_key=(FEED_SEEDS + 1, zlib.crc32(feed.kind.encode()))))
            fleet = FeedFleet(feed, city, rng, prefixes[feed.kind])
            if not fleet.ids:
                continue
            self.kinds.append(_Kind(feed.kind, fleet.ids, fleet.districts, interval, lane,
                                    offset, rng_layout, batch=self.config.batch,
                                    longest_s=self.longest_s, counters=fleet.has_counters,
                                    feed=fleet))
            offset += len(fleet.ids)
        if offset > start:
            jitters.append(rng_layout.integers(0, step_ms, offset - start).astype(np.int64))
            self.lanes.append(lane)
            self.loop_step_ms = step_ms
        return offset

    def _progress_fn(self) -> Callable[[I64], F64]:
        start, ramp_ms = self.config.start_ms, max(self.config.ramp_s, 1.0) * 1000
        if self.config.scenario == "savings":
            return lambda ts: np.asarray(np.clip((ts - start) / ramp_ms, 0.0, 1.0),
                                         dtype=np.float64)
        return lambda ts: np.zeros(np.shape(ts))

    def _sensor_cuts(self, kind: _Kind) -> tuple[float, float, float]:
        """Cumulative per-reading start probabilities of meter_reset, silent and clock_skew.

        A silent or skew rate r is the share of readings affected: with episodes of L readings
        on average, an episode starts with probability r / (L (1 - r)) per unaffected reading.
        """
        rates = self.sensor_rates
        interval_s = kind.interval_ms / 1000

        def start_p(rate: float, seconds: tuple[int, int]) -> float:
            if rate <= 0:
                return 0.0
            episode = max(1.0, (seconds[0] + seconds[1]) / 2 / interval_s)
            return min(1.0, rate / (episode * max(1e-9, 1.0 - rate)))

        reset = rates.get("meter_reset", 0.0) if kind.counters else 0.0
        silent = start_p(rates.get("silent", 0.0), SILENT_S)
        skew = start_p(rates.get("clock_skew", 0.0), SKEW_S)
        return reset, reset + silent, reset + silent + skew

    def _gateways(self, n: int) -> I64:
        """Sensors grouped by district (then kind) into `n` gateways of about equal size."""
        order = {d.slug: i for i, d in enumerate(self.city.districts)}
        keys = [(order.get(d, 0), k_i, i) for k_i, k in enumerate(self.kinds)
                for i, d in enumerate(k.districts)]
        ranks = np.empty(self.n_sensors, dtype=np.int64)
        for rank, (_, k_i, i) in enumerate(sorted(keys)):
            ranks[self.kinds[k_i].offset + i] = rank
        return ranks * n // self.n_sensors

    def local_offset_s(self, ts_ms: int) -> int:
        """The city's UTC offset in seconds at an instant (cached per hour)."""
        return _utc_offset(self.city.timezone, ts_ms // 3_600_000)

    def sensors(self) -> list[tuple[str, str, str, int]]:
        """(kind, sensor_id, topic, gateway) of every simulated sensor."""
        return [(k.name, s, t, int(self.gateway[k.offset + i])) for k in self.kinds
                for i, (s, t) in enumerate(zip(k.ids, k.topics, strict=True))]

    # -- the stream -----------------------------------------------------------------------

    def messages(self) -> Iterator[Message]:
        """Messages in publish order, tick after tick, for ever (at a tick of both lanes the
        built-in kinds' messages come first)."""
        step = self.loop_step_ms
        lanes = self.lanes
        t = self.first_tick_ms
        while True:
            self._tick = t
            for lane in lanes:
                lane_step = lane.step_ms
                if t % lane_step:
                    continue
                for kind in lane.kinds:
                    group = kind.groups.get((t // lane_step) % kind.phases)
                    if group is not None:
                        self._emit(kind, group, t)
                if lane.held:
                    self._release_held(lane, t)
            if self._out:
                out, self._out = self._out, []
                yield from out
            t += step

    def _emit(self, kind: _Kind, local: I64, tick: int) -> None:
        g = local + kind.offset
        ts = tick - self.jitter[g]
        n = len(g)
        silent: Bools | None = None
        reset: Bools | None = None
        new_silent: Bools | None = None
        skewed: Bools | None = None
        ts_out = ts
        if self.sensor_rates:
            rng_sensor = kind.lane.rng_sensor
            silent = self.silent_until[g] > ts
            skewed_now = self.skew_until[g] > ts
            u = rng_sensor.random(n)
            eligible = ~silent & ~skewed_now
            c1, c2, c3 = kind.sensor_cuts
            reset = eligible & (u < c1)
            new_silent = eligible & (u >= c1) & (u < c2)
            new_skew = eligible & (u >= c2) & (u < c3)
            if new_silent.any():
                hit = g[new_silent]
                self.silent_until[hit] = ts[new_silent] + 1000 * rng_sensor.integers(
                    *SILENT_S, len(hit))
            if new_skew.any():
                hit = g[new_skew]
                size = len(hit)
                self.skew_until[hit] = ts[new_skew] + 1000 * rng_sensor.integers(
                    *SKEW_S, size)
                amount = rng_sensor.integers(*SKEW_MS, size)
                amount += amount % 1000 == 0  # never a whole second: no clash with other ts
                sign = np.where(rng_sensor.random(size) < 0.5, -1, 1)
                self.skew_ms[hit] = sign * amount
                skewed_now = skewed_now | new_skew
            if not reset.any():
                reset = None
            if skewed_now.any():
                skewed = skewed_now
                ts_out = np.where(skewed_now, ts + self.skew_ms[g], ts)
        ts_values = self._format_ts(kind.fmt, ts_out, tick)
        ids = [kind.ids[i] for i in local.tolist()]
        seqs = self.seq[g].tolist()
        leaking: I64 | None = None
        if kind.feed is not None:
            readings, rolled = kind.feed.step(local, ts, ids, ts_values, seqs, reset)
            if rolled is not None:  # a counter rolled over at its max: a reset too
                reset = rolled if reset is None else reset | rolled
        elif kind.name == "water":
            readings, leaking = self.water.step(local, ts, ids, ts_values, seqs, reset, tick)
        elif kind.name == "energy":
            readings, _ = self.energy.step(local, ts, ids, ts_values, seqs, reset, tick)
        elif kind.name == "traffic":
            readings = self.traffic.step(local, ts, ids, ts_values, seqs)
        else:
            readings = self._shuttle_step(local, ts, ids, ts_values, seqs)
        if silent is None:
            self.seq[g] += 1
        else:
            self.seq[g[~silent]] += 1

        labels: dict[int, set[str]] = {}
        for mask, label in ((reset, "meter_reset"), (new_silent, "silent"),
                            (skewed, "clock_skew")):
            if mask is not None and mask.any():
                for j in np.flatnonzero(mask).tolist():
                    labels.setdefault(j, set()).add(label)
        if leaking is not None:
            for j in leaking.tolist():
                labels.setdefault(j, set()).add("leak")

        quiet = [False] * n if silent is None else silent.tolist()
        silent_start = new_silent.tolist() if new_silent is not None and new_silent.any() \
            else None
        g_list = g.tolist()
        ts_list = ts_out.tolist()
        local_list = local.tolist()
        if self.config.batch == 1:
            if not labels and not self.message_rates:  # the fast path: clean messages
                valid = self._valid_for(1)
                out = self._out
                gateways = self.gateway_of
                for j, r in enumerate(readings):
                    if not quiet[j]:
                        gi = g_list[j]
                        out.append(Message(kind.topics[local_list[j]], orjson.dumps(r),
                                           gateways[gi], 1, (), valid,
                                           min(ts_list[j], tick), tick))
                return
            for j, r in enumerate(readings):
                if not quiet[j]:
                    self._finish(kind, local_list[j], [r], [ts_list[j]], labels.get(j))
            return
        for j, r in enumerate(readings):
            if quiet[j]:
                continue
            gi = g_list[j]
            buf = self._buffers[gi]
            buf.append(r)
            self._buffer_ts[gi].append(ts_list[j])
            if j in labels:
                got = self._buffer_labels[gi]
                self._buffer_labels[gi] = labels[j] if got is None else got | labels[j]
            if len(buf) >= self._flush_at[gi] or (silent_start is not None and silent_start[j]):
                # (a sensor going quiet: the gateway sends what it holds, no batch spans the gap)
                self._finish(kind, local_list[j], buf, self._buffer_ts[gi],
                             self._buffer_labels[gi])
                self._buffers[gi] = []
                self._buffer_ts[gi] = []
                self._buffer_labels[gi] = None
                self._flush_at[gi] = kind.batch

    def _shuttle_step(self, local: I64, ts: I64, ids: list[str], ts_values: list[Any],
                      seqs: list[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        ts_list = ts.tolist()
        for j, i in enumerate(local.tolist()):
            fleet, vehicle = self._shuttle_of[i]
            out += self.shuttles[fleet].step([vehicle], [ts_list[j]], [ids[j]], [ts_values[j]],
                                             [seqs[j]])
        return out

    def _format_ts(self, fmt: TsFormat, ts: I64, tick: int) -> list[Any]:
        if fmt == "ms":
            return list(ts.tolist())
        if fmt == "utc":
            text = np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms")
            return [s + "Z" for s in text.tolist()]
        offset = self.local_offset_s(tick)
        text = np.datetime_as_string((ts + offset * 1000).astype("datetime64[ms]"), unit="ms")
        suffix = _offset_suffix(offset)
        return [s + suffix for s in text.tolist()]

    def _format_one(self, fmt: TsFormat, ts: int) -> int | str:
        if fmt == "ms":
            return ts
        return str(self._format_ts(fmt, np.asarray([ts], dtype=np.int64), ts)[0])

    def _valid_for(self, n: int) -> tuple[Expected, ...]:
        got = self._valid.get(n)
        if got is None:
            got = self._valid[n] = (VALID,) * n
        return got

    # -- faults and the output queue ------------------------------------------------------

    def _finish(self, kind: _Kind, local: int, readings: list[dict[str, Any]],
                ts_list: list[int], labels: set[str] | None) -> None:
        tick = self._tick
        lane = kind.lane
        gi = kind.offset + local
        topic = kind.topics[local]
        gateway = self.gateway_of[gi]
        n = len(readings)
        oldest = min(min(ts_list), tick)
        doc: Any = readings[0] if self.config.batch == 1 else readings
        if labels:
            tags = tuple(k for k in (*faults.SENSOR_FAULTS, "leak") if k in labels)
            self._put(Message(topic, orjson.dumps(doc), gateway, n, tags, self._valid_for(n),
                              oldest))
            return
        uniform = lane.uniform
        fault = faults.pick(self.message_rates, faults.MESSAGE_FAULTS, uniform()) \
            if self.message_rates else None
        if fault is None or fault == "duplicate":
            msg = Message(topic, orjson.dumps(doc), gateway, n, (), self._valid_for(n), oldest)
            pool = lane.pool
            while pool and pool[0].sim_time_ms < tick - lane.pool_age_ms:
                pool.popleft()
            source = pool[int(uniform() * len(pool))] \
                if fault == "duplicate" and pool else None
            self._put(msg)
            pool.append(msg)
            if source is not None:
                self._put(Message(source.topic, source.payload, source.gateway,
                                  source.readings, ("duplicate",),
                                  (DUPLICATE,) * len(source.expected), source.oldest_ts_ms))
            return
        u = uniform()
        if fault == "reorder":
            msg = Message(topic, orjson.dumps(doc), gateway, n, ("reorder",),
                          self._valid_for(n), oldest)
            lo, hi = HOLD_INTERVALS
            hold_ms = int((lo + u * (hi - lo)) * self.config.batch * kind.hold_interval_ms)
            heapq.heappush(lane.held, (tick + hold_ms, lane.held_count, msg))
            lane.held_count += 1
            return
        bad = (Expected(False, fault, False),)
        if fault == "bad_topic":
            self._put(Message(faults.bad_topic(topic, u), orjson.dumps(readings[0]), gateway, 1,
                              (fault,), bad, oldest))
            return
        if fault == "too_large":
            self._put(Message(topic, faults.too_large(readings[0], u), gateway, 1, (fault,), bad,
                              oldest))
            return
        if fault == "invalid_json":
            self._put(Message(topic, faults.invalid_json(orjson.dumps(doc), u), gateway, n,
                              (fault,), bad, oldest))
            return
        i = int(uniform() * n)
        r = readings[i]
        custom = kind.feed_faults
        if fault == "schema":
            broken = faults.schema(kind.name, r, u) if custom is None else custom.schema(r, u)
        elif fault == "non_finite":
            broken = faults.non_finite(kind.name, r, u) if custom is None \
                else custom.non_finite(r, u)
        elif fault == "out_of_range":
            broken = faults.out_of_range(kind.name, r, u) if custom is None \
                else custom.out_of_range(r, u)
        elif fault == "sensor_mismatch":
            broken = faults.sensor_mismatch(r, self._other_id(kind, local))
        elif fault == "future_timestamp":
            ts_bad = faults.future_ts(tick, self.horizon_ms)
            broken = faults.retimed(r, self._format_one(kind.fmt, ts_bad))
        else:
            assert fault == "too_old", fault
            ts_bad = faults.old_ts(tick, self.horizon_ms)
            broken = faults.retimed(r, self._format_one(kind.fmt, ts_bad))
        expected: tuple[Expected, ...]
        if n == 1 and self.config.batch == 1:
            payload = faults.dumps(broken)
            expected = bad
        else:
            payload = faults.dumps([broken if k == i else x for k, x in enumerate(readings)])
            expected = tuple(bad[0] if k == i else VALID for k in range(n))
        self._put(Message(topic, payload, gateway, n, (fault,), expected, oldest))

    def _other_id(self, kind: _Kind, local: int) -> str:
        if len(kind.ids) > 1:
            return kind.ids[(local + 1) % len(kind.ids)]
        own = kind.ids[local]
        return (own[:62] + "-x") if not own.endswith("-x") else own[:-2] + "-y"

    def _put(self, msg: Message) -> None:
        msg.sim_time_ms = self._tick
        self._out.append(msg)

    def _release_held(self, lane: _Lane, tick: int) -> None:
        """Publish a lane's held-back (reordered) messages that are due, after its tick's own."""
        held = lane.held
        while held and held[0][0] <= tick:
            _, _, late = heapq.heappop(held)
            late.sim_time_ms = tick
            self._out.append(late)


def _route_vehicle_id(route_id: str, number: int) -> str:
    tail = f"-{number:02d}"
    return f"sh-{route_id[: 64 - 3 - len(tail)]}{tail}"


@lru_cache(maxsize=4096)
def _utc_offset(tz_name: str, hour: int) -> int:
    offset = datetime.fromtimestamp(hour * 3600, tz=UTC).astimezone(ZoneInfo(tz_name)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _offset_suffix(offset_s: int) -> str:
    sign = "-" if offset_s < 0 else "+"
    minutes = abs(offset_s) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
