"""`citystream report` and `citystream baseline learn`: the analysts' commands."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click

from analysis.influx import KpiReader, ReadError
from analysis.report import Kind, Period, Selection
from models import kinds as registry
from models.city import ID_PATTERN, SLUG_PATTERN
from models.kinds import PYTHON_KINDS
from models.settings import ConfigError, QualitySettings, Settings

log = logging.getLogger(__name__)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def parse_span(text: str) -> int:
    """`7d`, `12h`, `2w`, `90m` -> milliseconds."""
    text = text.strip()
    if len(text) < 2 or text[-1] not in _UNITS or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise ValueError(f"{text!r} is not a span like 90m, 12h, 7d or 4w")
    return int(text[:-1]) * _UNITS[text[-1]] * 1000


def parse_when(text: str, now_ms: int) -> int:
    """Epoch ms from `2026-10-01` (midnight UTC), `2026-10-01T06:00` (UTC unless an offset is
    given), `2026-10-01T06:00:00+01:00`, `now` or `now-7d`."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("now-"):
        return now_ms - parse_span(text[4:])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date or time like 2026-10-01, 2026-10-01T06:00, "
                         "2026-10-01T06:00:00Z or now-7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def resolve_period(start: str | None, stop: str | None, last: str | None,
                   now_ms: int, default_last: str = "7d") -> Period:
    """The period from --from/--to or --last (windows ending in (start, stop])."""
    if last and start:
        raise ValueError("give either --last or --from, not both")
    stop_ms = parse_when(stop, now_ms) if stop else now_ms
    if start:
        return Period(parse_when(start, now_ms), stop_ms)
    return Period(stop_ms - parse_span(last or default_last), stop_ms)


def _ids(kind: str, pattern: str) -> Callable[[click.Context, click.Parameter,
                                               tuple[str, ...]], tuple[str, ...]]:
    """A click callback refusing ids that break `pattern` (they go into a Flux query)."""
    def check(_ctx: click.Context, _param: click.Parameter,
              values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not re.fullmatch(pattern, value):
                raise click.BadParameter(f"{value!r} is not a {kind} ({pattern})")
        return values
    return check


def _period(start: str | None, stop: str | None, last: str | None) -> Period:
    try:
        return resolve_period(start, stop, last, int(time.time() * 1000))
    except ValueError as exc:
        _fail(str(exc))


def _reader() -> KpiReader:
    try:
        return KpiReader(Settings.load().influx)
    except (ConfigError, ReadError) as exc:
        _fail(str(exc))


period_options = [
    click.option("--from", "start", metavar="WHEN",
                 help="Period start: 2026-10-01 (midnight UTC), 2026-10-01T06:00 (UTC), "
                      "an RFC 3339 time with offset, or now-7d."),
    click.option("--to", "stop", metavar="WHEN", help="Period end (same forms) [default: now]."),
    click.option("--last", metavar="SPAN",
                 help="The SPAN before --to (or now): 90m, 12h, 7d, 4w."),
]


def _with_period(fn: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(period_options):
        fn = option(fn)
    return fn


def _load_city(_ctx: click.Context, _param: click.Parameter, path: Path | None) -> Path | None:
    """Load the city file first (the option is eager): its declared feeds become registered
    kinds, which `--kind` accepts and the report covers."""
    from models.city import load_city
    from models.errors import CityModelError

    try:
        load_city(path)
    except CityModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    return path


class KindType(click.ParamType):
    """A registered kind: built-in or declared in the city file loaded by `--city` (read when
    the value is converted, so the choices are the city's)."""

    name = "kind"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "KIND"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        names = registry.names()
        if not isinstance(value, str) or value not in names:
            self.fail(f"{value!r} is not a kind of this city; choose from {', '.join(names)}",
                      param, ctx)
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter,
                       incomplete: str) -> list[click.shell_completion.CompletionItem]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(k) for k in registry.names() if k.startswith(incomplete)]


@click.command(context_settings=CONTEXT)
@_with_period
@click.option("--city", "city_file", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
              envvar="CITYSTREAM_CITY__FILE", show_envvar=True, is_eager=True,
              callback=_load_city,
              help="The city file whose declared feeds are reported besides the built-in "
                   "kinds [default: the Milton Keynes example].")
@click.option("--district", "districts", multiple=True, metavar="SLUG",
              callback=_ids("district slug", SLUG_PATTERN),
              help="Only this district (its water, energy, junctions and the figures of "
                   "feeds per district); repeatable.")
@click.option("--junction", "junctions", multiple=True, metavar="ID",
              callback=_ids("junction id", ID_PATTERN),
              help="Only this junction; repeatable.")
