"""Past readings for the `citystream import` tests: a recorded period of the simulated city
with every fault, its oracle points, and a CSV export with bad rows of every contract reason.

Used by the unit tests (tests/unit/ingest/test_backfill.py, test_csvmap.py, test_history.py)
and by the import against InfluxDB (tests/integration/test_import.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.city import load_city
from sensors_sim import faults
from sensors_sim.generator import SimConfig, Simulation
from sensors_sim.recording import Recorder
from tests.oracle import compute_kpis
from tests.oracle.feeds import recording_feed_points

ROOT = Path(__file__).resolve().parents[1]
CITY_FILE = ROOT / "models" / "cities" / "milton-keynes.toml"
MONDAY = 1_794_787_200_000  # 2026-11-16T00:00:00Z
FAULTS = {**dict.fromkeys(faults.FAULT_KINDS, 0.004), "duplicate": 0.02, "reorder": 0.02,
          "meter_reset": 0.002}
Points = dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, Any]]


def record(path: Path, hours: float, seed: int = 11, size: float = 0.3) -> Path:
    """`hours` of the shipped city from a Monday 00:00 UTC, with every fault, gateways
    batching two readings, as `citystream sim --record` writes them."""
    sim = Simulation(load_city(CITY_FILE), SimConfig(start_ms=MONDAY, seed=seed, size=size,
                                                      batch=2, fault_rates=FAULTS))
    with Recorder(path) as recorder:
        for message in sim.messages():
            if message.sim_time_ms > MONDAY + hours * 3_600_000:
                break
            recorder.write(message)
    return path


def expected_points(rows: list[dict[str, Any]]) -> Points:
    """The oracle's points of a recording's rows: the built-in kinds and the city's feeds."""
    horizon = load_city(CITY_FILE).windows.horizon_s
    points: Points = dict(compute_kpis(rows, CITY_FILE, horizon_s=horizon).points)
    points.update(recording_feed_points(rows, CITY_FILE, horizon_s=horizon))
    return points


EXPORT_MAPPING = """
[columns]
topic = "Topic"
sensor_id = "Sensor"
ts = "Time"
received_at = "Received"
volume_m3 = "Volume"
junction = "Junction"
vehicle_count = "Vehicles"
interval_s = "Interval"
mean_speed_kmh = "Speed"
"""
EXPORT_HEADER = "Topic,Sensor,Time,Received,Volume,Junction,Vehicles,Interval,Speed"


def export_rows() -> list[tuple[str, str | None]]:
    """Rows of a CSV export for `EXPORT_MAPPING`: (row, the reason it is rejected or None).
    Every contract reason but the one a row that is not CSV gets (`invalid_json` for bytes not
    in the encoding: add such a row yourself)."""
    water, t0 = "city/bletchley/water", "2026-11-16T00:{:02d}:00Z"
    rows: list[tuple[str, str | None]] = []
    for i in range(12):
        rows.append((f"{water}/wm-1,wm-1,{t0.format(i)},,{100 + i}.5,,,,", None))
        rows.append((f"{water}/wm-2,wm-2,{t0.format(i)},{t0.format(i + 1)},{7 + i},,,,", None))
    rows += [
        (f"{water}/wm-1,wm-1,{t0.format(3)},,103.5,,,,", None),  # a duplicate: accepted
        ("city/bletchley/traffic/tc-1,tc-1,2026-11-16T00:05:00Z,,,j1,12,60,31.5", None),
        ("city/Bletchley/water/wm-1,wm-1,2026-11-16T00:30:00Z,,5,,,,", "bad_topic"),
        (f"city/bletchley/traffic/tc-1,tc-1,2026-11-16T00:06:00Z,,,{'j' * 70000},1,60,30",
         "too_large"),
        (f"{water}/wm-1,wm-1,2026-11-16T00:31:00Z,,5", "invalid_json"),
        (f"{water}/wm-1,wm-1,twelve o'clock,,5,,,,", "schema"),
        (f"{water}/wm-1,wm-1,2026-11-16T00:32:00Z,,twelve,,,,", "schema"),
        (f"{water}/wm-1,wm-1,2026-11-16T00:33:00Z,,NaN,,,,", "non_finite"),
        (f"{water}/wm-1,wm-1,2026-11-16T00:34:00Z,,-1,,,,", "out_of_range"),
        (f"{water}/wm-1,wm-9,2026-11-16T00:35:00Z,,5,,,,", "sensor_mismatch"),
        (f"{water}/wm-1,wm-1,2099-11-16T00:36:00Z,,5,,,,", "future_timestamp"),
        (f"{water}/wm-2,wm-2,2026-11-14T00:00:00Z,2026-11-16T00:37:00Z,5,,,,", "too_old"),
        (f"{water}/wm-2,wm-2,2026-11-16T00:38:00Z,then,5,,,,", "schema"),
        ('"city/bletchley/water/wm-1","wm-1","2026-11-16T00:40:00Z",,"1\n2",,,,',
         "schema"),  # a quoted cell across lines is one row
    ]
    return rows


def export_readings(rows: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
    """The valid rows of `export_rows` as the oracle's flat readings, in file order."""
    readings = []
    for row, reason in rows:
        if reason is not None:
            continue
        cells = row.split(",")
        reading: dict[str, Any] = {"topic": cells[0], "sensor_id": cells[1], "ts": cells[2]}
        if cells[4]:
            reading["volume_m3"] = float(cells[4])
        else:
            reading.update(junction=cells[5], vehicle_count=int(cells[6]),
                           interval_s=float(cells[7]), mean_speed_kmh=float(cells[8]))
        readings.append(reading)
    return readings
