"""Deterministic KPI, alert and counter records for the analyst-facing tests.

`kpi_records(start_ms, end_ms, seed)` makes every window ending in (start, end] for a few
districts, junctions and a route, with random but valid values (savings consistent with their
use and baseline). The tests compute what queries should answer from these records themselves.
"""

from __future__ import annotations

import random

from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.records import Alert, PipelineCounters, Record

DISTRICTS = ("central-mk", "bletchley")
JUNCTIONS = {"j-portway-h5": "central-mk", "j-bletcham-way-v7": "bletchley"}
ROUTES = ("station-centre",)
WINDOW_MS = {"water_kpi": 900_000, "energy_kpi": 1_800_000, "traffic_kpi": 300_000,
             "shuttle_kpi": 900_000}


def _ends(start_ms: int, end_ms: int, window_ms: int) -> range:
    first = (start_ms // window_ms + 1) * window_ms
    return range(first, end_ms + 1, window_ms)


def _saving(actual: float, baseline: float) -> float:
    return 100.0 * (1.0 - actual / baseline)


def water(rng: random.Random, district: str, end: int) -> WaterKpi:
    baseline = rng.uniform(600.0, 1200.0)
    used = baseline * rng.uniform(0.6, 1.1)
    rolling = rng.uniform(-10.0, 40.0)
    return WaterKpi(district=district, window_end_ms=end, consumption_l=used, baseline_l=baseline,
                    saving_pct=_saving(used, baseline), saving_pct_24h=rolling,
                    on_track=rolling >= 20.0, meters_reporting=rng.randint(10, 40))


def energy(rng: random.Random, district: str, end: int) -> EnergyKpi:
    baseline = rng.uniform(50.0, 150.0)
    used = baseline * rng.uniform(0.85, 1.05)
    rolling = rng.uniform(-5.0, 10.0)
    return EnergyKpi(district=district, window_end_ms=end, energy_kwh=used, baseline_kwh=baseline,
                     saving_pct=_saving(used, baseline), saving_pct_24h=rolling,
                     on_track=rolling >= 3.0, peak_kw=rng.uniform(100.0, 400.0),
                     meters_reporting=rng.randint(10, 40))


def traffic(rng: random.Random, junction: str, end: int) -> TrafficKpi:
    vehicles = rng.randint(0, 150)
    baseline = rng.uniform(0.2, 1.0)
    index = baseline * rng.uniform(0.2, 1.5)
    rolling = rng.uniform(0.0, 80.0)
    return TrafficKpi(district=JUNCTIONS[junction], junction=junction, window_end_ms=end,
                      vehicles=vehicles, flow_veh_h=12.0 * vehicles,
                      space_mean_speed_kmh=48.0 / (1.0 + index), congestion_index=index,
                      baseline_congestion_index=baseline,
                      reduction_pct=_saving(index, baseline), reduction_pct_24h=rolling,
                      on_track=rolling >= 50.0)


def shuttle(rng: random.Random, route: str, end: int) -> ShuttleKpi:
    return ShuttleKpi(route=route, window_end_ms=end, boardings=rng.randint(0, 40),
                      occupancy_pct=rng.uniform(0.0, 100.0), on_time_pct=rng.uniform(40.0, 100.0),
                      availability_pct=rng.choice([50.0, 75.0, 100.0]),
                      mean_battery_pct=rng.uniform(10.0, 100.0),
                      disengagements=rng.randint(0, 2), vehicles_reporting=rng.randint(2, 4))


def kpi_records(start_ms: int, end_ms: int, seed: int = 1) -> list[Record]:
    """Every KPI window ending in (start_ms, end_ms] for DISTRICTS, JUNCTIONS and ROUTES."""
    rng = random.Random(seed)
    out: list[Record] = []
    for end in _ends(start_ms, end_ms, WINDOW_MS["water_kpi"]):
        out += [water(rng, d, end) for d in DISTRICTS]
        out += [shuttle(rng, r, end) for r in ROUTES]
    for end in _ends(start_ms, end_ms, WINDOW_MS["energy_kpi"]):
        out += [energy(rng, d, end) for d in DISTRICTS]
    for end in _ends(start_ms, end_ms, WINDOW_MS["traffic_kpi"]):
        out += [traffic(rng, j, end) for j in JUNCTIONS]
    return out


def alert(entity: str, rule: str, ts_ms: int, active: bool, kind: str = "water",
          value: float = 900.0, threshold: float = 600.0) -> Alert:
    return Alert(kind=kind, entity=entity, rule=rule, ts_ms=ts_ms, value=value,
                 threshold=threshold, message=f"{rule} on {entity}", active=active)


def counters(component: str, instance: str, start_ms: int, n: int,
             step_ms: int = 60_000) -> list[PipelineCounters]:
    """Growing counters of one component instance, one point per `step_ms`."""
    return [PipelineCounters(component=component, instance=instance,
                             ts_ms=start_ms + i * step_ms, received=1000 * i, accepted=990 * i,
                             rejected=10 * i, late=i, duplicates=2 * i, written=980 * i)
            for i in range(n)]
