"""Demand profiles: how much water, energy, traffic and shuttle demand there is at a given time
(and the activity shape that drives the simulated values of declared feeds).

Everything here is a pure function of the minute of the week (UTC, Monday 00:00 = minute 0, the
same convention as the city model's hour-of-week baselines). Two directions:

* `make_city` builds each district's hour-of-week baseline from the shapes below
  (`water_shape`, `energy_shape`) and each junction's congestion baseline from `traffic_shape`
  and the speed-flow curve (`congestion_baseline`).
* The simulator turns a baseline back into a smooth per-minute demand whose hourly means are
  exactly the baseline (`minute_rates`), so an unsaved simulation sits at 0 % saving whatever
  city file it runs, and recovers a junction's peak load from its baseline (`peak_load_for`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
HOURS_PER_WEEK = 168
_MINUTE_MS = 60_000
# 1970-01-01 was a Thursday: minute 0 of the epoch is minute-of-week 3 * 1440.
_EPOCH_MINUTE_OF_WEEK = 3 * MINUTES_PER_DAY

# Speed-flow curve of a roundabout approach (BPR form): v = vf / (1 + A * x**B), x = flow/capacity.
# Its congestion index vf/v - 1 is then simply A * x**B.
SPEED_FLOW_A = 1.0
SPEED_FLOW_B = 4.0
VEHICLES_PER_ARM_H = 900.0
"""Capacity of one counted junction arm, vehicles per hour."""


def minute_of_week(ts_ms: I64 | int) -> I64:
    """UTC minute of week of epoch-millisecond instants (Monday 00:00 = 0)."""
    return (np.asarray(ts_ms, dtype=np.int64) // _MINUTE_MS + _EPOCH_MINUTE_OF_WEEK) \
        % MINUTES_PER_WEEK


def week_minutes() -> tuple[F64, I64]:
    """Hour of day (fractional, minute midpoints) and weekday (Monday 0) of each week minute."""
    m = np.arange(MINUTES_PER_WEEK, dtype=np.int64)
    hour = np.asarray(((m % MINUTES_PER_DAY) + 0.5) / 60.0, dtype=np.float64)
    return hour, np.asarray(m // MINUTES_PER_DAY, dtype=np.int64)


def _bump(hour: F64, centre: F64 | float, width: F64 | float) -> F64:
    """A Gaussian bump over the hour of day, wrapping round midnight."""
    d = np.abs(hour - centre)
    d = np.minimum(d, 24.0 - d)
    return np.asarray(np.exp(-0.5 * (d / width) ** 2), dtype=np.float64)


def _plateau(hour: F64, start: float, end: float, edge: float = 0.6) -> F64:
    """1 between `start` and `end` (hours), with soft logistic edges."""
    return np.asarray(1.0 / (1.0 + np.exp(-(hour - start) / edge * 4))
                      / (1.0 + np.exp((hour - end) / edge * 4)), dtype=np.float64)


def _normalise(values: F64) -> F64:
    return np.asarray(values / values.mean(), dtype=np.float64)


def water_shape(commercial: float) -> F64:
    """Relative water demand per week minute (weekly mean 1).

    Homes: a sharp morning peak (showers, 07:00-08:00, later at weekends), a broad evening peak
    and low night use; businesses: a working-day plateau, little at weekends. `commercial` is the
    share of business demand in the district (0..1).
    """
    hour, day = week_minutes()
    weekend = day >= 5
    home = (0.25 + 2.3 * _bump(hour, np.where(weekend, 9.0, 7.3), np.where(weekend, 1.4, 0.9))
            + 0.9 * _plateau(hour, 9.5, 16.5) + 1.6 * _bump(hour, 19.2, 1.6))
    work = 0.15 + np.where(weekend, 0.35, 1.8) * _plateau(hour, 7.5, 18.5) \
        + np.where(weekend, 0.0, 0.5) * _bump(hour, 12.5, 1.0)
    return _normalise((1 - commercial) * _normalise(home) + commercial * _normalise(work))


def energy_shape(commercial: float) -> F64:
    """Relative electricity demand per week minute (weekly mean 1): homes peak in the evening,
    businesses run a working-day plateau; base load never drops to zero."""
    hour, day = week_minutes()
    weekend = day >= 5
    home = (0.45 + 0.7 * _bump(hour, np.where(weekend, 9.5, 7.5), 1.2)
            + 0.45 * _plateau(hour, 9.0, 16.0) + 1.5 * _bump(hour, 18.8, 2.0))
    work = 0.35 + np.where(weekend, 0.25, 1.6) * _plateau(hour, 7.0, 18.5)
    return _normalise((1 - commercial) * _normalise(home) + commercial * _normalise(work))


def traffic_shape() -> F64:
    """Relative traffic flow per week minute, peak 1: weekday AM (08:00) and PM (17:15) peaks
    with an inter-peak plateau, Friday's PM peak earlier, broad midday humps at weekends."""
    hour, day = week_minutes()
    weekday = day < 5
    friday = day == 4
    pm_centre = np.where(friday, 16.3, 17.3)
    weekday_flow = (0.04 + 0.95 * _bump(hour, 8.0, 0.85) + 0.45 * _plateau(hour, 6.5, 19.5, 1.0)
                    + 0.82 * _bump(hour, pm_centre, 1.1) + 0.15 * _bump(hour, 13.0, 1.5)
                    + 0.16 * _plateau(hour, 6.0, 22.5, 1.2))
    weekend_flow = 0.04 + np.where(day == 5, 0.68, 0.5) * _bump(hour, 13.0, 3.2) \
        + 0.1 * _plateau(hour, 9.0, 21.0, 1.0)
    flow = np.where(weekday, weekday_flow, weekend_flow)
    return np.asarray(flow / flow.max(), dtype=np.float64)


