"""What the browser receives: the city model joined with the newest InfluxDB points.

`build_snapshot` is pure: given the city, the rows of `latest_query` and `alerts_query` and the
InfluxDB status, it lists every district, junction and route of the city file (with `None` where
InfluxDB has no point yet, so the page can say "no data yet for Bletchley"), then any entity
InfluxDB knows that the city file does not (`in_city` false), one `FeedView` per feed the city
declares (built from its `FeedSpec` alone: no code knows a feed by name), the active alerts
(newest first) and the pipeline components' counters. Every KPI point carries its coverage:
how many sensors its figures come from (`Coverage`). `build_history` does the same for the
small charts, `build_quality` for the sensors needing attention (`sensor_quality`, contract 6).

Names and ids are data, never markup: the page renders every string with `textContent`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal

from pydantic import BaseModel

from dashboard.queries import (
    FieldValue,
    KindCoverage,
    LatestPoint,
    Row,
    chart_field,
    entity_tags,
    kind_coverage,
    newest_points,
    sensor_hours,
    series,
)
from models.attention import problems
from models.city import City
from models.feeds import FeedSpec, KpiSpec
from models.kinds import python_kinds

# Pipeline components that have not reported for this long are left out.
PIPELINE_STALE_MS: Final = 3_600_000
# The field of a built-in KPI that counts the sensors of its window, and what they are.
COUNT_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "water_kpi": ("meters_reporting", "meters"), "energy_kpi": ("meters_reporting", "meters"),
    "shuttle_kpi": ("vehicles_reporting", "vehicles")}
# The sensors needing attention the page lists (the total is given too).
ATTENTION_SHOWN: Final = 50


class Coverage(BaseModel):
    """How many sensors a KPI point's figures come from, `counted` of `of` (None: not known),
    and in words (`text`). Where the KPI counts its sensors (`meters_reporting`,
    `vehicles_reporting`, a feed's `sensors` KPI), `counted` is that count in the point's window
    and `of` the city file's number (meters of the district, the route's fleet) or else the
    sensors of the kind and district seen in `sensor_quality` in the last 24 h: "computed from
    37 of 40 meters". Where it does not (traffic, a feed without a `sensors` KPI), both come
    from `sensor_quality`: sensors of the kind and district with readings in its newest hour of
    those seen in the last 24 h, "11 of 12 district counters reporting"."""

    counted: int | None
    of: int | None
    text: str


class Point(BaseModel):
    """The newest KPI point of an entity: window end (ms), window tag, every field and its
    coverage (None when nothing says how many sensors it comes from)."""

    time_ms: int
    window: str | None = None
    fields: dict[str, FieldValue]
    coverage: Coverage | None = None


class DistrictView(BaseModel):
    id: str
    name: str
    in_city: bool
    water_target_pct: float
    energy_target_pct: float
    water: Point | None = None
    energy: Point | None = None


class JunctionView(BaseModel):
    id: str
    name: str
    district: str
    in_city: bool
    target_pct: float
    traffic: Point | None = None


class RouteView(BaseModel):
    id: str
    name: str
    district: str
    in_city: bool
    fleet_size: int | None
    shuttle: Point | None = None


class AlertView(BaseModel):
    kind: str
    kind_title: str
    entity: str
    entity_name: str
    rule: str
    rule_title: str
    time_ms: int
    value: float | None
    threshold: float | None
    message: str


class ComponentView(BaseModel):
    component: str
    instance: str
    time_ms: int
    fields: dict[str, FieldValue]


class FeedKpiView(BaseModel):
    """One KPI of a feed: its field name, a readable title and unit, and whether it is a count
    (shown as a whole number)."""

    name: str
    title: str
    unit: str
    integer: bool


class FeedTargetView(BaseModel):
    """A feed's target: `field` (`<kpi>_24h`) judged `at_most` or `at_least` `limit`."""

    kpi: str
    title: str
    unit: str
    field: str
    direction: Literal["at_most", "at_least"]
    limit: float


class FeedRuleView(BaseModel):
    """An alert rule of a feed: raised when `kpi` is `above` or `below` `threshold`."""

    rule: str
    title: str
    kpi: str
    op: Literal["above", "below"]
    threshold: float


