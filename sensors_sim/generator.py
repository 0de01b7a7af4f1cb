"""The simulation: a deterministic stream of MQTT messages for simulated time, no transport.

`Simulation(city, config).messages()` yields `Message`s in publish order. Every kind is driven
through one interface, its `sensors_sim.sources.Source`, which makes the readings; this module
does what the kinds share (phases, `seq`, sensor and message faults, batches, gateways) and
never branches on a kind's name. Sensors form two lanes: the built-in kinds
(`sources.BUILTIN`: water, energy, traffic, shuttle) and the city file's declared feeds
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from models.city import City
from sensors_sim import faults, feeds, profiles
from sensors_sim.faults import DUPLICATE, VALID, Expected, ReadingFaults
from sensors_sim.feeds import FeedFleet
from sensors_sim.profiles import F64, I64, Bools
from sensors_sim.sources import BUILTIN, FeedSource, Made, Setting, Source, TsFormat

Scenario = Literal["baseline", "savings"]

FEED_SEEDS: Final = 7
"""Spawn key of the feed lane's generators: the built-in ones are children 0-6 of the seed (one
per Python kind, in `sources.BUILTIN` order, then sensor faults, message faults, layout)."""
LABELS: Final = (*faults.SENSOR_FAULTS, "leak")
"""Sensor-fault labels, in the order a message lists them."""
WHOLE_MESSAGE_FAULTS: Final = frozenset({"bad_topic", "too_large", "invalid_json"})
"""Invalid faults that break the whole message; the others break one reading."""
SILENT_S: Final = (600, 3600)
SKEW_S: Final = (900, 5400)
STUCK_S: Final = (3600, 10800)
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
    """The sensors of one kind on their lane: topics, phases, how they batch and break, and the
    source that makes their readings."""

    def __init__(self, source: Source, lane: _Lane, offset: int, layout: np.random.Generator,
                 *, batch: int, longest_s: int) -> None:
        self.source = source
        self.name = name = source.name
        self.ids = ids = source.ids
        self.districts = districts = source.districts
        self.topics = [f"city/{d}/{name}/{s}" for d, s in zip(districts, ids, strict=True)]
        interval_s = source.interval_s
        self.interval_ms = interval_s * 1000
        self.batch = max(1, min(batch, batch * longest_s // interval_s))
        """Readings per message: `--batch`, but never spanning more than `--batch` intervals of
        the longest built-in kind (so long-interval feeds keep within `lookback_ms`)."""
        self.hold_interval_ms = min(interval_s, longest_s) * 1000
        """A reordered message is held for 1-3 x batch of these."""
        self.lane = lane
        self.offset = offset
        self.ts_format: TsFormat = source.ts_format
        self.counters = source.counters
        """Whether `meter_reset` applies (registers, feed counters)."""
        self.feed: FeedFleet | None = source.feed
        self.faults: ReadingFaults = source.faults
        self.sensor_cuts = (0.0, 0.0, 0.0, 0.0)
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
        seeds = np.random.SeedSequence(config.seed).spawn(FEED_SEEDS)
        *rng_kinds, rng_sensor, rng_msg, rng_layout = (np.random.default_rng(s) for s in seeds)
        self.longest_s = max(intervals)
        self.builtin = _Lane(self.step_ms, rng_sensor, rng_msg,
                             config.batch * 1000 * self.longest_s)
        self.lanes = [self.builtin]
        self.message_rates = {k: v for k, v in rates.items() if k in faults.MESSAGE_FAULTS}
        self.sensor_rates = {k: v for k, v in rates.items() if k in faults.SENSOR_FAULTS}

        setting = Setting(city, config, self._progress_fn(), self.local_offset_s, self.tz,
                          profiles.traffic_shape())
        self.kinds: list[_Kind] = []
        offset = 0
        for build, rng in zip(BUILTIN.values(), rng_kinds, strict=True):
            kind = _Kind(build(setting, rng), self.builtin, offset, rng_layout,
                         batch=config.batch, longest_s=self.longest_s)
            self.kinds.append(kind)
            offset += len(kind.ids)
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
        self.stuck_until = np.full(offset, -1, dtype=np.int64)
        self.frozen: dict[int, Any] = {}  # sensor -> the register value it is stuck at
        self._batches = [_Batch((g % k.batch) + 1) for k in self.kinds  # staggered first ones
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
        for feed in city.feeds:
            rng = np.random.default_rng(np.random.SeedSequence(
                seed, spawn_key=(FEED_SEEDS + 1, zlib.crc32(feed.kind.encode()))))
            fleet = FeedFleet(feed, city, rng, prefixes[feed.kind])
            if not fleet.ids:
                continue
            self.kinds.append(_Kind(FeedSource(fleet), lane, offset, rng_layout,
                                    batch=self.config.batch, longest_s=self.longest_s))
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

    def _sensor_cuts(self, kind: _Kind) -> tuple[float, float, float, float]:
        """Cumulative per-reading start probabilities of meter_reset, silent, clock_skew and
        stuck (registers only).

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
        stuck = start_p(rates.get("stuck", 0.0), STUCK_S) if kind.source.register else 0.0
        return reset, reset + silent, reset + silent + skew, reset + silent + skew + stuck

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
        """One reading from each sensor of `kind` at `local` (the group due at `tick`): its
        sensor faults, the kind's readings, then messages or the gateways' batches."""
        g = local + kind.offset
        ts = tick - self.jitter[g]
        drawn = self._sensor_faults(kind, g, ts) if self.sensor_rates else _SensorFaults(ts)
        ids = [kind.ids[i] for i in local.tolist()]
        made = kind.source.step(local, ts, ids, self._format_ts(kind.ts_format, drawn.ts, tick),
                                self.seq[g].tolist(), drawn.reset, tick)
        if drawn.stuck is not None:
            self._freeze(kind, g, made.readings, drawn.stuck)
        self.seq[g if drawn.quiet is None else g[~drawn.quiet]] += 1
        labels = _labels(drawn, made)
        if self.config.batch > 1:
            self._add_to_batches(kind, local, made.readings, drawn, labels)
        elif labels or self.message_rates:
            self._publish_each(kind, local, made.readings, drawn, labels)
        else:
            self._publish_clean(kind, local, made.readings, drawn, tick)

    # -- sensor faults --------------------------------------------------------------------

    def _sensor_faults(self, kind: _Kind, g: I64, ts: I64) -> _SensorFaults:
        """The sensor faults of sensors `g` reading at `ts`: ongoing silences and skews, and new
        resets and episodes drawn from the lane's sensor-fault generator (one uniform per
        reading, then the new episodes' lengths and skews)."""
        rng = kind.lane.rng_sensor
        quiet = self.silent_until[g] > ts
        skewed = self.skew_until[g] > ts
        stuck = self.stuck_until[g] > ts
        u = rng.random(len(g))
        eligible = ~quiet & ~skewed & ~stuck
        reset_cut, silent_cut, skew_cut, stuck_cut = kind.sensor_cuts
        reset = eligible & (u < reset_cut)
        going_quiet = eligible & (u >= reset_cut) & (u < silent_cut)
        new_skew = eligible & (u >= silent_cut) & (u < skew_cut)
        new_stuck = eligible & (u >= skew_cut) & (u < stuck_cut)
        if going_quiet.any():
            self._start_silence(rng, g[going_quiet], ts[going_quiet])
        if new_skew.any():
            self._start_skew(rng, g[new_skew], ts[new_skew])
            skewed = skewed | new_skew
        if new_stuck.any():
            self._start_stuck(rng, g[new_stuck], ts[new_stuck])
            stuck = stuck | new_stuck
        resets = reset if reset.any() else None
        frozen = stuck if stuck.any() else None
        if not skewed.any():
            return _SensorFaults(ts, quiet, resets, going_quiet, None, frozen)
        return _SensorFaults(np.where(skewed, ts + self.skew_ms[g], ts), quiet, resets,
                             going_quiet, skewed, frozen)

    def _start_silence(self, rng: np.random.Generator, sensors: I64, ts: I64) -> None:
        self.silent_until[sensors] = ts + 1000 * rng.integers(*SILENT_S, len(sensors))

    def _start_stuck(self, rng: np.random.Generator, sensors: I64, ts: I64) -> None:
        self.stuck_until[sensors] = ts + 1000 * rng.integers(*STUCK_S, len(sensors))
        for sensor in sensors.tolist():
            self.frozen.pop(sensor, None)

    def _freeze(self, kind: _Kind, g: I64, readings: list[dict[str, Any]], stuck: Bools) -> None:
        """A stuck register keeps the value of its first reading of the episode (the meter
        catches up when the episode ends)."""
        register = kind.source.register
        assert register is not None
        for j in np.flatnonzero(stuck).tolist():
            sensor = int(g[j])
            value = self.frozen.setdefault(sensor, readings[j][register])
            readings[j][register] = value

    def _start_skew(self, rng: np.random.Generator, sensors: I64, ts: I64) -> None:
        size = len(sensors)
        self.skew_until[sensors] = ts + 1000 * rng.integers(*SKEW_S, size)
        amount = rng.integers(*SKEW_MS, size)
        amount += amount % 1000 == 0  # never a whole second: no clash with other ts
        sign = np.where(rng.random(size) < 0.5, -1, 1)
        self.skew_ms[sensors] = sign * amount

    # -- readings to messages -------------------------------------------------------------

    def _publish_clean(self, kind: _Kind, local: I64, readings: list[dict[str, Any]],
                       drawn: _SensorFaults, tick: int) -> None:
        """One reading a message, no labels, no message faults: the fast path."""
        valid = self._valid_for(1)
        out = self._out
        topics = kind.topics
        gateways = self.gateway_of
        offset = kind.offset
        local_list = local.tolist()
        ts_list = drawn.ts.tolist()
        for j in _heard(drawn.quiet, len(readings)):
            i = local_list[j]
            out.append(Message(topics[i], orjson.dumps(readings[j]), gateways[offset + i], 1, (),
                               valid, min(ts_list[j], tick), tick))

    def _publish_each(self, kind: _Kind, local: I64, readings: list[dict[str, Any]],
                      drawn: _SensorFaults, labels: dict[int, set[str]]) -> None:
        """One reading a message, each through `_finish`."""
        local_list = local.tolist()
        ts_list = drawn.ts.tolist()
        for j in _heard(drawn.quiet, len(readings)):
            self._finish(kind, local_list[j], [readings[j]], [ts_list[j]], labels.get(j))

    def _add_to_batches(self, kind: _Kind, local: I64, readings: list[dict[str, Any]],
                        drawn: _SensorFaults, labels: dict[int, set[str]]) -> None:
        """Each reading joins its sensor's batch, published through `_finish` when full or when
        the sensor goes quiet (the gateway sends what it holds: no batch spans the gap)."""
        local_list = local.tolist()
        ts_list = drawn.ts.tolist()
        going_quiet = drawn.going_quiet
        last = going_quiet.tolist() if going_quiet is not None and going_quiet.any() else None
        for j in _heard(drawn.quiet, len(readings)):
            i = local_list[j]
            batch = self._batches[kind.offset + i]
            batch.add(readings[j], ts_list[j], labels.get(j))
            if len(batch.readings) >= batch.size or (last is not None and last[j]):
                self._finish(kind, i, batch.readings, batch.ts, batch.labels)
                batch.restart(kind.batch)

    def _format_ts(self, ts_format: TsFormat, ts: I64, tick: int) -> list[Any]:
        if ts_format == "ms":
            return list(ts.tolist())
        if ts_format == "utc":
            text = np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms")
            return [s + "Z" for s in text.tolist()]
        offset = self.local_offset_s(tick)
        text = np.datetime_as_string((ts + offset * 1000).astype("datetime64[ms]"), unit="ms")
        suffix = _offset_suffix(offset)
        return [s + suffix for s in text.tolist()]

    def _format_one(self, ts_format: TsFormat, ts: int) -> int | str:
        if ts_format == "ms":
            return ts
        return str(self._format_ts(ts_format, np.asarray([ts], dtype=np.int64), ts)[0])

    def _valid_for(self, n: int) -> tuple[Expected, ...]:
        got = self._valid.get(n)
        if got is None:
            got = self._valid[n] = (VALID,) * n
        return got

    # -- message faults and the output queue ----------------------------------------------

    def _finish(self, kind: _Kind, local: int, readings: list[dict[str, Any]],
                ts_list: list[int], labels: set[str] | None) -> None:
        """Publish one message of sensor `local` of `kind`: as it is when it carries sensor-fault
        labels, else with the message fault drawn for it from the lane's uniforms, if any."""
        n = len(readings)
        doc = readings[0] if self.config.batch == 1 else readings
        tags = tuple(label for label in LABELS if label in labels) if labels else ()
        msg = Message(kind.topics[local], orjson.dumps(doc), self.gateway_of[kind.offset + local],
                      n, tags, self._valid_for(n), min(min(ts_list), self._tick))
        if labels:
            self._put(msg)
            return
        lane = kind.lane
        fault = faults.pick(self.message_rates, faults.MESSAGE_FAULTS, lane.uniform()) \
            if self.message_rates else None
        if fault is None or fault == "duplicate":
            self._publish_pooled(lane, msg, repeat=fault == "duplicate")
        elif fault == "reorder":
            self._hold(kind, msg, lane.uniform())
        elif fault in WHOLE_MESSAGE_FAULTS:
            self._put(_break_message(msg, readings[0], fault, lane.uniform()))
        else:
            self._put(self._break_reading(kind, local, msg, readings, fault, lane.uniform()))

    def _publish_pooled(self, lane: _Lane, msg: Message, *, repeat: bool) -> None:
        """Publish a clean message and keep it for duplicates; with `repeat`, then re-publish a
        recent clean message of the lane byte for byte (a `duplicate`)."""
        pool = lane.pool
        while pool and pool[0].sim_time_ms < self._tick - lane.pool_age_ms:
            pool.popleft()
        source = pool[int(lane.uniform() * len(pool))] if repeat and pool else None
        self._put(msg)
        pool.append(msg)
        if source is not None:
            self._put(Message(source.topic, source.payload, source.gateway, source.readings,
                              ("duplicate",), (DUPLICATE,) * len(source.expected),
                              source.oldest_ts_ms))

    def _hold(self, kind: _Kind, msg: Message, u: float) -> None:
        """Hold a message back (`reorder`) for 1-3 x batch of its sensor's hold intervals;
        `_release_held` publishes it."""
        lane = kind.lane
        lo, hi = HOLD_INTERVALS
        hold_ms = int((lo + u * (hi - lo)) * self.config.batch * kind.hold_interval_ms)
        heapq.heappush(lane.held, (self._tick + hold_ms, lane.held_count,
                                   replace(msg, faults=("reorder",))))
        lane.held_count += 1

    def _break_reading(self, kind: _Kind, local: int, msg: Message,
                       readings: list[dict[str, Any]], fault: str, u: float) -> Message:
        """`msg` with one reading (drawn from the lane's uniforms) broken by `fault`."""
        n = len(readings)
        i = int(kind.lane.uniform() * n)
        broken = self._broken(kind, local, readings[i], fault, u)
        bad = Expected(False, fault, False)
        if n == 1 and self.config.batch == 1:
            return replace(msg, payload=faults.dumps(broken), faults=(fault,), expected=(bad,))
        payload = faults.dumps([broken if k == i else r for k, r in enumerate(readings)])
        return replace(msg, payload=payload, faults=(fault,),
                       expected=tuple(bad if k == i else VALID for k in range(n)))

    def _broken(self, kind: _Kind, local: int, reading: dict[str, Any], fault: str,
                u: float) -> dict[str, Any]:
        match fault:
            case "schema":
                return kind.faults.schema(reading, u)
            case "non_finite":
                return kind.faults.non_finite(reading, u)
            case "out_of_range":
                return kind.faults.out_of_range(reading, u)
            case "sensor_mismatch":
                return faults.sensor_mismatch(reading, self._other_id(kind, local))
            case "future_timestamp":
                ts = faults.future_ts(self._tick, self.horizon_ms)
            case _:
                assert fault == "too_old", fault
                ts = faults.old_ts(self._tick, self.horizon_ms)
        return faults.retimed(reading, self._format_one(kind.ts_format, ts))

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


