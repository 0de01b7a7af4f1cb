"""InfluxDB failures become sentences an operator can act on, never carrying the token."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from dashboard.source import InfluxSource, SourceError, rows_from_tables
from deploy.local.stack import free_port


def test_a_refused_connection_is_a_source_error_without_the_token() -> None:
    secret = "s3cr3t-token-that-must-never-show"
    source = InfluxSource(f"http://127.0.0.1:{free_port()}", "citystream", secret, timeout_s=2)
    try:
        with pytest.raises(SourceError) as info:
            source.query('from(bucket: "kpi") |> range(start: -1h)')
    finally:
        source.close()
    assert str(info.value).endswith("connection refused")
    assert secret not in str(info.value) and secret not in repr(info.value.__cause__)


@dataclass
class Record:
    values: dict[str, Any]


@dataclass
class Table:
    records: list[Record] = field(default_factory=list)


def test_rows_carry_time_ms_and_drop_the_range_columns() -> None:
    when = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)
    tables = [Table([Record({"_time": when, "_start": when, "_stop": when, "_value": 1.5,
                             "_field": "saving_pct", "_measurement": "water_kpi",
                             "district": "bletchley"}),
                      Record({"_value": 2.0})])]
    assert rows_from_tables(tables) == [{"_value": 1.5, "_field": "saving_pct",
                                         "_measurement": "water_kpi", "district": "bletchley",
                                         "time_ms": int(when.timestamp() * 1000)}]
