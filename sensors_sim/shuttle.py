"""Autonomous shuttles on a route: timetable, trips, dwell, boarding, battery and charging.

Each vehicle follows an itinerary of legs (run between stops, dwell at a stop, layover at a
terminal, charging or parked at the depot, broken down) produced lazily by `_Vehicle._legs`;
a reading samples the leg in force at its timestamp. Vehicles leave the first stop (the depot,
Milton Keynes Central in the shipped city) on a fixed headway during service hours (local
time), run out to the last stop and back, and charge at the depot when the battery runs low and
overnight. Deterministic for a given generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from models.city import Route
from sensors_sim.profiles import F64, minute_of_week

SERVICE_START = time(6, 30)
SERVICE_END = time(22, 30)
CRUISE_KMH = 20.0
ROAD_FACTOR = 1.2
"""Route distance over straight-line distance between stops."""
PLANNED_DWELL_S = 20.0
LAYOVER_S = 120.0
MIN_TURN_S = 30.0
DRAIN_PCT_KM = 1.5
IDLE_DRAIN_PCT_MIN = 0.01
CHARGE_PCT_MIN = 1.5
LOW_BATTERY_PCT = 30.0
RESUME_BATTERY_PCT = 90.0
BREAKDOWN_P = 0.004
"""Probability per segment run that the vehicle stops out of service for 8-25 min."""
DISENGAGE_P = 0.003
"""Probability per moving reading that the safety operator took over."""
HOLD_P = 0.05
TRAFFIC_SLOWDOWN = 0.35


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


@dataclass(slots=True)
class _Leg:
    t0: int
    t1: int
    status: str
    lat0: float
    lon0: float
    lat1: float
    lon1: float
    speed_kmh: float
    passengers: int
    battery0: float
    battery_rate: float  # percent per ms
    stop_id: str | None = None
    delay_s: float | None = None  # set on an arrival: reported on the leg's first reading
    reported: bool = False


class _Vehicle:
    def __init__(self, fleet: ShuttleFleet, index: int, start_ms: int, battery: float) -> None:
        self.fleet = fleet
        self.index = index
        self.leg: _Leg | None = None
        self._gen = self._legs(start_ms, battery)

    def at(self, t: int) -> _Leg:
        leg = self.leg
        while leg is None or leg.t1 <= t:
            leg = self.leg = next(self._gen)
        return leg

    # The itinerary ----------------------------------------------------------------------

    def _legs(self, t: int, battery: float) -> Iterator[_Leg]:
        f = self.fleet
        depot_lat, depot_lon = f.stop_pos[0]
        turn_ms = int(MIN_TURN_S * 1000)
        late_ok = 0  # after a round trip a late vehicle still takes the slot it is late for
        while True:
            open_ms, close_ms = f.service_window(t)
            slot = f.next_slot(self.index, t - late_ok)
            late_ok = 0
            off_hours = t < open_ms or t >= close_ms or slot >= close_ms
            if off_hours or battery < LOW_BATTERY_PCT:
                target = 100.0 if off_hours else RESUME_BATTERY_PCT
                if battery < target:
                    dur = int((target - battery) / CHARGE_PCT_MIN * 60_000)
                    yield _Leg(t, t + dur, "charging", depot_lat, depot_lon, depot_lat,
                               depot_lon, 0.0, 0, battery, CHARGE_PCT_MIN / 60_000)
                    t, battery = t + dur, target
                if off_hours:
                    resume = f.service_start_after(t)
                    if resume > t:
                        yield _Leg(t, resume, "out_of_service", depot_lat, depot_lon,
                                   depot_lat, depot_lon, 0.0, 0, battery, 0.0)
                        t = resume
                continue
            passengers = 0
            if slot > t:  # wait at the depot stop for the timetabled departure
                yield self._stand(t, slot, 0, 0, battery, None)
                battery -= IDLE_DRAIN_PCT_MIN * (slot - t) / 60_000
                t = slot
            passengers = f.board(0, 0, True, t)
            for outbound in (True, False):
                order = list(range(f.n_stops)) if outbound else list(range(f.n_stops - 1, -1, -1))
                trip_start = slot if outbound else slot + f.half_cycle_ms
                for k in range(1, len(order)):
                    a, b = order[k - 1], order[k]
                    (lat0, lon0), (lat1, lon1) = f.stop_pos[a], f.stop_pos[b]
                    if f.rng.random() < BREAKDOWN_P:  # stops halfway; everyone gets off
                        mid_lat, mid_lon = (lat0 + lat1) / 2, (lon0 + lon1) / 2
                        down = int(f.rng.uniform(8, 25) * 60_000)
                        yield _Leg(t, t + down, "out_of_service", mid_lat, mid_lon, mid_lat,
                                   mid_lon, 0.0, 0, battery, 0.0)
                        t += down
                        passengers = 0
                    seg = f.segment_km(a, b)
                    run_ms = f.run_ms(seg, t)
                    rate = -DRAIN_PCT_KM * seg / run_ms
                    yield _Leg(t, t + run_ms, "in_service", lat0, lon0, lat1, lon1,
                               seg / (run_ms / 3_600_000), passengers, battery, rate)
                    t += run_ms
                    battery = max(0.0, battery + rate * run_ms)
                    delay = round((t - trip_start - f.planned_arrival_ms[k]) / 1000, 1)
                    if k == len(order) - 1:  # terminal: all off; turn round or go to depot
                        if outbound:
                            passengers = f.board(0, b, False, t)
                            until = max(t + turn_ms, slot + f.half_cycle_ms)
                        else:
                            passengers = 0
                            until = t + turn_ms
                            late_ok = f.max_late_ms
                    else:
                        stayed = f.alight(passengers)
                        boarded = f.board(stayed, b, outbound, t)
                        moves = (passengers - stayed) + (boarded - stayed)
                        passengers = boarded
                        dwell = max(f.min_dwell_s, 6.0 + 2.5 * moves) * f.rng.uniform(0.9, 1.2)
                        until = t + int(dwell * 1000)
                    yield self._stand(t, until, b, passengers, battery, delay)
                    battery -= IDLE_DRAIN_PCT_MIN * (until - t) / 60_000
                    t = until

    def _stand(self, t0: int, t1: int, stop: int, passengers: int, battery: float,
               delay: float | None) -> _Leg:
        lat, lon = self.fleet.stop_pos[stop]
        return _Leg(t0, t1, "in_service", lat, lon, lat, lon, 0.0, passengers, battery,
                    -IDLE_DRAIN_PCT_MIN / 60_000, self.fleet.stop_ids[stop], delay)


class ShuttleFleet:
    """The vehicles of one route. `step` returns one reading per vehicle asked for."""

    def __init__(self, route: Route, interval_s: int, rng: np.random.Generator, tz: ZoneInfo,
                 start_ms: int, demand: F64, traffic: F64) -> None:
        if len(route.stops) < 2:
            raise ValueError(f"route {route.id} needs at least two stops to simulate shuttles")
        self.route = route
        self.rng = rng
        self.tz = tz
        self.demand = demand
        self.traffic = traffic
        self.capacity = route.capacity
        self.stop_ids = [s.id for s in route.stops]
        self.stop_pos = [(s.lat, s.lon) for s in route.stops]
        self.n_stops = len(self.stop_ids)
        self.min_dwell_s = max(15.0, interval_s + 1.0)  # every arrival is seen by a reading
        self._seg = [_haversine_km(*self.stop_pos[k], *self.stop_pos[k + 1]) * ROAD_FACTOR
                     for k in range(self.n_stops - 1)]
        mean_slow = 1 + TRAFFIC_SLOWDOWN * float(np.mean(traffic[traffic > 0.2]))
        planned_run = [km / CRUISE_KMH * 3_600_000 * mean_slow for km in self._seg]
        self.planned_arrival_ms = [0]
        for k, run in enumerate(planned_run):
            dwell = 0.0 if k == 0 else PLANNED_DWELL_S * 1000
            self.planned_arrival_ms.append(int(self.planned_arrival_ms[-1] + dwell + run))
        one_way = self.planned_arrival_ms[-1]
        self.half_cycle_ms = int(one_way + LAYOVER_S * 1000)
        self.cycle_ms = 2 * self.half_cycle_ms
        self.headway_ms = self.cycle_ms // route.fleet_size
        self.max_late_ms = 10 * 60_000
        self.vehicles = [
            _Vehicle(self, v, start_ms, float(rng.uniform(55, 98)))
            for v in range(route.fleet_size)]

    # Timetable ---------------------------------------------------------------------------

    def _utc_ms(self, day: date, at: time) -> int:
        local = datetime.combine(day, at, tzinfo=self.tz)
        return int(local.astimezone(UTC).timestamp() * 1000)

    def _local_day(self, t: int) -> date:
        return datetime.fromtimestamp(t / 1000, tz=self.tz).date()

    def next_slot(self, vehicle: int, t: int) -> int:
        """The vehicle's first scheduled departure from the depot at or after `t`."""
        day = self._local_day(t)
        for _ in range(3):
            start = self._utc_ms(day, SERVICE_START) + vehicle * self.headway_ms
            end = self._utc_ms(day, SERVICE_END)
            k = max(0, -(-(t - start) // self.cycle_ms))
            slot = start + k * self.cycle_ms
            if slot < end:
                return slot
            day += timedelta(days=1)
        raise AssertionError("no departure within three days")

    def service_window(self, t: int) -> tuple[int, int]:
        """Service start and end (epoch ms) of the local day `t` falls in."""
        day = self._local_day(t)
        return self._utc_ms(day, SERVICE_START), self._utc_ms(day, SERVICE_END)

    def service_start_after(self, t: int) -> int:
        """Start of the first service day that begins at or after `t`."""
        day = self._local_day(t)
        for _ in range(3):
            start = self._utc_ms(day, SERVICE_START)
            if start >= t:
                return start
            day += timedelta(days=1)
        return t

    # Trip dynamics -----------------------------------------------------------------------

    def segment_km(self, a: int, b: int) -> float:
        return self._seg[min(a, b)]

    def run_ms(self, km: float, t: int) -> int:
        slow = 1 + TRAFFIC_SLOWDOWN * float(self.traffic[int(minute_of_week(t))])
        seconds = km / CRUISE_KMH * 3600 * slow * float(self.rng.lognormal(0.0, 0.1))
        if self.rng.random() < HOLD_P:
            seconds += float(self.rng.uniform(30, 180))
        return max(int(seconds * 1000), 1000)

    def board(self, passengers: int, stop: int, outbound: bool, t: int) -> int:
        terminal = stop == (0 if outbound else self.n_stops - 1)
        mean = (3.5 if terminal else 1.0) * float(self.demand[int(minute_of_week(t))])
        want = int(self.rng.poisson(mean))
        return passengers + min(want, self.capacity - passengers)

    def alight(self, passengers: int) -> int:
        return passengers - int(self.rng.binomial(passengers, 0.25)) if passengers else 0

    # Readings ----------------------------------------------------------------------------

    def step(self, vehicles: list[int], ts_ms: list[int], ids: list[str], ts_values: list[Any],
             seqs: list[int]) -> list[dict[str, Any]]:
        """One reading per vehicle in `vehicles`, sampled at its `ts_ms`."""
        out: list[dict[str, Any]] = []
        for v, t, sid, ts, seq in zip(vehicles, ts_ms, ids, ts_values, seqs, strict=True):
            leg = self.vehicles[v].at(t)
            span = leg.t1 - leg.t0
            frac = (t - leg.t0) / span if span > 0 else 0.0
            battery = min(100.0, max(0.0, leg.battery0 + leg.battery_rate * (t - leg.t0)))
            moving = leg.speed_kmh > 0
            speed = leg.speed_kmh * float(self.rng.uniform(0.85, 1.15)) if moving else 0.0
            r: dict[str, Any] = {
                "sensor_id": sid, "ts": ts, "seq": seq, "route_id": self.route.id,
                "lat": round(leg.lat0 + (leg.lat1 - leg.lat0) * frac, 6),
                "lon": round(leg.lon0 + (leg.lon1 - leg.lon0) * frac, 6),
                "speed_kmh": round(min(speed, 119.0), 1),
                "passengers": leg.passengers, "capacity": self.capacity,
                "battery_pct": round(battery, 1), "status": leg.status,
            }
            if leg.stop_id is not None:
                r["stop_id"] = leg.stop_id
                if leg.delay_s is not None and not leg.reported:
                    r["delay_s"] = leg.delay_s
                    leg.reported = True
            if moving and self.rng.random() < DISENGAGE_P:
                r["disengaged"] = True
            out.append(r)
        return out