class FeedEntityView(BaseModel):
    """One entity of a feed. `in_city`: for a district feed, whether the city file lists the
    district; None for other entities (car parks, bus routes: the city file does not list
    them, so they appear once they report)."""

    id: str
    name: str
    in_city: bool | None
    point: Point | None = None


class FeedView(BaseModel):
    """A declared feed (contract section 5) and the newest point of each of its entities."""

    kind: str
    title: str
    measurement: str
    entity: str
    entity_title: str
    window: str
    kpis: list[FeedKpiView]
    target: FeedTargetView | None
    chart: str
    rules: list[FeedRuleView]
    entities: list[FeedEntityView]


class SourceStatus(BaseModel):
    """InfluxDB as the dashboard sees it. `down_since_ms` is the first failed poll of the
    current outage; `error` says what failed (never a credential)."""

    ok: bool
    down_since_ms: int | None = None
    error: str | None = None


class Snapshot(BaseModel):
    """The `snapshot` event: everything on the page except the small charts."""

    city: str
    timezone: str
    influx: SourceStatus
    latest_ms: int | None
    districts: list[DistrictView]
    junctions: list[JunctionView]
    routes: list[RouteView]
    feeds: list[FeedView]
    alerts: list[AlertView]
    pipeline: list[ComponentView]


class SeriesView(BaseModel):
    measurement: str
    entity: str
    field: str
    t: list[int]
    v: list[float]


class History(BaseModel):
    """The `history` event: the small charts' series between `start_ms` and `end_ms`."""

    start_ms: int
    end_ms: int
    series: list[SeriesView]


class AttentionView(BaseModel):
    """A sensor needing attention: its latest hour (`hour_ms`, the hour's end; `score` and
    what is wrong, `problems`, in words) and since when it has needed it (`since_ms`, the start
    of its current run of bad hours)."""

    kind: str
    kind_title: str
    district: str
    district_name: str
    sensor_id: str
    score: float | None
    problems: list[str]
    hour_ms: int
    since_ms: int


class QualityView(BaseModel):
    """The `quality` event: of the sensors whose latest hour in the last `hours` needs attention
    (`total`; score below `min_score`, rejected readings, or stuck), the worst first: lowest
    score (none, when every reading was rejected, first), then longest in that state."""

    min_score: float
    hours: int
    total: int
    sensors: list[AttentionView]


# Readable names: `pm25_mean_ugm3` -> ("PM2.5 mean", "µg/m³"). The last word is a unit when it
# is one of these and not the only word; a few words are spelt as people write them.
UNITS: Final[dict[str, str]] = {
    "pct": "%", "ugm3": "µg/m³", "mgm3": "mg/m³", "ppm": "ppm", "ppb": "ppb", "db": "dB",
    "dba": "dB(A)", "kwh": "kWh", "mwh": "MWh", "wh": "Wh", "kw": "kW", "mw": "MW", "w": "W",
    "l": "L", "m3": "m³", "kmh": "km/h", "mph": "mph", "s": "s", "min": "min", "c": "°C",
    "kg": "kg", "km": "km", "m": "m", "mm": "mm", "lux": "lx", "hz": "Hz", "v": "V",
}
WORDS: Final[dict[str, str]] = {
    "pm1": "PM1", "pm25": "PM2.5", "pm10": "PM10", "no2": "NO₂", "nox": "NOₓ", "co2": "CO₂",
    "co": "CO", "o3": "O₃", "so2": "SO₂", "laeq": "LAeq", "lamax": "LAmax", "aqi": "AQI",
    "ev": "EV", "id": "ID", "24h": "24 h", "1h": "1 h",
}


def readable(name: str) -> tuple[str, str]:
    """A field or rule name as a title and a unit: `occupancy_pct` -> ("Occupancy", "%"),
    `no2_hours_above` -> ("NO₂ hours above", ""), `full` -> ("Full", "")."""
    words = [w for w in re.split(r"[_\-\s]+", name) if w]
    unit = ""
    if len(words) > 1 and words[-1].lower() in UNITS:
        unit = UNITS[words.pop().lower()]
    words = [WORDS.get(w.lower(), w) for w in words]
    if words and words[0].islower():
        words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) or name, unit


