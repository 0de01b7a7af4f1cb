"""Offline oracle for declared feeds (CONTRACT section 5 with sections 1 and 3), written
independently of the product.

Like :mod:`tests.oracle`, nothing here imports ``streams``, ``ingest``, ``models`` or
``sensors_sim``; the feed is the ``[[feeds]]`` table exactly as :mod:`tomllib` parses it, and the
KPIs are recomputed from first principles with the standard library only.

API
---
``compute_feed_points(readings, feed, *, horizon_s=86400)``
    ``readings`` are flat dicts in arrival order, already known valid, of this feed's kind only:
    ``district`` (the topic's), ``sensor_id``, ``ts`` (integer epoch ms or RFC 3339 with an
    offset) and the feed's fields (optional ones may be absent). Any other key (``kind``,
    ``seq``, ...) is ignored. ``feed`` is one ``[[feeds]]`` table (see :func:`load_feed`).
    Returns ``{(measurement, tuple(sorted(tags.items())), window_end_ms): {field: value}}``,
    the FINAL state after every reading has been applied (late corrections included).
``window_tag(window_s)``
    The ``window`` tag: ``Nh`` when the length divides into hours, else ``Nm``, else ``Ns``.
``load_feed(city_toml, kind)``
    The ``[[feeds]]`` table of ``kind`` from a city TOML file.
``recording_feed_points(rows, city_toml, *, horizon_s=86400)``
    The points of every feed of a city file for a simulator recording's rows (publish order):
    each feed's readings labelled valid in ``expected``, with the topic's district.

Interpretations (fixed by the team; the engine must agree, or the contract must say otherwise)
---------------------------------------------------------------------------------------------
 1. Duplicate: a reading whose (``sensor_id``, normalised ``ts``) equals that of an earlier
    accepted reading is dropped entirely (``seq`` and the other fields are not looked at). A
    reading dropped by the horizon (6) is not accepted, so it does not make a later one a
    duplicate.
 2. Entity: ``entity = "district"`` -> tag ``district`` = the reading's (topic's) district;
    otherwise the tag key is the entity field's name and the value the reading's value of that
    field (readings of several districts with the same value share one point).
 3. Windows are tumbling and epoch-aligned: ``start = ts - ts mod window``; point timestamp =
    ``start + window`` (the window end).
 4. ``window`` tag: see :func:`window_tag` (3600 -> ``1h``, 900 -> ``15m``, 30 -> ``30s``,
    86400 -> ``24h``).
 5. Grace only decides when a window is first final, never its final values: it is ignored.
 6. Horizon: watermark per entity = max ``ts`` of the entity's accepted readings so far; a
    reading with ``ts < watermark - horizon_s`` is dropped: no count, no window, no watermark,
    sensor or duplicate state change.
 7. Ordering for ``delta`` / ``increase``: state per (entity, ``sensor_id``): the latest ``ts``
    of any accepted reading and, per field, the previous value. A reading with ``ts`` greater
    than that latest ``ts`` (or the sensor's first) is in order: for each delta/increase field
    it carries, with a previous value, ``delta = v - prev`` (``v`` when that is negative: a
    reset) and ``increase = max(0, v - prev)``; then ``prev = v``; the latest ``ts`` becomes
    ``ts`` even if the reading carries none of those fields. An older reading adds no
    delta/increase and changes no sensor state, but counts for every other aggregation.
    Deltas go to the window of the reading that carries them.
 8. A reading "carries" a field when the key is present and not ``None``. Booleans count as
    1 / 0. ``count``, ``sensors`` and ``count_above`` are ``int``; every other KPI ``float``.
    ``scale`` (default 1) multiplies ``sum``, ``mean``, ``min``, ``max``, ``delta`` and
    ``increase``.
 9. ``delta`` / ``increase`` are 0.0 when some reading of the window carries the field but no
    delta results; every other KPI whose field no reading of the window carries is left out
    (``count`` and ``sensors`` are always present). ``ratio_pct`` uses the readings carrying
    both ``field`` and ``of`` and is left out when there are none or ``sum(of) == 0``.
10. Target: ``target`` (float, the limit) is on every point of the feed; ``<kpi>_24h`` = mean
    of the KPI's final values over the entity's windows that have the KPI and whose START is in
    ``[end - 24 h, end)`` (this window included); ``on_track`` = ``<kpi>_24h <= at_most``
    (or ``>= at_least``). Without any such window ``<kpi>_24h`` and ``on_track`` are left out.
11. Only windows with at least one accepted reading produce a point. Alerts are not computed.
"""