@click.option("--route", "routes", multiple=True, metavar="ID",
              callback=_ids("route id", ID_PATTERN),
              help="Only this shuttle route; repeatable.")
@click.option("--entity", "entities", multiple=True, metavar="ID",
              callback=_ids("feed entity", ID_PATTERN),
              help="Only this entity of the declared feeds (a car park, a bus route, a "
                   "district ...); repeatable.")
@click.option("--kind", "kinds", multiple=True, type=KindType(),
              help=f"Only these kinds: {', '.join(PYTHON_KINDS)} or a feed kind of the city file; "
                   "repeatable [default: all].")
@click.option("--csv", "csv_path", metavar="PATH",
              help="Also write the rows as CSV to PATH ('-' for stdout instead of the table).")
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw the figures against their targets as a PNG chart.")
@click.option("--exit-code", is_flag=True,
              help="Exit with status 3 when a selected district, junction or feed entity is "
                   "off track (for scripts and cron).")
@click.option("--quality", is_flag=True,
              help="Also each sensor's data quality (sensor_quality): a summary of the sensors "
                   "needing attention, the worst by name; with --csv PATH, every sensor in "
                   "PATH-quality.csv. --kind and --district narrow it.")
@click.option("--min-score", type=click.FloatRange(0, 100), metavar="SCORE",
              default=QualitySettings.model_fields["min_score"].default,
              envvar="CITYSTREAM_QUALITY__MIN_SCORE", show_envvar=True, show_default=True,
              help="With --quality: a sensor whose mean hourly score is below SCORE needs "
                   "attention (as does one with rejected readings or stuck).")
def report(start: str | None, stop: str | None, last: str | None, city_file: Path | None,
           districts: tuple[str, ...], junctions: tuple[str, ...], routes: tuple[str, ...],
           entities: tuple[str, ...], kinds: tuple[Kind, ...], csv_path: str | None,
           png_path: Path | None, exit_code: bool, quality: bool, min_score: float) -> None:
    """Are we on track? Savings and congestion against target for a period, from InfluxDB.

    For each district (water, energy) the period's saving = 100 x (1 - use / baseline), for
    each junction the congestion reduction against its baseline, each against its target and
    marked on or off track, with the share of windows whose rolling 24 h figure was on track;
    for each shuttle route its occupancy, punctuality, availability and battery. For each feed
    declared in the city file, per entity, each KPI over the period (the mean of the windows'
    values; totals for count, count_above, sum, delta and increase KPIs, the maximum for
    sensors) and its target KPI's mean against the target. A window belongs to the period when
    its end lies in (--from, --to]. Default period: the last 7 days. With --quality, also each
    sensor's data quality over the period (its hourly sensor_quality points): the sensors
    needing attention (mean score below --min-score, rejected readings, or stuck) and why.

    \b
    Examples:
      citystream report --last 7d
      citystream report --from 2026-10-01 --to 2026-11-01 --district bletchley
      citystream report --last 30d --kind water --csv water.csv --png water.png
      citystream report --last 7d --kind car_park --entity cp-station
      citystream report --last 24h --csv - | column -s, -t
      citystream report --last 7d --quality --csv week.csv   # and week-quality.csv

    Reads InfluxDB with CITYSTREAM_INFLUX__URL, __ORG, __TOKEN and __BUCKET_KPI (against the
    local stack: eval "$(citystream env)"). Exit status 1 when InfluxDB cannot be read.
    """
    from analysis.quality import (
        QualityRow,
        quality_csv_path,
        render_quality,
        summarise_quality,
        write_quality_csv,
    )
    from analysis.report import render_table, summarise, write_csv
    from models.records import Kpi

    period = _period(start, stop, last)
    selection = Selection(frozenset(kinds), frozenset(districts), frozenset(junctions),
                          frozenset(routes), frozenset(entities))
    reader = _reader()
    records: list[Kpi] = []
    try:
        for spec in registry.specs():
            if spec.name in selection.selected_kinds():
                records += reader.records(spec.kpi_type, period.start_ms, period.stop_ms,
                                          selection.tag_filter(spec.name))
    except ReadError as exc:
        _fail(str(exc))
    rows = summarise(records, period, selection)
    sensors: list[QualityRow] = []
    if quality:
        where = {"kind": selection.kinds, "district": selection.districts}
        try:
            sensors = summarise_quality(reader.sensor_quality(
                period.start_ms, period.stop_ms, min_score,
                {tag: values for tag, values in where.items() if values}), min_score)
        except ReadError as exc:
            _fail(str(exc))
    if csv_path == "-":
        write_csv(rows, sys.stdout, period)
    else:
        click.echo(render_table(rows, period), nl=False)
        if csv_path:
            with open(csv_path, "w", encoding="utf-8", newline="") as out:
                write_csv(rows, out, period)
            click.echo(f"wrote {csv_path}", err=True)
    if quality:
        quality_path = str(quality_csv_path(csv_path)) if csv_path and csv_path != "-" else None
        click.echo("\n" + render_quality(sensors, min_score, quality_path), nl=False,
                   err=csv_path == "-")
        if quality_path:
            with open(quality_path, "w", encoding="utf-8", newline="") as out:
                write_quality_csv(sensors, out, period)
            click.echo(f"wrote {quality_path}", err=True)
    if png_path:
        from analysis.chart import plot

        try:
            plot(rows, period, png_path)
        except ValueError as exc:
            _fail(str(exc))
        click.echo(f"wrote {png_path}", err=True)
    if exit_code and any(r.status == "off track" for r in rows):
        sys.exit(3)


