"""What the open-data service publishes: one `Dataset` per KPI measurement and `data_quality`.

The datasets come from the kinds registry (`models.kinds.specs()`: the built-in kinds and the
declared feeds of the city this process runs), so a feed declared in the city file is published
without code. `alert`, `pipeline` and `sensor_quality` are never datasets: alerts and pipeline
counters are operations data, and `sensor_quality` points are per sensor (their aggregate per
kind, district and hour is the `data_quality` dataset).

A dataset's rows have the columns `window_end, <tags>, window, <fields>, suppressed`:

- `<tags>`: every tag of the measurement but `window`, the entity tag last (`traffic_kpi`:
  `district, junction`; `data_quality`: `kind, district`); rows are ordered by window end, then
  entity, then the other tags;
- `<fields>`: the record's fields in its own order (CONTRACT sections 2 and 5).

Privacy (CONTRACT section 6): household meters are personal data, so a window of a `private`
dataset counted over fewer than `min_meters` meters (`meters_reporting`; for `data_quality` rows
of water and energy, `sensors`) is published with every field empty and `suppressed` true.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from models import kinds
from models.city import City
from models.kinds import KindSpec
from models.records import Kpi

ColumnType = Literal["number", "integer", "boolean", "string"]

DATA_QUALITY: Final = "data_quality"
SENSOR_QUALITY: Final = "sensor_quality"
NOT_PUBLISHED: Final = frozenset({"alert", "pipeline", SENSOR_QUALITY})
HOUSEHOLD_KINDS: Final = frozenset({"water", "energy"})
"""Kinds whose sensors are household meters (personal data)."""
PRIVACY_COUNT: Final = "meters_reporting"


@dataclass(frozen=True)
class Column:
    """One published field: its name, JSON/CSV type and unit (when the kind names one)."""

    name: str
    type: ColumnType
    unit: str | None = None


@dataclass(frozen=True)
class Target:
    """A KPI with a target, published as an NGSI-LD `KeyPerformanceIndicator` per entity.

    `field` is the rolling 24 h figure (the `kpiValue`), `limit_field` the point's field holding
    the target value (`default` when a point lacks it); `business` formats the business target
    with `{limit:g}`."""

    field: str
    limit_field: str
    default: float
    at_most: bool
    business: str
    process: str


@dataclass(frozen=True)
class Dataset:
    """One published dataset (see module docstring)."""

    measurement: str
    title: str
    description: str
    entity: str
    tags: tuple[str, ...]
    fields: tuple[Column, ...]
    window: str
    window_s: int
    keywords: tuple[str, ...]
    kind: str | None = None
    private: bool = False
    target: Target | None = None
    source: str = ""  # the measurement read from InfluxDB (data_quality: sensor_quality)

    @property
    def columns(self) -> tuple[str, ...]:
        """The CSV header and the JSON keys, in order."""
        return ("window_end", *self.tags, "window", *(c.name for c in self.fields),
                "suppressed")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.fields)

    @property
    def sort_tags(self) -> tuple[str, ...]:
        """Rows are ordered by window end, then these tags (the entity first)."""
        return (self.entity, *(t for t in self.tags if t != self.entity))

    def suppressed(self, tags: Mapping[str, str], fields: Mapping[str, Any],
                   min_meters: int) -> bool:
        """Whether a window must be withheld (see module docstring). A private window whose
        meter count is missing is withheld too."""
        if self.measurement == DATA_QUALITY:
            if tags.get("kind") not in HOUSEHOLD_KINDS:
                return False
            count = fields.get("sensors")
        elif self.private:
            count = fields.get(PRIVACY_COUNT)
        else:
            return False
        return not isinstance(count, int) or isinstance(count, bool) or count < min_meters


def window_seconds(tag: str) -> int:
    """`15m` -> 900."""
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[tag[-1]]
    return int(tag[:-1]) * unit


def column_type(model: type[Kpi], name: str) -> ColumnType:
    """The published type of a KPI record's field, from its annotation."""
    annotation = model.model_fields[name].annotation
    options: tuple[Any, ...] = (annotation,)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = typing.get_args(annotation)
    options = tuple(typing.get_args(o)[0] if typing.get_origin(o) is typing.Annotated else o
                    for o in options if o is not type(None))
    if bool in options:
        return "boolean"
    if int in options:
        return "integer"
    if str in options:
        return "string"
    return "number"


