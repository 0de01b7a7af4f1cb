"""What the browser receives: the city model joined with the newest InfluxDB points.

`build_snapshot` is pure: given the city, the rows of `latest_query` and `alerts_query` and the
InfluxDB status, it lists every district, junction and route of the city file (with `None` where
InfluxDB has no point yet, so the page can say "no data yet for Bletchley"), then any entity
InfluxDB knows that the city file does not (`in_city` false), the active alerts (newest first)
and the pipeline components' counters. `build_history` does the same for the small charts.

Names and ids are data, never markup: the page renders every string with `textContent`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pydantic import BaseModel

from dashboard.queries import FieldValue, LatestPoint, Row, newest_points, series
from models.city import City

# Pipeline components that have not reported for this long are left out.
PIPELINE_STALE_MS: Final = 3_600_000


class Point(BaseModel):
    """The newest KPI point of an entity: window end (ms), window tag and every field."""

    time_ms: int
    window: str | None = None
    fields: dict[str, FieldValue]


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
    entity: str
    entity_name: str
    rule: str
    time_ms: int
    value: float | None
    threshold: float | None
    message: str


class ComponentView(BaseModel):
    component: str
    instance: str
    time_ms: int
    fields: dict[str, FieldValue]


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


def _point(p: LatestPoint | None) -> Point | None:
    if p is None:
        return None
    return Point(time_ms=p.time_ms, window=p.tags.get("window"), fields=p.fields)


def _float(value: FieldValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _extra(latest: dict[tuple[str, str], LatestPoint], measurements: tuple[str, ...],
           known: set[str]) -> list[str]:
    return sorted({e for (m, e) in latest if m in measurements} - known)


def build_snapshot(city: City, latest_rows: Iterable[Row], alert_rows: Iterable[Row],
                   status: SourceStatus, now_ms: int) -> Snapshot:
    """The page's state from the rows of `latest_query` and `alerts_query` (see module doc)."""
    latest = newest_points(latest_rows)

    def point(measurement: str, entity: str) -> Point | None:
        return _point(latest.get((measurement, entity)))

    districts = [DistrictView(id=d.slug, name=d.name, in_city=True,
                              water_target_pct=city.water_target_pct(d.slug),
                              energy_target_pct=city.energy_target_pct(d.slug),
                              water=point("water_kpi", d.slug),
                              energy=point("energy_kpi", d.slug))
                 for d in city.districts]
    known = {d.slug for d in city.districts}
    districts += [DistrictView(id=slug, name=slug, in_city=False,
                               water_target_pct=city.targets.water_saving_pct,
                               energy_target_pct=city.targets.energy_saving_pct,
                               water=point("water_kpi", slug), energy=point("energy_kpi", slug))
                  for slug in _extra(latest, ("water_kpi", "energy_kpi"), known)]

    junctions = [JunctionView(id=j.id, name=j.name, district=j.district, in_city=True,
                              target_pct=city.congestion_target_pct(j.id),
                              traffic=point("traffic_kpi", j.id))
                 for j in city.junctions]
    for jid in _extra(latest, ("traffic_kpi",), {j.id for j in city.junctions}):
        p = latest[("traffic_kpi", jid)]
        junctions.append(JunctionView(id=jid, name=jid, district=p.tags.get("district", ""),
                                      in_city=False,
                                      target_pct=city.targets.congestion_reduction_pct,
                                      traffic=_point(p)))

    routes = [RouteView(id=r.id, name=r.name, district=r.district, in_city=True,
                        fleet_size=r.fleet_size, shuttle=point("shuttle_kpi", r.id))
              for r in city.routes]
    routes += [RouteView(id=rid, name=rid, district="", in_city=False, fleet_size=None,
                         shuttle=point("shuttle_kpi", rid))
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
                    alerts=active_alerts(city, alert_rows), pipeline=pipeline)


def entity_names(city: City) -> dict[str, str]:
    """Display names of every district, junction and route by id."""
    names = {d.slug: d.name for d in city.districts}
    names.update({j.id: j.name for j in city.junctions})
    names.update({r.id: r.name for r in city.routes})
    return names


def active_alerts(city: City, rows: Iterable[Row]) -> list[AlertView]:
    """Alerts whose newest point has `active` true, newest first."""
    names = entity_names(city)
    out = []
    for p in newest_points(rows).values():
        if p.fields.get("active") is not True:
            continue
        entity = p.tags.get("entity", "")
        message = p.fields.get("message")
        out.append(AlertView(kind=p.tags.get("kind", ""), entity=entity,
                             entity_name=names.get(entity, entity), rule=p.tags.get("rule", ""),
                             time_ms=p.time_ms, value=_float(p.fields.get("value")),
                             threshold=_float(p.fields.get("threshold")),
                             message=message if isinstance(message, str) else ""))
    out.sort(key=lambda a: (-a.time_ms, a.kind, a.entity, a.rule))
    return out


def build_history(rows: Iterable[Row], start_ms: int, end_ms: int) -> History:
    """The small charts' series from the rows of `history_query`."""
    return History(start_ms=start_ms, end_ms=end_ms,
                   series=[SeriesView(measurement=s.measurement, entity=s.entity, field=s.field,
                                      t=s.t, v=s.v) for s in series(rows)])