def _point(p: LatestPoint | None,
           coverage: Callable[[dict[str, FieldValue]], Coverage | None] | None = None,
           ) -> Point | None:
    if p is None:
        return None
    return Point(time_ms=p.time_ms, window=p.tags.get("window"), fields=p.fields,
                 coverage=coverage(p.fields) if coverage else None)


def _counted(counted: FieldValue | None, of: int | None, noun: str) -> Coverage | None:
    if isinstance(counted, bool) or not isinstance(counted, int | float):
        return None
    n = int(counted)
    text = f"computed from {n:,} of {of:,} {noun}" if of else f"computed from {n:,} {noun}"
    return Coverage(counted=n, of=of or None, text=text)


def _reporting(c: KindCoverage | None, noun: str) -> Coverage | None:
    if c is None:
        return None
    return Coverage(counted=c.reporting, of=c.seen,
                    text=f"{c.reporting:,} of {c.seen:,} {noun} reporting")


def sensors_kpi(feed: FeedSpec) -> KpiSpec | None:
    """A feed's KPI that counts its sensors (aggregation `sensors`), if it has one."""
    return next((k for k in feed.kpis if k.agg == "sensors"), None)


def _sensor_noun(kpi: KpiSpec | None) -> str:
    """What a feed's sensors are, from its `<noun>_reporting` KPI: `buses_reporting` ->
    "buses"; "sensors" otherwise."""
    if kpi is not None and kpi.name.endswith("_reporting") and len(kpi.name) > 10:
        return kpi.name.removesuffix("_reporting").replace("_", " ")
    return "sensors"


class _Coverages:
    """Coverage of each KPI point, from the city file and the `coverage_query` rows."""

    def __init__(self, city: City, rows: Iterable[Row]) -> None:
        self.city = city
        self.quality = kind_coverage(rows)

    def seen(self, kind: str, district: str) -> int | None:
        c = self.quality.get((kind, district))
        return c.seen if c else None

    def kpi(self, kind: str, district: str, city_count: int = 0,
            ) -> Callable[[dict[str, FieldValue]], Coverage | None]:
        """Water, energy, shuttle: counted in the window, of the city file's count or the
        sensors seen."""
        name, noun = COUNT_FIELDS[f"{kind}_kpi"]
        of = city_count or self.seen(kind, district)
        return lambda fields: _counted(fields.get(name), of, noun)

    def traffic(self, district: str) -> Callable[[dict[str, FieldValue]], Coverage | None]:
        c = self.quality.get(("traffic", district))
        return lambda _fields: _reporting(c, "district counters")

    def feed(self, feed: FeedSpec, entity: str,
             ) -> Callable[[dict[str, FieldValue]], Coverage | None]:
        kpi = sensors_kpi(feed)
        noun = _sensor_noun(kpi)
        district = entity if feed.entity == "district" else None
        if kpi is not None:
            of = self.seen(feed.kind, district) if district else None
            return lambda fields: _counted(fields.get(kpi.name), of, noun)
        c = self.quality.get((feed.kind, district)) if district else None
        return lambda _fields: _reporting(c, noun)


