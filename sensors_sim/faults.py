"""The fault catalogue: what each fault does to a message and which dead-letter reason it earns.

Two families, each drawn with its own rate (a probability):

* message faults, drawn once per message that carries no sensor label: the invalid ones
  (`invalid_json`, `too_large`, `bad_topic`, `schema`, `non_finite`, `out_of_range`,
  `sensor_mismatch`, `future_timestamp`, `too_old`) break exactly one thing, so the message (or
  the one broken reading of a batch) has exactly one reason, the one named after the fault;
  `duplicate` re-publishes a recent clean message byte for byte; `reorder` holds the message
  back for 1-3 of its sensor's message intervals, so the sensor's next message overtakes it.
  At most one message fault per message.
* sensor faults, drawn per reading as it is generated, all leaving the readings valid:
  `meter_reset` (probability per meter reading that the register restarts from about 0),
  `silent` (share of readings lost to sensors that go quiet for 10-60 simulated minutes; the
  last reading before the gap carries the label), `clock_skew` (share of readings from
  sensors whose clock is off by 5-91 s, never a whole second, for 15-90 minutes), `stuck`
  (share of readings from water and energy meters whose register freezes at one value for
  60-180 minutes, then catches up: what `sensor_quality` judges `stuck`). The `leak`
  label (from --leak-district) belongs to this family too. For declared feeds `meter_reset`
  restarts the feed's counter fields (a counter rolling over at its `max` is labelled the same).

The functions here are pure: randomness comes in as uniforms in [0, 1). The reading faults of a
declared feed (`FeedFaults`) are derived from its field definitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, Protocol

import orjson

from models.feeds import FeedSpec

INVALID_FAULTS: Final = ("bad_topic", "too_large", "invalid_json", "schema", "non_finite",
                         "out_of_range", "sensor_mismatch", "future_timestamp", "too_old")
"""Faults that make a message or reading invalid; each is also the contract reason it earns."""
MESSAGE_FAULTS: Final = (*INVALID_FAULTS, "duplicate", "reorder")
SENSOR_FAULTS: Final = ("meter_reset", "silent", "clock_skew", "stuck")
FAULT_KINDS: Final = (*MESSAGE_FAULTS, *SENSOR_FAULTS)
REGISTER_FAULTS: Final = frozenset({"stuck"})
"""Sensor faults of water and energy registers only (declared feeds never get them)."""

MAX_PAYLOAD_BYTES: Final = 65536
FUTURE_OFFSET_MS: Final = 15 * 60_000
"""A future_timestamp is the message's sim time + horizon + this (see `future_ts`)."""
OLD_OFFSET_MS: Final = 3600_000
"""A too_old timestamp is the message's sim time - horizon - this."""

_NAN_MARK: Final = "__citystream_sim_non_finite__"


class Expected(NamedTuple):
    """What ingest must make of one reading (or of a whole message that does not decode)."""

    valid: bool
    reason: str | None
    duplicate: bool

    def as_json(self) -> dict[str, Any]:
        """The recording's form: {"valid", "reason", "duplicate"}."""
        return {"valid": self.valid, "reason": self.reason, "duplicate": self.duplicate}


VALID: Final = Expected(True, None, False)
DUPLICATE: Final = Expected(True, None, True)


def check_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """Validated fault rates; raises ValueError naming the problem."""
    out: dict[str, float] = {}
    for kind, rate in rates.items():
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate for {kind} must be within 0..1, got {rate}")
        if rate > 0:
            out[kind] = float(rate)
    for family, kinds in (("message", MESSAGE_FAULTS), ("sensor", SENSOR_FAULTS)):
        total = sum(out.get(k, 0.0) for k in kinds)
        if total > 1.0 + 1e-9:
            raise ValueError(f"{family} fault rates add up to {total:.3f}, more than 1 "
                             f"({', '.join(kinds)} are drawn from one uniform per "
                             f"{'message' if family == 'message' else 'reading'})")
    return out


