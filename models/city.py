"""The city model: districts, junctions, shuttle routes, hour-of-week baselines and targets.

Read from one TOML file (docs/city-model.md) by `load_city`; every list of 168 values is indexed
by `hour_of_week` (UTC, Monday 00:00 = 0). Models are frozen; unknown keys are errors, so a typo
in the file fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from models import kinds
from models.errors import CityModelError, UnknownEntityError
from models.feeds import FeedSpec

HOURS_PER_WEEK = 168
DEFAULT_CITY_FILE = Path(__file__).parent / "cities" / "milton-keynes.toml"
_HOUR_MS = 3_600_000
# 1970-01-01 was a Thursday: hour 0 of the epoch is hour-of-week 3 * 24.
_EPOCH_HOUR_OF_WEEK = 3 * 24

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
EntityId = Annotated[str, Field(pattern=ID_PATTERN)]
Pct = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Week = Annotated[list[NonNegative], Field(min_length=HOURS_PER_WEEK, max_length=HOURS_PER_WEEK)]
"""168 finite values >= 0, index = hour of week (UTC, Monday 00:00 = 0)."""


def hour_of_week(ts_ms: int) -> int:
    """The UTC hour of week of an epoch-milliseconds instant: Monday 00:00-00:59 is 0."""
    return (ts_ms // _HOUR_MS + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


def window_value(week: list[float], window_start_ms: int, window_s: int) -> float:
    """A baseline for a window: the hour its start falls in, scaled by window length / 1 h."""
    return week[hour_of_week(window_start_ms)] * window_s / 3600


class _Frozen(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class Targets(_Frozen):
    """City-wide KPI targets in percent; districts and junctions may override their own."""

    water_saving_pct: Pct = 20.0
    energy_saving_pct: Pct = 3.0
    congestion_reduction_pct: Pct = 50.0


class Windows(_Frozen):
    """Event-time window settings, in seconds."""

    grace_s: Annotated[int, Field(ge=0)] = 120
    horizon_s: Annotated[int, Field(gt=0)] = 86400


class District(_Frozen):
    """A district: the `<district>` of a topic, with its water and energy baselines."""

    slug: Slug
    name: str
    water_meters: Annotated[int, Field(ge=0)] = 0
    energy_meters: Annotated[int, Field(ge=0)] = 0
    water_saving_pct: Pct | None = None
    energy_saving_pct: Pct | None = None
    water_baseline_l_h: Week
    energy_baseline_kwh_h: Week

    def water_baseline_l(self, window_start_ms: int, window_s: int) -> float:
        """Baseline litres for a water window starting at `window_start_ms`."""
        return window_value(self.water_baseline_l_h, window_start_ms, window_s)

    def energy_baseline_kwh(self, window_start_ms: int, window_s: int) -> float:
        """Baseline kWh for an energy window starting at `window_start_ms`."""
        return window_value(self.energy_baseline_kwh_h, window_start_ms, window_s)


class Junction(_Frozen):
    """A junction whose traffic counters report on its district's topics."""

    id: EntityId
    district: Slug
    name: str
    free_flow_speed_kmh: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 48.0
    counters: Annotated[int, Field(ge=0)] = 0
    congestion_reduction_pct: Pct | None = None
    congestion_baseline: Week

    def baseline_congestion_index(self, window_start_ms: int) -> float:
        """Baseline congestion index for a window (not scaled by window length)."""
        return self.congestion_baseline[hour_of_week(window_start_ms)]


class Stop(_Frozen):
    """A shuttle stop with its WGS84 position."""

    id: EntityId
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class Route(_Frozen):
    """A shuttle route: its fleet (availability denominator) and stops in route order."""

    id: EntityId
    district: Slug
    name: str
    fleet_size: Annotated[int, Field(gt=0)]
    capacity: Annotated[int, Field(gt=0)] = 10
    stops: list[Stop] = []

    @model_validator(mode="after")
    def _unique_stops(self) -> Route:
        _require_unique("stops", [s.id for s in self.stops])
        return self


