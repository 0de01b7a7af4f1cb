"""The Flux the open-data service runs: pure functions, no I/O.

Nothing a client sends reaches the Flux text: measurements, fields and tags come from the
registry (`opendata.datasets`) and go in through `connectors.influxdb.flux`, the bucket too;
times are integers (epoch nanoseconds, `time(v: ...)`), the row limit an integer.

- `points_query`: the points of one KPI dataset with window end in [start, stop), one row per
  point (fields pivoted into columns), at most `limit` rows;
- `data_quality_query`: the `data_quality` rows: `sensor_quality` points aggregated per kind,
  district, window and hour (`sensors` distinct sensor ids, `readings` and `rejected` sums,
  `completeness_pct` the mean over the sensors; all as floats, since a pivot needs one type:
  the counts are whole and are published as integers);
- `latest_query`: the newest point before `stop` of each entity, for the NGSI-LD entities (the
  target's 24 h figure, its target, `on_track` and, for household meters, `meters_reporting`);
- `coverage_query`: the first and last window end of each dataset (`dct:temporal`).
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.influxdb.flux import flux_any_of, flux_string
from opendata.datasets import DATA_QUALITY, PRIVACY_COUNT, Dataset

QUALITY_SUMS = ("readings", "rejected")
QUALITY_MEAN = "completeness_pct"


def _time(ns: int) -> str:
    return f"time(v: {int(ns)})"


def points_query(bucket: str, dataset: Dataset, start_ns: int, stop_ns: int, limit: int) -> str:
    """One row per point of `dataset` with `_time` in [start_ns, stop_ns), at most `limit`."""
    if dataset.measurement == DATA_QUALITY:
        return data_quality_query(bucket, start_ns, stop_ns, limit)
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: {_time(start_ns)}, stop: {_time(stop_ns)})\n"
            f"  |> filter(fn: (r) => r._measurement == {flux_string(dataset.source)})\n"
            f"  |> filter(fn: (r) => {flux_any_of('_field', dataset.field_names)})\n"
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
            '  |> drop(columns: ["_start", "_stop", "_measurement"])\n'
            "  |> group()\n"
            f"  |> limit(n: {int(limit)})")


def data_quality_query(bucket: str, start_ns: int, stop_ns: int, limit: int) -> str:
    """`data_quality` rows (see module docstring) with `_time` in [start_ns, stop_ns)."""
    fields = (*QUALITY_SUMS, QUALITY_MEAN)
    return (f"src = from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: {_time(start_ns)}, stop: {_time(stop_ns)})\n"
            '  |> filter(fn: (r) => r._measurement == "sensor_quality")\n'
            f"  |> filter(fn: (r) => {flux_any_of('_field', fields)})\n"
            '  |> group(columns: ["_time", "kind", "district", "window", "_field"])\n'
            f"sums = src |> filter(fn: (r) => {flux_any_of('_field', QUALITY_SUMS)}) |> sum()\n"
            f"means = src |> filter(fn: (r) => r._field == {flux_string(QUALITY_MEAN)})"
            " |> mean()\n"
            "sensors = src\n"
            '  |> keep(columns: ["_time", "kind", "district", "window", "sensor_id"])\n'
            '  |> group(columns: ["_time", "kind", "district", "window"])\n'
            '  |> distinct(column: "sensor_id")\n'
            "  |> count()\n"
            '  |> map(fn: (r) => ({r with _field: "sensors"}))\n'
            "union(tables: [sums, means, sensors])\n"
            "  |> toFloat()\n"
            '  |> group(columns: ["kind", "district", "window"])\n'
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
            "  |> group()\n"
            f"  |> limit(n: {int(limit)})")


def latest_fields(dataset: Dataset) -> tuple[str, ...]:
    """The fields an NGSI-LD entity of `dataset` is built from."""
    if dataset.target is None:
        return ()
    extra = (PRIVACY_COUNT,) if dataset.private else ()
    return (dataset.target.field, dataset.target.limit_field, "on_track", *extra)


def latest_query(bucket: str, datasets: Sequence[Dataset], start_ns: int, stop_ns: int) -> str:
    """The newest value before `stop_ns` (and not before `start_ns`) of each series of the
    targets' fields (`latest_fields`) of `datasets`."""
    parts = [f"(r._measurement == {flux_string(d.source)} and "
             f"({flux_any_of('_field', latest_fields(d))}))" for d in datasets if d.target]
    if not parts:
        parts = ["false"]
    return (f"from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: {_time(start_ns)}, stop: {_time(stop_ns)})\n"
            f"  |> filter(fn: (r) => {' or '.join(parts)})\n"
            "  |> last()")


def coverage_query(bucket: str, datasets: Sequence[Dataset], stop_ns: int) -> str:
    """The first and the last point time of every series of `datasets` (sensor_quality: its
    `readings`), as rows with `_measurement`, `_time` and `edge` (`first`, `last`)."""
    kpis = [d.source for d in datasets if d.measurement != DATA_QUALITY]
    parts = [f"({flux_any_of('_measurement', kpis)})"] if kpis else []
    if any(d.measurement == DATA_QUALITY for d in datasets):
        parts.append('(r._measurement == "sensor_quality" and r._field == "readings")')
    wanted = " or ".join(parts) or "false"
    return (f"data = from(bucket: {flux_string(bucket)})\n"
            f"  |> range(start: {_time(0)}, stop: {_time(stop_ns)})\n"
            f"  |> filter(fn: (r) => {wanted})\n"
            "union(tables: [\n"
            '    data |> first() |> map(fn: (r) => ({r with edge: "first"})),\n'
            '    data |> last() |> map(fn: (r) => ({r with edge: "last"}))])\n'
            '  |> keep(columns: ["_measurement", "_time", "edge"])')
