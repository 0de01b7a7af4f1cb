"""CSV exports with a mapping (`ingest.csvmap`): mappings that cannot work are refused naming the
key, cells become typed contract payloads, and an export with bad rows of every contract reason
has every row accounted for."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ingest.backfill.job import ImportOptions, prepare
from ingest.backfill.runner import run_import
from ingest.csvmap import CsvMapping, MappingError, RowReader, parse_mapping
from ingest.decode import decode
from ingest.history import Inputs, Position, describe_inputs, open_binary
from models.city import load_city
from models.deadletter import Reason
from models.settings import InfluxSettings, QualitySettings
from tests.history_data import CITY_FILE, EXPORT_HEADER, EXPORT_MAPPING, ROOT, export_rows


@pytest.fixture(autouse=True)
def _city() -> None:
    load_city(CITY_FILE)  # its feeds are kinds a mapping may name


def mapping(text: str) -> CsvMapping:
    return parse_mapping(tomllib.loads(text), "m.toml")


WATER = """
[columns]
sensor_id = "Meter"
ts = "At"
volume_m3 = { column = "Register (L)", scale = 0.001 }
[constants]
kind = "water"
district = "bletchley"
"""


@pytest.mark.parametrize(("text", "error"), [
    (WATER.replace('volume_m3 = { column = "Register (L)", scale = 0.001 }', 'volume = "V"'),
     "volume is not a field of water readings"),
    (WATER.replace('volume_m3 = { column = "Register (L)", scale = 0.001 }', 'flow_l_min = "F"'),
     "water readings need volume_m3"),
    (WATER.replace('ts = "At"', ""), "needs ts"),
    (WATER.replace('kind = "water"', 'kind = "gas"'), "'gas' is not a kind of this city"),
    (WATER.replace('district = "bletchley"', ""), "map district"),
    (WATER + 'sensor_id = "x"\n', "in both [columns] and [constants]"),
    (WATER + '[format]\nts = "%d/%m/%Y %H:%M"\n', "has no %z: set format.timezone"),
    (WATER + '[format]\nts = "yesterday"\n', "not contract, epoch_ms, epoch_s"),
    (WATER + '[format]\ntimezone = "Mars/Olympus"\n', "unknown time zone"),
    (WATER + '[format]\nencoding = "klingon"\n', "unknown encoding"),
    (WATER + '[format]\ncolour = "red"\n', "format.colour"),
    ("[columns]\nts = 'At'\ntopic = 'T'\n[constants]\nkind = 'water'\n",
     "come from the topic"),
    ("[columns]\nts = 'At'\ntopic = 'T'\nseq = { column = 'S', scale = 2.0 }\n"
     "[constants]\n", ""),
    ("[columns]\nts = 'At'\ntopic = 'T'\nwheels = 'W'\n", "wheels is not a field of any kind"),
    ("[columns]\nsensor_id = 'M'\nts = 'At'\nvehicle_count = { column = 'C', scale = 2.0 }\n"
     "junction = 'J'\ninterval_s = 'I'\nmean_speed_kmh = 'S'\n"
     "[constants]\nkind = 'traffic'\ndistrict = 'bletchley'\n",
     "scale applies to number fields"),
])
def test_a_mapping_that_cannot_work_is_refused_naming_the_key(text: str, error: str) -> None:
    if not error:
        mapping(text)  # a kind from the topic: fields are checked per row
        return
    with pytest.raises(MappingError, match=error.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
        mapping(text)


def test_a_column_missing_from_the_header_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("Meter,When,Register (L)\nwm-1,2026-11-16T00:00:00Z,5\n")
    with pytest.raises(MappingError, match=r"column 'At' \(for ts\) is not in the header; it "
                                           r"has 'Meter', 'When', 'Register \(L\)'"):
        RowReader(path, mapping(WATER), open_binary)


def payload_of(m: CsvMapping, header: str, row: str, tmp_path: Path) -> Any:
    path = tmp_path / "one.csv"
    path.write_bytes(f"{header}\n{row}\n".encode())
    reader = RowReader(path, m, open_binary)
    [(topic, cells, _line, _at)] = list(reader.rows(0, 0))
    got = reader.message(cells)  # type: ignore[arg-type]
    if isinstance(got, tuple):
        return topic, json.loads(got[0]), got[1]
    return topic, got


def test_cells_become_the_contract_payload_in_its_units(tmp_path: Path) -> None:
    m = mapping(WATER.replace('ts = "At"', 'ts = "At"\nflow_l_min = "Flow"\nseq = "N"') +
                '[format]\ndelimiter = ";"\ndecimal = ","\nts = "%d/%m/%Y %H:%M"\n'
                'timezone = "Europe/London"\n')
    topic, body, received = payload_of(m, "Meter;At;Register (L);Flow;N",
                                       " wm-1 ;01/07/2026 12:00;123456,5;;7", tmp_path)
    assert topic == "city/bletchley/water/wm-1" and received is None
    assert body == {"sensor_id": "wm-1", "ts": 1782903600000,  # 11:00Z: BST
                    "volume_m3": pytest.approx(123.4565), "seq": 7}


@pytest.mark.parametrize(("fmt", "cell", "ms"), [
    ("contract", "2026-11-16T06:15:00Z", 1794809700000),
    ("contract", "2026-11-16 07:15:00+01:00", 1794809700000),
    ("contract", "1794809700000", 1794809700000),
    ("epoch_ms", "1794809700000", 1794809700000),
    ("epoch_s", "1794809700.25", 1794809700250),
    ("%Y-%m-%d %H:%M:%S%z", "2026-11-16 06:15:00+0000", 1794809700000),
])
def test_time_formats(fmt: str, cell: str, ms: int, tmp_path: Path) -> None:
    m = mapping(WATER + f'[format]\nts = "{fmt}"\n')
    _topic, body, _ = payload_of(m, "Meter,At,Register (L)", f"wm-1,{cell},5", tmp_path)
    assert body["ts"] == ms


def test_typed_cells_and_a_topic_column(tmp_path: Path) -> None:
    m = mapping("[columns]\ntopic = 'Topic'\nts = 'At'\nstatus = 'Status'\n"
                "passengers = 'P'\ndisengaged = 'D'\nroute_id = 'R'\n")
    topic, body, _ = payload_of(m, "Topic,At,Status,P,D,R",
                                "city/central-mk/shuttle/sh-1,1794809700000,in_service,3,yes,r1",
                                tmp_path)
    assert topic == "city/central-mk/shuttle/sh-1"
    assert body == {"sensor_id": "sh-1", "ts": 1794809700000, "status": "in_service",
                    "passengers": 3, "disengaged": True, "route_id": "r1"}


def test_an_export_with_bad_rows_of_every_reason_has_every_row_accounted_for(
        tmp_path: Path) -> None:
    rows = export_rows()
    path = tmp_path / "export.csv"
    body = "\n".join([EXPORT_HEADER, *(row for row, _ in rows)]).encode()
    path.write_bytes(body + b"\ncity/bletchley/water/wm-\xff,wm-1,2026-11-16T00:41:00Z,,5,,,,\n")
    (tmp_path / "m.toml").write_text(EXPORT_MAPPING)
    m = mapping(EXPORT_MAPPING)
    city = load_city(CITY_FILE)
    job = prepare(describe_inputs([path], m), m, EXPORT_MAPPING, city, "", InfluxSettings(),
                  QualitySettings(), ImportOptions(state_dir=tmp_path, dry_run=True, workers=1))
    summary = run_import(job)
    assert summary.status == "done", summary.error
    want: dict[str, int] = {}
    for _row, reason in [*rows, ("", "invalid_json")]:
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert set(want) == {str(r) for r in Reason}
    c = summary.counts
    assert c.rejected == want
    assert c.readings == c.messages == len(rows) + 1
    assert c.accepted == sum(1 for _, reason in rows if reason is None)
    assert c.duplicates == 1
    rejects = [json.loads(line) for line in summary.rejects_path.read_text().splitlines()]
    assert [r["reason"] for r in rejects] == [r for _, r in rows if r] + ["invalid_json"]
    lines = [r["line"] for r in rejects]
    assert lines == sorted(lines) and lines[-1] == len(rows) + 3  # the multi-line row: 2
    assert summary.windows == {"water_kpi": 1, "traffic_kpi": 1}


def test_rows_resume_at_any_row(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    rows = export_rows()
    path.write_text("\n".join([EXPORT_HEADER, *(row for row, _ in rows)]) + "\n")
    m = mapping(EXPORT_MAPPING)
    inputs = Inputs(describe_inputs([path], m), m)
    items = list(inputs.items(Position()))
    assert len(items) == len(rows)
    for k in (0, 1, 7, len(items) - 2, len(items) - 1):
        again = list(inputs.items(items[k].position))
        assert [(i.n, i.topic, i.line) for i in again] == [
            (i.n, i.topic, i.line) for i in items[k:]]


def _blocks(text: str, lang: str) -> list[str]:
    import re

    return re.findall(rf"^ *```{lang}[^\n]*\n(.*?)^ *```", text, re.M | re.S)


@pytest.mark.parametrize("doc", ["import.md", "analysts.md"])
def test_the_documented_mapping_reads_the_documented_export(doc: str, tmp_path: Path) -> None:
    """docs/import.md and the walk-through in docs/analysts.md: their mapping reads their
    sample export into valid water readings."""
    import textwrap

    text = (ROOT / "docs" / doc).read_text()
    if doc == "analysts.md":
        text = text[text.index("## From a CSV export to a report"):]
        [sample] = _blocks(text, "text")[:1]
    else:
        [sample] = _blocks(text, "csv export")
    toml = textwrap.dedent(_blocks(text, "toml")[0])
    m = mapping(toml)
    path = tmp_path / "export.csv"
    path.write_text(textwrap.dedent(sample))
    reader = RowReader(path, m, open_binary)
    rows = list(reader.rows(0, 0))
    assert len(rows) == 3
    for topic, cells, _line, _at in rows:
        payload, _received = reader.message(cells)  # type: ignore[arg-type, misc]
        decoded = decode(topic, payload, 1_800_000_000_000, horizon_s=10**10)
        assert decoded.readings and not decoded.dead_letters, decoded.dead_letters
    first = decode(rows[0][0], reader.message(rows[0][1])[0], 1_800_000_000_000,  # type: ignore
                   horizon_s=10**10).readings[0]
    assert first.ts_ms == 1788217200000  # 01/09/2026 00:00 in London: 23:00Z the day before
    assert first.volume_m3 == pytest.approx(1203.3115)  # type: ignore[attr-defined]
