"""`citystream report`'s pure parts: period rules, per-entity figures, table, CSV, chart."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.chart import plot
from analysis.cli import parse_span, parse_when, resolve_period
from analysis.report import (
    Period,
    ReportRow,
    Selection,
    render_table,
    summarise,
    verdict,
    write_csv,
)
from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models import kinds
from models.feeds import FeedSpec
from models.kinds import PYTHON_KINDS
from models.records import Kpi

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


def read_csv(rows: list[ReportRow]) -> list[dict[str, str]]:
    """What `citystream report --csv` writes for `rows`, read back."""
    out = io.StringIO()
    write_csv(rows, out, PERIOD)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_csv_round_trips() -> None:
    rows = summarise([water(T0 + H, 50.0, 100.0), shuttle(T0 + H, 80.0)], PERIOD)
    parsed = read_csv(rows)
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


# -- declared feeds (CONTRACT section 5) ------------------------------------------------------

PARKING = FeedSpec.model_validate({
    "kind": "parking", "title": "Car parks", "window_s": 900, "entity": "car_park",
    "fields": {"car_park": {"type": "string"}, "occupied": {"type": "integer"},
               "capacity": {"type": "integer"}, "entries_total": {"type": "integer"},
               "queue_m": {"type": "number", "optional": True}},
    "kpis": [{"name": "occupancy_pct", "agg": "ratio_pct", "field": "occupied", "of": "capacity"},
             {"name": "entries", "agg": "delta", "field": "entries_total"},
             {"name": "readings", "agg": "count"},
             {"name": "sensors_reporting", "agg": "sensors"},
             {"name": "queue_max_m", "agg": "max", "field": "queue_m"},
             {"name": "queue_min_m", "agg": "min", "field": "queue_m"},
             {"name": "queue_mean_m", "agg": "mean", "field": "queue_m"}],
    "target": {"kpi": "occupancy_pct", "at_most": 85.0},
    "alerts": [{"rule": "full", "kpi": "occupancy_pct", "above": 95.0}],
})
NOISE = FeedSpec.model_validate({
    "kind": "noise", "title": "Noise", "window_s": 3600,
    "fields": {"laeq_db": {"type": "number"}},
    "kpis": [{"name": "quiet_pct", "agg": "share_between", "field": "laeq_db", "min": 0,
              "max": 55},
             {"name": "loud_readings", "agg": "count_above", "field": "laeq_db",
              "threshold": 65}],
    "target": {"kpi": "quiet_pct", "at_least": 80.0},
})


@pytest.fixture
def feeds() -> Iterator[None]:
    """PARKING and NOISE as the declared feeds of the city (the registry restored after)."""
    before = kinds.feeds()
    kinds.activate((PARKING, NOISE))
    yield
    kinds.activate(before)


def parking(end: int, occupancy: float | None, entries: float = 10.0, readings: int = 4,
            sensors: int = 2, queue: tuple[float, ...] = (), car_park: str = "cp-station",
            on_track: bool | None = None, window: str = "15m") -> Kpi:
    cls = kinds.record_types()["parking_kpi"]
    data: dict[str, object] = {
        "car_park": car_park, "window": window, "window_end_ms": end,
        "occupancy_pct": occupancy, "entries": entries, "readings": readings,
        "sensors_reporting": sensors, "on_track": on_track}
    if queue:
        data.update(queue_max_m=max(queue), queue_min_m=min(queue),
                    queue_mean_m=sum(queue) / len(queue))
    record = cls.model_validate(data)
    assert isinstance(record, Kpi)
    return record


def noise(end: int, quiet: float, loud: int = 0, district: str = "bletchley",
          on_track: bool | None = True) -> Kpi:
    record = kinds.record_types()["noise_kpi"].model_validate({
        "district": district, "window_end_ms": end, "quiet_pct": quiet, "loud_readings": loud,
        "on_track": on_track})
    assert isinstance(record, Kpi)
    return record


@pytest.mark.usefixtures("feeds")
def test_feed_kpis_over_the_period_one_row_each() -> None:
    rows = summarise([parking(T0 + 900_000, 70.0, entries=12.0, readings=4, sensors=2,
                              queue=(1.0, 5.0), on_track=True),
                      parking(T0 + 1_800_000, 90.0, entries=30.0, readings=6, sensors=3,
                              on_track=False),
                      parking(T0 + 2_700_000, None, entries=0.0, readings=1, sensors=1,
                              queue=(3.0, 9.0)),
                      parking(T0 + 3_600_000, 95.0, entries=8.0, readings=3, sensors=2)],
                     PERIOD)
    got = {r.kpi: r for r in rows}
    assert [r.kpi for r in rows] == [k.name for k in PARKING.kpis]
    assert {r.kind for r in rows} == {"parking"} and {r.entity for r in rows} == {"cp-station"}
    assert {r.windows for r in rows} == {4} and {r.district for r in rows} == {""}
    # the target KPI: the mean of the windows that have it, against at_most 85
    occupancy = got["occupancy_pct"]
    assert occupancy.period_agg == "mean" and occupancy.value == pytest.approx(85.0)
    assert occupancy.target == 85.0 and occupancy.target_rule == "at_most"
    assert occupancy.status == "on track" and occupancy.on_track is True
    assert occupancy.windows_on_track_pct == 50.0  # of the windows with on_track
    # totals for additive aggregations, integers kept integer
    assert got["entries"].period_agg == "sum" and got["entries"].value == 50.0
    assert got["readings"].value == 14 and isinstance(got["readings"].value, int)
    # the most sensors of any window; min of minima, max of maxima, mean of means
    assert got["sensors_reporting"].period_agg == "max" and got["sensors_reporting"].value == 3
    assert got["queue_max_m"].value == 9.0 and got["queue_min_m"].value == 1.0
    assert got["queue_mean_m"].value == pytest.approx((3.0 + 6.0) / 2)
    for name in ("entries", "readings", "queue_max_m"):
        assert got[name].status == "no target" and got[name].target is None
        assert got[name].windows_on_track_pct is None


@pytest.mark.usefixtures("feeds")
def test_feed_target_at_least_and_no_data() -> None:
    rows = summarise([noise(T0 + H, 90.0, loud=2), noise(T0 + 2 * H, 60.0, loud=1,
                                                         on_track=False),
                      noise(T0 + H, 85.0, district="wolverton")], PERIOD)
    by = {(r.entity, r.kpi): r for r in rows}
    assert by[("bletchley", "quiet_pct")].value == 75.0
    assert by[("bletchley", "quiet_pct")].status == "off track"
    assert by[("bletchley", "quiet_pct")].target_rule == "at_least"
    assert by[("bletchley", "quiet_pct")].district == "bletchley"
    assert by[("bletchley", "loud_readings")].value == 3
    assert by[("wolverton", "quiet_pct")].status == "on track"
    (empty,) = [r for r in summarise([parking(T0 + H, None)], PERIOD)
                if r.kpi == "occupancy_pct"]
    assert empty.value is None and empty.status == "no data" and empty.on_track is None
    assert "noise: 1 of 2 districts on track" in verdict(rows)


@pytest.mark.usefixtures("feeds")
def test_feed_selection() -> None:
    records = [water(T0 + H, 1.0, 2.0, district="bletchley"),
               parking(T0 + H, 50.0, car_park="cp-a"), parking(T0 + H, 60.0, car_park="cp-b"),
               parking(T0 + H, 60.0, car_park="cp-c", window="5m"),  # another series
               noise(T0 + H, 90.0, district="bletchley"), noise(T0 + H, 90.0,
                                                                district="wolverton")]

    def entities(selection: Selection) -> list[tuple[str, str]]:
        return sorted({(r.kind, r.entity) for r in summarise(records, PERIOD, selection)})

    assert entities(Selection()) == [("noise", "bletchley"), ("noise", "wolverton"),
                                     ("parking", "cp-a"), ("parking", "cp-b"),
                                     ("water", "bletchley")]
    assert entities(Selection(kinds=frozenset({"parking"}))) == [("parking", "cp-a"),
                                                                 ("parking", "cp-b")]
    assert entities(Selection(districts=frozenset({"bletchley"}))) == [
        ("noise", "bletchley"), ("water", "bletchley")]
    assert entities(Selection(entities=frozenset({"cp-b", "wolverton"}))) == [
        ("noise", "wolverton"), ("parking", "cp-b")]
    assert Selection().selected_kinds() == (*PYTHON_KINDS, "parking", "noise")
    assert Selection(kinds=frozenset({"noise", "water"})).selected_kinds() == ("water", "noise")
    assert Selection().tag_filter("parking") == {"window": frozenset({"15m"})}
    assert Selection(districts=frozenset({"a"}), entities=frozenset({"b"})).tag_filter(
        "noise") == {"window": frozenset({"1h"}), "district": frozenset({"a", "b"})}
    assert Selection(districts=frozenset({"a"})).tag_filter("parking") == {
        "window": frozenset({"15m"}), "car_park": frozenset()}


@pytest.mark.usefixtures("feeds")
def test_feed_table_csv_and_chart(tmp_path: Path) -> None:
    rows = summarise([water(T0 + H, 50.0, 100.0),
                      parking(T0 + H, 70.0, car_park="cp-a", on_track=True),
                      parking(T0 + H, 99.5, car_park="cp-b", queue=(0.25, 0.5)),
                      noise(T0 + H, 90.0)], PERIOD)
    text = render_table(rows, PERIOD)
    assert "Car parks (parking, per car_park, 15m windows): target occupancy_pct at most 85" \
        in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("car_park "))
    for column in ("windows", "occupancy_pct", "entries (sum)", "readings (sum)",
                   "sensors_reporting (max)", "queue_min_m (min)", "status"):
        assert column in header
    cp_b = next(line for line in lines if line.startswith("cp-b "))
    assert "99.5" in cp_b and "✗ off track" in cp_b and "0.25" in cp_b
    assert "parking: 1 of 2 car parks on track" in lines
    assert "noise: 1 of 1 districts on track" in lines

    parsed = read_csv(rows)
    assert [(r["kind"], r["entity"], r["kpi"]) for r in parsed][:3] == [
        ("water", "bletchley", ""), ("parking", "cp-a", "occupancy_pct"),
        ("parking", "cp-a", "entries")]
    occupancy = next(r for r in parsed if r["entity"] == "cp-b" and r["kpi"] == "occupancy_pct")
    assert float(occupancy["value"]) == 99.5 and occupancy["status"] == "off track"
    assert occupancy["target"] == "85.0" and occupancy["target_rule"] == "at_most"
    assert occupancy["period_agg"] == "mean"
    readings = next(r for r in parsed if r["entity"] == "cp-b" and r["kpi"] == "readings")
    assert readings["value"] == "4" and readings["period_agg"] == "sum"
    assert readings["target"] == "" and readings["status"] == "no target"

    out = tmp_path / "feeds.png"
    plot(rows, PERIOD, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot([r for r in rows if r.kind == "parking"], PERIOD, out)


def test_kpi_query_escapes_names() -> None:
    from analysis.influx import kpi_query

    query = kpi_query('k"pi', "car_park_kpi", 0, 1000,
                      {"car_park": frozenset({'cp"1\\${x}'}), "window": frozenset({"15m"})})
    assert 'from(bucket: "k\\"pi")' in query
    assert 'r.car_park == "cp\\"1\\\\\\${x}"' in query
    assert '|> filter(fn: (r) => r.window == "15m")' in query
    with pytest.raises(ValueError, match="not a tag name"):
        kpi_query("kpi", "x_kpi", 0, 1000, {"a) or (true": frozenset({"b"})})


# -- the command, with a fake reader ----------------------------------------------------------

NOISE_TOML = '''
[[feeds]]
kind = "noise"
title = "Noise"
window_s = 3600

[feeds.fields]
laeq_db = { type = "number" }

[[feeds.kpis]]
name = "quiet_pct"
agg = "share_between"
field = "laeq_db"
min = 0
max = 55

[[feeds.kpis]]
name = "loud_readings"
agg = "count_above"
field = "laeq_db"
threshold = 65

[feeds.target]
kpi = "quiet_pct"
at_least = 80.0
'''


class FakeReader:
    """Answers `records` from a list, as `KpiReader` would from InfluxDB (tag filter applied),
    and remembers what was asked."""

    def __init__(self, records: list[Kpi]) -> None:
        self.stored = records
        self.asked: list[tuple[str, dict[str, frozenset[str]]]] = []

    def records(self, cls: type[Kpi], start_ms: int, stop_ms: int,
                where: dict[str, frozenset[str]] | None = None) -> list[Kpi]:
        self.asked.append((cls.measurement, dict(where or {})))
        return [r for r in self.stored if r.measurement == cls.measurement
                and start_ms < r.time_ms <= stop_ms
                and all(r.tags()[tag] in values for tag, values in (where or {}).items())]


@pytest.fixture
def city_with_noise(tmp_path: Path) -> Iterator[Path]:
    """A city file: the shipped one plus a `noise` feed (the registry restored after)."""
    from models.city import DEFAULT_CITY_FILE

    before = kinds.feeds()
    path = tmp_path / "city.toml"
    path.write_text(DEFAULT_CITY_FILE.read_text(encoding="utf-8") + NOISE_TOML, encoding="utf-8")
    yield path
    kinds.activate(before)


def run_report(monkeypatch: pytest.MonkeyPatch, reader: FakeReader,
               *args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from analysis import cli

    monkeypatch.setattr(cli, "_reader", lambda: reader)
    monkeypatch.delenv("CITYSTREAM_CITY__FILE", raising=False)
    result = CliRunner().invoke(cli.report, ["--from", "2026-09-21T14:00", "--to",
                                             "2026-09-21T16:00", *args])
    return result.exit_code, result.stdout, result.stderr


def test_report_command_covers_the_city_feeds(monkeypatch: pytest.MonkeyPatch,
                                             city_with_noise: Path) -> None:
    reader = FakeReader([])
    code, _, err = run_report(monkeypatch, reader, "--city", str(city_with_noise))
    assert code == 0, err
    assert [m for m, _ in reader.asked] == [
        "water_kpi", "energy_kpi", "traffic_kpi", "shuttle_kpi", "air_quality_kpi",
        "car_park_kpi", "bus_occupancy_kpi", "noise_kpi"]

    reader = FakeReader([noise(T0 + H, 60.0), noise(T0 + 2 * H, 70.0, district="wolverton"),
                         water(T0 + H, 1.0, 2.0)])
    code, out, err = run_report(monkeypatch, reader, "--city", str(city_with_noise),
                                "--kind", "noise", "--district", "bletchley", "--exit-code")
    assert code == 3, err  # bletchley's quiet_pct 60 is below the 80 it must reach
    assert reader.asked == [("noise_kpi", {"window": frozenset({"1h"}),
                                           "district": frozenset({"bletchley"})})]
    assert "Noise (noise, per district, 1h windows): target quiet_pct at least 80" in out
    assert "noise: 0 of 1 districts on track" in out and "wolverton" not in out

    code, out, err = run_report(monkeypatch, FakeReader([noise(T0 + H, 90.0)]), "--city",
                                str(city_with_noise), "--kind", "noise", "--csv", "-")
    assert code == 0, err
    assert [(r["kind"], r["entity"], r["kpi"], r["value"], r["status"])
            for r in csv.DictReader(io.StringIO(out))] == [
        ("noise", "bletchley", "quiet_pct", "90.0", "on track"),
        ("noise", "bletchley", "loud_readings", "0", "no target")]


def test_report_kind_choices_come_from_the_city(monkeypatch: pytest.MonkeyPatch,
                                               city_with_noise: Path) -> None:
    code, _, err = run_report(monkeypatch, FakeReader([]), "--kind", "noise")
    assert code == 2  # the shipped city declares no noise feed
    assert "'noise' is not a kind of this city; choose from water, energy, traffic, " \
           "shuttle, air_quality, car_park, bus_occupancy" in err
    code, _, err = run_report(monkeypatch, FakeReader([]), "--city", str(city_with_noise),
                              "--kind", "noise", "--kind", "car_park")
    assert code == 0, err
    bad = city_with_noise.with_name("bad.toml")
    bad.write_text(city_with_noise.read_text().replace('window_s = 3600\n\n[feeds.fields]\n'
                                                       'laeq_db', 'window_s = 7000\n\n'
                                                       '[feeds.fields]\nlaeq_db'))
    code, _, err = run_report(monkeypatch, FakeReader([]), "--city", str(bad))
    assert code == 2 and "(noise).window_s: 7000 does not divide a day" in err
