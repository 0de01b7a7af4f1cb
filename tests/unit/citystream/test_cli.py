"""The top-level CLI: component commands load lazily, and `up` drives the stack it builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from citystream import cli


def test_up_starts_the_whole_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` with the pipeline starts every pipeline service the stack names (a regression: the
    list once came from a name imported for type checking only)."""
    from deploy.local import stack as stack_module

    started: list[tuple[str, ...]] = []

    def start_pipeline(self: Any, names: tuple[str, ...]) -> None:
        started.append(names)

    monkeypatch.setattr(stack_module.Stack, "up", lambda self: None)
    monkeypatch.setattr(stack_module.Stack, "start_pipeline", start_pipeline)
    monkeypatch.setattr(stack_module.Stack, "client_info", lambda self: {
        "influxdb": {"url": "u", "org": "o", "buckets": {"kpi": "k", "telemetry": "t"}},
        "dashboard": {"url": "d"}, "opendata": {"url": "o"}})
    result = CliRunner().invoke(cli.main, ["up", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert started == [stack_module.Stack.PIPELINE]


def test_a_component_command_is_imported_only_when_used() -> None:
    """`citystream worker` loads no dashboard, simulator, open-data or benchmark code."""
    code = ("import sys; from citystream.cli import main; main.get_command(None, 'worker'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dashboard', 'sensors_sim', 'bench', 'opendata', 'analysis')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3], check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_bench_hands_over_to_the_checkouts_benchmarks() -> None:
    result = CliRunner().invoke(cli.main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: citystream bench" in result.output and "--stages" in result.output
    assert "bench" in CliRunner().invoke(cli.main, ["--help"]).output
    unknown = CliRunner().invoke(cli.main, ["bench", "--stages", "nope"])
    assert unknown.exit_code != 0 and "nope" in unknown.output
