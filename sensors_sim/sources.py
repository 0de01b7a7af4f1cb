"""One source of readings per kind: the one interface the simulation drives every kind through.

A `Source` owns one kind's sensors (ids, districts, reading interval, how they write `ts`, how
their readings break) and turns the group of them due at a tick into reading dicts. Everything
the kinds share (phases and jitter, `seq`, sensor and message faults, batches, gateways) stays
in `sensors_sim.generator`, which never asks which kind it is driving.

The Python kinds (`models.kinds.PYTHON_KINDS`) are built by `BUILTIN`, one entry per kind; a
feed declared in the city file is a `FeedSource` around its `sensors_sim.feeds.FeedFleet`, so a
new feed needs no code here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol
from zoneinfo import ZoneInfo

import numpy as np

from models.city import City
from sensors_sim import feeds, profiles
from sensors_sim.faults import FeedFaults, KindFaults, ReadingFaults
from sensors_sim.feeds import FeedFleet
from sensors_sim.fleets import MeterFleet, Progress, TrafficCounters
from sensors_sim.profiles import F64, I64, Bools
from sensors_sim.shuttle import ShuttleFleet

if TYPE_CHECKING:
    from sensors_sim.generator import SimConfig

TsFormat = Literal["ms", "utc", "local"]
"""How a kind writes `ts`: epoch ms, RFC 3339 in UTC (`Z`), RFC 3339 with the city's offset."""


class Made(NamedTuple):
    """What a source made at one tick."""

    readings: list[dict[str, Any]]
    """One reading per sensor asked for, in the order asked."""
    rolled: Bools | None = None
    """Positions whose counters rolled over at their `max` (labelled as a `meter_reset`)."""
    leaking: I64 | None = None
    """Positions whose readings a leak raised (labelled `leak`)."""


class Source(Protocol):
    """One kind's sensors, as the simulation drives them."""

    name: str
    ids: list[str]
    """Sensor ids; a sensor's position here is its local index."""
    districts: list[str]
    """The district of each sensor (its topic's district)."""
    interval_s: int
    """Simulated seconds between a sensor's readings."""
    ts_format: TsFormat
    counters: bool
    """Whether the `meter_reset` sensor fault applies (registers, feed counters)."""
    register: str | None
    """The field of a cumulative register that the `stuck` sensor fault freezes (None: the
    kind has none that citystream judges stuck)."""
    faults: ReadingFaults
    feed: FeedFleet | None
    """The declared feed's fleet; None for a Python kind."""

    def step(self, local: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None, tick_ms: int) -> Made:
        """Readings of the sensors at `local`, called once per tick with the sensors whose phase
        it is, ticks in order. `ts` is when each reading is taken (before any clock skew),
        `ts_values` the `ts` it carries, `seqs` its `seq`; `reset` marks sensors whose counters
        restart (None: none). Draws only from the source's own generator."""
        ...


@dataclass(frozen=True)
class Setting:
    """What the Python kinds' sources are built from, besides a generator each."""

    city: City
    config: SimConfig
    progress: Progress
    local_offset_s: Callable[[int], int]
    tz: ZoneInfo
    traffic_shape: F64


class MeterSource:
    """Cumulative-register meters (`sensors_sim.fleets.MeterFleet`) of the kind `name`."""

    name: str
    ts_format: TsFormat
    counters: bool = True
    feed: FeedFleet | None = None

    def __init__(self, setting: Setting, rng: np.random.Generator) -> None:
        config = setting.config
        self.interval_s = config.meter_interval_s
        self.faults: ReadingFaults = KindFaults(self.name)
        leaks = config.leak_districts if self.name == "water" else ()
        self.fleet = MeterFleet(self.name, setting.city, config.size, self.interval_s, rng,
                                setting.progress, leaks, setting.local_offset_s)
        self.ids = self.fleet.ids
        self.districts = self.fleet.districts

    def step(self, local: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None, tick_ms: int) -> Made:
        """See `Source.step`."""
        readings, leaking = self.fleet.step(local, ts, ids, ts_values, seqs, reset, tick_ms)
        return Made(readings, leaking=leaking)