_BUILT_IN: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "water": (
        "Water use and saving by district",
        "Water consumption of each district's household meters per 15-minute window, in "
        "litres, against the district's hour-of-week baseline; the window's saving and the "
        "rolling 24 h saving against the target (MK:Smart: 20 % less water), with the number "
        "of meters that reported.",
        ("water", "water consumption", "water saving", "district")),
    "energy": (
        "Electricity use and saving by district",
        "Electricity drawn by each district's household meters per 30-minute window, in kWh, "
        "against the district's hour-of-week baseline; the window's saving, the rolling 24 h "
        "saving against the target (MK:Smart: 3 % less energy), the peak demand and the number "
        "of meters that reported.",
        ("energy", "electricity", "energy saving", "district")),
    "traffic": (
        "Traffic flow and congestion by junction",
        "Vehicles, flow, space-mean speed and a congestion index per junction and 5-minute "
        "window from roadside counters, against the junction's hour-of-week baseline; the "
        "reduction of congestion and its rolling 24 h figure against the target (MK:Smart: "
        "halve congestion).",
        ("traffic", "congestion", "road", "junction", "transport")),
    "shuttle": (
        "Autonomous shuttle service quality by route",
        "Boardings, occupancy, punctuality, availability, mean battery and safety-operator "
        "disengagements of the autonomous shuttle route per 15-minute window (aggregates over "
        "the fleet: no vehicle position is published).",
        ("shuttle", "autonomous vehicle", "public transport", "route")),
}
_TARGETS: Final[dict[str, tuple[str, str, str]]] = {
    "water": ("saving_pct_24h", "water use {limit:g} % below baseline", "water supply"),
    "energy": ("saving_pct_24h", "energy use {limit:g} % below baseline", "electricity supply"),
    "traffic": ("reduction_pct_24h", "congestion {limit:g} % below baseline", "road traffic"),
}
PRIVACY_NOTE: Final = (
    "Windows with fewer than {min_meters} meters reporting are withheld (fields empty, "
    "suppressed true): household meters are personal data.")


def _columns(spec: KindSpec) -> tuple[Column, ...]:
    return tuple(Column(name, column_type(spec.kpi_type, name), spec.units.get(name))
                 for name in spec.kpi_type.field_names())


def _tags(spec: KindSpec) -> tuple[str, ...]:
    others = tuple(t for t in spec.kpi_type.tag_names if t not in ("window", spec.entity_tag))
    return (*others, spec.entity_tag)


def kind_dataset(spec: KindSpec, city: City, min_meters: int = 5) -> Dataset:
    """The dataset of one registered kind (built-in or declared feed)."""
    window = str(spec.kpi_type.model_fields["window"].default)
    common: dict[str, Any] = {
        "measurement": spec.measurement, "entity": spec.entity_tag, "tags": _tags(spec),
        "fields": _columns(spec), "window": window, "window_s": window_seconds(window),
        "kind": spec.name, "source": spec.measurement}
    keywords = ("smart city", "KPI", city.name)
    if spec.feed is None:
        title, description, words = _BUILT_IN.get(spec.name, (
            f"{spec.title} KPIs", f"{spec.title} KPIs per {spec.entity_tag} and window.",
            (spec.name,)))
        private = spec.name in HOUSEHOLD_KINDS
        if private:
            description += " " + PRIVACY_NOTE.format(min_meters=min_meters)
        target = None
        if spec.name in _TARGETS:
            rolling, business, process = _TARGETS[spec.name]
            default = {"water": city.targets.water_saving_pct,
                       "energy": city.targets.energy_saving_pct,
                       "traffic": city.targets.congestion_reduction_pct}[spec.name]
            target = Target(rolling, "target_pct", default, False, business, process)
        return Dataset(title=title, description=description, keywords=(*words, *keywords),
                       private=private, target=target, **common)
    feed = spec.feed
    kpis = ", ".join(k.name for k in feed.kpis)
    description = (f"{feed.title} per {feed.entity} and {window} window, declared in the "
                   f"city file: {kpis}.")
    target = None
    if feed.target is not None:
        bound = "at most" if feed.target.at_most is not None else "at least"
        description += (f" Target: the 24 h mean of {feed.target.kpi} {bound} "
                        f"{feed.target.limit:g} ({feed.target.kpi}_24h, on_track).")
        target = Target(f"{feed.target.kpi}_24h", "target", feed.target.limit,
                        feed.target.at_most is not None,
                        f"{feed.title}: {feed.target.kpi} {bound} {{limit:g}} as a 24 h mean",
                        feed.title)
    return Dataset(title=f"{feed.title} by {feed.entity.replace('_', ' ')}",
                   description=description, keywords=(feed.kind, feed.title, *keywords),
                   target=target, **common)


def data_quality_dataset(city: City, min_meters: int = 5) -> Dataset:
    """`data_quality`: the `sensor_quality` points aggregated per kind, district and hour."""
    return Dataset(
        measurement=DATA_QUALITY, title="Sensor data quality by kind and district",
        description=(
            "How complete the city's sensor data is, per kind of sensor, district and hour: "
            "the sensors that reported, the readings accepted and rejected, and the mean "
            "completeness (readings received against those expected from each sensor's usual "
            "interval). Aggregated from per-sensor points, which are not published. "
            + PRIVACY_NOTE.format(min_meters=min_meters).replace(
                "meters reporting", "water or energy meters")),
        entity="district", tags=("kind", "district"),
        fields=(Column("sensors", "integer"), Column("readings", "integer"),
                Column("rejected", "integer"), Column("completeness_pct", "number", "%")),
        window="1h", window_s=3600,
        keywords=("data quality", "sensors", "completeness", "smart city", city.name),
        private=True, source=SENSOR_QUALITY)


def published(city: City, min_meters: int = 5) -> dict[str, Dataset]:
    """Every published dataset by measurement: the registry's kinds in order, then
    `data_quality`. The city's feeds must be active (`models.city.load_city` does that)."""
    out = {spec.measurement: kind_dataset(spec, city, min_meters) for spec in kinds.specs()}
    out[DATA_QUALITY] = data_quality_dataset(city, min_meters)
    for name in NOT_PUBLISHED:
        out.pop(name, None)
    return out
