"""Kafka topic names: the pipeline's internal interface between ingest, the worker and the sink.

Reading topics carry, per record, a JSON array of readings that share the record key
(district for water and energy, junction for traffic, route for shuttle), so per-meter order
holds within a partition and consumers pay per-record costs once per micro-batch.
"""

from __future__ import annotations

KINDS = ("water", "energy", "traffic", "shuttle")
TELEMETRY = {kind: f"telemetry.{kind}" for kind in KINDS}
DEADLETTER = "telemetry.deadletter"
PIPELINE_COUNTERS = "pipeline.counters"
INGEST_TOPICS = [*TELEMETRY.values(), DEADLETTER, PIPELINE_COUNTERS]
KPI_RECORDS = "kpi.records"
SINK_DEADLETTER = "sink.deadletter"
