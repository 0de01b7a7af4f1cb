"""Water and energy meters and junction traffic counters, vectorised with numpy.

A fleet holds the state of all sensors of one kind (registers, previous timestamps, shares of
their district's or junction's demand) and turns a group of sensors due at one tick into reading
dicts. Demand follows the city file: a district's meters together draw its hour-of-week baseline
(smoothed within the hour by `profiles.minute_rates`), whatever `--size` multiplies their number
by; a junction's counters split its flow, and speeds follow the speed-flow curve whose hourly
congestion reproduces the junction's baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from models.city import City
from sensors_sim import profiles
from sensors_sim.profiles import F64, I64, Bools

EFFECTIVE_VEHICLE_M = 5.5
"""Vehicle length plus detector length, for occupancy from flow and speed."""
CONGESTION_NOISE = 0.25
"""Log-normal spread of a reading's congestion index around the speed-flow curve."""
LEAK_HOURS_LOCAL = (2, 4)
"""A leak raises night flow between 02:00 and 04:00 local time."""

Progress = Callable[[I64], F64]
"""Savings-programme progress (0..1) at epoch-ms instants."""


def _shares(rng: np.random.Generator, groups: I64, n_groups: int, sigma: float) -> F64:
    """Random positive weights that add up to 1 within each group."""
    raw = rng.lognormal(0.0, sigma, size=len(groups))
    totals = np.bincount(groups, weights=raw, minlength=n_groups)
    return np.asarray(raw / totals[groups], dtype=np.float64)


