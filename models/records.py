"""What the pipeline writes to InfluxDB: KPI points, alerts and pipeline counters (contract 2).

Each record class knows its measurement, its tag names and its timestamp (`time_ms`; for a KPI
the END of its window). Field types never change: counts are int, `on_track`/`active` bool,
`message` str, everything else float (ints given for float fields become floats). A float field
may be None when it is undefined (e.g. a saving against a zero baseline); it is then left out of
the point. `connectors.influxdb.lineproto.to_line_protocol` renders a record as one InfluxDB
line; `record_to_json` / `record_from_json` are its Kafka form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from models.errors import RecordError

INT64_MAX: Final = 2**63 - 1

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
EntityId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Tag = Annotated[str, Field(pattern=r"^[^\n\r]{1,256}$")]
WindowTag = Annotated[str, Field(pattern=r"^[1-9][0-9]*[smhd]$")]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
TimeMs = Annotated[int, Field(ge=0, le=INT64_MAX // 1_000_000)]


class Record(BaseModel):
    """Base of every InfluxDB record: frozen, strict, finite floats only, no extra fields."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", allow_inf_nan=False)

    measurement: ClassVar[str]
    tag_names: ClassVar[tuple[str, ...]]
    time_field: ClassVar[str]

    @property
    def time_ms(self) -> int:
        """The point's timestamp in epoch milliseconds (a KPI's window end)."""
        value: int = getattr(self, self.time_field)
        return value

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The InfluxDB field names, in declaration order."""
        skip = {*cls.tag_names, cls.time_field}
        return tuple(name for name in cls.model_fields if name not in skip)

    def tags(self) -> dict[str, str]:
        """Tag name -> value."""
        return {name: getattr(self, name) for name in self.tag_names}

    def fields(self) -> dict[str, float | int | bool | str]:
        """Field name -> value, leaving out undefined (None) floats."""
        values = ((name, getattr(self, name)) for name in self.field_names())
        return {name: value for name, value in values if value is not None}


AlertCheck = tuple[str, str, str, bool, float, float, str]
"""One alert rule judged on a KPI point: (kind, entity, rule, firing, value, threshold,
message)."""


class Kpi(Record):
    """A KPI point; its timestamp is `window_end_ms`, the end of its tumbling window. Each kind's
    point (kinds/<kind>.py) is a subclass."""

    time_field: ClassVar[str] = "window_end_ms"

    window_end_ms: TimeMs

    def alert_checks(self, settings: Any,
                     night: list[tuple[float, float]] | None = None) -> list[AlertCheck]:
        """The alert rules this point is judged by (`kpi.alerts.AlertRules`), with the
        thresholds of `settings` (an `AlertSettings`); none unless its kind says so."""
        return []


class Alert(Record):
    """A rule firing (`active` true) or clearing (false) for one entity; also sent to MQTT."""

    measurement: ClassVar[str] = "alert"
    tag_names: ClassVar[tuple[str, ...]] = ("kind", "entity", "rule")
    time_field: ClassVar[str] = "ts_ms"

    kind: EntityId
    entity: EntityId
    rule: EntityId
    ts_ms: TimeMs
    value: float
    threshold: float
    message: Annotated[str, Field(pattern=r"^[^\n\r]*$")]
    active: bool

    @property
    def mqtt_topic(self) -> str:
        """`city/alerts/<kind>/<entity>`."""
        return f"city/alerts/{self.kind}/{self.entity}"

    def to_json(self) -> bytes:
        """The MQTT alert payload."""
        return self.__pydantic_serializer__.to_json(self)


class PipelineCounters(Record):
    """Counters of one component instance (ingest, worker, sink) since it started."""

    measurement: ClassVar[str] = "pipeline"
    tag_names: ClassVar[tuple[str, ...]] = ("component", "instance")
    time_field: ClassVar[str] = "ts_ms"

    component: EntityId
    instance: Tag
    ts_ms: TimeMs
    received: Count = 0
    accepted: Count = 0
    rejected: Count = 0
    late: Count = 0
    duplicates: Count = 0
    written: Count = 0


PIPELINE_COUNTERS: Final = PipelineCounters.field_names()
"""The contract's `pipeline` fields (integers): received, accepted, rejected, late, duplicates,
written; a counters record carries those its component counts."""


def record_to_json(record: Record) -> bytes:
    """The Kafka value of a record on `kpi.records` / `pipeline.counters`:
    `{"measurement": ..., <every field of the record>}`. Inverse of `record_from_json`."""
    body = record.__pydantic_serializer__.to_json(record)
    return b'{"measurement":"' + record.measurement.encode() + b'",' + body[1:]


def record_from_json(data: bytes | str,
                     types: Mapping[str, type[Record]] | None = None) -> Record:
    """Parse `record_to_json` output; `RecordError` for a measurement not in `types` (default:
    those of every registered kind, `models.kinds.record_types()`)."""
    import orjson

    from models.kinds import record_types  # the registry builds on this module

    types = record_types() if types is None else types
    raw = orjson.loads(data)
    cls = types.get(raw.pop("measurement", None))
    if cls is None:
        raise RecordError(f"unknown measurement in {str(data)[:80]!r}")
    return cls.model_validate(raw, strict=False)