from __future__ import annotations

import base64
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.oracle import OracleInputError, PointKey, parse_ts, window_start

__all__ = [
    "DEFAULT_HORIZON_S",
    "FeedPoints",
    "compute_feed_points",
    "load_feed",
    "recording_feed_points",
    "window_tag",
]

DEFAULT_HORIZON_S = 86_400
DAY_MS = 86_400_000

FeedValue = float | int | bool
FeedPoints = dict[PointKey, dict[str, FeedValue]]

_FIELD_AGGS = frozenset({"sum", "mean", "min", "max", "delta", "increase", "count_above",
                         "share_between", "ratio_pct"})
_ALL_AGGS = _FIELD_AGGS | {"count", "sensors"}
_ORDERED_AGGS = frozenset({"delta", "increase"})


def window_tag(window_s: int) -> str:
    """The ``window`` tag of a window length: hours, else minutes, else seconds."""
    if window_s <= 0:
        raise OracleInputError(f"window_s must be positive: {window_s!r}")
    if window_s % 3600 == 0:
        return f"{window_s // 3600}h"
    if window_s % 60 == 0:
        return f"{window_s // 60}m"
    return f"{window_s}s"


def load_feed(city_toml_path: Path | str, kind: str) -> dict[str, Any]:
    """The ``[[feeds]]`` table whose ``kind`` is ``kind``, from a city TOML file."""
    with open(city_toml_path, "rb") as fh:
        city = tomllib.load(fh)
    for feed in city.get("feeds", []):
        if feed.get("kind") == kind:
            return dict(feed)
    raise KeyError(f"no [[feeds]] table with kind = {kind!r} in {city_toml_path}")


def _carries(reading: Mapping[str, Any], name: str) -> bool:
    return reading.get(name) is not None