@click.group(context_settings=CONTEXT)
def baseline() -> None:
    """Hour-of-week baselines of the city model file."""


@baseline.command(context_settings=CONTEXT)
@_with_period
@click.option("--city", "city_file", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
              envvar="CITYSTREAM_CITY__FILE", show_envvar=True,
              help="The city file to start from: names, targets and every value without data "
                   "are kept [default: the Milton Keynes example].")
@click.option("--out", "out", default="-", show_default=True, metavar="FILE",
              help="Where to write the new city file ('-' = stdout).")
def learn(start: str | None, stop: str | None, last: str | None, city_file: Path | None,
          out: str) -> None:
    """Learn hour-of-week baselines from a past period of KPI windows in InfluxDB.

    For each district, `water_baseline_l_h` and `energy_baseline_kwh_h` become the litres and
    kWh per hour its windows used in each hour of the week (UTC, Monday 00:00 = 0), averaged
    over the period; for each junction, `congestion_baseline` the mean congestion index of its
    windows with traffic. Hours of the week with no data keep the city file's value (listed on
    stderr). Pick a period before a savings programme started and at least a few whole weeks
    long: a baseline learned while savings already show moves the goal posts. The result is
    validated by loading it back as a city model before it is written.

    \b
    Example:
      citystream baseline learn --from 2026-09-01 --to 2026-10-27 --out city-learned.toml

    Reads InfluxDB with CITYSTREAM_INFLUX__URL, __ORG, __TOKEN and __BUCKET_KPI.
    """
    from analysis.baseline import learn as learn_baselines
    from kinds.energy import EnergyKpi
    from kinds.traffic import TrafficKpi
    from kinds.water import WaterKpi
    from models.city import dump_city, load_city, parse_city
    from models.errors import CityModelError

    period = _period(start, stop, last)
    try:
        city = load_city(city_file)
    except CityModelError as exc:
        _fail(str(exc))
    reader = _reader()
    try:
        water = reader.records(WaterKpi, period.start_ms, period.stop_ms)
        energy = reader.records(EnergyKpi, period.start_ms, period.stop_ms)
        traffic = reader.records(TrafficKpi, period.start_ms, period.stop_ms)
    except ReadError as exc:
        _fail(str(exc))
    result = learn_baselines(city, water, energy, traffic)
    source = city_file or "the Milton Keynes example (models/cities/milton-keynes.toml)"
    text = dump_city(result.city, (
        f"{city.name}: baselines learned by `citystream baseline learn` from the kpi windows "
        f"ending in ({period.describe()}];",
        f"everything else, and every hour without data, from {source}.",
        "Baselines are hour-of-week (UTC, Monday 00:00 = index 0)."))
    if parse_city(text, "the learned city") != result.city:
        _fail("the learned city file does not read back as written (a bug): nothing written")
    if (period.stop_ms - period.start_ms) < 7 * 86_400_000:
        click.echo("warning: the period is shorter than a week, so some hours of the week "
                   "cannot be learned", err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"learned {result.learned_hours} hour values from {len(water)} water, "
               f"{len(energy)} energy and {len(traffic)} traffic windows; kept "
               f"{result.kept_hours}", err=True)
    if out == "-":
        click.echo(text, nl=False)
        return
    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        check = load_city(tmp)
    except CityModelError as exc:
        tmp.unlink()
        _fail(f"the written file does not load: {exc}")
    if check != result.city:
        tmp.unlink()
        _fail("the written file does not load back equal (a bug): nothing written")
    tmp.replace(path)
    click.echo(f"wrote {path}", err=True)
