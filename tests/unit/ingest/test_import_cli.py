"""`citystream import` as a command: its options and their env vars, a dry run's summary, and
the sentences that stop it before it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from citystream.cli import main
from tests.history_data import CITY_FILE, record

ENV = {"CITYSTREAM_INFLUX__URL": "http://127.0.0.1:9", "CITYSTREAM_CITY__FILE": str(CITY_FILE)}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "half-hour.jsonl", 0.5)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["import", *args], env={**ENV, **(env or {})},
                                catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_every_option_names_its_environment_variable() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for option, variable in [("--mapping", "MAPPING"), ("--raw", "RAW"), ("--id", "ID"),
                             ("--fresh", "FRESH"), ("--dry-run", "DRY_RUN"),
                             ("--workers", "WORKERS"), ("--batch", "BATCH"),
                             ("--checkpoint", "CHECKPOINT_S"), ("--retry-for", "RETRY_FOR_S"),
                             ("--state-dir", "STATE_DIR"), ("--progress", "PROGRESS")]:
        assert option in out and f"CITYSTREAM_IMPORT_{variable}" in " ".join(out.split()), option
    assert "CITYSTREAM_CITY__FILE" in out and "retention" in out


def test_a_dry_run_prints_the_summary_and_keeps_the_report(recording: Path,
                                                          tmp_path: Path) -> None:
    code, out, err = invoke(str(recording), "--dry-run", "--workers", "1", "--state-dir",
                            str(tmp_path))
    assert code == 0, err
    assert "dry run, nothing written" in err
    for words in ("done in", "readings/s", "accepted", "duplicates", "rejected",
                  "windows computed", "water_kpi", "period: 2026-11-16T00:", "report:",
                  "raw readings: not written"):
        assert words in out, words
    [report] = tmp_path.glob("*-dry-run/report.json")
    data = json.loads(report.read_text())
    assert data["status"] == "done" and data["counts"]["readings"] > 0


def test_env_vars_drive_the_options(recording: Path, tmp_path: Path) -> None:
    code, _out, err = invoke(str(recording), env={
        "CITYSTREAM_IMPORT_DRY_RUN": "1", "CITYSTREAM_IMPORT_WORKERS": "1",
        "CITYSTREAM_IMPORT_STATE_DIR": str(tmp_path), "CITYSTREAM_IMPORT_ID": "half-hour"})
    assert code == 0, err
    assert (tmp_path / "half-hour-dry-run" / "report.json").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--id", "../elsewhere"], "is not a name of letters"),
    (["--mapping", "MAPPING"], "is not a field of water readings"),
])
def test_bad_options_stop_it_naming_what_to_fix(recording: Path, tmp_path: Path,
                                                args: list[str], words: str) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text('[columns]\nsensor_id = "a"\nts = "b"\nvolume = "c"\n'
                       '[constants]\nkind = "water"\ndistrict = "x"\n')
    code, _out, err = invoke(str(recording), "--dry-run", "--state-dir", str(tmp_path),
                             *[str(mapping) if a == "MAPPING" else a for a in args])
    assert code == 2
    assert words in err


def test_without_a_token_it_says_which_setting(recording: Path, tmp_path: Path) -> None:
    code, _out, err = invoke(str(recording), "--state-dir", str(tmp_path))
    assert code == 2
    assert "CITYSTREAM_INFLUX__TOKEN is not set" in err


def test_an_unreachable_influxdb_is_named(recording: Path, tmp_path: Path) -> None:
    code, _out, err = invoke(str(recording), "--state-dir", str(tmp_path),
                             env={"CITYSTREAM_INFLUX__TOKEN": "t"})
    assert code == 1
    assert "cannot reach InfluxDB at http://127.0.0.1:9" in err


def test_a_csv_needs_a_mapping(tmp_path: Path) -> None:
    export = tmp_path / "meters.csv"
    export.write_text("a,b\n")
    code, _out, err = invoke(str(export), "--dry-run")
    assert code == 2
    assert "give --mapping" in err
