"""Test helpers: an independent reading of the contract's rules, and simulation shortcuts."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from models import kinds
from models.city import City, load_city
from models.feeds import FeedSpec
from sensors_sim.generator import Message, SimConfig, Simulation

TOPIC = re.compile(r"city/([a-z0-9][a-z0-9-]{0,62})/([a-z][a-z0-9_]{0,30})/"
                   r"([A-Za-z0-9_-]{1,64})")
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
HORIZON_MS = 86_400_000
MONDAY = 1794787200000  # 2026-11-16T00:00:00Z, a Monday

Outcome = tuple[bool, str | None]
Rule = tuple[bool, str, float | None, float | None, bool]

# field -> (required, type, low, high, low_open); type: "num", "int", "str", "id", "bool",
# "line" (a declared feed's string: one line of at most 256 characters)
_COMMON: dict[str, Rule] = {
    "seq": (False, "int", 0, None, False)}
_FIELDS: dict[str, dict[str, Rule]] = {
    "water": {"volume_m3": (True, "num", 0, None, False),
              "flow_l_min": (False, "num", 0, None, False),
              "pressure_bar": (False, "num", 0, 25, False)},
    "energy": {"energy_kwh": (True, "num", 0, None, False),
               "power_kw": (False, "num", 0, None, False)},
    "traffic": {"junction": (True, "id", None, None, False),
                "vehicle_count": (True, "int", 0, None, False),
                "interval_s": (True, "num", 0, 3600, True),
                "mean_speed_kmh": (True, "num", 0, 250, False),
                "occupancy_pct": (False, "num", 0, 100, False)},
    "shuttle": {"route_id": (True, "id", None, None, False),
                "lat": (True, "num", -90, 90, False), "lon": (True, "num", -180, 180, False),
                "speed_kmh": (True, "num", 0, 120, False),
                "passengers": (True, "int", 0, None, False),
                "capacity": (True, "int", 0, None, True),
                "battery_pct": (True, "num", 0, 100, False),
                "status": (True, "status", None, None, False),
                "stop_id": (False, "str", None, None, False),
                "delay_s": (False, "num", None, None, False),
                "disengaged": (False, "bool", None, None, False)},
}


_FEED_TYPES = {"number": "num", "integer": "int", "boolean": "bool", "string": "line"}


def feed_rules(feed: FeedSpec) -> dict[str, Rule]:
    """The contract's section 5 rules of a declared feed's fields, read from its spec."""
    return {name: (not spec.optional,
                   "id" if name == feed.entity else _FEED_TYPES[spec.type],
                   spec.min, spec.max, False)
            for name, spec in feed.fields.items()}


def ts_ms(value: Any) -> int:
    """A reading's `ts` (epoch ms or RFC 3339) as epoch ms."""
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "num":
        return type(value) in (int, float)
    if kind == "int":
        return type(value) is int
    if kind == "id":
        return type(value) is str and ID.fullmatch(value) is not None
    if kind == "str":
        return type(value) is str
    if kind == "line":
        return type(value) is str and len(value) <= 256 and not set(value) & {"\n", "\r"}
    if kind == "bool":
        return type(value) is bool
    return value in ("in_service", "charging", "out_of_service")


def _reading(kind: str, fields: dict[str, Rule], sensor_id: str, r: Any, received_ms: int,
             horizon_ms: int) -> Outcome:
    if type(r) is not dict:
        return False, "schema"
    sid, ts = r.get("sensor_id"), r.get("ts")
    if type(sid) is not str or ID.fullmatch(sid) is None:
        return False, "schema"
    if not (type(ts) is int or (type(ts) is str and RFC3339.fullmatch(ts))):
        return False, "schema"
    rules = {**_COMMON, **fields}
    for name, (required, typ, _, _, _) in rules.items():
        if name not in r or (r[name] is None and not required):
            if required:
                return False, "schema"
            continue
        value = r[name]
        if type(value) is float and not math.isfinite(value) and typ in ("num", "int"):
            continue  # non_finite, checked next (NaN is no integer either, but not a schema)
        if not _type_ok(typ, value):
            return False, "schema"
    for name in rules:
        value = r.get(name)
        if type(value) is float and not math.isfinite(value):
            return False, "non_finite"
    for name, (_, typ, low, high, low_open) in rules.items():
        value = r.get(name)
        if value is None or typ not in ("num", "int"):
            continue
        if low is not None and (value < low or (low_open and value <= low)):
            return False, "out_of_range"
        if high is not None and value > high:
            return False, "out_of_range"
    if kind == "shuttle" and r["passengers"] > r["capacity"]:
        return False, "out_of_range"
    if sid != sensor_id:
        return False, "sensor_mismatch"
    t = ts_ms(ts)
    if t > received_ms + 300_000:
        return False, "future_timestamp"
    if t < received_ms - horizon_ms:
        return False, "too_old"
    return True, None