class WaterSource(MeterSource):
    """Water meters: a volume register in m3, flow and pressure; leaks (--leak-district)."""

    name = "water"
    ts_format: TsFormat = "ms"
    register: str | None = "volume_m3"


class EnergySource(MeterSource):
    """Electricity meters: an energy register in kWh and power."""

    name = "energy"
    ts_format: TsFormat = "utc"
    register: str | None = "energy_kwh"


class TrafficSource:
    """Junction traffic counters (`sensors_sim.fleets.TrafficCounters`)."""

    name = "traffic"
    ts_format: TsFormat = "ms"
    counters = False
    register: str | None = None
    feed: FeedFleet | None = None

    def __init__(self, setting: Setting, rng: np.random.Generator) -> None:
        config = setting.config
        self.interval_s = config.traffic_interval_s
        self.faults: ReadingFaults = KindFaults(self.name)
        self.fleet = TrafficCounters(setting.city, config.size, self.interval_s, rng,
                                     setting.progress, setting.traffic_shape)
        self.ids = self.fleet.ids
        self.districts = self.fleet.districts

    def step(self, local: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None, tick_ms: int) -> Made:
        """See `Source.step`."""
        return Made(self.fleet.step(local, ts, ids, ts_values, seqs))


class ShuttleSource:
    """The shuttles of every route with two stops or more, one `ShuttleFleet` per route."""

    name = "shuttle"
    ts_format: TsFormat = "local"
    counters = False
    register: str | None = None
    feed: FeedFleet | None = None

    def __init__(self, setting: Setting, rng: np.random.Generator) -> None:
        config = setting.config
        self.interval_s = config.shuttle_interval_s
        self.faults: ReadingFaults = KindFaults(self.name)
        demand = profiles.shuttle_demand()
        self.fleets: list[ShuttleFleet] = []
        self.ids: list[str] = []
        self.districts: list[str] = []
        self._vehicle: list[tuple[int, int]] = []  # local index -> (fleet, vehicle)
        for route in setting.city.routes:
            if len(route.stops) < 2:
                continue
            fleet = ShuttleFleet(route, self.interval_s, rng, setting.tz, config.start_ms,
                                 demand, setting.traffic_shape)
            for v in range(route.fleet_size):
                self.ids.append(_route_vehicle_id(route.id, v + 1))
                self.districts.append(route.district)
                self._vehicle.append((len(self.fleets), v))
            self.fleets.append(fleet)

    def step(self, local: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None, tick_ms: int) -> Made:
        """See `Source.step`."""
        out: list[dict[str, Any]] = []
        ts_list = ts.tolist()
        for j, i in enumerate(local.tolist()):
            fleet, vehicle = self._vehicle[i]
            out += self.fleets[fleet].step([vehicle], [ts_list[j]], [ids[j]], [ts_values[j]],
                                           [seqs[j]])
        return Made(out)


class FeedSource:
    """A feed declared in the city file (`sensors_sim.feeds.FeedFleet`)."""

    ts_format: TsFormat = "ms"
    register: str | None = None

    def __init__(self, fleet: FeedFleet) -> None:
        self.feed: FeedFleet | None = fleet
        self.fleet = fleet
        self.name = fleet.kind
        self.interval_s = feeds.interval_s(fleet.feed)
        self.counters = fleet.has_counters
        self.faults: ReadingFaults = FeedFaults(fleet.feed)
        self.ids = fleet.ids
        self.districts = fleet.districts

    def step(self, local: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None, tick_ms: int) -> Made:
        """See `Source.step`."""
        readings, rolled = self.fleet.step(local, ts, ids, ts_values, seqs, reset)
        return Made(readings, rolled=rolled)


BUILTIN: Final[dict[str, Callable[[Setting, np.random.Generator], Source]]] = {
    "water": WaterSource,
    "energy": EnergySource,
    "traffic": TrafficSource,
    "shuttle": ShuttleSource,
}
"""The Python kinds' sources, one entry per kind. The order is the simulation's: it fixes which
child of the seed each kind draws from and where its sensors come, so append, never reorder."""


def _route_vehicle_id(route_id: str, number: int) -> str:
    tail = f"-{number:02d}"
    return f"sh-{route_id[: 64 - 3 - len(tail)]}{tail}"
