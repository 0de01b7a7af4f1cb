"""The registry of reading kinds: the one list that every component iterates.

A kind is one unit: its reading model, its KPI record, its raw-point schema and what dashboards
show of it. The four built-in kinds are Python (their models in `models.readings` and
`models.records`, their maths in `streams.kpi.engine`); a feed declared in the city file
(CONTRACT section 5, `models.feeds`) is the same interface built from its TOML.

The registry holds the built-in kinds always and the declared feeds of the city this process
runs: `load_city` calls `activate(city.feeds)` when a component starts, so ingest, worker, sink,
dashboard, report and simulator all see the same kinds. Adding a Python kind: its models, an
engine class in `streams.kpi.engine.ENGINES`, a raw schema in `streams.lineproto.RAW_SCHEMAS`,
and one `KindSpec` line in `BUILTIN` below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from models.feeds import FeedSpec, kpi_model, reading_model
from models.readings import (
    KINDS,
    READING_TYPES,
    BaseReading,
    EnergyReading,
    ShuttleReading,
    TrafficReading,
    WaterReading,
)
from models.records import RECORD_TYPES, EnergyKpi, Kpi, Record, ShuttleKpi, TrafficKpi, WaterKpi

TOPIC_RE: Final = re.compile(
    r"city/([a-z0-9][a-z0-9-]{0,62})/([a-z][a-z0-9_]{0,30})/([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True)
class KindSpec:
    """One kind of reading and everything derived from it."""

    name: str
    title: str
    reading_type: type[BaseReading]
    kpi_type: type[Kpi]
    entity_tag: str
    feed: FeedSpec | None = None

    @property
    def measurement(self) -> str:
        """Its KPI measurement, `<kind>_kpi`."""
        return self.kpi_type.measurement


BUILTIN: Final[dict[str, KindSpec]] = {spec.name: spec for spec in (
    KindSpec("water", "Water", WaterReading, WaterKpi, "district"),
    KindSpec("energy", "Energy", EnergyReading, EnergyKpi, "district"),
    KindSpec("traffic", "Traffic", TrafficReading, TrafficKpi, "junction"),
    KindSpec("shuttle", "Shuttle", ShuttleReading, ShuttleKpi, "route"),
)}
assert tuple(BUILTIN) == KINDS and all(READING_TYPES[k] is BUILTIN[k].reading_type for k in KINDS)


def feed_kind(feed: FeedSpec) -> KindSpec:
    """The registry entry of a declared feed."""
    return KindSpec(feed.kind, feed.title, reading_model(feed), kpi_model(feed), feed.entity,
                    feed)


class _Registry:
    def __init__(self) -> None:
        self.kinds: dict[str, KindSpec] = dict(BUILTIN)
        self.records: dict[str, type[Record]] = dict(RECORD_TYPES)
        self.feeds: tuple[FeedSpec, ...] = ()
        self.generation = 0

    def activate(self, feeds: Iterable[FeedSpec]) -> None:
        feeds = tuple(feeds)
        if feeds == self.feeds:
            return
        declared = [feed_kind(feed) for feed in feeds]
        self.kinds = {**BUILTIN, **{spec.name: spec for spec in declared}}
        self.records = {**RECORD_TYPES, **{s.measurement: s.kpi_type for s in declared}}
        self.feeds = feeds
        self.generation += 1


_REGISTRY: Final = _Registry()


def activate(feeds: Iterable[FeedSpec]) -> None:
    """Make the declared feeds of the city this process runs the registered kinds, besides
    the built-in ones (replacing any feeds activated before). Called by `load_city`."""
    _REGISTRY.activate(feeds)


def generation() -> int:
    """Changes whenever `activate` changed the kinds (for caches derived from the registry)."""
    return _REGISTRY.generation


def names() -> tuple[str, ...]:
    """Every registered kind: the built-in ones, then the declared feeds in file order."""
    return tuple(_REGISTRY.kinds)


def specs() -> tuple[KindSpec, ...]:
    """Every registered kind's spec, in `names()` order."""
    return tuple(_REGISTRY.kinds.values())


def feeds() -> tuple[FeedSpec, ...]:
    """The declared feeds, in file order."""
    return _REGISTRY.feeds


def get(kind: str) -> KindSpec | None:
    """The spec of a registered kind, or None."""
    return _REGISTRY.kinds.get(kind)


def reading_type(kind: str) -> type[BaseReading] | None:
    """The reading model of a registered kind, or None."""
    spec = _REGISTRY.kinds.get(kind)
    return None if spec is None else spec.reading_type


def record_types() -> dict[str, type[Record]]:
    """Measurement -> record type of everything the pipeline writes to the `kpi` bucket."""
    return _REGISTRY.records


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """`city/<district>/<kind>/<sensor_id>` -> (district, kind, sensor_id) for a registered
    kind, or None if the topic is malformed or names no registered kind."""
    match = TOPIC_RE.fullmatch(topic) if type(topic) is str else None
    if match is None or match.group(2) not in _REGISTRY.kinds:
        return None
    district, kind, sensor_id = match.groups()
    return district, kind, sensor_id
