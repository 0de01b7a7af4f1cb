"""KPI points for the dashboard tests, written through the sink's own path: model records
rendered by `to_line_protocol` and sent by `streams.sink.InfluxWriter`."""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from pydantic import SecretStr

from deploy.influxdb.provision import read_authorization
from deploy.local.stack import Stack
from kinds.energy import EnergyKpi
from kinds.shuttle import ShuttleKpi
from kinds.traffic import TrafficKpi
from kinds.water import WaterKpi
from models.city import City
from models.feeds import FeedSpec, kpi_model
from models.records import Alert, PipelineCounters, Record, to_line_protocol
from models.settings import InfluxSettings
from streams.sink import InfluxWriter
from tests.integration.helpers import create_bucket, influx_points

MIN = 60_000


@dataclass
class Bucket:
    """A bucket of its own for one test, with a token that may only read it."""

    stack: Stack
    name: str
    read_token: str

    @property
    def influx(self) -> InfluxSettings:
        info = self.stack.client_info()["influxdb"]
        return InfluxSettings(url=info["url"], org=info["org"], token=SecretStr(info["token"]),
                              bucket_kpi=self.name)

    def write(self, records: list[Record]) -> None:
        writer = InfluxWriter(self.influx)
        try:
            writer.write(self.name, [to_line_protocol(r) for r in records])
        finally:
            writer.close()

    def write_lines(self, lines: list[str]) -> None:
        writer = InfluxWriter(self.influx)
        try:
            writer.write(self.name, lines)
        finally:
            writer.close()

    def latest(self, measurement: str, tag: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """The newest point per `tag` value, read back from InfluxDB with the admin token."""
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        for (_m, tags, ts), fields in influx_points(self.stack, self.name, (measurement,)).items():
            key = dict(tags)[tag]
            if key not in out or ts > out[key][0]:
                out[key] = (ts, fields)
        return out


def new_bucket(stack: Stack) -> Bucket:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    create_bucket(stack, name)
    info = stack.client_info()["influxdb"]
    with InfluxDBClient(url=info["url"], token=info["token"], org=info["org"]) as client:
        bucket = client.buckets_api().find_bucket_by_name(name)
        org_id = bucket.org_id
        bucket_id = bucket.id
    token = read_authorization(info["url"], info["token"], org_id, [bucket_id],
                               f"dashboard test {name}")
    return Bucket(stack, name, token)


def city_kpis(city: City, end_ms: int, hours: int = 3, seed: int = 5,
              skip_districts: tuple[str, ...] = ()) -> list[Record]:
    """Plausible KPI points for every entity of `city` over the `hours` before `end_ms`
    (window ends aligned), plus two active alerts, one cleared alert and pipeline counters."""
    rnd = random.Random(seed)
    out: list[Record] = []
    for i, d in enumerate(city.districts):
        if d.slug in skip_districts:
            continue
        for minutes in (15, 30):
            step = minutes * MIN
            last = end_ms // step * step
            for k in range(hours * 60 // minutes):
                t = last - k * step
                s24 = 10 + 4 * i + 3 * math.sin(k / 5) + rnd.uniform(-0.5, 0.5)
                s = s24 + rnd.uniform(-5, 5)
                if minutes == 15:
                    target = city.water_target_pct(d.slug)
                    out.append(WaterKpi(district=d.slug, window_end_ms=t,
                                        consumption_l=800.0 + k, baseline_l=1000.0,
                                        saving_pct=s, saving_pct_24h=s24, target_pct=target,
                                        on_track=s24 >= target,
                                        meters_reporting=max(1, d.water_meters - k % 3)))
                else:
                    target = city.energy_target_pct(d.slug)
                    e24 = s24 / 4 - 1
                    out.append(EnergyKpi(district=d.slug, window_end_ms=t, energy_kwh=95.0,
                                         baseline_kwh=100.0, saving_pct=s / 4,
                                         saving_pct_24h=e24, target_pct=target,
                                         on_track=e24 >= target, peak_kw=120.0,
                                         meters_reporting=d.energy_meters))
    step = 5 * MIN
    for i, j in enumerate(city.junctions):
        last = end_ms // step * step
        for k in range(hours * 12):
            t = last - k * step
            base = 0.3 + 0.05 * i
            ci = base * (0.4 + 0.15 * i) + rnd.uniform(0, 0.05)
            red24 = 70.0 - 9 * i + rnd.uniform(-1, 1)
            out.append(TrafficKpi(district=j.district, junction=j.id, window_end_ms=t,
                                  vehicles=100 + k, flow_veh_h=1200.0 + 37.5 * i + k,
                                  space_mean_speed_kmh=j.free_flow_speed_kmh / (1 + ci),
                                  congestion_index=ci, baseline_congestion_index=base,
                                  reduction_pct=100 * (1 - ci / base), reduction_pct_24h=red24,
                                  target_pct=city.congestion_target_pct(j.id),
                                  on_track=red24 >= city.congestion_target_pct(j.id)))
    step = 15 * MIN
    for r in city.routes:
        last = end_ms // step * step
        for k in range(hours * 4):
            out.append(ShuttleKpi(route=r.id, window_end_ms=last - k * step,
                                  boardings=20 + k, occupancy_pct=35.0 + 2 * k,
                                  on_time_pct=92.5 - k, availability_pct=75.0,
                                  mean_battery_pct=64.0 - 1.5 * k, disengagements=k % 2,
                                  vehicles_reporting=r.fleet_size))
    d0, d1 = city.districts[0].slug, city.districts[1].slug
    out += [
        Alert(kind="water", entity=d0, rule="leak", ts_ms=end_ms - 90 * MIN, value=900.0,
              threshold=450.0, message="minimum night flow 900 L per 15 min, 3.0x baseline",
              active=True),
        Alert(kind="energy", entity=d1, rule="off_track", ts_ms=end_ms - 30 * MIN, value=1.0,
              threshold=3.0, message="energy saving over 24 h is 1.0 %, target 3 %",
              active=True),
        Alert(kind="water", entity=d1, rule="leak", ts_ms=end_ms - 120 * MIN, value=900.0,
              threshold=450.0, message="raised", active=True),
        Alert(kind="water", entity=d1, rule="leak", ts_ms=end_ms - 60 * MIN, value=100.0,
              threshold=450.0, message="cleared", active=False),
        PipelineCounters(component="ingest", instance="0", ts_ms=end_ms - 2000,
                         received=120_000, accepted=119_500, rejected=500),
    ]
    return out


def feed_entities(city: City, feed: FeedSpec, skip_districts: tuple[str, ...] = ()) -> list[str]:
    """The entities `feed_kpis` writes for a feed: the city's districts (but `skip_districts`)
    for a district feed, else two made-up ids such as `car-park-1`."""
    if feed.entity == "district":
        return [d.slug for d in city.districts if d.slug not in skip_districts]
    return [f"{feed.entity.replace('_', '-')}-{n}" for n in (1, 2)]


def feed_kpis(city: City, end_ms: int, hours: int = 3, seed: int = 7,
              skip_districts: tuple[str, ...] = (), skip_feeds: tuple[str, ...] = ()
              ) -> list[Record]:
    """Points of every declared feed of `city` (but `skip_feeds`) for each of its
    `feed_entities` over the `hours` before `end_ms`, built from the feed's spec alone: counts
    whole, other KPIs floats; with a target, the first entity is on track and the others off."""
    rnd = random.Random(seed)
    out: list[Record] = []
    for feed in city.feeds:
        if feed.kind in skip_feeds:
            continue
        model = kpi_model(feed)
        step = feed.window_s * 1000
        last = end_ms // step * step
        for i, entity in enumerate(feed_entities(city, feed, skip_districts)):
            for k in range(max(1, hours * 3600 // feed.window_s)):
                fields: dict[str, Any] = {
                    kpi.name: (rnd.randint(1, 40) if kpi.is_integer
                               else round(rnd.uniform(5, 95), 3)) for kpi in feed.kpis}
                if feed.target is not None:
                    limit = feed.target.limit
                    good = i == 0
                    at_most = feed.target.at_most is not None
                    factor = 0.9 if good == at_most else 1.1
                    fields[f"{feed.target.kpi}_24h"] = round(limit * factor + 0.123, 3)
                    fields["on_track"] = good
                out.append(model.model_validate({feed.entity: entity,
                                                 "window_end_ms": last - k * step, **fields}))
    return out


def shown(value: float, digits: int) -> str:
    """A number as the page shows it: JavaScript's toFixed (exact value, halves away from
    zero), a real minus sign, no negative zero."""
    text = str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
    if Decimal(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", "\u2212")


def shown_count(value: float) -> str:
    """A non-negative number as the page shows a count or rate: rounded (halves up), with
    thousands separators."""
    return f"{int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def shown_kpi(value: float, integer: bool) -> str:
    """A feed KPI as the page shows it: counts and figures of 1000 or more whole, others with
    one decimal, below 1 with two."""
    if integer or abs(value) >= 1000:
        return shown_count(value)
    return shown(value, 1 if value == 0 or abs(value) >= 1 else 2)