def _float(value: FieldValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _extra(latest: dict[tuple[str, str], LatestPoint], measurements: tuple[str, ...],
           known: set[str]) -> list[str]:
    return sorted({e for (m, e) in latest if m in measurements} - known)


def _feed_view(city: City, feed: FeedSpec, latest: dict[tuple[str, str], LatestPoint],
               cover: _Coverages) -> FeedView:
    """A feed's panel: its spec in readable words and the newest point of every entity. A
    district feed lists every district of the city file (`point` None while one has not
    reported), then districts only InfluxDB knows; any other feed lists the entities InfluxDB
    knows, sorted."""
    m = feed.measurement
    known = sorted(e for (measurement, e) in latest if measurement == m)
    if feed.entity == "district":
        entities = [FeedEntityView(id=d.slug, name=d.name, in_city=True,
                                   point=_point(latest.get((m, d.slug)), cover.feed(feed, d.slug)))
                    for d in city.districts]
        listed = {d.slug for d in city.districts}
        entities += [FeedEntityView(id=e, name=e, in_city=False,
                                    point=_point(latest[(m, e)], cover.feed(feed, e)))
                     for e in known if e not in listed]
    else:
        entities = [FeedEntityView(id=e, name=e, in_city=None,
                                   point=_point(latest[(m, e)], cover.feed(feed, e)))
                    for e in known]
    units = {k.name: readable(k.name) for k in feed.kpis}
    target = None
    if feed.target is not None:
        title, unit = units[feed.target.kpi]
        target = FeedTargetView(
            kpi=feed.target.kpi, title=title, unit=unit, field=f"{feed.target.kpi}_24h",
            direction="at_most" if feed.target.at_most is not None else "at_least",
            limit=feed.target.limit)
    return FeedView(
        kind=feed.kind, title=feed.title, measurement=m, entity=feed.entity,
        entity_title=readable(feed.entity)[0], window=feed.window_tag,
        kpis=[FeedKpiView(name=k.name, title=units[k.name][0], unit=units[k.name][1],
                          integer=k.is_integer) for k in feed.kpis],
        target=target, chart=chart_field(feed),
        rules=[FeedRuleView(rule=a.rule, title=readable(a.rule)[0], kpi=a.kpi,
                            op="above" if a.above is not None else "below",
                            threshold=a.threshold) for a in feed.alerts],
        entities=entities)


def build_snapshot(city: City, latest_rows: Iterable[Row], alert_rows: Iterable[Row],
                   status: SourceStatus, now_ms: int,
                   coverage_rows: Iterable[Row] = ()) -> Snapshot:
    """The page's state from the rows of `latest_query` and `alerts_query`, the points'
    coverage from the city file and the rows of `coverage_query` (see module doc)."""
    latest = newest_points(latest_rows, entity_tags(city.feeds))
    cover = _Coverages(city, coverage_rows)

    def point(measurement: str, entity: str,
              coverage: Callable[[dict[str, FieldValue]], Coverage | None]) -> Point | None:
        return _point(latest.get((measurement, entity)), coverage)

    districts = [DistrictView(id=d.slug, name=d.name, in_city=True,
                              water_target_pct=city.water_target_pct(d.slug),
                              energy_target_pct=city.energy_target_pct(d.slug),
                              water=point("water_kpi", d.slug,
                                          cover.kpi("water", d.slug, d.water_meters)),
                              energy=point("energy_kpi", d.slug,
                                           cover.kpi("energy", d.slug, d.energy_meters)))
                 for d in city.districts]
    known = {d.slug for d in city.districts}
    districts += [DistrictView(id=slug, name=slug, in_city=False,
                               water_target_pct=city.targets.water_saving_pct,
                               energy_target_pct=city.targets.energy_saving_pct,
                               water=point("water_kpi", slug, cover.kpi("water", slug)),
                               energy=point("energy_kpi", slug, cover.kpi("energy", slug)))
                  for slug in _extra(latest, ("water_kpi", "energy_kpi"), known)]

    junctions = [JunctionView(id=j.id, name=j.name, district=j.district, in_city=True,
                              target_pct=city.congestion_target_pct(j.id),
                              traffic=point("traffic_kpi", j.id, cover.traffic(j.district)))
                 for j in city.junctions]
    for jid in _extra(latest, ("traffic_kpi",), {j.id for j in city.junctions}):
        p = latest[("traffic_kpi", jid)]
        district = p.tags.get("district", "")
        junctions.append(JunctionView(id=jid, name=jid, district=district, in_city=False,
                                      target_pct=city.targets.congestion_reduction_pct,
                                      traffic=_point(p, cover.traffic(district))))

    routes = [RouteView(id=r.id, name=r.name, district=r.district, in_city=True,
                        fleet_size=r.fleet_size,
                        shuttle=point("shuttle_kpi", r.id,
                                      cover.kpi("shuttle", r.district, r.fleet_size)))
              for r in city.routes]
    routes += [RouteView(id=rid, name=rid, district="", in_city=False, fleet_size=None,
                         shuttle=point("shuttle_kpi", rid, cover.kpi("shuttle", "")))
               for rid in _extra(latest, ("shuttle_kpi",), {r.id for r in city.routes})]

    kpi_times = [p.time_ms for (m, _), p in latest.items() if m != "pipeline"]
    pipeline = [ComponentView(component=p.tags.get("component", ""),
                              instance=p.tags.get("instance", ""), time_ms=p.time_ms,
                              fields=p.fields)
                for (m, _), p in sorted(latest.items()) if m == "pipeline"
                and now_ms - p.time_ms <= PIPELINE_STALE_MS]
    return Snapshot(city=city.name, timezone=city.timezone, influx=status,
                    latest_ms=max(kpi_times) if kpi_times else None,
                    districts=districts, junctions=junctions, routes=routes,
                    feeds=[_feed_view(city, feed, latest, cover) for feed in city.feeds],
                    alerts=active_alerts(city, alert_rows), pipeline=pipeline)


def kind_titles(city: City) -> dict[str, str]:
    """The title of every kind: the built-in ones' and the city's feeds'."""
    titles = {spec.name: spec.title for spec in python_kinds()}
    titles.update({feed.kind: feed.title for feed in city.feeds})
    return titles


def entity_names(city: City) -> dict[str, str]:
    """Display names of every district, junction and route by id."""
    names = {d.slug: d.name for d in city.districts}
    names.update({j.id: j.name for j in city.junctions})
    names.update({r.id: r.name for r in city.routes})
    return names


def active_alerts(city: City, rows: Iterable[Row]) -> list[AlertView]:
    """Alerts whose newest point has `active` true, newest first. Alerts of any kind: the
    built-in ones and the city's feeds (`kind` = the feed's kind), titled by their kind."""
    names = entity_names(city)
    districts = {d.slug: d.name for d in city.districts}
    titles = kind_titles(city)
    feeds = {feed.kind: feed for feed in city.feeds}
    out = []
    for p in newest_points(rows).values():
        if p.fields.get("active") is not True:
            continue
        kind, entity, rule = (p.tags.get(t, "") for t in ("kind", "entity", "rule"))
        feed = feeds.get(kind)
        # a feed's entity is a district or its own id (car park, bus route): never a junction
        # or shuttle route that happens to have the same id
        name = (names.get(entity, entity) if feed is None
                else districts.get(entity, entity) if feed.entity == "district" else entity)
        message = p.fields.get("message")
        out.append(AlertView(kind=kind, kind_title=titles.get(kind, kind), entity=entity,
                             entity_name=name, rule=rule, rule_title=readable(rule)[0],
                             time_ms=p.time_ms, value=_float(p.fields.get("value")),
                             threshold=_float(p.fields.get("threshold")),
                             message=message if isinstance(message, str) else ""))
    out.sort(key=lambda a: (-a.time_ms, a.kind, a.entity, a.rule))
    return out


def build_history(rows: Iterable[Row], start_ms: int, end_ms: int,
                  feeds: Sequence[FeedSpec] = ()) -> History:
    """The small charts' series from the rows of `history_query` (given the same `feeds`)."""
    return History(start_ms=start_ms, end_ms=end_ms,
                   series=[SeriesView(measurement=s.measurement, entity=s.entity, field=s.field,
                                      t=s.t, v=s.v) for s in series(rows, entity_tags(feeds))])


def build_quality(city: City, rows: Iterable[Row], min_score: float, hours: int = 24,
                  shown: int = ATTENTION_SHOWN) -> QualityView:
    """The sensors needing attention from the rows of `attention_query` (asked with the same
    `min_score` and `hours`), worst first (see `QualityView`), at most `shown` of them."""
    titles = kind_titles(city)
    districts = {d.slug: d.name for d in city.districts}
    found = sorted(sensor_hours(rows), key=lambda h: (
        -1.0 if h.score is None else h.score, h.since_ms, h.kind, h.district, h.sensor_id))
    return QualityView(min_score=min_score, hours=hours, total=len(found), sensors=[
        AttentionView(kind=h.kind, kind_title=titles.get(h.kind, h.kind), district=h.district,
                      district_name=districts.get(h.district, h.district),
                      sensor_id=h.sensor_id, score=h.score,
                      problems=problems(readings=h.readings, duplicates=h.duplicates,
                                        rejected=h.rejected, late=h.late,
                                        completeness_pct=h.completeness_pct, stuck=h.stuck,
                                        score=h.score, min_score=min_score),
                      hour_ms=h.time_ms, since_ms=h.since_ms)
        for h in found[:shown]])
