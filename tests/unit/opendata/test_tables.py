"""Published rows, CSV and JSON: columns, order, types, suppression; RFC 3339 parameters."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from models import kinds
from opendata.datasets import DATA_QUALITY, published
from opendata.store import data_quality
from opendata.tables import Point, TimeError, format_time, parse_time, rows, to_csv, to_json
from tests.opendata_checks import read_csv
from tests.unit.opendata.fakes import NOW_MS, city, seeded


def test_every_kind_is_a_dataset_with_the_contract_columns() -> None:
    datasets = published(city())
    assert list(datasets) == [*(s.measurement for s in kinds.specs()), DATA_QUALITY]
    assert not {"alert", "pipeline", "sensor_quality"} & set(datasets)
    for spec in kinds.specs():
        ds = datasets[spec.measurement]
        fields = spec.kpi_type.field_names()
        tags = [t for t in spec.kpi_type.tag_names if t != "window"]
        assert ds.columns[0] == "window_end" and ds.columns[-1] == "suppressed"
        assert list(ds.columns[1:1 + len(tags)]) == tags
        assert ds.columns[1 + len(tags)] == "window"
        assert list(ds.columns[2 + len(tags):-1]) == list(fields)
        assert ds.entity == spec.entity_tag
    assert datasets["traffic_kpi"].columns[:4] == ("window_end", "district", "junction", "window")
    assert datasets[DATA_QUALITY].columns == (
        "window_end", "kind", "district", "window", "sensors", "readings", "rejected",
        "completeness_pct", "suppressed")
    assert datasets["noise_kpi"].target is not None
    assert datasets["shuttle_kpi"].target is None


def test_column_types_follow_the_contract() -> None:
    datasets = published(city())
    types = {c.name: c.type for c in datasets["water_kpi"].fields}
    assert types == {"consumption_l": "number", "baseline_l": "number", "saving_pct": "number",
                     "saving_pct_24h": "number", "target_pct": "number", "on_track": "boolean",
                     "meters_reporting": "integer"}
    assert {c.name: c.type for c in datasets["shuttle_kpi"].fields}["boardings"] == "integer"
    assert {c.name: c.type for c in datasets["noise_kpi"].fields} == {
        "laeq_mean_db": "number", "readings": "integer", "target": "number",
        "laeq_mean_db_24h": "number", "on_track": "boolean"}


@pytest.mark.parametrize(("text", "ms"), [
    ("2026-10-01T00:00:00Z", 1790812800000),
    ("2026-10-01T01:00:00+01:00", 1790812800000),
    ("2026-10-01 01:00:00 01:00", 1790812800000),     # an unencoded '+' arrives as a space
    ("2026-09-30T23:00:00.5-01:00", 1790812800500),
    ("2026-10-01t00:00:00z", 1790812800000),
])
def test_rfc3339_times_parse(text: str, ms: int) -> None:
    assert parse_time(text, "from") == ms * 1_000_000


@pytest.mark.parametrize("text", [
    "2026-10-01", "2026-10-01T00:00:00", "yesterday", "1790812800", "2026-13-01T00:00:00Z",
    "2026-10-01T00:00:00+25:00", '2026-10-01T00:00:00Z") |> drop(columns: ["_value"])',
    "1969-12-31T23:59:59Z", "2026-10-01T00:00:00Z" + "0" * 50, "",
])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(TimeError, match="`to`"):
        parse_time(text, "to")


def test_format_time_is_rfc3339_utc() -> None:
    assert format_time(1790812800000) == "2026-10-01T00:00:00Z"
    assert format_time(1790812800250) == "2026-10-01T00:00:00.250Z"


def test_rows_are_ordered_by_window_end_then_entity_and_typed() -> None:
    store = seeded()
    datasets = published(city())
    traffic = rows(datasets["traffic_kpi"], store.all("traffic_kpi"), 5)
    keys = [(r["window_end"], r["junction"]) for r in traffic]
    assert keys == sorted(keys)
    assert traffic[0]["junction"] == "j-0" and traffic[0]["district"] == "wolverton"
    assert traffic[1]["junction"] == "j-1" and traffic[1]["district"] == "bletchley"
    assert all(r["suppressed"] is False for r in traffic)
    assert isinstance(traffic[0]["vehicles"], int) and isinstance(traffic[0]["flow_veh_h"], float)
    assert traffic[0]["space_mean_speed_kmh"] == 40.0 and traffic[0]["on_track"] is True


def test_household_windows_under_the_minimum_are_withheld_whole() -> None:
    datasets = published(city())
    table = rows(datasets["water_kpi"], seeded().all("water_kpi"), 5)
    hidden = [r for r in table if r["suppressed"]]
    assert len(hidden) == 2 and {r["district"] for r in hidden} == {"bletchley"}
    for r in hidden:
        assert [r[c.name] for c in datasets["water_kpi"].fields] == [None] * 7
        assert r["window"] == "15m"
    shown = [r for r in table if not r["suppressed"]]
    assert all(isinstance(r["meters_reporting"], int) and r["meters_reporting"] >= 5
               for r in shown)
    # the threshold is the setting: with 3 meters allowed the same windows are published
    assert not any(r["suppressed"] for r in rows(datasets["water_kpi"],
                                                 seeded().all("water_kpi"), 3))
    # a household window without a meter count is withheld too
    lost = Point("water_kpi", NOW_MS, {"district": "x", "window": "15m"}, {"saving_pct": 1.0})
    assert rows(datasets["water_kpi"], [lost], 5)[0]["suppressed"] is True
    energy = rows(datasets["energy_kpi"], seeded().all("energy_kpi"), 5)
    assert energy and all(r["suppressed"] and r["energy_kwh"] is None for r in energy)


def test_data_quality_aggregates_per_kind_district_and_hour_without_sensor_ids() -> None:
    datasets = published(city())
    points = data_quality(seeded().all("sensor_quality"))
    table = rows(datasets[DATA_QUALITY], points, 5)
    wolverton = [r for r in table if r["district"] == "wolverton"]
    assert len(wolverton) == 3
    assert wolverton[0] | {"window_end": ""} == {
        "window_end": "", "kind": "water", "district": "wolverton", "window": "1h",
        "sensors": 6, "readings": 24, "rejected": 3, "completeness_pct": 97.5,
        "suppressed": False}
    # one household meter alone is personal data: withheld; a traffic counter is not
    lone = [r for r in table if r["district"] == "bletchley" and r["kind"] == "water"]
    assert lone and all(r["suppressed"] and r["readings"] is None for r in lone)
    counters = [r for r in table if r["kind"] == "traffic"]
    assert counters and all(not r["suppressed"] and r["sensors"] == 1 for r in counters)
    assert "wm-" not in to_csv(datasets[DATA_QUALITY].columns, table).decode()


def test_csv_is_rfc4180_and_json_has_the_same_rows() -> None:
    datasets = published(city())
    ds = datasets["water_kpi"]
    table = rows(ds, seeded().all("water_kpi"), 5)
    text = to_csv(ds.columns, table).decode()
    assert text.splitlines()[0] == ",".join(ds.columns)
    parsed = read_csv(text)
    assert len(parsed) == len(table) == 16
    as_json = orjson.loads(to_json(table))
    assert [list(r) for r in as_json] == [list(ds.columns)] * len(as_json)
    for line, obj in zip(parsed, as_json, strict=True):
        for column in ds.columns:
            value = obj[column]
            expected = ("" if value is None else "true" if value is True
                        else "false" if value is False else str(value))
            assert line[column] == expected, column
    hidden = next(line for line in parsed if line["suppressed"] == "true")
    assert [hidden[c.name] for c in ds.fields] == [""] * 7


def test_csv_quotes_what_needs_quoting() -> None:
    text = to_csv(("a", "b"), [{"a": 'x,"y"', "b": "line\nbreak"}]).decode()
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["a", "b"],
                                                                ['x,"y"', "line\nbreak"]]
