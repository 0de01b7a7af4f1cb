"""Decode cost per reading: `python -m bench.decode_bench [--quick]` prints a table.

For each kind, a single-object payload and a 50-reading array are decoded three ways:
- `model_validate_json`: pydantic-core parses and validates the payload bytes (decode's fast path);
- `orjson+model_validate`: orjson parses, pydantic validates each dict (decode's careful path);
- `decode()`: the real decoder: topic, size, validation, sensor and time checks.
The `+rfc3339` rows send `ts` as text instead of integer milliseconds.
Figures are the median over repeats, in microseconds per reading.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import TypeAdapter

from ingest.decode import decode
from models.kinds import reading_types
from models.readings import topic_context

NOW = 1_795_241_700_000
PAYLOADS: dict[str, dict[str, Any]] = {
    "water": {"sensor_id": "wm-0001", "ts": NOW - 1000, "seq": 41, "volume_m3": 1234.567,
              "flow_l_min": 3.2, "pressure_bar": 3.1},
    "energy": {"sensor_id": "wm-0001", "ts": NOW - 1000, "seq": 41, "energy_kwh": 98765.4,
               "power_kw": 2.75},
    "traffic": {"sensor_id": "wm-0001", "ts": NOW - 1000, "seq": 41, "junction": "j-portway-h5",
                "vehicle_count": 37, "interval_s": 60, "mean_speed_kmh": 31.4,
                "occupancy_pct": 12.5},
    "shuttle": {"sensor_id": "wm-0001", "ts": NOW - 1000, "seq": 41,
                "route_id": "station-centre", "lat": 52.0343, "lon": -0.7741, "speed_kmh": 17.5,
                "passengers": 6, "capacity": 10, "battery_pct": 72.5, "status": "in_service",
                "stop_id": "mk-central", "delay_s": 42.0, "disengaged": False},
}


def median_us(funcs: list[Callable[[], object]], readings: int, budget_s: float,
              repeat: int) -> list[float]:
    """Median µs per reading of each function; rounds interleave them so load hits all alike."""
    numbers = [max(1, int(budget_s / max(timeit.timeit(f, number=1), 1e-7))) for f in funcs]
    runs: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeat):
        for func, number, out in zip(funcs, numbers, runs, strict=True):
            out.append(timeit.timeit(func, number=number) / number / readings * 1e6)
    return [statistics.median(out) for out in runs]


def cases(kind: str, size: int, rfc3339: bool) -> dict[str, Callable[[], object]]:
    model = reading_types()[kind]
    many = TypeAdapter(list[model])  # type: ignore[valid-type]
    topic = f"city/central-mk/{kind}/wm-0001"
    context = topic_context("central-mk")
    ts: int | str = "2026-11-21T06:14:59.000Z" if rfc3339 else NOW - 1000
    elements = [dict(PAYLOADS[kind], seq=i, ts=ts) for i in range(size)]
    payload = orjson.dumps(elements[0] if size == 1 else elements)

    def native() -> object:
        if size == 1:
            return model.model_validate_json(payload, context=context, by_alias=True,
                                             by_name=False)
        return many.validate_json(payload, context=context, by_alias=True, by_name=False)

    def orjson_validate() -> object:
        doc = orjson.loads(payload)
        return [model.model_validate(item, context=context, by_alias=True, by_name=False)
                for item in ([doc] if size == 1 else doc)]

    def decoder() -> object:
        out = decode(topic, payload, NOW)
        assert len(out.readings) == size, out.dead_letters
        return out

    return {"model_validate_json": native, "orjson+model_validate": orjson_validate,
            "decode()": decoder}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    args = parser.parse_args()
    budget, repeat = (0.01, 5) if args.quick else (0.03, 21)
    names = list(cases("water", 1, False))
    print(f"{'kind':16} {'payload':8} " + " ".join(f"{n:>22}" for n in names) + "  (µs/reading)")
    rows = [(kind, False) for kind in reading_types()] + [("water", True)]
    for kind, rfc3339 in rows:
        for size in (1, 50):
            figures = median_us(list(cases(kind, size, rfc3339).values()), size, budget, repeat)
            label = kind + ("+rfc3339" if rfc3339 else "")
            shape = "single" if size == 1 else f"{size}-array"
            print(f"{label:16} {shape:8} " + " ".join(f"{x:22.2f}" for x in figures))


if __name__ == "__main__":
    main()