class MeterFleet:
    """Cumulative-register meters (water or energy) of every district."""

    def __init__(self, kind: str, city: City, size: float, interval_s: int,
                 rng: np.random.Generator, progress: Progress, leak_districts: tuple[str, ...],
                 local_offset_s: Callable[[int], int]) -> None:
        self.kind = kind
        self.interval_ms = interval_s * 1000
        self.rng = rng
        self.progress = progress
        self.local_offset_s = local_offset_s
        water = kind == "water"
        self.ids: list[str] = []
        self.districts: list[str] = []
        rows: list[int] = []
        tables, savings, peaks = [], [], []
        for d_i, d in enumerate(city.districts):
            n_file = d.water_meters if water else d.energy_meters
            n = 0 if n_file == 0 else max(1, round(n_file * size))
            prefix = "wm" if water else "em"
            self.ids += [_sensor_id(prefix, d.slug, i + 1) for i in range(n)]
            self.districts += [d.slug] * n
            rows += [d_i] * n
            table = profiles.minute_rates(d.water_baseline_l_h if water
                                          else d.energy_baseline_kwh_h)
            tables.append(table)
            peaks.append(max(float(table.max()), 1e-9))
            target = city.water_target_pct(d.slug) if water else city.energy_target_pct(d.slug)
            savings.append(min(0.95, 1.1 * target / 100))
        self.row = np.asarray(rows, dtype=np.int64)
        self.n = len(self.ids)
        self.rates = np.vstack(tables) if tables else np.zeros((0, profiles.MINUTES_PER_WEEK))
        self.saving = np.asarray(savings, dtype=np.float64)
        self.peak = np.asarray(peaks, dtype=np.float64)
        self.share = _shares(rng, self.row, len(city.districts), 0.5)
        if water:
            self.register = rng.uniform(40.0, 2500.0, self.n)
            self.pressure0 = rng.uniform(2.8, 4.2, len(city.districts))
        else:
            self.register = rng.uniform(800.0, 40000.0, self.n)
            self.pressure0 = np.zeros(len(city.districts))
        self.prev_ts = np.full(self.n, -1, dtype=np.int64)
        self.leak = np.zeros(self.n)
        for slug in leak_districts if water else ():
            members = np.flatnonzero(np.asarray(self.districts) == slug)
            if len(members) == 0:
                continue
            d = city.district(slug)
            leaking = rng.choice(members, size=max(1, round(0.25 * len(members))), replace=False)
            # the whole leak is about the district's mean hourly draw: obvious at night
            self.leak[leaking] = float(np.mean(d.water_baseline_l_h)) / len(leaking)

    def step(self, idx: I64, ts: I64, ids: list[str], ts_values: list[Any], seqs: list[int],
             reset: Bools | None, tick_ms: int) -> tuple[list[dict[str, Any]], I64 | None]:
        """Readings of meters `idx` at `ts`; `reset` marks meters whose register restarts.

        Returns the readings and, for water, the positions of readings raised by a leak.
        """
        prev = self.prev_ts[idx]
        dt_ms = np.where(prev < 0, self.interval_ms, ts - prev)
        self.prev_ts[idx] = ts
        mid = ts - dt_ms // 2
        minute = profiles.minute_of_week(mid)
        row = self.row[idx]
        base = self.rates[row, minute]
        rate = base * self.share[idx] * (1.0 - self.saving[row] * self.progress(mid))
        leaking: I64 | None = None
        if self.kind == "water" and self.leak.any():
            local_h = ((mid // 1000 + self.local_offset_s(tick_ms)) % 86400) / 3600
            on = (local_h >= LEAK_HOURS_LOCAL[0]) & (local_h < LEAK_HOURS_LOCAL[1]) \
                & (self.leak[idx] > 0)
            if on.any():
                rate = rate + np.where(on, self.leak[idx], 0.0)
                leaking = np.flatnonzero(on)
        hours = dt_ms / 3_600_000
        if self.kind == "water":
            use = rate * hours * self.rng.gamma(3.0, 1 / 3.0, len(idx)) / 1000.0  # m3
        else:
            use = rate * hours * self.rng.gamma(10.0, 0.1, len(idx))  # kWh
        reg = self.register[idx] + use
        if reset is not None:
            reg = np.where(reset, use, reg)
        self.register[idx] = reg
        if self.kind == "water":
            flow = use * 1000.0 / (dt_ms / 60_000)
            demand = base / self.peak[row]
            pressure = self.pressure0[row] - 0.8 * demand + self.rng.normal(0.0, 0.04, len(idx))
            if leaking is not None:
                pressure[leaking] -= 0.3
            volumes = np.round(reg, 4).tolist()
            flows = np.round(flow, 3).tolist()
            pressures = np.round(np.clip(pressure, 0.5, 10.0), 2).tolist()
            return [
                {"sensor_id": s, "ts": t, "seq": q, "volume_m3": v, "flow_l_min": f,
                 "pressure_bar": p}
                for s, t, q, v, f, p in zip(ids, ts_values, seqs, volumes, flows, pressures,
                                            strict=True)
            ], leaking
        power = use / hours
        energies = np.round(reg, 3).tolist()
        powers = np.round(power, 3).tolist()
        return [
            {"sensor_id": s, "ts": t, "seq": q, "energy_kwh": e, "power_kw": p}
            for s, t, q, e, p in zip(ids, ts_values, seqs, energies, powers, strict=True)
        ], None


class TrafficCounters:
    """Vehicle counters on the arms of every junction."""

    def __init__(self, city: City, size: float, interval_s: int, rng: np.random.Generator,
                 progress: Progress, shape: F64) -> None:
        self.interval_s = interval_s
        self.interval_ms = interval_s * 1000
        self.rng = rng
        self.progress = progress
        self.shape = shape
        self.ids: list[str] = []
        self.districts: list[str] = []
        self.junction_ids: list[str] = []
        rows: list[int] = []
        vf, cap, peak, reduction = [], [], [], []
        for j_i, j in enumerate(city.junctions):
            n = 0 if j.counters == 0 else max(1, round(j.counters * size))
            short = j.id[2:] if j.id.startswith("j-") and len(j.id) > 2 else j.id
            self.ids += [_sensor_id("tc", short, i + 1, width=2) for i in range(n)]
            self.districts += [j.district] * n
            self.junction_ids += [j.id] * n
            rows += [j_i] * n
            vf.append(j.free_flow_speed_kmh)
            cap.append(profiles.VEHICLES_PER_ARM_H * max(j.counters, 1))
            peak.append(profiles.peak_load_for(j.congestion_baseline, shape))
            reduction.append(min(0.95, 1.1 * city.congestion_target_pct(j.id) / 100))
        self.n = len(self.ids)
        self.row = np.asarray(rows, dtype=np.int64)
        self.vf = np.asarray(vf, dtype=np.float64)
        self.capacity = np.asarray(cap, dtype=np.float64)
        self.peak_load = np.asarray(peak, dtype=np.float64)
        self.reduction = np.asarray(reduction, dtype=np.float64)
        self.share = _shares(rng, self.row, len(city.junctions), 0.35)

    def step(self, idx: I64, ts: I64, ids: list[str], ts_values: list[Any],
             seqs: list[int]) -> list[dict[str, Any]]:
        """Counts and speeds over the interval ending at each `ts`."""
        mid = ts - self.interval_ms // 2
        row = self.row[idx]
        load = self.peak_load[row] * self.shape[profiles.minute_of_week(mid)]
        flow = load * self.capacity[row]  # vehicles/h through the junction
        counts = self.rng.poisson(flow * self.share[idx] * self.interval_s / 3600)
        multiplier = 1.0 - self.reduction[row] * self.progress(mid)
        # noise on the congestion part only: never faster than free flow, so the KPI's
        # max(0, vf/v - 1) clips nothing and the mean index stays on the baseline
        noise = np.exp(self.rng.normal(0.0, CONGESTION_NOISE, len(idx))
                       - CONGESTION_NOISE ** 2 / 2)
        ci = profiles.congestion_index(load, multiplier) * noise
        speed = self.vf[row] / (1.0 + ci)
        moving = counts > 0
        speed = np.where(moving, speed, 0.0)
        occupancy = np.where(
            moving, counts * 3600 / self.interval_s * EFFECTIVE_VEHICLE_M
            / (np.maximum(speed, 1.0) * 1000) * 100, 0.0)
        speeds = np.round(speed, 2).tolist()
        occs = np.round(np.minimum(occupancy, 100.0), 1).tolist()
        junctions = [self.junction_ids[i] for i in idx.tolist()]
        return [
            {"sensor_id": s, "ts": t, "seq": q, "junction": j, "vehicle_count": c,
             "interval_s": self.interval_s, "mean_speed_kmh": v, "occupancy_pct": o}
            for s, t, q, j, c, v, o in zip(ids, ts_values, seqs, junctions, counts.tolist(),
                                           speeds, occs, strict=True)
        ]


def _sensor_id(prefix: str, name: str, number: int, width: int = 4) -> str:
    """`<prefix>-<name>-<number>`, the name cut so the id fits the contract's 64 characters."""
    tail = f"-{number:0{width}d}"
    room = 64 - len(prefix) - 1 - len(tail)
    return f"{prefix}-{name[:room]}{tail}"