class _SensorFaults(NamedTuple):
    """The sensor faults of a group of readings at one tick (None: no reading has it)."""

    ts: I64
    """The `ts` each reading carries (a skewed clock's, where skewed)."""
    quiet: Bools | None = None
    """Silent sensors: their readings are lost."""
    reset: Bools | None = None
    """Registers restarting (`meter_reset`)."""
    going_quiet: Bools | None = None
    """Sensors going silent after this reading (`silent`)."""
    skewed: Bools | None = None
    """Readings from a skewed clock (`clock_skew`)."""
    stuck: Bools | None = None
    """Registers stuck at one value (`stuck`)."""


@dataclass(slots=True)
class _Batch:
    """The readings a gateway holds for one sensor until it publishes them as one message."""

    size: int
    """Readings to collect (the first batches are staggered)."""
    readings: list[dict[str, Any]] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    labels: set[str] | None = None

    def add(self, reading: dict[str, Any], ts: int, labels: set[str] | None) -> None:
        self.readings.append(reading)
        self.ts.append(ts)
        if labels is not None:
            self.labels = labels if self.labels is None else self.labels | labels

    def restart(self, size: int) -> None:
        self.size = size
        self.readings = []
        self.ts = []
        self.labels = None


def _labels(drawn: _SensorFaults, made: Made) -> dict[int, set[str]]:
    """Sensor-fault labels by position in the group: resets (drawn, or a counter rolling over),
    sensors going quiet, skewed clocks and leaks."""
    reset = drawn.reset
    if made.rolled is not None:
        reset = made.rolled if reset is None else reset | made.rolled
    labels: dict[int, set[str]] = {}
    for mask, label in ((reset, "meter_reset"), (drawn.going_quiet, "silent"),
                        (drawn.skewed, "clock_skew"), (drawn.stuck, "stuck")):
        if mask is not None and mask.any():
            for j in np.flatnonzero(mask).tolist():
                labels.setdefault(j, set()).add(label)
    if made.leaking is not None:
        for j in made.leaking.tolist():
            labels.setdefault(j, set()).add("leak")
    return labels


