"""Sensor readings as they travel from ingest to the KPI workers (docs/contract.md, section 1).

Every kind's reading model (kinds/<kind>.py, or built from a declared feed by `models.feeds`)
subclasses `BaseReading`. A reading is validated once, by `ingest.decode`, and then carried on
Kafka as compact JSON (`to_json` / `models.kinds.reading_from_json`). Besides the payload's own
fields every reading carries the `district` and `kind` of its MQTT topic, and its timestamp
normalised to `ts_ms` (UTC epoch ms).
Types are strict: a boolean is never a number and integer fields take JSON integers only.

The models validate both shapes. A sensor payload is validated with
`model_validate[_json](data, context=topic_context(district), by_alias=True,
by_name=False)`: `ts` is read (integer ms or RFC 3339 text) and `district` comes from the
context whatever the payload says. `kind` is each class's constant (it is also the discriminator
of `reading_from_json`), so a payload's own `kind` key must be dropped first, as `ingest.decode`
does. Everywhere else (Kafka, Python code) fields go by name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationInfo,
    field_validator,
)
from pydantic_core import CoreSchema, core_schema

SLUG_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,62}$"
ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
INT64_MAX: Final = 2**63 - 1
_RFC3339_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def parse_ts(value: str) -> int:
    """An RFC 3339 date-time with offset as epoch ms; ValueError if it is not one.

    `T`/`Z` may be lower case; digits beyond milliseconds are truncated; leap seconds (`:60`)
    are not accepted. A payload's integer `ts` is already epoch ms and needs no parsing.
    """
    if _RFC3339_RE.fullmatch(value) is None:
        raise ValueError("ts must be an RFC 3339 date-time with offset "
                         "(e.g. 2026-11-21T06:15:00Z) or integer epoch milliseconds")
    try:
        instant = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise ValueError(f"ts is not a valid date-time: {exc}") from None
    return (instant - _EPOCH) // _MS


class _EpochMsSchema:
    """Strict int, or an RFC 3339 string converted by `parse_ts`; validated in pydantic-core."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler,
                                     ) -> CoreSchema:
        return core_schema.union_schema([
            core_schema.int_schema(strict=True),
            core_schema.no_info_after_validator_function(
                parse_ts, core_schema.str_schema(strict=True)),
        ])


def topic_context(district: str) -> dict[str, str]:
    """The validation context that makes a payload's reading belong to its topic's district."""
    return {"district": district}


Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
EpochMs = Annotated[int, _EpochMsSchema()]
EntityId = Annotated[str, Field(pattern=ID_PATTERN)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
NonNegative = Annotated[float, Field(ge=0)]
Pct = Annotated[float, Field(ge=0, le=100)]


class BaseReading(BaseModel):
    """Fields every reading has. Frozen, strict, non-finite numbers rejected, extras ignored."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False,
                              validate_by_name=True, validate_by_alias=True)

    district: Slug = Field("", validate_default=True)  # required: "" fails the pattern
    sensor_id: EntityId
    ts_ms: EpochMs = Field(validation_alias="ts")
    seq: Count | None = None

    partition_field: ClassVar[str] = "district"
    if TYPE_CHECKING:
        kind: str  # each kind's own `Literal` field

    @field_validator("district", mode="before")
    @classmethod
    def _from_topic(cls, value: Any, info: ValidationInfo) -> Any:
        context = info.context
        return context.get("district", value) if isinstance(context, dict) else value

    @property
    def partition_key(self) -> str:
        """The Kafka key: district (water, energy), junction (traffic) or route_id (shuttle)."""
        return str(getattr(self, self.partition_field))

    def to_json(self) -> bytes:
        """Compact JSON for Kafka; None fields are left out. Inverse of `reading_from_json`."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)
