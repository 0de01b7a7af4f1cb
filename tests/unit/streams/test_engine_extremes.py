"""The KPI engine at the edges of what the contract accepts: huge but finite registers and the
largest vehicle counts. Every such reading passes ingest (tests/data/bad_input has them), so
the engine must turn it into KPI points InfluxDB can store, never raise.

Sums saturate (floats at the largest float, integers at InfluxDB's int64) and figures derived
from them stay finite, so an absurd but valid reading can never stop a worker."""

from __future__ import annotations

import math
from typing import Any

from connectors.influxdb.lineproto import to_line_protocol
from kpi.engine import engines_for
from models.city import load_city
from models.kinds import reading_types
from models.readings import BaseReading

T0 = 1_794_787_200_000  # 2026-11-16T00:00:00Z
MIN = 60_000
INT64_MAX = 2**63 - 1


def readings(kind: str, district: str, rows: list[dict[str, Any]]) -> list[BaseReading]:
    model = reading_types()[kind]  # type: ignore[index]
    return [model.model_validate(r, context={"district": district}) for r in rows]


def emit_all(kind: str, items: list[BaseReading]) -> list[Any]:
    engine = engines_for(load_city(None))[kind]
    store: dict[str, bytes] = {}
    out = engine.process(items, store, offset=0)
    records = list(out.records)
    for entity in {engine.entity(r) for r in items}:
        records += engine.due(entity, store)
    return records


def test_a_huge_register_jump_gives_finite_kpis() -> None:
    items = readings("water", "central-mk", [
        {"sensor_id": "wm-1", "ts": T0 + i * MIN, "volume_m3": v}
        for i, v in enumerate([0.0, 1.7e308, 1.7e308])])
    records = emit_all("water", items)
    assert records
    for record in records:
        for name, value in record.model_dump().items():
            assert not isinstance(value, float) or math.isfinite(value), name
        to_line_protocol(record, "ms")


def test_the_largest_vehicle_counts_still_fit_in_influxdb() -> None:
    items = readings("traffic", "central-mk", [
        {"sensor_id": f"tc-{i}", "ts": T0 + (i + 1) * MIN, "junction": "h5-portway",
         "vehicle_count": INT64_MAX, "interval_s": 60, "mean_speed_kmh": 30.0}
        for i in range(2)])
    records = emit_all("traffic", items)
    assert records
    assert all(0 <= record.vehicles <= INT64_MAX for record in records)
