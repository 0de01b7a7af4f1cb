"""`sensor_quality`: how good one sensor's data was in one hour (contract 6).

The worker writes one point per sensor and hour, timestamped at the hour's END, when the
entity's event time has passed that end plus the grace period: `readings`, `duplicates`,
`late`, `completeness_pct`, `stuck` and `score` (kpi/quality.py says how each is judged). The
dead letters ingest attributed to the sensor's topic add `rejected` to the same point: written
separately, InfluxDB merges the fields of one series and timestamp.
"""

from __future__ import annotations

from typing import ClassVar

from models.records import Count, EntityId, Record, Slug, TimeMs, WindowTag

MEASUREMENT = "sensor_quality"
HOUR_MS = 3_600_000


class SensorQuality(Record):
    """One sensor's hour. Fields left None are not part of the point (the worker writes all
    but `rejected`; the dead-letter count writes only `rejected`)."""

    measurement: ClassVar[str] = MEASUREMENT
    tag_names: ClassVar[tuple[str, ...]] = ("kind", "district", "sensor_id", "window")
    time_field: ClassVar[str] = "hour_end_ms"

    kind: EntityId
    district: Slug
    sensor_id: EntityId
    window: WindowTag = "1h"
    hour_end_ms: TimeMs
    readings: Count | None = None
    duplicates: Count | None = None
    rejected: Count | None = None
    late: Count | None = None
    completeness_pct: float | None = None
    stuck: bool | None = None
    score: float | None = None