def _num(value: Any) -> float:
    """A field value as a float; booleans count as 1 / 0."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    raise OracleInputError(f"not a numeric value: {value!r}")


@dataclass
class _Window:
    readings: list[Mapping[str, Any]] = field(default_factory=list)
    deltas: dict[str, list[float]] = field(default_factory=dict)  # field -> deltas
    increases: dict[str, list[float]] = field(default_factory=dict)  # field -> increases


@dataclass
class _Sensor:
    latest_ts: int
    prev: dict[str, float] = field(default_factory=dict)  # field -> previous value


def _check_feed(feed: Mapping[str, Any]) -> tuple[str, int, str, list[Mapping[str, Any]]]:
    kind = feed.get("kind")
    if not isinstance(kind, str) or not kind:
        raise OracleInputError(f"feed without a kind: {feed!r}")
    window_s = feed.get("window_s")
    if not isinstance(window_s, int) or isinstance(window_s, bool) or window_s <= 0:
        raise OracleInputError(f"feed {kind}: bad window_s {window_s!r}")
    entity = feed.get("entity", "district")
    if not isinstance(entity, str) or not entity:
        raise OracleInputError(f"feed {kind}: bad entity {entity!r}")
    kpis: list[Mapping[str, Any]] = list(feed.get("kpis", []))
    for kpi in kpis:
        agg = kpi.get("agg")
        if agg not in _ALL_AGGS:
            raise OracleInputError(f"feed {kind}: KPI {kpi.get('name')!r} has unknown agg "
                                   f"{agg!r}")
        if agg in _FIELD_AGGS and not isinstance(kpi.get("field"), str):
            raise OracleInputError(f"feed {kind}: KPI {kpi.get('name')!r} needs a field")
        if agg == "ratio_pct" and not isinstance(kpi.get("of"), str):
            raise OracleInputError(f"feed {kind}: KPI {kpi.get('name')!r} needs 'of'")
    target = feed.get("target")
    if target is not None:
        if target.get("kpi") not in {k.get("name") for k in kpis}:
            raise OracleInputError(f"feed {kind}: target KPI {target.get('kpi')!r} is not a KPI")
        if ("at_most" in target) == ("at_least" in target):
            raise OracleInputError(f"feed {kind}: target needs exactly one of at_most/at_least")
    return kind, window_s, entity, kpis


def _kpi_value(kpi: Mapping[str, Any], win: _Window) -> FeedValue | None:
    """The KPI's value in one window, or None when it is left out of the point."""
    agg = kpi["agg"]
    readings = win.readings
    if agg == "count":
        return len(readings)
    if agg == "sensors":
        return len({str(r["sensor_id"]) for r in readings})
    name: str = kpi["field"]
    scale = float(kpi.get("scale", 1.0))
    if agg == "ratio_pct":
        of: str = kpi["of"]
        both = [r for r in readings if _carries(r, name) and _carries(r, of)]
        denominator = math.fsum(_num(r[of]) for r in both)
        if not both or denominator == 0.0:
            return None
        return 100.0 * math.fsum(_num(r[name]) for r in both) / denominator
    values = [_num(r[name]) for r in readings if _carries(r, name)]
    if not values:
        return None  # no reading of the window carries the field (delta/increase too)
    if agg == "delta":
        return scale * math.fsum(win.deltas.get(name, []))
    if agg == "increase":
        return scale * math.fsum(win.increases.get(name, []))
    if agg == "sum":
        return scale * math.fsum(values)
    if agg == "mean":
        return scale * (math.fsum(values) / len(values))
    if agg == "min":
        return scale * min(values)
    if agg == "max":
        return scale * max(values)
    if agg == "count_above":
        threshold = float(kpi["threshold"])
        return sum(1 for v in values if v > threshold)
    if agg == "share_between":
        lo, hi = float(kpi["min"]), float(kpi["max"])
        return 100.0 * sum(1 for v in values if lo <= v <= hi) / len(values)
    raise OracleInputError(f"unknown agg {agg!r}")  # unreachable after _check_feed


