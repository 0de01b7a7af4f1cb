"""A small city and a fake `FluxSource` for the dashboard's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dashboard.queries import Row
from dashboard.source import SourceError
from models.city import City

WEEK = [1.0] * 168


HOSTILE_TITLE = 'Noise <img src=x onerror="window.__xss = 1"> & "quotes"'

# Two declared feeds: one per district with a target and an alert rule, one per car park
# (an entity field) without a target, with windows shorter than the charts' 15 minutes.
NOISE: dict[str, Any] = {
    "kind": "noise", "title": HOSTILE_TITLE, "window_s": 3600,
    "fields": {"laeq_db": {"type": "number", "min": 20.0, "max": 140.0}},
    "kpis": [{"name": "laeq_mean_db", "agg": "mean", "field": "laeq_db"},
             {"name": "readings", "agg": "count"}],
    "target": {"kpi": "laeq_mean_db", "at_most": 55.0},
    "alerts": [{"rule": "loud", "kpi": "laeq_mean_db", "above": 65.0}],
}
CAR_PARK: dict[str, Any] = {
    "kind": "car_park", "title": "Car parks", "window_s": 300, "entity": "car_park",
    "fields": {"car_park": {"type": "string"}, "occupied": {"type": "integer"},
               "capacity": {"type": "integer", "min": 1.0}},
    "kpis": [{"name": "occupancy_pct", "agg": "ratio_pct", "field": "occupied",
              "of": "capacity"},
             {"name": "sensors_reporting", "agg": "sensors"}],
    "alerts": [{"rule": "full", "kpi": "occupancy_pct", "above": 95.0}],
}


def feed_city() -> City:
    """`small_city` declaring the two feeds above."""
    return small_city(feeds=[NOISE, CAR_PARK])


def small_city(district_names: tuple[str, str] = ("Bletchley", "Wolverton"),
               route_name: str = "Station - centre",
               feeds: list[dict[str, Any]] | None = None) -> City:
    return City.model_validate({
        "feeds": feeds or [],
        "name": "Testville", "timezone": "Europe/London",
        "districts": [
            {"slug": "bletchley", "name": district_names[0], "water_baseline_l_h": WEEK,
             "energy_baseline_kwh_h": WEEK, "water_saving_pct": 25.0},
            {"slug": "wolverton", "name": district_names[1], "water_baseline_l_h": WEEK,
             "energy_baseline_kwh_h": WEEK},
        ],
        "junctions": [{"id": "j-1", "district": "bletchley", "name": "Saxon St roundabout",
                       "congestion_baseline": WEEK, "congestion_reduction_pct": 40.0}],
        "routes": [{"id": "r-1", "district": "wolverton", "name": route_name, "fleet_size": 4}],
    })


def row(measurement: str, field_name: str, value: Any, time_ms: int,
        **tags: str) -> dict[str, Any]:
    return {"_measurement": measurement, "_field": field_name, "_value": value,
            "time_ms": time_ms, **tags}


def kind_of(flux: str) -> str:
    if "union(" in flux:
        return "history"
    if '"sensor_quality"' in flux:
        return "attention" if "stateDuration" in flux else "coverage"
    return "alerts" if '"alert"' in flux else "latest"


@dataclass
class FakeSource:
    """Answers each kind of dashboard query with the rows set for it; `fail` makes every query
    raise `SourceError(fail)`. Records the kinds asked and the Flux."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    fail: str | None = None
    asked: list[str] = field(default_factory=list)
    flux: list[str] = field(default_factory=list)
    on_query: Callable[[str], None] | None = None
    closed: bool = False

    def query(self, flux: str) -> list[Row]:
        kind = kind_of(flux)
        self.asked.append(kind)
        self.flux.append(flux)
        if self.on_query:
            self.on_query(kind)
        if self.fail is not None:
            raise SourceError(self.fail)
        return list(self.rows.get(kind, []))

    def close(self) -> None:
        self.closed = True
