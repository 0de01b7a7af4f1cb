"""`citystream baseline learn`: hour-of-week baselines from past KPI windows (pure functions).

Baselines are learned from the `kpi` bucket, not from raw `telemetry`: its windows already carry
each district's use with meter resets, duplicates and late readings handled exactly as the
KPIs that will be compared against the baseline, and it is kept for 400 days where raw readings
are kept for 7. For every hour of the week (UTC, Monday 00:00 = 0; a window counts in the hour
its START falls in, the rule the KPI engine applies):

- `water_baseline_l_h` = Σ `consumption_l` / hours covered by the district's windows in that
  hour-of-week (litres per hour, whatever the window length);
- `energy_baseline_kwh_h` = Σ `energy_kwh` / hours covered;
- `congestion_baseline` = mean `congestion_index` of the junction's windows with traffic.

An hour-of-week without any window keeps the city file's value, and the notes say which.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.city import HOURS_PER_WEEK, City, hour_of_week

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DIGITS = {"water_baseline_l_h": 3, "energy_baseline_kwh_h": 4, "congestion_baseline": 5}


def window_seconds(label: str) -> int:
    """`15m` -> 900."""
    m = re.fullmatch(r"([1-9][0-9]*)([smhd])", label)
    if m is None:
        raise ValueError(f"window tag {label!r} is not like 15m")
    return int(m.group(1)) * _WINDOW_S[m.group(2)]


def window_start_ms(record: WaterKpi | EnergyKpi | TrafficKpi | ShuttleKpi) -> int:
    return record.time_ms - window_seconds(record.window) * 1000


def week_profile(samples: Iterable[tuple[int, float, float]]) -> list[float | None]:
    """(window start ms, value, weight) -> Σ value / Σ weight per hour-of-week; None where the
    hour has no sample."""
    total = [0.0] * HOURS_PER_WEEK
    weight = [0.0] * HOURS_PER_WEEK
    for start_ms, value, w in samples:
        h = hour_of_week(start_ms)
        total[h] += value
        weight[h] += w
    return [total[h] / weight[h] if weight[h] > 0 else None for h in range(HOURS_PER_WEEK)]


def describe_hours(hours: Sequence[int]) -> str:
    """Hours of week as ranges: [0, 1, 2, 30] -> 'Mon 00:00-03:00, Tue 06:00-07:00'."""
    def at(h: int) -> str:
        return f"{DAYS[h // 24 % 7]} {h % 24:02d}:00"

    runs: list[list[int]] = []
    for h in sorted(hours):
        if runs and h == runs[-1][-1] + 1:
            runs[-1].append(h)
        else:
            runs.append([h])
    parts = []
    for run in runs:
        first, end = run[0], run[-1] + 1
        if end // 24 == first // 24:
            stop = f"{end % 24:02d}:00"
        elif end % 24 == 0 and end - first <= 24:
            stop = "24:00"
        else:
            stop = at(end)
        parts.append(f"{at(first)}-{stop}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Learned:
    """The city with learned baselines, and what to tell the user about it."""

    city: City
    notes: list[str]
    learned_hours: int
    kept_hours: int


def _merge(old: list[float], new: list[float | None], digits: int) -> tuple[list[float],
                                                                           list[int]]:
    merged, kept = [], []
    for h, (before, value) in enumerate(zip(old, new, strict=True)):
        if value is None or not math.isfinite(value):
            merged.append(before)
            kept.append(h)
        else:
            merged.append(round(max(0.0, value), digits))
    return merged, kept


def learn(city: City, water: Iterable[WaterKpi], energy: Iterable[EnergyKpi],
          traffic: Iterable[TrafficKpi]) -> Learned:
    """New baselines for every district and junction of `city` from its KPI windows."""
    samples: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for w in water:
        samples.setdefault(("water_baseline_l_h", w.district), []).append(
            (window_start_ms(w), w.consumption_l, window_seconds(w.window) / 3600))
    for e in energy:
        samples.setdefault(("energy_baseline_kwh_h", e.district), []).append(
            (window_start_ms(e), e.energy_kwh, window_seconds(e.window) / 3600))
    for t in traffic:
        if t.vehicles > 0 and t.congestion_index is not None:
            samples.setdefault(("congestion_baseline", t.junction), []).append(
                (window_start_ms(t), t.congestion_index, 1.0))
    data = city.model_dump()
    notes: list[str] = []
    learned = kept_total = 0
    entities = [("districts", "slug", ("water_baseline_l_h", "energy_baseline_kwh_h")),
                ("junctions", "id", ("congestion_baseline",))]
    known: set[tuple[str, str]] = set()
    for group, key, names in entities:
        for item in data[group]:
            for name in names:
                known.add((name, item[key]))
                profile = week_profile(samples.get((name, item[key]), []))
                item[name], kept = _merge(item[name], profile, DIGITS[name])
                learned += HOURS_PER_WEEK - len(kept)
                kept_total += len(kept)
                what = f"{group[:-1]} {item[key]} {name}"
                if len(kept) == HOURS_PER_WEEK:
                    notes.append(f"{what}: no data in the period, kept all {HOURS_PER_WEEK} "
                                 "values")
                elif kept:
                    notes.append(f"{what}: no data for {len(kept)} hours, kept the old values "
                                 f"for {describe_hours(kept)}")
    for name, entity in sorted(set(samples) - known):
        notes.append(f"ignored {name} data of {entity!r}: not in the city file (add it there "
                     "first)")
    return Learned(City.model_validate(data), notes, learned, kept_total)
