"""Kafka topic names: the pipeline's internal interface between ingest, the worker and the sink.

Reading topics carry, per record, a JSON array of readings that share the record key
(district for water and energy, junction for traffic, route for shuttle), so per-meter order
holds within a partition and consumers pay per-record costs once per micro-batch.
`CITYSTREAM_KAFKA__TOPIC_PREFIX` namespaces every topic (and the worker's consumer group), so
several cities or test runs can share one Kafka cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models import kinds


@dataclass(frozen=True)
class Topics:
    prefix: str = ""
    deadletter: str = field(init=False)
    pipeline_counters: str = field(init=False)
    kpi_records: str = field(init=False)
    sink_deadletter: str = field(init=False)

    def __post_init__(self) -> None:
        p = self.prefix
        object.__setattr__(self, "deadletter", f"{p}telemetry.deadletter")
        object.__setattr__(self, "pipeline_counters", f"{p}pipeline.counters")
        object.__setattr__(self, "kpi_records", f"{p}kpi.records")
        object.__setattr__(self, "sink_deadletter", f"{p}sink.deadletter")

    @property
    def telemetry(self) -> dict[str, str]:
        """Kind -> its readings topic `telemetry.<kind>`, for every registered kind (the
        built-in ones and the city file's declared feeds, `models.kinds`)."""
        return {kind: f"{self.prefix}telemetry.{kind}" for kind in kinds.names()}

    @property
    def ingest(self) -> list[str]:
        """The topics ingest writes (and creates)."""
        return [*self.telemetry.values(), self.deadletter, self.pipeline_counters]


DEFAULT = Topics()
TELEMETRY = DEFAULT.telemetry  # the built-in kinds' topics
DEADLETTER = DEFAULT.deadletter
PIPELINE_COUNTERS = DEFAULT.pipeline_counters
KPI_RECORDS = DEFAULT.kpi_records
SINK_DEADLETTER = DEFAULT.sink_deadletter
