"""Write the shipped Milton Keynes city model (models/cities/milton-keynes.toml).

The districts, junctions and the station-centre shuttle route are modelled on Milton Keynes and
the MK:Smart programme; the hour-of-week baselines are the hourly means of the simulator's own
unsaved demand profiles (`sensors_sim.profiles`), so a plain `citystream sim` run sits near 0 %
saving and the savings scenario moves the KPIs from there.

    python -m sensors_sim.make_city            # rewrite the file
    python -m sensors_sim.make_city --check    # exit 1 if the file is not what this writes
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from sensors_sim import profiles

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "cities" / "milton-keynes.toml"
FEEDS = Path(__file__).resolve().parent / "mk_feeds.toml"
"""The city's declared feeds (CONTRACT section 5), appended to the file as they are."""

HOME_WATER_L_H = 14.0
"""Mean draw of a household water meter (about 340 L a day, the UK household average)."""
BUSINESS_WATER_L_H = 55.0
HOME_ENERGY_KWH_H = 0.4
"""Mean demand of a household electricity meter (about 3,500 kWh a year)."""
BUSINESS_ENERGY_KWH_H = 5.0


@dataclass(frozen=True)
class DistrictSpec:
    """A district and what its meters look like; `commercial` is the business share of demand."""

    slug: str
    name: str
    water_meters: int
    energy_meters: int
    commercial: float


@dataclass(frozen=True)
class JunctionSpec:
    """A roundabout; `peak_load` is its volume/capacity ratio at the weekday peak."""

    id: str
    district: str
    name: str
    free_flow_speed_kmh: float
    counters: int
    peak_load: float


DISTRICTS = (
    DistrictSpec("central-mk", "Central Milton Keynes", 40, 40, 0.7),
    DistrictSpec("bletchley", "Bletchley and Fenny Stratford", 30, 30, 0.3),
    DistrictSpec("wolverton", "Wolverton", 20, 20, 0.2),
    DistrictSpec("newport-pagnell", "Newport Pagnell", 20, 20, 0.15),
    DistrictSpec("kents-hill", "Kents Hill and the Open University", 15, 15, 0.3),
    DistrictSpec("stony-stratford", "Stony Stratford", 15, 15, 0.15),
)

JUNCTIONS = (
    JunctionSpec("j-portway-h5", "central-mk",
                 "Portway (H5) / Marlborough Street (V8) roundabout", 48.0, 4, 0.97),
    JunctionSpec("j-elder-gate", "central-mk",
                 "Elder Gate / Portway (H5) roundabout, Milton Keynes Central", 48.0, 4, 0.92),
    JunctionSpec("j-bletcham-way-v7", "bletchley",
                 "Bletcham Way (H10) / Saxon Street (V7) roundabout", 56.0, 4, 0.85),
    JunctionSpec("j-standing-way-v4", "bletchley",
                 "Standing Way (H8) / Watling Street (V4) roundabout", 56.0, 3, 0.88),
    JunctionSpec("j-millers-way-v5", "wolverton",
                 "Millers Way (H2) / Great Monks Street (V5) roundabout", 48.0, 3, 0.75),
    JunctionSpec("j-tongwell-st-h3", "newport-pagnell",
                 "Tongwell Street (V11) / Monks Way (H3) roundabout", 56.0, 3, 0.82),
    JunctionSpec("j-brickhill-st-h8", "kents-hill",
                 "Brickhill Street (V10) / Standing Way (H8) roundabout", 56.0, 3, 0.86),
    JunctionSpec("j-ridgeway-v4", "stony-stratford",
                 "Ridgeway (H1) / Watling Street (V4) roundabout", 48.0, 3, 0.7),
)

# Milton Keynes Central to centre:mk along Midsummer Boulevard, in route order.
STATION_CENTRE_STOPS = (
    ("mk-central", 52.0343, -0.7741),
    ("grafton-gate", 52.0363, -0.7704),
    ("witan-gate", 52.0388, -0.7656),
    ("saxon-gate", 52.0412, -0.7612),
    ("centre-mk", 52.0437, -0.7564),
)


def water_baseline(spec: DistrictSpec) -> list[float]:
    """Litres per hour for each hour of week: meters x mean draw x the unsaved profile."""
    level = (1 - spec.commercial) * HOME_WATER_L_H + spec.commercial * BUSINESS_WATER_L_H
    week = profiles.hourly_means(profiles.water_shape(spec.commercial)) * level * spec.water_meters
    return [round(float(v), 3) for v in week]


def energy_baseline(spec: DistrictSpec) -> list[float]:
    """kWh per hour for each hour of week: meters x mean demand x the unsaved profile."""
    level = (1 - spec.commercial) * HOME_ENERGY_KWH_H + spec.commercial * BUSINESS_ENERGY_KWH_H
    week = profiles.hourly_means(profiles.energy_shape(spec.commercial)) * level \
        * spec.energy_meters
    return [round(float(v), 4) for v in week]


def junction_baseline(spec: JunctionSpec) -> list[float]:
    """Baseline congestion index for each hour of week (speed-flow curve at the unsaved flow)."""
    return [round(float(v), 5) for v in profiles.congestion_baseline(spec.peak_load)]


def _floats(values: list[float], indent: str = "  ", per_line: int = 8) -> str:
    lines = [indent + ", ".join(repr(float(v)) for v in values[i:i + per_line]) + ","
             for i in range(0, len(values), per_line)]
    return "[\n" + "\n".join(lines) + "\n]"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_toml() -> str:
    """The whole city file as TOML text (deterministic)."""
    out = [
        "# Milton Keynes, modelled on the MK:Smart programme. GENERATED by",
        "# `python -m sensors_sim.make_city` from the simulator's demand profiles: edit the",
        "# script, not this file. Baselines are hour-of-week (UTC, Monday 00:00 = index 0).",
        'name = "Milton Keynes"',
        'timezone = "Europe/London"',
        "",
        "[targets]",
        "water_saving_pct = 20.0",
        "energy_saving_pct = 3.0",
        "congestion_reduction_pct = 50.0",
        "",
        "[windows]",
        "grace_s = 120",
        "horizon_s = 86400",
    ]
    for d in DISTRICTS:
        out += [
            "",
            "[[districts]]",
            f"slug = {_q(d.slug)}",
            f"name = {_q(d.name)}",
            f"water_meters = {d.water_meters}",
            f"energy_meters = {d.energy_meters}",
            f"water_baseline_l_h = {_floats(water_baseline(d))}",
            f"energy_baseline_kwh_h = {_floats(energy_baseline(d))}",
        ]
    for j in JUNCTIONS:
        out += [
            "",
            "[[junctions]]",
            f"id = {_q(j.id)}",
            f"district = {_q(j.district)}",
            f"name = {_q(j.name)}",
            f"free_flow_speed_kmh = {j.free_flow_speed_kmh!r}",
            f"counters = {j.counters}",
            f"congestion_baseline = {_floats(junction_baseline(j))}",
        ]
    out += [
        "",
        "[[routes]]",
        'id = "station-centre"',
        'district = "central-mk"',
        'name = "Milton Keynes Central station - centre:mk"',
        "fleet_size = 4",
        "capacity = 10",
        "stops = [",
        *[f"  {{ id = {_q(s)}, lat = {lat!r}, lon = {lon!r} }},"
          for s, lat, lon in STATION_CENTRE_STOPS],
        "]",
        "",
        FEEDS.read_text(encoding="utf-8").rstrip(),
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the city file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="file to write")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from what would be written")
    args = parser.parse_args(argv)
    text = build_toml()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m sensors_sim.make_city",
                  file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