def contract_check(topic: str, payload: bytes, received_ms: int,
                   horizon_ms: int = HORIZON_MS,
                   feeds: Sequence[FeedSpec] | None = None) -> list[Outcome]:
    """What the contract says about a message: one outcome per reading of an array of objects,
    else one for the whole message. `feeds`: the city's declared feeds (default the shipped
    city's)."""
    m = TOPIC.fullmatch(topic)
    declared = {f.kind: f for f in (city().feeds if feeds is None else feeds)}
    if m is None or (m.group(2) not in _FIELDS and m.group(2) not in declared):
        return [(False, "bad_topic")]
    if len(payload) > 65536:
        return [(False, "too_large")]
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return [(False, "invalid_json")]
    _, kind, sensor_id = m.groups()
    fields = _FIELDS[kind] if kind in _FIELDS else feed_rules(declared[kind])
    if type(doc) is dict:
        return [_reading(kind, fields, sensor_id, doc, received_ms, horizon_ms)]
    if type(doc) is list and doc:
        return [_reading(kind, fields, sensor_id, r, received_ms, horizon_ms) for r in doc]
    return [(False, "invalid_json")]


def decoded_outcomes(topic: str, payload: bytes, received_ms: int,
                     feeds: Sequence[FeedSpec] | None = None) -> list[Outcome]:
    """The same, as ingest.decode sees it (with `feeds`, default the shipped city's, as the
    registered declared kinds)."""
    from ingest.decode import decode

    kinds.activate(city().feeds if feeds is None else feeds)
    d = decode(topic, payload, received_ms)
    letters = d.dead_letters
    if letters and letters[0].index is None:  # the whole message, or its single object
        return [(False, letters[0].reason.value)]
    out: list[Outcome] = [(True, None)] * (len(d.readings) + len(letters))
    for letter in letters:
        out[letter.index or 0] = (False, letter.reason.value)
    return out


def oldest_valid_ts(msg_payload: bytes, expected_valid: list[bool], fallback: int) -> int:
    """Oldest `ts` among the readings expected valid (fallback when none / not JSON)."""
    try:
        doc = json.loads(msg_payload)
    except ValueError:
        return fallback
    docs = doc if isinstance(doc, list) else [doc]
    out = fallback
    for ok, r in zip(expected_valid, docs, strict=False):
        if ok and isinstance(r, dict) and "ts" in r:
            out = min(out, ts_ms(r["ts"]))
    return out


_CITY: City | None = None


def city() -> City:
    """The shipped city model (loaded once)."""
    global _CITY
    if _CITY is None:
        _CITY = load_city()
    return _CITY


def simulate(n: int, **options: Any) -> list[Message]:
    """The first `n` messages of a simulation of the shipped city starting on a Monday."""
    options.setdefault("start_ms", MONDAY)
    return list(itertools.islice(Simulation(city(), SimConfig(**options)).messages(), n))


def simulate_until(hours: float, **options: Any) -> list[Message]:
    """Every message of the first `hours` simulated hours."""
    options.setdefault("start_ms", MONDAY)
    end = options["start_ms"] + int(hours * 3_600_000)
    out = []
    for msg in Simulation(city(), SimConfig(**options)).messages():
        if msg.sim_time_ms > end:
            break
        out.append(msg)
    return out
