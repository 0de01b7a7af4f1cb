"""The registry of reading kinds: the one list that every component iterates.

A kind is one unit, a `KindSpec`: its reading model, its KPI record, its raw-point schema, its
engine and what dashboards show of it. The built-in kinds are Python modules, `kinds.<name>`,
each ending with `KIND = KindSpec(...)`; `PYTHON_KINDS` names them, one line per kind. A feed
declared in the city file (CONTRACT section 5) is the same interface, built by `kinds.feed` from
its TOML. Like a plugin registry, this module finds those modules by name when first asked and
imports none of them statically: it sits in the core, below the kinds it lists.

The registry holds the Python kinds always and the declared feeds of the city this process runs:
`load_city` calls `activate(city.feeds)` when a component starts, so ingest, worker, sink,
dashboard, report and simulator all see the same kinds.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Final, Union

from pydantic import Field, TypeAdapter

from models.quality import SensorQuality
from models.raw import RawSchema
from models.readings import BaseReading
from models.records import Alert, Kpi, PipelineCounters, Record

if TYPE_CHECKING:
    from kpi.engine import KindEngine
    from models.city import City
    from models.feeds import FeedSpec

PYTHON_KINDS: Final = ("water", "energy", "traffic", "shuttle")
"""The Python kinds, in display order: each is the module `kinds.<name>`. Adding a kind in
Python is its module and its name here."""

TOPIC_RE: Final = re.compile(
    r"city/([a-z0-9][a-z0-9-]{0,62})/([a-z][a-z0-9_]{0,30})/([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True)
class KindSpec:
    """One kind of reading and everything particular to it."""

    name: str
    title: str
    reading_type: type[BaseReading]
    kpi_type: type[Kpi]
    entity_tag: str  # the KPI points' entity tag (district, junction, route, car_park ...)
    raw: RawSchema
    engine: Callable[..., KindEngine]  # (city, **options) -> the kind's KPI engine
    units: Mapping[str, str] = field(default_factory=dict)  # KPI field -> unit, for display
    feed: FeedSpec | None = None  # the declaration, for a declared feed

    @property
    def measurement(self) -> str:
        """Its KPI measurement, `<kind>_kpi`."""
        return self.kpi_type.measurement


class _Registry:
    def __init__(self) -> None:
        self._python: dict[str, KindSpec] | None = None
        self.kinds: dict[str, KindSpec] = {}
        self.feeds: tuple[FeedSpec, ...] = ()
        self.generation = 0

    @property
    def python(self) -> dict[str, KindSpec]:
        if self._python is None:
            self._python = {name: importlib.import_module(f"kinds.{name}").KIND
                            for name in PYTHON_KINDS}
            self.kinds = {**self._python, **self.kinds}
        return self._python

    def all(self) -> dict[str, KindSpec]:
        if self._python is None:
            self.python  # noqa: B018  (loads the Python kinds)
        return self.kinds

    def activate(self, feeds: Iterable[FeedSpec]) -> None:
        feeds = tuple(feeds)
        if feeds == self.feeds and self._python is not None:
            return
        feed_kind = importlib.import_module("kinds.feed").feed_kind
        declared = {feed.kind: feed_kind(feed) for feed in feeds}
        self.kinds = {**self.python, **declared}
        self.feeds = feeds
        self.generation += 1


_REGISTRY: Final = _Registry()


def activate(feeds: Iterable[FeedSpec]) -> None:
    """Make the declared feeds of the city this process runs the registered kinds, besides
    the Python ones (replacing any feeds activated before). Called by `load_city`."""
    _REGISTRY.activate(feeds)


def generation() -> int:
    """Changes whenever `activate` changed the kinds (for caches derived from the registry)."""
    return _REGISTRY.generation


def names() -> tuple[str, ...]:
    """Every registered kind: the Python ones, then the declared feeds in file order."""
    return tuple(_REGISTRY.all())


def specs() -> tuple[KindSpec, ...]:
    """Every registered kind's spec, in `names()` order."""
    return tuple(_REGISTRY.all().values())


def python_kinds() -> tuple[KindSpec, ...]:
    """The Python kinds' specs."""
    return tuple(_REGISTRY.python.values())


def feeds() -> tuple[FeedSpec, ...]:
    """The declared feeds, in file order."""
    return _REGISTRY.feeds


def get(kind: str) -> KindSpec | None:
    """The spec of a registered kind, or None."""
    return _REGISTRY.all().get(kind)


def reading_type(kind: str) -> type[BaseReading] | None:
    """The reading model of a registered kind, or None."""
    spec = _REGISTRY.all().get(kind)
    return None if spec is None else spec.reading_type


def reading_types() -> dict[str, type[BaseReading]]:
    """Kind -> reading model, for every registered kind."""
    return {name: spec.reading_type for name, spec in _REGISTRY.all().items()}


def record_types() -> dict[str, type[Record]]:
    """Measurement -> record type of everything the pipeline writes to the `kpi` bucket: every
    kind's KPI record, `alert`, `pipeline` and `sensor_quality`."""
    return {**{spec.measurement: spec.kpi_type for spec in _REGISTRY.all().values()},
            Alert.measurement: Alert, PipelineCounters.measurement: PipelineCounters,
            SensorQuality.measurement: SensorQuality}


def engines_for(city: City, **options: Any) -> dict[str, KindEngine]:
    """One KPI engine per registered kind (`options`: grace_s, horizon_s, rules)."""
    return {name: spec.engine(city, **options) for name, spec in _REGISTRY.all().items()}


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """`city/<district>/<kind>/<sensor_id>` -> (district, kind, sensor_id) for a registered
    kind, or None if the topic is malformed or names no registered kind."""
    match = TOPIC_RE.fullmatch(topic) if type(topic) is str else None
    if match is None or match.group(2) not in _REGISTRY.all():
        return None
    district, kind, sensor_id = match.groups()
    return district, kind, sensor_id


@lru_cache(maxsize=8)
def _any_reading(generation: int, types: tuple[type[BaseReading], ...]) -> TypeAdapter[Any]:
    union = types[0] if len(types) == 1 else Union[types]  # noqa: UP007
    return TypeAdapter(Annotated[union, Field(discriminator="kind")])  # type: ignore[arg-type]


@lru_cache(maxsize=256)
def list_adapter(model: type[BaseReading]) -> TypeAdapter[list[BaseReading]]:
    """The validator of a JSON array of `model` readings (a Kafka record, a gateway's batch),
    built once per model."""
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def reading_from_json(data: bytes | str) -> BaseReading:
    """Parse `BaseReading.to_json` output of any registered kind (its `kind` key decides);
    raises pydantic's ValidationError if it is not one."""
    adapter = _any_reading(generation(), tuple(reading_types().values()))
    reading: BaseReading = adapter.validate_json(data)
    return reading


def raw_schemas() -> dict[str, RawSchema]:
    """Kind -> the schema of its raw points in the `telemetry` bucket."""
    return {name: spec.raw for name, spec in _REGISTRY.all().items()}
