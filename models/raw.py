"""The shape of a kind's raw points in the `telemetry` bucket (docs/contract.md, 2.1).

One point per accepted reading, at its `ts_ms`: measurement = the kind, tags from validated ids
only (the reading's district, sensor_id and the kind's entity), fields typed once and for all.
`connectors.influxdb.lineproto` renders readings by these schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

PointType = Literal["float", "int", "bool", "str"]


@dataclass(frozen=True, slots=True)
class RawSchema:
    """The point shape of one reading kind: tags as (tag key, reading key), fields typed."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, PointType, bool], ...]  # (name, type, required)

    def field_types(self) -> dict[str, PointType]:
        """Field name -> type."""
        return {name: ftype for name, ftype, _ in self.fields}


SEQ: Final[tuple[str, PointType, bool]] = ("seq", "int", False)
"""`seq`, an optional integer field of every kind's raw points."""