def pick(rates: Mapping[str, float], kinds: tuple[str, ...], u: float) -> str | None:
    """The fault whose slice of [0, 1) holds `u` (slices in `kinds` order), or None."""
    acc = 0.0
    for kind in kinds:
        acc += rates.get(kind, 0.0)
        if u < acc:
            return kind
    return None


# -- message-level faults ------------------------------------------------------------------

def bad_topic(topic: str, u: float) -> str:
    """A topic that breaks `city/<district>/<kind>/<sensor_id>` but stays under city/ (the
    gateway ACL) and off city/alerts/."""
    _, district, kind, sensor_id = topic.split("/")
    variants = (
        f"city/{district}/{kind}",                       # sensor level missing
        f"city/{district}/{kind}/{sensor_id}/raw",       # one level too many
        f"city/{district.upper()}/{kind}/{sensor_id}",   # district not a slug
        f"city/{district}/gas/{sensor_id}",              # unknown kind
        f"city/{district}/{kind}/{sensor_id}.v2",        # sensor_id with a dot
        f"city//{kind}/{sensor_id}",                     # empty district
    )
    return variants[int(u * len(variants))]


def too_large(reading: dict[str, Any], u: float) -> bytes:
    """A single valid reading padded with an ignored field to 65.6-85 kB."""
    padded = dict(reading)
    padded["diagnostics"] = "x" * (MAX_PAYLOAD_BYTES + 64 + int(u * 20000))
    return orjson.dumps(padded)


def invalid_json(payload: bytes, u: float) -> bytes:
    """Bytes that are not JSON at all: truncated, trailing garbage, single quotes, a byte that is
    not UTF-8, or nothing."""
    variant = int(u * 5)
    if variant == 0:
        return payload[: max(1, len(payload) // 2)]
    if variant == 1:
        return payload + b"}"
    if variant == 2:
        return payload.replace(b'"', b"'")
    if variant == 3:
        return payload.replace(b'":"', b'":"\xff', 1) if b'":"' in payload \
            else payload[:-1] + b"\xff"
    return b""


# -- reading-level faults: each returns a broken copy of the reading -----------------------

_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "water": ("volume_m3",),
    "energy": ("energy_kwh",),
    "traffic": ("junction", "vehicle_count", "interval_s", "mean_speed_kmh"),
    "shuttle": ("route_id", "lat", "lon", "speed_kmh", "passengers", "capacity", "battery_pct",
                "status"),
}
_WRONG_TYPES: Final[dict[str, tuple[tuple[str, Any], ...]]] = {
    "water": (("volume_m3", "twelve"), ("pressure_bar", "high"), ("flow_l_min", [1.5])),
    "energy": (("energy_kwh", "1234.5 kWh"), ("power_kw", {"kw": 1.2})),
    "traffic": (("junction", 42), ("vehicle_count", 12.5), ("interval_s", "60s"),
                ("mean_speed_kmh", None)),
    "shuttle": (("passengers", 2.5), ("status", "parked"), ("lat", "52.04"),
                ("capacity", "10"), ("route_id", 7)),
}
_FLOAT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "water": ("volume_m3", "flow_l_min", "pressure_bar"),
    "energy": ("energy_kwh", "power_kw"),
    "traffic": ("mean_speed_kmh", "occupancy_pct", "interval_s"),
    "shuttle": ("lat", "lon", "speed_kmh", "battery_pct"),
}
_NON_FINITE: Final = ("NaN", "Infinity", "-Infinity")


def schema(kind: str, reading: dict[str, Any], u: float) -> dict[str, Any]:
    """A reading with a required field missing or a field of the wrong JSON type."""
    broken = dict(reading)
    missing = ("ts", "sensor_id", *_REQUIRED[kind])
    wrong = (("ts", "yesterday"), ("ts", "2026-11-21 06:15"), *_WRONG_TYPES[kind])
    i = int(u * (len(missing) + len(wrong)))
    if i < len(missing):
        broken.pop(missing[i], None)
    else:
        name, value = wrong[i - len(missing)]
        broken[name] = value
    return broken


