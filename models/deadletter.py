"""Dead letters: rejected input kept with the reason, so nothing is dropped silently.

A `DeadLetter` (ingest's, on `telemetry.deadletter`) carries the raw bytes it was made from, the
topic, the receive time and a machine-readable `Reason` (docs/contract.md). On the wire it is
JSON with `raw` in standard base64. `sink_dead_letter` builds the value of a `sink.deadletter`
record (the InfluxDB sink's and the worker's): a Kafka record, a reading or a line that could
not be stored, with where it came from.
"""

from __future__ import annotations

import base64
import binascii
import time
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, field_serializer, field_validator, model_validator


class Reason(StrEnum):
    """Why input was rejected; the values are the contract's reason codes."""

    BAD_TOPIC = "bad_topic"
    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    SENSOR_MISMATCH = "sensor_mismatch"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"


FIELD_REASONS = frozenset({Reason.SCHEMA, Reason.NON_FINITE, Reason.OUT_OF_RANGE})
"""Reasons that always name the failing field."""


class DeadLetter(BaseModel):
    """One rejected message (`index` None) or one rejected element of a JSON array (`index` i).

    `field` is the failing field path (`passengers`, `[3].ts`) and is always set for the reasons
    in `FIELD_REASONS`. `raw` is the whole payload for message-level reasons and single objects,
    the element re-serialised as compact JSON for an array element.
    """

    model_config = ConfigDict(frozen=True, strict=True)

    reason: Reason
    detail: str
    field: str | None = None
    topic: str
    raw: bytes
    received_at_ms: int
    index: int | None = None

    @field_validator("reason", mode="before")
    @classmethod
    def _reason_from_str(cls, value: Any) -> Any:
        return Reason(value) if type(value) is str else value

    @field_validator("raw", mode="before")
    @classmethod
    def _raw_from_base64(cls, value: Any) -> Any:
        if type(value) is str:
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ValueError("raw must be standard base64") from None
        return value

    @field_serializer("raw", when_used="json")
    def _raw_to_base64(self, raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    @model_validator(mode="after")
    def _field_given(self) -> DeadLetter:
        if self.reason in FIELD_REASONS and not self.field:
            raise ValueError(f"a {self.reason} dead letter must name the failing field")
        return self

    def to_json(self) -> bytes:
        """JSON bytes for the dead-letter topic (`raw` as base64). Inverse of `from_json`."""
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> DeadLetter:
        """Parse `to_json` output; raises pydantic's ValidationError if it is not a dead letter."""
        return cls.model_validate(orjson.loads(data))


def sink_dead_letter(reason: str, detail: str, topic: str, partition: int, offset: int, *,
                     raw: bytes | None = None, index: int | None = None,
                     line: str | None = None, bucket: str | None = None) -> bytes:
    """The JSON value of a `sink.deadletter` record: `reason` (`undecodable`,
    `rejected_by_influxdb`, `engine_error`), `detail`, the source `topic`, `partition` and
    `offset`, `received_at_ms` (now), then `index` (a reading's place in its array), `raw` (base64
    of the record or reading) and `bucket` with the refused `line`, those that are given."""
    body: dict[str, object] = {
        "reason": reason, "detail": detail, "topic": topic, "partition": partition,
        "offset": offset, "received_at_ms": int(time.time() * 1000)}
    if index is not None:
        body["index"] = index
    if raw is not None:
        body["raw"] = base64.b64encode(raw).decode("ascii")
    if line is not None:
        body["bucket"] = bucket
        body["line"] = line
    return orjson.dumps(body)
