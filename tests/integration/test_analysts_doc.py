"""Every query in docs/analysts.md, run against a real InfluxDB holding seeded KPI points, must
answer what this test computes from the same points by itself.

The queries are read from the markdown (```flux <id> / ```sql <id> blocks), so the page cannot
drift from what is tested. Flux queries run with `now()` pinned to NOW (InfluxQL queries use
absolute dates, as the page explains); the seeded period is September 30 to NOW, in buckets
made for this test with the same provisioning as `citystream up` (InfluxQL mappings included).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import fmean
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from deploy.local.stack import Stack
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.records import Alert, Record
from tests.flux_vocabulary import check
from tests.integration import kpi_seed
from tests.integration.influx import HOUR_MS, Influx, influx_for_test

pytestmark = pytest.mark.influxdb

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"
BLOCK = re.compile(r"^```(flux|sql) ([a-z0-9-]+)\n(.*?)^```", re.M | re.S)
LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


NOW_MS = ms(NOW)
DAY_MS = 24 * HOUR_MS


def doc_queries() -> dict[str, tuple[str, str]]:
    """id -> (language, query) for every tagged code block of the page."""
    found: dict[str, tuple[str, str]] = {}
    for lang, ident, body in BLOCK.findall(DOC.read_text()):
        assert ident not in found, f"query id {ident} used twice"
        found[ident] = (lang, body)
    return found


def utc(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def local(ts_ms: int) -> datetime:
    return utc(ts_ms).astimezone(LONDON)


def leak_alerts() -> list[Alert]:
    at = lambda text: ms(datetime.fromisoformat(text))  # noqa: E731
    return [
        kpi_seed.alert("bletchley", "leak", at("2026-10-10T03:00:00+00:00"), True),
        kpi_seed.alert("bletchley", "leak", at("2026-10-11T03:00:00+00:00"), False),
        kpi_seed.alert("bletchley", "leak", at("2026-10-20T03:00:00+00:00"), True, value=910.0),
        kpi_seed.alert("bletchley", "leak", at("2026-10-22T03:00:00+00:00"), False, value=300.0),
        kpi_seed.alert("central-mk", "leak", at("2026-11-02T04:00:00+00:00"), True, value=1500.0,
                       threshold=1000.0),
        kpi_seed.alert("central-mk", "leak", at("2026-11-05T04:00:00+00:00"), False, value=800.0,
                       threshold=1000.0),
        kpi_seed.alert("central-mk", "leak", at("2026-11-12T04:00:00+00:00"), True, value=1700.0,
                       threshold=1000.0),
        kpi_seed.alert("central-mk", "off_track", at("2026-11-01T10:00:00+00:00"), True),
    ]


def hourly_water(records: list[Record]) -> list[WaterKpi]:
    """What the roll-up task writes for water: sums per district and hour (its own test checks
    the task; here the point is the query over kpi_1h)."""
    groups: dict[tuple[str, int], list[WaterKpi]] = defaultdict(list)
    for r in records:
        if isinstance(r, WaterKpi):
            groups[(r.district, (r.window_end_ms - 1) // HOUR_MS * HOUR_MS + HOUR_MS)].append(r)
    out = []
    for (district, end), rows in groups.items():
        used, base = sum(r.consumption_l for r in rows), sum(r.baseline_l for r in rows)
        out.append(WaterKpi(district=district, window="1h", window_end_ms=end, consumption_l=used,
                            baseline_l=base, saving_pct=100 * (1 - used / base),
                            saving_pct_24h=rows[-1].saving_pct_24h, on_track=rows[-1].on_track,
                            meters_reporting=max(r.meters_reporting for r in rows)))
    return out


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Iterator[tuple[Influx, list[Record]]]:
    stack.ensure("influxdb")
    influx = influx_for_test(stack, kpi_retention_s=0)
    records = kpi_seed.kpi_records(ms(datetime(2026, 9, 30, 18, tzinfo=UTC)), NOW_MS, seed=7)
    records += leak_alerts()
    for i in range(0, len(records), 5000):
        influx.write(influx.kpi, records[i:i + 5000])
    influx.write(influx.plan.kpi_1h.name, hourly_water(records))
    yield influx, records
    influx.admin.call("DELETE", f"/api/v2/tasks/{influx.task_id}")


def run(influx: Influx, ident: str) -> list[dict[str, Any]]:
    lang, query = doc_queries()[ident]
    if lang == "sql":
        return influx.influxql(influx.kpi, query)
    query = (query.replace('bucket: "kpi_1h"', f'bucket: "{influx.plan.kpi_1h.name}"')
             .replace('bucket: "kpi"', f'bucket: "{influx.kpi}"'))
    imports = re.match(r"(?:import [^\n]*\n|\n)*", query)
    head = imports.group(0) if imports else ""
    pinned = f"option now = () => {NOW.isoformat().replace('+00:00', 'Z')}\n"
    return influx.flux(head + pinned + query[len(head):])


def of(records: list[Record], cls: type[Record], start_ms: int, stop_ms: int,
       stop_inclusive: bool = False) -> list[Any]:
    """Records of a type in [start, stop) (or (start, stop] for window semantics)."""
    if stop_inclusive:
        return [r for r in records if isinstance(r, cls) and start_ms < r.time_ms <= stop_ms]
    return [r for r in records if isinstance(r, cls) and start_ms <= r.time_ms < stop_ms]


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


# -- expectations, one per query id ------------------------------------------------------------


def _october_savings(records: list[Record]) -> list[tuple[str, float, float, float]]:
    october = of(records, WaterKpi, ms(datetime(2026, 10, 1, tzinfo=UTC)),
                 ms(datetime(2026, 11, 1, tzinfo=UTC)), stop_inclusive=True)
    assert len(october) == 31 * 96 * 2
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in october:
        sums[r.district][0] += r.consumption_l
        sums[r.district][1] += r.baseline_l
    rows = [(d, 100 * (1 - used / base), used, base) for d, (used, base) in sums.items()]
    return sorted(rows, key=lambda row: -row[1])


def check_savings_by_district(got: list[dict[str, Any]], records: list[Record]) -> None:
    want = _october_savings(records)
    assert [r["district"] for r in got] == [w[0] for w in want]
    for row, (_, saving, used, base) in zip(got, want, strict=True):
        assert row["saving_pct"] == approx(saving)
        assert (row["consumption_l"], row["baseline_l"]) == (approx(used), approx(base))


def check_savings_by_district_influxql(got: list[dict[str, Any]], records: list[Record]) -> None:
    want = {w[0]: w[1:] for w in _october_savings(records)}
    assert {r["district"] for r in got} == set(want)
    for row in got:
        saving, used, base = want[row["district"]]
        assert row["saving_pct"] == approx(saving)
        assert (row["consumption_l"], row["baseline_l"]) == (approx(used), approx(base))


def _junction_means(rows: list[TrafficKpi]) -> dict[str, tuple[float, float]]:
    by: dict[str, list[TrafficKpi]] = defaultdict(list)
    for r in rows:
        by[r.junction].append(r)
    return {j: (fmean(r.congestion_index or 0.0 for r in rs),
                fmean(r.baseline_congestion_index or 0.0 for r in rs)) for j, rs in by.items()}


def check_worst_junctions_am_peak(got: list[dict[str, Any]], records: list[Record]) -> None:
    hours: dict[tuple[str, datetime], list[TrafficKpi]] = defaultdict(list)
    for r in of(records, TrafficKpi, NOW_MS - 28 * DAY_MS, NOW_MS):
        start = local(r.window_end_ms - 300_000)
        if 7 <= start.hour < 10 and start.weekday() < 5:
            hours[(r.junction, start.replace(minute=0))].append(r)
    assert len(hours) == 20 * 3 * 2  # 20 weekdays x 3 hours x 2 junctions
    hourly = {key: _junction_means(rows)[key[0]] for key, rows in hours.items()}
    means = {j: (fmean(v[0] for k, v in hourly.items() if k[0] == j),
                 fmean(v[1] for k, v in hourly.items() if k[0] == j))
             for j in kpi_seed.JUNCTIONS}
    order = sorted(means, key=lambda j: -means[j][0])
    assert [r["junction"] for r in got] == order
    for row in got:
        index, base = means[row["junction"]]
        assert row["district"] == kpi_seed.JUNCTIONS[row["junction"]]
        assert row["congestion_index"] == approx(index)
        assert row["baseline_congestion_index"] == approx(base)
        assert row["reduction_pct"] == approx(100 * (1 - index / base))


def check_worst_junctions_am_peak_influxql(got: list[dict[str, Any]],
                                           records: list[Record]) -> None:
    start = datetime(2026, 10, 14, 6, tzinfo=UTC)
    rows = of(records, TrafficKpi, ms(start), ms(start + timedelta(hours=3)), stop_inclusive=True)
    assert all(local(r.window_end_ms - 300_000).hour in (7, 8, 9) for r in rows)
    means = _junction_means(rows)
    assert {r["junction"]: (approx(r["congestion_index"]), approx(r["baseline_congestion_index"]))
            for r in got} == means


def check_punctuality_by_hour(got: list[dict[str, Any]], records: list[Record]) -> None:
    by: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in of(records, ShuttleKpi, NOW_MS - 7 * DAY_MS, NOW_MS):
        by[(r.route, local(r.window_end_ms - 900_000).hour)].append(r.on_time_pct or 0.0)
    want = {key: fmean(values) for key, values in by.items()}
    assert len(want) == 24
    assert [(r["route"], r["hour"]) for r in got] == sorted(want)
    for row in got:
        assert row["_value"] == approx(want[(row["route"], row["hour"])])


def check_punctuality_by_hour_influxql(got: list[dict[str, Any]],
                                       records: list[Record]) -> None:
    day = datetime(2026, 11, 14, tzinfo=UTC)
    by: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in of(records, ShuttleKpi, ms(day), ms(day + timedelta(days=1)), stop_inclusive=True):
        hour_start = (r.window_end_ms - 1) // HOUR_MS * HOUR_MS
        by[(r.route, hour_start + 1)].append(r.on_time_pct or 0.0)
    assert len(by) == 24
    assert {(r["route"], r["time"]): approx(r["on_time_pct"]) for r in got} == {
        key: fmean(values) for key, values in by.items()}


def _leaks_since(records: list[Record], start_ms: int) -> list[Alert]:
    return sorted((r for r in records if isinstance(r, Alert) and r.rule == "leak" and r.active
                   and start_ms <= r.ts_ms < NOW_MS), key=lambda a: a.ts_ms)


def check_leaks(got: list[dict[str, Any]], records: list[Record]) -> None:
    want = _leaks_since(records, NOW_MS - 30 * DAY_MS)
    assert len(want) == 3
    assert [(ms(r["_time"]), r["entity"], r["value"], r["threshold"], r["message"])
            for r in got] == [(a.ts_ms, a.entity, a.value, a.threshold, a.message) for a in want]


def check_leaks_influxql(got: list[dict[str, Any]], records: list[Record]) -> None:
    want = _leaks_since(records, ms(datetime(2026, 10, 16, 12, tzinfo=UTC)))
    assert [(r["time"], r["entity"], r["value"], r["threshold"], r["message"])
            for r in got] == [(a.ts_ms, a.entity, a.value, a.threshold, a.message) for a in want]


def check_leak_episodes(got: list[dict[str, Any]], records: list[Record]) -> None:
    leaks = sorted((r for r in records if isinstance(r, Alert) and r.rule == "leak"
                    and NOW_MS - 30 * DAY_MS <= r.ts_ms < NOW_MS), key=lambda a: a.ts_ms)
    want = []
    for entity in {a.entity for a in leaks}:
        mine = [a for a in leaks if a.entity == entity]
        want += [(b.ts_ms, entity, (b.ts_ms - a.ts_ms) // HOUR_MS)
                 for a, b in itertools.pairwise(mine) if a.active and not b.active]
    assert len(want) == 2
    assert [(ms(r["cleared"]), r["entity"], r["hours"]) for r in got] == sorted(want)


def check_on_track_share(got: list[dict[str, Any]], records: list[Record]) -> None:
    by: dict[str, list[float]] = defaultdict(list)
    for r in of(records, WaterKpi, NOW_MS - 30 * DAY_MS, NOW_MS):
        by[r.district].append(100.0 if r.on_track else 0.0)
    want = {d: fmean(v) for d, v in by.items()}
    assert [r["district"] for r in got] == sorted(want, key=lambda d: want[d])
    assert {r["district"]: approx(r["_value"]) for r in got} == want


def _last_days(n: int) -> tuple[int, int]:
    """The span of the last n complete London days before NOW, in epoch ms."""
    today = NOW.astimezone(LONDON).date()
    return _midnight_ms(today - timedelta(days=n)), _midnight_ms(today)


def _day_of(window_end_ms: int) -> date:
    return local(window_end_ms - 1).date()


def _midnight_ms(day: date) -> int:
    return ms(datetime.combine(day, datetime.min.time(), LONDON))


def check_daily_peak_demand(got: list[dict[str, Any]], records: list[Record]) -> None:
    start, stop = _last_days(7)
    peaks: dict[tuple[str, int], float] = {}
    for r in records:
        if r.measurement == "energy_kpi" and start < r.time_ms <= stop:
            key = (r.tags()["district"], _midnight_ms(_day_of(r.time_ms)))
            peaks[key] = max(peaks.get(key, 0.0), float(r.fields()["peak_kw"]))
    assert len(peaks) == 7 * 2
    assert {(r["district"], ms(r["_time"])): r["_value"] for r in got} == peaks


def check_daily_peak_demand_influxql(got: list[dict[str, Any]], records: list[Record]) -> None:
    start, stop = datetime(2026, 11, 8, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)
    peaks: dict[tuple[str, int], float] = {}
    for r in records:
        if r.measurement == "energy_kpi" and ms(start) < r.time_ms <= ms(stop):
            key = (r.tags()["district"], _midnight_ms(_day_of(r.time_ms)) + 1)
            peaks[key] = max(peaks.get(key, 0.0), float(r.fields()["peak_kw"]))
    assert len(peaks) == 7 * 2
    assert {(r["district"], r["time"]): r["peak_kw"] for r in got} == peaks


def check_daily_saving_rollup(got: list[dict[str, Any]], records: list[Record]) -> None:
    start, stop = _last_days(7)
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in of(records, WaterKpi, start, stop, stop_inclusive=True):
        key = (r.district, _midnight_ms(_day_of(r.window_end_ms)))
        sums[key][0] += r.consumption_l
        sums[key][1] += r.baseline_l
    want = {k: 100 * (1 - used / base) for k, (used, base) in sums.items()}
    assert len(want) == 7 * 2
    assert {(r["district"], ms(r["_time"])): approx(r["saving_pct"]) for r in got} == want


CHECKS: dict[str, Callable[[list[dict[str, Any]], list[Record]], None]] = {
    name.removeprefix("check_").replace("_", "-"): fn
    for name, fn in globals().items() if name.startswith("check_") and callable(fn)}


def test_every_query_on_the_page_is_checked() -> None:
    assert set(doc_queries()) == set(CHECKS)
    assert {lang for lang, _ in doc_queries().values()} == {"flux", "sql"}


@pytest.mark.parametrize("ident", sorted(i for i, (lang, _) in doc_queries().items()
                                         if lang == "flux"))
def test_flux_names_contract_schema(ident: str) -> None:
    assert check(doc_queries()[ident][1]) == []


@pytest.mark.parametrize("ident", sorted(doc_queries()))
def test_query_answers(seeded: tuple[Influx, list[Record]], ident: str) -> None:
    influx, records = seeded
    got = run(influx, ident)
    assert got, f"{ident}: no rows"
    CHECKS[ident](got, records)