def _heard(quiet: Bools | None, n: int) -> Iterable[int]:
    """Positions of the readings that are sent (not lost to a silent sensor), in order."""
    return range(n) if quiet is None else np.flatnonzero(~quiet).tolist()


def _break_message(msg: Message, first: dict[str, Any], fault: str, u: float) -> Message:
    """`msg` broken as a whole by `fault` (bad_topic and too_large send only `first`)."""
    bad = (Expected(False, fault, False),)
    if fault == "bad_topic":
        return Message(faults.bad_topic(msg.topic, u), orjson.dumps(first), msg.gateway, 1,
                       (fault,), bad, msg.oldest_ts_ms)
    if fault == "too_large":
        return Message(msg.topic, faults.too_large(first, u), msg.gateway, 1, (fault,), bad,
                       msg.oldest_ts_ms)
    assert fault == "invalid_json", fault
    return Message(msg.topic, faults.invalid_json(msg.payload, u), msg.gateway, msg.readings,
                   (fault,), bad, msg.oldest_ts_ms)


@lru_cache(maxsize=4096)
def _utc_offset(tz_name: str, hour: int) -> int:
    offset = datetime.fromtimestamp(hour * 3600, tz=UTC).astimezone(ZoneInfo(tz_name)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _offset_suffix(offset_s: int) -> str:
    sign = "-" if offset_s < 0 else "+"
    minutes = abs(offset_s) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
