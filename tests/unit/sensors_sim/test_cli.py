"""`citystream sim` from the command line (dry runs: no broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensors_sim.cli import parse_duration, parse_start, sim

START = "2026-11-21T00:00:00Z"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(sim, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_help_teaches_by_example_and_names_env_vars() -> None:
    code, out = _run("--help")
    assert code == 0
    assert "citystream sim --duration 60" in out
    for var in ("CITYSTREAM_SIM_SEED", "CITYSTREAM_SIM_SPEED", "CITYSTREAM_SIM_FAULT",
                "CITYSTREAM_SIM_RECORD", "CITYSTREAM_MQTT__USERNAME", "CITYSTREAM_MQTT__PASSWORD"):
        assert var in out


def test_dry_run_records_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    args = ["--dry-run", "--speed", "0", "--count", "1500", "--start", START, "--batch", "2",
            "--faults", "0.01", "--leak-district", "bletchley"]
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert _run(*args, "--record", str(a))[0] == 0
    assert _run(*args, "--record", str(b), "--gateways", "9")[0] == 0
    assert _run(*args, "--record", str(c), "--seed", "2")[0] == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    lines = a.read_bytes().splitlines()
    assert len(lines) == 1500
    assert json.loads(lines[0])["sim_time"].startswith("2026-11-21T00:00")


def test_summary_line_is_always_printed(tmp_path: Path) -> None:
    code, out = _run("--dry-run", "--speed", "0", "--count", "50", "--start", START)
    assert code == 0
    assert "sim: 50 messages, 50 readings" in out and "stopped by count" in out


def test_env_vars_set_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "env.jsonl"
    monkeypatch.setenv("CITYSTREAM_SIM_COUNT", "7")
    monkeypatch.setenv("CITYSTREAM_SIM_RECORD", str(path))
    monkeypatch.setenv("CITYSTREAM_SIM_FAULT", "duplicate=0.5 schema=0.1")
    code, _ = _run("--dry-run", "--speed", "0", "--start", START)
    assert code == 0
    assert len(path.read_bytes().splitlines()) == 7


@pytest.mark.parametrize("args, message", [
    (["--fault", "gremlins=0.1"], "unknown fault"),
    (["--fault", "schema"], "KIND=RATE"),
    (["--fault", "schema=0.6", "--fault", "too_old=0.6"], "add up to"),
    (["--leak-district", "atlantis"], "no such district"),
    (["--start", "yesterday"], "RFC 3339"),
    (["--start", "2020-01-01T00:00:00Z"], "too_old"),
    (["--start", "now+1h"], "now-<duration>"),
    (["--duration", "soon"], "duration"),
])
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    code, out = _run("--count", "1", *args)
    assert code == 2
    assert message in out


def test_unreachable_broker_is_an_error_naming_the_settings() -> None:
    code, out = _run("--count", "1", "--host", "127.0.0.1", "--port", "1")
    assert code == 1
    assert "CITYSTREAM_MQTT__HOST" in out


def test_parsers() -> None:
    assert parse_duration("90") == 90 and parse_duration("15m") == 900
    assert parse_duration("1.5h") == 5400 and parse_duration("2w") == 1_209_600
    now = 1_795_219_200_000
    assert parse_start("now", now) == now
    assert parse_start("now-6h", now) == now - 6 * 3_600_000
    assert parse_start(START, now) == now
    assert parse_start("2026-11-21T01:00:00+01:00", now) == now
    assert parse_start(str(now), now) == now
    with pytest.raises(ValueError, match="UTC offset"):
        parse_start("2026-11-21T00:00:00", now)
