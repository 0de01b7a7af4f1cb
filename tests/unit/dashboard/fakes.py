"""A small city and a fake `FluxSource` for the dashboard's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dashboard.queries import Row
from dashboard.source import SourceError
from models.city import City

WEEK = [1.0] * 168


def small_city(district_names: tuple[str, str] = ("Bletchley", "Wolverton"),
               route_name: str = "Station - centre") -> City:
    return City.model_validate({
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
    return "alerts" if '"alert"' in flux else "latest"


@dataclass
class FakeSource:
    """Answers each kind of dashboard query with the rows set for it; `fail` makes every query
    raise `SourceError(fail)`. Records the kinds asked."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    fail: str | None = None
    asked: list[str] = field(default_factory=list)
    on_query: Callable[[str], None] | None = None
    closed: bool = False

    def query(self, flux: str) -> list[Row]:
        kind = kind_of(flux)
        self.asked.append(kind)
        if self.on_query:
            self.on_query(kind)
        if self.fail is not None:
            raise SourceError(self.fail)
        return list(self.rows.get(kind, []))

    def close(self) -> None:
        self.closed = True
