"""`citystream report`'s pure parts: period rules, per-entity figures, table, CSV, chart."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from analysis.chart import plot
from analysis.cli import parse_span, parse_when, resolve_period
from analysis.report import Period, Selection, render_table, summarise, to_csv
from models.records import EnergyKpi, ShuttleKpi, TrafficKpi, WaterKpi

H = 3_600_000
T0 = 1_790_000_000_000 // H * H  # an hour boundary


def water(end: int, used: float, base: float, district: str = "bletchley",
          on_track: bool = False, target: float = 20.0) -> WaterKpi:
    return WaterKpi(district=district, window_end_ms=end, consumption_l=used, baseline_l=base,
                    saving_pct=100 * (1 - used / base) if base else None, saving_pct_24h=0.0,
                    target_pct=target, on_track=on_track, meters_reporting=3)


def traffic(end: int, index: float, base: float, vehicles: int = 10,
            junction: str = "j-1", district: str = "bletchley") -> TrafficKpi:
    return TrafficKpi(district=district, junction=junction, window_end_ms=end, vehicles=vehicles,
                      flow_veh_h=12.0 * vehicles, space_mean_speed_kmh=30.0,
                      congestion_index=index, baseline_congestion_index=base,
                      reduction_pct=0.0, reduction_pct_24h=0.0, on_track=False)


def shuttle(end: int, on_time: float, boardings: int = 3) -> ShuttleKpi:
    return ShuttleKpi(route="r-1", window_end_ms=end, boardings=boardings, occupancy_pct=50.0,
                      on_time_pct=on_time, availability_pct=75.0, mean_battery_pct=60.0,
                      disengagements=1, vehicles_reporting=2)


PERIOD = Period(T0, T0 + 2 * H)


def test_period_holds_windows_ending_after_start_up_to_stop() -> None:
    assert not PERIOD.holds(T0)
    assert PERIOD.holds(T0 + 1)
    assert PERIOD.holds(T0 + 2 * H)
    assert not PERIOD.holds(T0 + 2 * H + 1)
    with pytest.raises(ValueError, match="must end after it starts"):
        Period(T0, T0)


def test_saving_sums_use_and_baseline_not_window_percentages() -> None:
    # windows: 50 of 100 (50 % saving) and 900 of 1000 (10 %): the period saved 950/1100
    rows = summarise([water(T0 + 900_000, 50.0, 100.0, on_track=True),
                      water(T0 + 1_800_000, 900.0, 1000.0, target=5.0)], PERIOD)
    (row,) = rows
    assert row.actual == 950.0 and row.baseline == 1100.0
    assert row.figure_pct == pytest.approx(100 * (1 - 950 / 1100))
    assert row.target_pct == 5.0  # the period's last window
    assert row.status == "on track" and row.on_track is True
    assert row.windows == 2 and row.windows_on_track_pct == 50.0


def test_off_track_and_no_baseline() -> None:
    off = summarise([water(T0 + H, 95.0, 100.0)], PERIOD)[0]
    assert off.status == "off track" and off.on_track is False
    none = summarise([water(T0 + H, 5.0, 0.0)], PERIOD)[0]
    assert none.status == "no baseline" and none.figure_pct is None and none.on_track is None


def test_windows_outside_the_period_are_left_out() -> None:
    rows = summarise([water(T0, 1.0, 100.0), water(T0 + 3 * H, 1.0, 100.0),
                      water(T0 + H, 90.0, 100.0)], PERIOD)
    assert rows[0].windows == 1 and rows[0].actual == 90.0


def test_traffic_uses_windows_with_traffic() -> None:
    rows = summarise([traffic(T0 + 300_000, 0.2, 0.8), traffic(T0 + 600_000, 0.6, 0.8),
                      traffic(T0 + 900_000, 0.0, 2.0, vehicles=0)], PERIOD)
    (row,) = rows
    assert row.actual == pytest.approx(0.4) and row.baseline == pytest.approx(0.8)
    assert row.figure_pct == pytest.approx(50.0)
    assert row.status == "on track" and row.windows == 3 and row.district == "bletchley"
    quiet = summarise([traffic(T0 + H, 0.0, 0.5, vehicles=0)], PERIOD)[0]
    assert quiet.status == "no baseline"


def test_shuttle_row_has_no_target() -> None:
    (row,) = summarise([shuttle(T0 + H, 80.0), shuttle(T0 + 2 * H, 60.0, boardings=4)], PERIOD)
    assert row.status == "no target" and row.figure_pct is None
    assert row.on_time_pct == 70.0 and row.boardings == 7 and row.disengagements == 2


def test_selection() -> None:
    records = [water(T0 + H, 1.0, 2.0, district="bletchley"),
               water(T0 + H, 1.0, 2.0, district="wolverton"),
               EnergyKpi(district="bletchley", window_end_ms=T0 + H, energy_kwh=1.0,
                         baseline_kwh=2.0, saving_pct=50.0, saving_pct_24h=50.0, on_track=True,
                         peak_kw=3.0, meters_reporting=1),
               traffic(T0 + H, 0.1, 0.2, junction="j-b", district="bletchley"),
               traffic(T0 + H, 0.1, 0.2, junction="j-w", district="wolverton"),
               shuttle(T0 + H, 90.0)]

    def entities(selection: Selection) -> list[tuple[str, str]]:
        return [(r.kind, r.entity) for r in summarise(records, PERIOD, selection)]

    assert len(entities(Selection())) == 6
    assert entities(Selection(districts=frozenset({"bletchley"}))) == [
        ("water", "bletchley"), ("energy", "bletchley"), ("traffic", "j-b")]
    assert entities(Selection(junctions=frozenset({"j-w"}), routes=frozenset({"r-1"}))) == [
        ("traffic", "j-w"), ("shuttle", "r-1")]
    assert entities(Selection(kinds=frozenset({"water"}))) == [
        ("water", "bletchley"), ("water", "wolverton")]


def test_table_is_aligned_and_marks_status() -> None:
    rows = summarise([water(T0 + H, 50.0, 100.0, district="bletchley"),
                      water(T0 + H, 9500.0, 10000.0, district="central-mk"),
                      traffic(T0 + H, 0.3, 0.4), shuttle(T0 + H, 80.0)], PERIOD)
    text = render_table(rows, PERIOD)
    lines = text.splitlines()
    table = lines[2:7]
    header = table[0]
    status_col = header.index("status")
    assert [line[status_col:status_col + 11].strip() for line in table[2:]] == [
        "✓ on track", "✗ off track", "✗ off track"]
    assert len({line.index("L ") for line in table[2:4]}) == 1  # amounts right-aligned
    assert "water: 1 of 2 districts on track" in lines
    assert "traffic: 0 of 1 junctions on track" in lines
    assert "r-1" in text and "80.0 %" in text
    assert "no KPI windows" in render_table([], PERIOD)


def test_csv_round_trips() -> None:
    rows = summarise([water(T0 + H, 50.0, 100.0), shuttle(T0 + H, 80.0)], PERIOD)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows, PERIOD))))
    assert [r["kind"] for r in parsed] == ["water", "shuttle"]
    assert float(parsed[0]["figure_pct"]) == rows[0].figure_pct
    assert parsed[0]["status"] == "on track" and parsed[0]["on_time_pct"] == ""
    assert parsed[1]["boardings"] == "3" and parsed[1]["figure_pct"] == ""
    assert parsed[0]["period_start"].endswith("Z")


def test_chart_is_a_png(tmp_path: Path) -> None:
    rows = summarise([water(T0 + H, 50.0, 100.0), traffic(T0 + H, 0.3, 0.4),
                      shuttle(T0 + H, 80.0), water(T0 + H, 1.0, 0.0, district="wolverton")],
                     PERIOD)
    out = tmp_path / "report.png"
    plot(rows, PERIOD, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to chart"):
        plot([], PERIOD, out)


NOW = T0 + 12 * H


@pytest.mark.parametrize("text,want", [
    ("2026-10-01", 1_790_812_800_000), ("2026-10-01T06:00", 1_790_834_400_000),
    ("2026-10-01T07:00:00+01:00", 1_790_834_400_000), ("2026-10-01T06:00:00Z", 1_790_834_400_000),
    ("now", NOW), ("now-2h", NOW - 2 * H)])
def test_parse_when(text: str, want: int) -> None:
    assert parse_when(text, NOW) == want


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "now+1d", "now-1y"])
def test_parse_when_names_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"2026-10-01|span like"):
        parse_when(text, NOW)


def test_spans_and_periods() -> None:
    assert parse_span("90m") == 90 * 60_000 and parse_span("2w") == 14 * 24 * H
    for bad in ("0d", "7", "d", "1.5h"):
        with pytest.raises(ValueError):
            parse_span(bad)
    assert resolve_period(None, None, None, NOW) == Period(NOW - 7 * 24 * H, NOW)
    assert resolve_period(None, "now-1h", "2h", NOW) == Period(NOW - 3 * H, NOW - H)
    assert resolve_period("now-5h", None, None, NOW) == Period(NOW - 5 * H, NOW)
    with pytest.raises(ValueError, match="either --last or --from"):
        resolve_period("now-5h", None, "2h", NOW)


def test_selection_narrows_queries_to_a_superset() -> None:
    from analysis.influx import kpi_query

    assert Selection().tag_filter("traffic") == {}
    both = Selection(districts=frozenset({"a"}), junctions=frozenset({"j"}))
    assert both.tag_filter("traffic") == {}  # junction OR district: filtered in Python
    assert both.tag_filter("water") == {"district": frozenset({"a"})}
    assert both.tag_filter("shuttle") == {"route": frozenset()}
    query = kpi_query("kpi", "water_kpi", 0, 1000, {"district": frozenset({"b", "a"})})
    assert '|> filter(fn: (r) => r.district == "a" or r.district == "b")' in query
    assert "range(start: time(v: 1000000), stop: time(v: 1001000000))" in query
