"""Feeds declared in the city file: a sensor kind without code (CONTRACT section 5).

A `[[feeds]]` table of the city file is validated into a `FeedSpec` when the city is loaded;
a bad definition is refused with a message naming the feed and the key. From a spec,
`reading_model` builds the pydantic model that validates its readings (same strictness and the
same dead-letter reasons as the built-in kinds) and `kpi_model` the record of its `<kind>_kpi`
points. The KPI maths live in `kpi.feeds`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from models.kinds import PYTHON_KINDS
from models.readings import ID_PATTERN, INT64_MAX, BaseReading
from models.records import Kpi, WindowTag

KIND_PATTERN: Final = r"^[a-z][a-z0-9_]{0,30}$"
NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,62}$"
RESERVED_KINDS: Final = frozenset({*PYTHON_KINDS, "alerts"})
READING_KEYS: Final = frozenset({"sensor_id", "ts", "ts_ms", "seq", "district", "kind"})
KPI_EXTRAS: Final = frozenset({"target", "on_track", "window", "window_end_ms"})
FLUX_COLUMNS: Final = frozenset({"result", "table"})
"""Column names of InfluxDB query results besides the `_`-prefixed ones: a tag or field of that
name would be shadowed for every reader."""
STRING_MAX: Final = 256

FieldType = Literal["number", "integer", "boolean", "string"]
Agg = Literal["count", "sensors", "sum", "mean", "min", "max", "delta", "increase",
              "count_above", "share_between", "ratio_pct"]
INTEGER_AGGS: Final = frozenset({"count", "sensors", "count_above"})
SCALED_AGGS: Final = frozenset({"sum", "mean", "min", "max", "delta", "increase"})
_PARAMS: Final[dict[str, tuple[str, ...]]] = {
    "count": (), "sensors": (),
    "sum": ("field",), "mean": ("field",), "min": ("field",), "max": ("field",),
    "delta": ("field",), "increase": ("field",),
    "count_above": ("field", "threshold"), "share_between": ("field", "min", "max"),
    "ratio_pct": ("field", "of"),
}
_OPTIONAL_PARAMS: Final = ("field", "of", "threshold", "min", "max", "scale")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class FieldSpec(_Frozen):
    """One field of a feed's readings: its JSON type, inclusive bounds, whether required."""

    type: FieldType
    min: Finite | None = None
    max: Finite | None = None
    optional: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> FieldSpec:
        if self.type in ("boolean", "string") and (self.min is not None or self.max is not None):
            raise ValueError(f"min/max apply to number and integer fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class KpiSpec(_Frozen):
    """One KPI: a field of `<kind>_kpi`, an aggregation over the window's readings."""

    name: Name
    agg: Agg
    field: str | None = None
    of: str | None = None
    threshold: Finite | None = None
    min: Finite | None = None
    max: Finite | None = None
    scale: Finite | None = None

    @model_validator(mode="after")
    def _parameters(self) -> KpiSpec:
        needed = _PARAMS[self.agg]
        for param in _OPTIONAL_PARAMS:
            given = getattr(self, param) is not None
            if param in needed and not given:
                raise ValueError(f"{self.agg} needs `{param}`")
            if given and param not in needed and not (param == "scale"
                                                      and self.agg in SCALED_AGGS):
                raise ValueError(f"{self.agg} takes no `{param}`")
        if self.agg == "share_between" and self.min is not None and self.max is not None \
                and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def is_integer(self) -> bool:
        """Written as an InfluxDB integer (counts), else as a float."""
        return self.agg in INTEGER_AGGS


class TargetSpec(_Frozen):
    """The limit one KPI is judged against, as a rolling 24 h mean."""

    kpi: str
    at_most: Finite | None = None
    at_least: Finite | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> TargetSpec:
        if (self.at_most is None) == (self.at_least is None):
            raise ValueError("a target has exactly one of `at_most` and `at_least`")
        return self

    @property
    def limit(self) -> float:
        """The target value."""
        return float(self.at_most if self.at_most is not None else self.at_least)  # type: ignore[arg-type]

    def met(self, value: float) -> bool:
        """Whether a 24 h figure meets the target."""
        return value <= self.limit if self.at_most is not None else value >= self.limit


class AlertSpec(_Frozen):
    """An alert rule: raised when a window's KPI is above (below) the threshold."""

    rule: Annotated[str, Field(pattern=ID_PATTERN)]
    kpi: str
    above: Finite | None = None
    below: Finite | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> AlertSpec:
        if (self.above is None) == (self.below is None):
            raise ValueError("an alert has exactly one of `above` and `below`")
        return self

    @property
    def threshold(self) -> float:
        """The threshold value."""
        return float(self.above if self.above is not None else self.below)  # type: ignore[arg-type]

    def fires(self, value: float) -> bool:
        """Whether a window's KPI value raises the alert."""
        return value > self.threshold if self.above is not None else value < self.threshold


class FeedSpec(_Frozen):
    """A declared feed: a kind of sensor, its reading fields, KPIs, target and alerts."""

    kind: Annotated[str, Field(pattern=KIND_PATTERN)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    window_s: Annotated[int, Field(ge=60, le=86400)]
    entity: str = "district"
    fields: dict[str, FieldSpec]
    kpis: Annotated[list[KpiSpec], Field(min_length=1)]
    target: TargetSpec | None = None
    alerts: list[AlertSpec] = []

    @model_validator(mode="after")
    def _consistent(self) -> FeedSpec:
        if self.kind in RESERVED_KINDS:
            what = "is reserved" if self.kind == "alerts" else "is a built-in kind"
            raise ValueError(f"kind: {self.kind!r} {what}; choose another name")
        if 86400 % self.window_s:
            raise ValueError(f"window_s: {self.window_s} does not divide a day (86400 s) into "
                             "whole windows; e.g. 60, 300, 900, 1800, 3600")
        reserved = _reserved_names()
        for name in self.fields:
            if not _matches(NAME_PATTERN, name):
                raise ValueError(f"fields.{name}: a field name is [a-z][a-z0-9_]{{0,62}}")
            if name in READING_KEYS or name in reserved or name in FLUX_COLUMNS:
                raise ValueError(f"fields.{name}: {name!r} is reserved; choose another name")
        if self.entity != "district":
            spec = self.fields.get(self.entity)
            if spec is None:
                raise ValueError(f"entity: {self.entity!r} is neither \"district\" nor a field "
                                 f"of feed {self.kind}")
            if spec.type != "string" or spec.optional:
                raise ValueError(f"entity: field {self.entity!r} must be a required string "
                                 "field (its values name the entity)")
        names: set[str] = set()
        for i, kpi in enumerate(self.kpis):
            where = f"kpis[{i}]"
            if kpi.name in names:
                raise ValueError(f"{where}.name: {kpi.name!r} is declared twice")
            if (kpi.name in KPI_EXTRAS or kpi.name == self.entity or kpi.name in reserved
                    or kpi.name in FLUX_COLUMNS):
                raise ValueError(f"{where}.name: {kpi.name!r} is reserved; choose another name")
            names.add(kpi.name)
            for param in ("field", "of"):
                field_name = getattr(kpi, param)
                if field_name is None:
                    continue
                spec = self.fields.get(field_name)
                if spec is None:
                    raise ValueError(f"{where}.{param}: {field_name!r} is not a field of feed "
                                     f"{self.kind} (fields: {', '.join(self.fields) or 'none'})")
                if spec.type == "string":
                    raise ValueError(f"{where}.{param}: {field_name!r} is a string field; "
                                     f"{kpi.agg} needs a number, integer or boolean field")
        if self.target is not None:
            if self.target.kpi not in names:
                raise ValueError(f"target.kpi: {self.target.kpi!r} is not a KPI of feed "
                                 f"{self.kind}")
            rolling = f"{self.target.kpi}_24h"
            if rolling in names:
                raise ValueError(f"kpis: {rolling!r} clashes with the target's 24 h figure")
        rules: set[str] = set()
        for i, alert in enumerate(self.alerts):
            if alert.kpi not in names:
                raise ValueError(f"alerts[{i}].kpi: {alert.kpi!r} is not a KPI of feed "
                                 f"{self.kind}")
            if alert.rule in rules:
                raise ValueError(f"alerts[{i}].rule: {alert.rule!r} is declared twice")
            rules.add(alert.rule)
        return self

    @property
    def measurement(self) -> str:
        """`<kind>_kpi`."""
        return f"{self.kind}_kpi"

    @property
    def window_tag(self) -> str:
        """The `window` tag of its points."""
        return window_tag(self.window_s)

    @property
    def entity_fields(self) -> tuple[str, ...]:
        """Reading fields that are tags of its raw points (the entity, when not district)."""
        return () if self.entity == "district" else (self.entity,)


def window_tag(window_s: int) -> str:
    """`1h`, `15m`, `30s`: hours when the length divides into hours, else minutes, else s."""
    for unit, seconds in (("h", 3600), ("m", 60)):
        if window_s % seconds == 0:
            return f"{window_s // seconds}{unit}"
    return f"{window_s}s"


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.fullmatch(pattern.strip("^$"), text) is not None


def _reserved_names() -> frozenset[str]:
    """Names a pydantic model of ours already uses (methods, properties)."""
    return frozenset(name for name in {*dir(Kpi), *dir(BaseReading)} if not name.startswith("_"))


def _value_type(name: str, spec: FieldSpec, entity: str) -> Any:
    if spec.type == "string":
        if name == entity:
            return Annotated[str, Field(pattern=ID_PATTERN)]
        return Annotated[str, Field(max_length=STRING_MAX, pattern=r"^[^\n\r]*$")]
    if spec.type == "boolean":
        return bool
    bounds: dict[str, Any] = {}
    if spec.min is not None:
        bounds["ge"] = spec.min
    if spec.max is not None:
        bounds["le"] = spec.max
    if spec.type == "integer":
        return Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX), Field(**bounds)]
    return Annotated[float, Field(**bounds)]