def non_finite(kind: str, reading: dict[str, Any], u: float) -> dict[str, Any]:
    """A reading with NaN, Infinity or -Infinity (JSON literals) in one number field;
    serialise it with `dumps`."""
    broken = dict(reading)
    fields = _FLOAT_FIELDS[kind]
    i = int(u * len(fields) * len(_NON_FINITE))
    broken[fields[i // len(_NON_FINITE)]] = _NAN_MARK + _NON_FINITE[i % len(_NON_FINITE)]
    return broken


def out_of_range(kind: str, reading: dict[str, Any], u: float) -> dict[str, Any]:
    """A well-typed reading with one value outside the contract's range."""
    broken = dict(reading)
    v = 0.5 + round(u * 37, 2)  # some positive amount
    options: tuple[tuple[str, Any], ...]
    if kind == "water":
        options = (("volume_m3", -round(float(reading["volume_m3"]) + v, 4)),
                   ("flow_l_min", -v), ("pressure_bar", 25.0 + v))
    elif kind == "energy":
        options = (("energy_kwh", -round(float(reading["energy_kwh"]) + v, 3)),
                   ("power_kw", -v))
    elif kind == "traffic":
        options = (("vehicle_count", -1 - int(u * 30)), ("interval_s", 0),
                   ("interval_s", 3600 + int(v * 100)), ("mean_speed_kmh", 250.0 + v),
                   ("occupancy_pct", 100.0 + v))
    else:
        options = (("speed_kmh", 120.0 + v),
                   ("passengers", int(reading["capacity"]) + 1 + int(u * 5)),
                   ("battery_pct", 100.0 + v), ("battery_pct", -v), ("capacity", 0))
    name, value = options[int(u * len(options))]
    broken[name] = value
    return broken


class ReadingFaults(Protocol):
    """How one kind's readings break: `KindFaults` for a Python kind, `FeedFaults` for a
    declared feed. Each method returns a broken copy of the reading; `u` picks the variant."""

    def schema(self, reading: dict[str, Any], u: float) -> dict[str, Any]: ...
    def non_finite(self, reading: dict[str, Any], u: float) -> dict[str, Any]: ...
    def out_of_range(self, reading: dict[str, Any], u: float) -> dict[str, Any]: ...


class KindFaults:
    """`schema`, `non_finite` and `out_of_range` for a Python kind, from the tables above."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def schema(self, reading: dict[str, Any], u: float) -> dict[str, Any]:
        """See `schema`."""
        return schema(self.kind, reading, u)

    def non_finite(self, reading: dict[str, Any], u: float) -> dict[str, Any]:
        """See `non_finite`."""
        return non_finite(self.kind, reading, u)

    def out_of_range(self, reading: dict[str, Any], u: float) -> dict[str, Any]:
        """See `out_of_range`."""
        return out_of_range(self.kind, reading, u)


class FeedFaults:
    """`schema`, `non_finite` and `out_of_range` for a declared feed, from its field definitions
    (the built-in kinds' tables above, derived instead of written down).

    schema: `ts`, `sensor_id` or a required field missing, or a wrong JSON type in any field
    (`"twelve"` for a number, `12.5` for an integer, `"yes"` for a boolean, `42` for a
    string). non_finite: NaN or +-Infinity in a number or integer field (`seq` when there is
    none). out_of_range: a number or integer field just outside its `min` or `max` (`seq`
    negative when no field has a bound).
    """

    _WRONG: Final[dict[str, Any]] = {
        "number": "twelve", "integer": 12.5, "boolean": "yes", "string": 42}
    _LIMIT: Final = 2.0 ** 52
    """Bounds beyond this are not broken: a float cannot step just outside them."""

    def __init__(self, feed: FeedSpec) -> None:
        fields = feed.fields
        self.missing = ("ts", "sensor_id", *(n for n, f in fields.items() if not f.optional))
        self.wrong: tuple[tuple[str, Any], ...] = (
            ("ts", "yesterday"), ("ts", "2026-11-21 06:15"),
            *((n, self._WRONG[f.type]) for n, f in fields.items()))
        self.finite = tuple(n for n, f in fields.items()
                            if f.type in ("number", "integer")) or ("seq",)
        bounds: list[tuple[str, bool, float, bool]] = []  # (field, above, bound, integer)
        for name, spec in fields.items():
            integer = spec.type == "integer"
            if spec.min is not None and abs(spec.min) < self._LIMIT:
                bounds.append((name, False, spec.min, integer))
            if spec.max is not None and abs(spec.max) < self._LIMIT:
                bounds.append((name, True, spec.max, integer))
        self.bounds = tuple(bounds) or (("seq", False, 0.0, True),)

    def schema(self, reading: dict[str, Any], u: float) -> dict[str, Any]:
        """A reading with a required field missing or a field of the wrong JSON type."""
        broken = dict(reading)
        i = int(u * (len(self.missing) + len(self.wrong)))
        if i < len(self.missing):
            broken.pop(self.missing[i], None)
        else:
            name, value = self.wrong[i - len(self.missing)]
            broken[name] = value
        return broken

    def non_finite(self, reading: dict[str, Any], u: float) -> dict[str, Any]:
        """A reading with NaN, Infinity or -Infinity in one number field (serialise it with
        `dumps`)."""
        broken = dict(reading)
        i = int(u * len(self.finite) * len(_NON_FINITE))
        broken[self.finite[i // len(_NON_FINITE)]] = _NAN_MARK + _NON_FINITE[i % len(_NON_FINITE)]
        return broken

    def out_of_range(self, reading: dict[str, Any], u: float) -> dict[str, Any]:
        """A well-typed reading with one value just outside its field's bounds."""
        broken = dict(reading)
        name, above, bound, integer = self.bounds[int(u * len(self.bounds))]
        if integer:
            step = 1 + int(u * 30)
            broken[name] = math.floor(bound) + step if above else math.ceil(bound) - step
        else:
            v = 0.5 + round(u * 37, 2)
            broken[name] = bound + v if above else bound - v
        return broken


def sensor_mismatch(reading: dict[str, Any], other_id: str) -> dict[str, Any]:
    """The reading under another (well-formed) sensor_id than its topic's."""
    broken = dict(reading)
    broken["sensor_id"] = other_id
    return broken


def retimed(reading: dict[str, Any], ts: int | str) -> dict[str, Any]:
    """The reading with another `ts` (for future_timestamp and too_old)."""
    broken = dict(reading)
    broken["ts"] = ts
    return broken


def future_ts(sim_time_ms: int, horizon_ms: int) -> int:
    """A timestamp surely more than 5 min + 60 s after the publish wall-clock time.

    The simulator never publishes a message more than (horizon - 2 min) after its sim time, so
    sim time + horizon + 15 min stays at least 17 min ahead of the wall clock.
    """
    return sim_time_ms + horizon_ms + FUTURE_OFFSET_MS


def old_ts(sim_time_ms: int, horizon_ms: int) -> int:
    """A timestamp surely older than the horizon + 60 s at publish time: the simulator never
    publishes a message before its sim time, so sim time - horizon - 1 h always is."""
    return sim_time_ms - horizon_ms - OLD_OFFSET_MS


def dumps(doc: Any) -> bytes:
    """JSON bytes like orjson, but with the NaN/Infinity literals `non_finite` asked for."""
    raw = orjson.dumps(doc)
    if _NAN_MARK.encode() not in raw:
        return raw
    for literal in _NON_FINITE:
        raw = raw.replace(f'"{_NAN_MARK}{literal}"'.encode(), literal.encode())
    return raw