def shuttle_demand() -> F64:
    """Relative shuttle boarding demand per week minute (peak about 1): rail commuters at the
    station in the AM and PM peaks, shoppers for centre:mk through the day (more on Saturdays)."""
    hour, day = week_minutes()
    weekday = day < 5
    commute = np.where(weekday, 1.0, 0.15) * (_bump(hour, 8.0, 0.8) + 0.9 * _bump(hour, 17.5, 1.0))
    shopping = np.where(day == 5, 0.8, np.where(day == 6, 0.55, 0.45)) * _plateau(hour, 9.5, 18.5)
    return np.asarray(0.05 + commute + shopping, dtype=np.float64)


def activity_shape() -> F64:
    """Relative level of a declared feed's gauges per week minute (weekly mean 1): the traffic
    profile lifted off zero, so nights sit at about 0.65 and the weekday peaks at about 1.8
    (pollution, car park and bus occupancy all follow the city's daily rhythm)."""
    lifted = 0.5 + traffic_shape()
    return np.asarray(lifted / lifted.mean(), dtype=np.float64)


def hourly_means(per_minute: F64) -> F64:
    """The 168 hour-of-week means of a per-minute weekly series."""
    return np.asarray(per_minute.reshape(HOURS_PER_WEEK, 60).mean(axis=1), dtype=np.float64)


def minute_rates(hourly: F64 | list[float]) -> F64:
    """A smooth per-minute rate (same units per hour) whose hourly means equal `hourly` exactly.

    The cumulative sum of the hourly values is interpolated with a monotone cubic
    (Fritsch-Carlson, periodic over the week) and differentiated minute by minute: every
    minute's value is the exact average rate over that minute, the rate never goes negative,
    and the 60 minutes of an hour add up to the hour's baseline.
    """
    b = np.asarray(hourly, dtype=np.float64)
    if b.shape != (HOURS_PER_WEEK,):
        raise ValueError(f"need {HOURS_PER_WEEK} hourly values, got {b.shape}")
    prev = np.roll(b, 1)  # secant slopes either side of each hour boundary (spacing 1 h)
    with np.errstate(divide="ignore", invalid="ignore"):
        knot = np.where((prev > 0) & (b > 0), 2.0 * prev * b / (prev + b), 0.0)
    d0, d1 = knot, np.roll(knot, -1)  # slopes at the start and end of each hour
    t0 = np.arange(60) / 60.0
    t1 = t0 + 1 / 60.0

    def cumulative(t: F64) -> F64:  # Hermite cubic of the cumulative, relative to hour start
        h10 = t ** 3 - 2 * t ** 2 + t
        h01 = -2 * t ** 3 + 3 * t ** 2
        h11 = t ** 3 - t ** 2
        return np.asarray(np.outer(b, h01) + np.outer(d0, h10) + np.outer(d1, h11),
                          dtype=np.float64)

    per_minute = (cumulative(t1) - cumulative(t0)) * 60.0
    return np.asarray(np.maximum(per_minute, 0.0).reshape(-1), dtype=np.float64)


def congestion_index(load: F64 | float, multiplier: F64 | float = 1.0) -> F64:
    """Congestion index vf/v - 1 at a volume/capacity ratio `load` (speed-flow curve)."""
    return np.asarray(SPEED_FLOW_A * np.power(load, SPEED_FLOW_B) * multiplier, dtype=np.float64)


def speed_kmh(free_flow_kmh: F64 | float, load: F64 | float,
              multiplier: F64 | float = 1.0) -> F64:
    """Mean speed through the junction at a volume/capacity ratio: falls as flow rises."""
    return np.asarray(free_flow_kmh / (1.0 + congestion_index(load, multiplier)),
                      dtype=np.float64)


def congestion_baseline(peak_load: float, shape: F64 | None = None, window_min: int = 5) -> F64:
    """Hour-of-week baseline congestion index of a junction whose peak volume/capacity ratio is
    `peak_load`: per `window_min` window the flow-weighted mean index (what the KPI's
    count-weighted harmonic mean speed gives), then the mean of the hour's windows."""
    flow = traffic_shape() if shape is None else shape
    load = peak_load * flow
    ci = congestion_index(load)
    windows = (flow * ci).reshape(-1, window_min).sum(axis=1) \
        / np.maximum(flow.reshape(-1, window_min).sum(axis=1), 1e-12)
    return np.asarray(windows.reshape(HOURS_PER_WEEK, -1).mean(axis=1), dtype=np.float64)


def peak_load_for(baseline: F64 | list[float], shape: F64 | None = None) -> float:
    """The peak volume/capacity ratio whose `congestion_baseline` peaks where `baseline` does.

    Inverts what `make_city` did, so the simulator reproduces any junction's baseline; 0.6 when
    the baseline is all zero (no information).
    """
    target = float(np.max(baseline))
    if target <= 0:
        return 0.6
    flow = traffic_shape() if shape is None else shape
    lo, hi = 0.0, 4.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(congestion_baseline(mid, flow).max()) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
