"""`citystream report --quality`: the Flux, the per-sensor figures, the summary and the CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from analysis.influx import quality_query
from analysis.quality import (
    quality_csv_path,
    render_quality,
    summarise_quality,
    write_quality_csv,
)
from analysis.report import Period
from kinds.water import WaterKpi
from models.records import Kpi

H = 3_600_000
T0 = 1_790_000_000_000 // H * H
PERIOD = Period(T0, T0 + 24 * H)


def sensor(sensor_id: str, kind: str = "water", district: str = "bletchley",
           **fields: float) -> dict[str, Any]:
    """A row of `quality_query`: a sensor's period figures, floats as InfluxDB gives them."""
    return {"result": "_result", "table": 0, "kind": kind, "district": district,
            "sensor_id": sensor_id, **fields}


GOOD: dict[str, Any] = {"hours": 24.0, "readings": 96.0, "duplicates": 0.0, "late": 0.0,
        "completeness_pct": 100.0, "score": 100.0, "lowest_score": 100.0, "hours_below": 0.0,
        "stuck_hours": 0.0}


def test_the_query_aggregates_per_sensor_with_names_escaped() -> None:
    flux = quality_query('k"pi', T0, T0 + H, 72.5,
                         {"kind": frozenset({"water", 'x"y'}), "district": frozenset({"b"})})
    assert flux.count('from(bucket: "k\\"pi")') == 6        # one storage read per figure
    assert f"range(start: time(v: {(T0 + 1) * 10**6}), stop: time(v: {(T0 + H + 1) * 10**6}))" \
        in flux                                             # hours ending in (start, stop]
    assert '|> filter(fn: (r) => r.kind == "water" or r.kind == "x\\"y")' in flux
    assert '|> filter(fn: (r) => r.district == "b")' in flux
    assert "r._value < 72.500000" in flux
    for name in ("hours", "hours_below", "lowest_score", "stuck_hours"):
        assert f'set(key: "_field", value: "{name}")' in flux
    assert flux.endswith('pivot(rowKey: ["kind", "district", "sensor_id"], columnKey: '
                         '["_field"], valueColumn: "_value")')
    with pytest.raises(ValueError, match="not a tag name"):
        quality_query("kpi", T0, T0 + H, 80.0, {"a) or (true": frozenset({"b"})})


def test_per_sensor_figures_the_rule_and_worst_first() -> None:
    rows = summarise_quality([
        sensor("wm-good", **GOOD),
        sensor("wm-rejected", **{**GOOD, "rejected": 17.0}),
        sensor("wm-stuck", **{**GOOD, "stuck_hours": 5.0, "score": 81.0, "hours_below": 5.0}),
        sensor("wm-low", **{**GOOD, "completeness_pct": 42.0, "score": 42.0,
                            "lowest_score": 10.0, "hours_below": 20.0, "duplicates": 5.0,
                            "late": 3.0}),
        sensor("wm-dip", **{**GOOD, "score": 85.0, "hours_below": 3.0, "lowest_score": 30.0}),
        sensor("tc-all-rejected", kind="traffic", rejected=9.0),   # no hour with a reading
        {"kind": "water", "district": "bletchley"},                  # no sensor: ignored
    ], min_score=80.0)
    assert [(r.sensor_id, r.attention, r.problems) for r in rows] == [
        ("tc-all-rejected", True, "no readings accepted; 9 rejected"),
        ("wm-low", True, "42 % complete; 5 duplicates; 3 late"),
        ("wm-stuck", True, "stuck 5 h"),
        ("wm-rejected", True, "17 rejected"),
        ("wm-dip", False, ""),                    # a mean above the threshold: no attention
        ("wm-good", False, ""),
    ]
    low = rows[1]
    assert (low.hours, low.readings, low.duplicates, low.late, low.rejected) == (24, 96, 5, 3, 0)
    assert (low.score, low.lowest_score, low.hours_below, low.completeness_pct) == (
        42.0, 10.0, 20, 42.0)
    none = rows[0]
    assert (none.hours, none.readings, none.score, none.completeness_pct) == (0, 0, None, None)


def test_the_summary_names_the_worst_and_why() -> None:
    rows = summarise_quality([sensor(f"wm-{i:02d}", **{**GOOD, "score": float(i)})
                              for i in range(12)] + [sensor("wm-ok", **GOOD)], 80.0)
    text = render_quality(rows, 80.0, "/tmp/r-quality.csv", shown=10)
    lines = text.splitlines()
    assert lines[0].startswith("Sensor quality (hourly sensor_quality; needs attention: mean "
                               "score below 80, rejected readings or stuck)")
    assert lines[1] == ("13 sensors, 12 need attention: 12 with a mean score below 80, 0 with "
                        "rejected readings, 0 stuck")
    header = lines[2]
    assert header.split() == ["kind", "district", "sensor", "hours", "score", "lowest", "hours",
                              "below", "why"]
    assert [line.split()[2] for line in lines[4:14]] == [f"wm-{i:02d}" for i in range(10)]
    assert "score 0 below 80" in lines[4]
    assert "(the worst 10 of 12)" in lines and "every sensor's figures: /tmp/r-quality.csv" in lines
    assert "1 sensor: none needs attention" in render_quality(
        summarise_quality([sensor("wm-ok", **GOOD)], 80.0), 80.0)
    assert "add --csv PATH to write them to PATH-quality.csv" in render_quality(
        summarise_quality([sensor("wm-ok", **GOOD)], 80.0), 80.0)
    assert "no sensor_quality points in this period" in render_quality([], 80.0)