def compute_feed_points(readings: Iterable[Mapping[str, Any]], feed: Mapping[str, Any], *,
                        horizon_s: int = DEFAULT_HORIZON_S) -> FeedPoints:
    """Expected final ``<kind>_kpi`` points of one declared feed (see the module docstring)."""
    kind, window_s, entity_key, kpis = _check_feed(feed)
    window_ms = window_s * 1000
    ordered_fields = sorted({str(k["field"]) for k in kpis if k["agg"] in _ORDERED_AGGS})

    seen: set[tuple[str, int]] = set()
    watermarks: dict[str, int] = {}
    sensors: dict[tuple[str, str], _Sensor] = {}
    windows: dict[tuple[str, int], _Window] = {}

    for n, reading in enumerate(readings):
        sensor_id = reading.get("sensor_id")
        if not isinstance(sensor_id, str):
            raise OracleInputError(f"reading #{n}: no string sensor_id")
        ts = parse_ts(reading.get("ts"))
        entity = reading.get(entity_key)
        if not isinstance(entity, str):
            raise OracleInputError(f"reading #{n}: entity {entity_key!r} missing or not a "
                                   f"string: {entity!r}")

        if (sensor_id, ts) in seen:
            continue  # duplicate
        wm = watermarks.get(entity)
        if wm is not None and ts < wm - horizon_s * 1000:
            continue  # beyond the late-data horizon
        seen.add((sensor_id, ts))
        watermarks[entity] = ts if wm is None else max(wm, ts)

        win = windows.setdefault((entity, window_start(ts, window_s)), _Window())
        win.readings.append(reading)

        state = sensors.get((entity, sensor_id))
        if state is None:
            state = sensors[(entity, sensor_id)] = _Sensor(latest_ts=ts)
        elif ts > state.latest_ts:
            state.latest_ts = ts
        else:
            continue  # out of order for this sensor: no delta, no state change
        for name in ordered_fields:
            if not _carries(reading, name):
                continue
            value = _num(reading[name])
            prev = state.prev.get(name)
            if prev is not None:
                diff = value - prev
                win.deltas.setdefault(name, []).append(diff if diff >= 0 else value)
                win.increases.setdefault(name, []).append(max(0.0, diff))
            state.prev[name] = value

    # ---- per-window KPI values
    tag = window_tag(window_s)
    values: dict[tuple[str, int], dict[str, FeedValue]] = {}
    for key in sorted(windows):
        fields: dict[str, FeedValue] = {}
        for kpi in kpis:
            v = _kpi_value(kpi, windows[key])
            if v is not None:
                fields[str(kpi["name"])] = v
        values[key] = fields

    # ---- target: 24 h mean over the entity's windows starting in [end - 24 h, end)
    target = feed.get("target")
    if target is not None:
        target_kpi = str(target["kpi"])
        at_most = "at_most" in target
        limit = float(target["at_most"] if at_most else target["at_least"])
        for (entity, start), fields in values.items():
            end = start + window_ms
            span = [float(f[target_kpi]) for (e, s), f in values.items()
                    if e == entity and end - DAY_MS <= s < end and target_kpi in f]
            fields["target"] = limit
            if span:
                mean_24h = math.fsum(span) / len(span)
                fields[f"{target_kpi}_24h"] = mean_24h
                fields["on_track"] = mean_24h <= limit if at_most else mean_24h >= limit

    measurement = f"{kind}_kpi"
    return {
        (measurement, tuple(sorted({"window": tag, entity_key: entity}.items())),
         start + window_ms): fields
        for (entity, start), fields in values.items()
    }


_TOPIC_RE = re.compile(
    r"^city/([a-z0-9][a-z0-9-]{0,62})/([a-z][a-z0-9_]{0,30})/[A-Za-z0-9_-]{1,64}$")


def recording_feed_points(rows: Iterable[Mapping[str, Any]], city_toml: Path | str, *,
                          horizon_s: int = DEFAULT_HORIZON_S) -> FeedPoints:
    """Expected points of every ``[[feeds]]`` table of ``city_toml`` for recording rows (see
    the module docstring): valid readings by their ``expected`` labels, in publish order."""
    with open(city_toml, "rb") as fh:
        feeds = {f["kind"]: f for f in tomllib.load(fh).get("feeds", [])}
    readings: dict[str, list[dict[str, Any]]] = {kind: [] for kind in feeds}
    for row in rows:
        m = _TOPIC_RE.match(str(row["topic"]))
        expected = row["expected"]
        if m is None or m.group(2) not in feeds or not any(e.get("valid") for e in expected):
            continue
        body = json.loads(base64.b64decode(row["payload_b64"]).decode("utf-8"))
        objects = body if isinstance(body, list) else [body]
        if len(objects) != len(expected):
            raise OracleInputError(f"message {row.get('seq')}: {len(objects)} readings, "
                                   f"{len(expected)} expectations")
        for obj, entry in zip(objects, expected, strict=True):
            if entry.get("valid"):
                readings[m.group(2)].append({**obj, "district": m.group(1)})
    points: FeedPoints = {}
    for kind, feed in feeds.items():
        points.update(compute_feed_points(readings[kind], feed, horizon_s=horizon_s))
    return points