class City(_Frozen):
    """The whole city model. Look entities up with `district`, `junction` and `route`."""

    name: str
    timezone: str = "UTC"
    targets: Targets = Targets()
    windows: Windows = Windows()
    districts: Annotated[list[District], Field(min_length=1)]
    junctions: list[Junction] = []
    routes: list[Route] = []
    feeds: list[FeedSpec] = []

    _districts: dict[str, District] = PrivateAttr(default_factory=dict)
    _junctions: dict[str, Junction] = PrivateAttr(default_factory=dict)
    _routes: dict[str, Route] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> City:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from None
        _require_unique("districts", [d.slug for d in self.districts])
        if "alerts" in {d.slug for d in self.districts}:
            raise ValueError("districts: 'alerts' is reserved (city/alerts/... carries "
                             "citystream's alerts, so its readings could never be told apart)")
        _require_unique("junctions", [j.id for j in self.junctions])
        _require_unique("routes", [r.id for r in self.routes])
        _require_unique("feeds", [f.kind for f in self.feeds])
        slugs = {d.slug for d in self.districts}
        placed = [("junctions", i, j.district) for i, j in enumerate(self.junctions)]
        placed += [("routes", i, r.district) for i, r in enumerate(self.routes)]
        for group, i, slug in placed:
            if slug not in slugs:
                raise ValueError(f"{group}[{i}].district: {slug!r} is not a district of this city")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._districts = {d.slug: d for d in self.districts}
        self._junctions = {j.id: j for j in self.junctions}
        self._routes = {r.id: r for r in self.routes}

    def district(self, slug: str) -> District:
        """The district with this slug; `UnknownEntityError` (a KeyError) if there is none."""
        try:
            return self._districts[slug]
        except KeyError:
            raise UnknownEntityError(f"no district {slug!r} in {self.name}") from None

    def junction(self, junction_id: str) -> Junction:
        """The junction with this id; `UnknownEntityError` (a KeyError) if there is none."""
        try:
            return self._junctions[junction_id]
        except KeyError:
            raise UnknownEntityError(f"no junction {junction_id!r} in {self.name}") from None

    def route(self, route_id: str) -> Route:
        """The route with this id; `UnknownEntityError` (a KeyError) if there is none."""
        try:
            return self._routes[route_id]
        except KeyError:
            raise UnknownEntityError(f"no route {route_id!r} in {self.name}") from None

    def junctions_in(self, slug: str) -> list[Junction]:
        """The junctions of a district, in file order."""
        return [j for j in self.junctions if j.district == slug]

    def routes_in(self, slug: str) -> list[Route]:
        """The shuttle routes of a district, in file order."""
        return [r for r in self.routes if r.district == slug]

    def water_target_pct(self, slug: str) -> float:
        """The district's water saving target, else the city's."""
        own = self.district(slug).water_saving_pct
        return self.targets.water_saving_pct if own is None else own

    def energy_target_pct(self, slug: str) -> float:
        """The district's energy saving target, else the city's."""
        own = self.district(slug).energy_saving_pct
        return self.targets.energy_saving_pct if own is None else own

    def congestion_target_pct(self, junction_id: str) -> float:
        """The junction's congestion reduction target, else the city's."""
        own = self.junction(junction_id).congestion_reduction_pct
        return self.targets.congestion_reduction_pct if own is None else own


def _require_unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i, ident in enumerate(ids):
        if ident in seen:
            raise ValueError(f"{what}[{i}]: duplicate id {ident!r}")
        seen.add(ident)


def _field_path(loc: tuple[int | str, ...], data: Any = None) -> str:
    """`feeds[0] (noise).kpis[1].field`: a list index, and for a feed its kind too."""
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
            if i == 1 and loc[0] == "feeds":
                path += _feed_name(data, part)
        else:
            path += f".{part}" if path else part
    return path


def _feed_name(data: Any, index: int) -> str:
    try:
        kind = data["feeds"][index]["kind"]
    except (KeyError, IndexError, TypeError):
        return ""
    return f" ({kind})" if isinstance(kind, str) else ""


_KEY_IN_MESSAGE = re.compile(r"([a-z_]+(?:\[[0-9]+\])?(?:\.[a-z_0-9]+)?): ")


def parse_city(text: str, source: str = "<string>") -> City:
    """Validate city TOML text; `source` names it in `CityModelError` messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CityModelError(f"{source}: not valid TOML: {exc}") from None
    try:
        return City.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            path = _field_path(err["loc"], data)
            key = _KEY_IN_MESSAGE.match(msg)
            if key and path.startswith("feeds["):  # a feed's own check names the key
                path, msg = f"{path}.{key.group(1)}", msg[key.end():]
            problems.append(f"{path}: {msg}" if path else msg)
        raise CityModelError(f"{source}: invalid city model:\n  " + "\n  ".join(problems)) from None


def load_city(path: Path | None = None) -> City:
    """Read and validate a city TOML file (default: the shipped Milton Keynes model), and make
    its declared feeds this process's registered kinds (`models.kinds.activate`)."""
    path = DEFAULT_CITY_FILE if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CityModelError(f"{path}: cannot read city model: {exc}") from None
    city = parse_city(text, str(path))
    kinds.activate(city.feeds)
    return city


def _toml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_value(value: Any, per_line: int = 8) -> str:
    if not isinstance(value, list):
        return _toml_scalar(value)
    if not value:
        return "[]"
    if all(isinstance(v, dict) for v in value):
        return "[\n" + "".join(f"  {_toml_scalar(v)},\n" for v in value) + "]"
    lines = ["  " + ", ".join(_toml_scalar(v) for v in value[i:i + per_line]) + ","
             for i in range(0, len(value), per_line)]
    return "[\n" + "\n".join(lines) + "\n]"


def _toml_table(data: dict[str, Any]) -> list[str]:
    return [f"{key} = {_toml_value(value)}" for key, value in data.items()]


def dump_city(city: City, header: tuple[str, ...] = ()) -> str:
    """The city as TOML text in the city file format; `parse_city` reads it back equal.
    `header` lines become leading comments. Optional values that are unset are left out."""
    data = city.model_dump(exclude_none=True)
    out = [f"# {line}" if line else "#" for line in header]
    out += _toml_table({k: v for k, v in data.items() if not isinstance(v, dict | list)})
    for section in ("targets", "windows"):
        out += ["", f"[{section}]", *_toml_table(data[section])]
    for section in ("districts", "junctions", "routes"):
        for item in data[section]:
            out += ["", f"[[{section}]]", *_toml_table(item)]
    for feed in data["feeds"]:
        out += ["", "[[feeds]]", *_toml_table(
            {k: v for k, v in feed.items() if k not in ("fields", "kpis", "target", "alerts")})]
        out += ["", "[feeds.fields]", *_toml_table(feed["fields"])]
        for kpi in feed["kpis"]:
            out += ["", "[[feeds.kpis]]", *_toml_table(kpi)]
        if "target" in feed:
            out += ["", "[feeds.target]", *_toml_table(feed["target"])]
        for alert in feed["alerts"]:
            out += ["", "[[feeds.alerts]]", *_toml_table(alert)]
    return "\n".join(out) + "\n"