def test_the_csv_has_every_sensor_beside_the_report_csv() -> None:
    assert quality_csv_path("out/week.csv") == Path("out/week-quality.csv")
    assert quality_csv_path("week") == Path("week-quality")
    rows = summarise_quality([sensor("wm-ok", **GOOD), sensor("tc-1", kind="traffic",
                                                              rejected=2.0)], 80.0)
    out = io.StringIO()
    write_quality_csv(rows, out, PERIOD)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["sensor_id"], r["attention"], r["rejected"], r["score"]) for r in parsed] == [
        ("tc-1", "true", "2", ""), ("wm-ok", "false", "0", "100.0")]
    assert parsed[0]["period_start"] == "2026-09-21T14:00:00Z"
    assert parsed[0]["problems"] == "no readings accepted; 2 rejected"


class Reader:
    """`KpiReader`'s two reads, from lists; remembers what `sensor_quality` was asked."""

    def __init__(self, records: list[Kpi], quality: list[dict[str, Any]]) -> None:
        self.stored, self.quality = records, quality
        self.asked: list[tuple[float, dict[str, frozenset[str]]]] = []

    def records(self, cls: type[Kpi], start_ms: int, stop_ms: int,
                where: dict[str, frozenset[str]] | None = None) -> list[Kpi]:
        return [r for r in self.stored if r.measurement == cls.measurement]

    def sensor_quality(self, start_ms: int, stop_ms: int, min_score: float,
                       where: dict[str, frozenset[str]] | None = None) -> list[dict[str, Any]]:
        self.asked.append((min_score, dict(where or {})))
        return self.quality


def run(monkeypatch: pytest.MonkeyPatch, reader: Reader, *args: str,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    from analysis import cli

    monkeypatch.setattr(cli, "_reader", lambda: reader)
    monkeypatch.delenv("CITYSTREAM_CITY__FILE", raising=False)
    monkeypatch.delenv("CITYSTREAM_QUALITY__MIN_SCORE", raising=False)
    result = CliRunner().invoke(cli.report, ["--from", "2026-09-21T14:00", "--to",
                                             "2026-09-21T16:00", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def water() -> WaterKpi:
    return WaterKpi(district="bletchley", window_end_ms=T0 + H, consumption_l=50.0,
                    baseline_l=100.0, saving_pct=50.0, saving_pct_24h=50.0, target_pct=20.0,
                    on_track=True, meters_reporting=3)


def test_report_quality_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    quality = [sensor("wm-1", **{**GOOD, "score": 42.0, "completeness_pct": 42.0}),
               sensor("wm-2", **GOOD)]
    reader = Reader([water()], quality)
    code, out, err = run(monkeypatch, reader)
    assert code == 0, err
    assert reader.asked == [] and "Sensor quality" not in out     # only when asked for

    path = tmp_path / "week.csv"
    code, out, err = run(monkeypatch, reader, "--quality", "--csv", str(path), "--kind",
                         "water", "--district", "bletchley")
    assert code == 0, err
    assert reader.asked == [(80.0, {"kind": frozenset({"water"}),
                                    "district": frozenset({"bletchley"})})]
    assert "water: 1 of 1 districts on track" in out           # the report, then quality
    assert "2 sensors, 1 needs attention: 1 with a mean score below 80" in out
    assert "42 % complete" in out
    assert f"every sensor's figures: {tmp_path / 'week-quality.csv'}" in out
    written = list(csv.DictReader((tmp_path / "week-quality.csv").open(encoding="utf-8")))
    assert [r["sensor_id"] for r in written] == ["wm-1", "wm-2"]
    assert f"wrote {tmp_path / 'week-quality.csv'}" in err

    code, out, err = run(monkeypatch, reader, "--quality", "--csv", "-",
                         env={"CITYSTREAM_QUALITY__MIN_SCORE": "40"})
    assert code == 0, err
    assert reader.asked[-1] == (40.0, {})
    assert [r["kind"] for r in csv.DictReader(io.StringIO(out))] == ["water"]  # CSV only
    assert "2 sensors: none needs attention" in err                # the summary on stderr
    assert run(monkeypatch, reader, "--quality", "--min-score", "101")[0] == 2


def test_the_help_names_the_threshold_setting() -> None:
    from analysis import cli

    help_text = CliRunner().invoke(cli.report, ["--help"]).output
    assert "--quality" in help_text and "CITYSTREAM_QUALITY__MIN_SCORE" in help_text