def reading_model(feed: FeedSpec) -> type[BaseReading]:
    """The reading model of a feed: its fields on top of `BaseReading`'s (sensor_id, ts, seq,
    the topic's district); the Kafka key is the entity."""
    fields: dict[str, Any] = {"kind": (Literal[feed.kind], feed.kind)}
    for name, spec in feed.fields.items():
        value = _value_type(name, spec, feed.entity)
        fields[name] = (value | None, None) if spec.optional else (value, ...)
    model: type[BaseReading] = create_model(
        f"{_camel(feed.kind)}Reading", __base__=BaseReading, __doc__=feed.title, **fields)
    model.partition_field = feed.entity
    return model


def kpi_model(feed: FeedSpec) -> type[Kpi]:
    """The `<kind>_kpi` record of a feed: tags the entity and `window`, fields the KPIs (counts
    integer, the rest float, None when undefined) and, with a target, `target`, `<kpi>_24h`
    and `on_track`."""
    entity_type = (Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
                   if feed.entity == "district" else Annotated[str, Field(pattern=ID_PATTERN)])
    fields: dict[str, Any] = {feed.entity: (entity_type, ...),
                              "window": (WindowTag, feed.window_tag)}
    count = Annotated[int, Field(ge=0, le=INT64_MAX)]
    for kpi in feed.kpis:
        fields[kpi.name] = ((count if kpi.is_integer else float) | None, None)
    if feed.target is not None:
        fields["target"] = (float, feed.target.limit)
        fields[f"{feed.target.kpi}_24h"] = (float | None, None)
        fields["on_track"] = (bool | None, None)
    model: type[Kpi] = create_model(
        f"{_camel(feed.kind)}Kpi", __base__=Kpi, __doc__=f"{feed.title} KPIs", **fields)
    model.measurement = feed.measurement
    model.tag_names = (feed.entity, "window")
    return model


def _camel(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))
