"""`citystream sim`: the city simulator's command line."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click

from models.city import load_city
from models.errors import CityModelError
from models.settings import ConfigError, Settings
from sensors_sim import faults
from sensors_sim.generator import Scenario, SimConfig, Simulation, lookback_ms
from sensors_sim.recording import Recorder, iso_utc
from sensors_sim.runner import FellBehind, Pacing, run, stderr_if_tty
from sensors_sim.transport import DryRunTransport, MqttTransport, Transport, TransportError

log = logging.getLogger("sensors_sim")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
START_MARGIN_S = 600
"""The default --start stays this far inside the late-data horizon."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `6h`, `1d` or `2w`."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 6h, 1d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_start(text: str, now_ms: int) -> int:
    """Epoch ms from RFC 3339 (`2026-11-21T06:00:00Z`), epoch ms, or `now-6h` / `now`."""
    text = text.strip()
    if text.startswith("now"):
        rest = text[3:].strip()
        if not rest:
            return now_ms
        if not rest.startswith("-"):
            raise ValueError(f"{text!r}: only now-<duration> is supported (e.g. now-6h)")
        return now_ms - int(parse_duration(rest[1:]) * 1000)
    if text.isdigit():
        return int(text)
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not RFC 3339 (e.g. 2026-11-21T06:00:00Z), epoch ms or "
                         f"now-<duration>") from None
    if instant.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (add Z or +01:00)")
    return int(instant.timestamp() * 1000)


def parse_fault(text: str) -> tuple[str, float]:
    """`kind=rate` -> (kind, rate)."""
    kind, sep, rate = text.partition("=")
    kind = kind.strip().replace("-", "_")
    if not sep:
        raise ValueError(f"{text!r}: expected KIND=RATE, e.g. invalid_json=0.01")
    if kind not in faults.FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(faults.FAULT_KINDS)}")
    try:
        value = float(rate)
    except ValueError:
        raise ValueError(f"{text!r}: the rate must be a number within 0..1") from None
    return kind, value


def _env(name: str) -> str:
    return f"CITYSTREAM_SIM_{name}"


@click.command(context_settings=CONTEXT)
@click.option("--city", "city_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="CITYSTREAM_CITY__FILE", show_envvar=True,
              help="City model TOML [default: the shipped Milton Keynes model].")
@click.option("--seed", type=int, default=1, show_default=True, envvar=_env("SEED"),
              show_envvar=True, help="Random seed: same seed, options and --start give the "
                                     "same messages, byte for byte.")
@click.option("--start", "start_text", envvar=_env("START"), show_envvar=True,
              help="Simulated time of the first tick: RFC 3339 (2026-11-21T06:00:00Z), epoch "
                   "ms, or now-<duration> (now-6h). Default: now - speed x duration, and never "
                   "further back than the late-data horizon minus 10 min (now - 23h50m for the "
                   "shipped city), so every reading is inside the last 24 h and none is in "
                   "the future. Give it explicitly for a reproducible recording.")
@click.option("--speed", type=click.FloatRange(min=0), default=1440.0, show_default=True,
              envvar=_env("SPEED"), show_envvar=True,
              help="Simulated seconds per wall second (1440 = a day a minute; 1 = real time; "
                   "0 = as fast as possible). Messages are never published before their "
                   "simulated time, so a run that catches up with the wall clock goes on in "
                   "real time.")
@click.option("--duration", "duration_text", envvar=_env("DURATION"), show_envvar=True,
              help="Stop after this much wall-clock time (60, 90s, 15m, 2h).")
@click.option("--count", type=click.IntRange(min=1), envvar=_env("COUNT"), show_envvar=True,
              help="Stop after publishing this many messages.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              envvar=_env("RATE"), show_envvar=True,
              help="At most this many messages per wall second (0 = no limit; --speed still "
                   "applies).")
@click.option("--size", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, envvar=_env("SIZE"), show_envvar=True,
              help="Multiply the city file's meters and traffic counters by this. District and "
                   "junction totals stay on their baselines (each sensor's share shrinks), so "
                   "KPIs are unchanged while the message rate grows. Declared feeds keep their "
                   "sensor count.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              envvar=_env("BATCH"), show_envvar=True,
              help="Readings per message: a gateway buffers N readings of one sensor and "
                   "publishes them as one JSON array (1 = single objects).")
@click.option("--gateways", type=click.IntRange(min=1), default=4, show_default=True,
              envvar=_env("GATEWAYS"), show_envvar=True,
              help="Gateways, each its own MQTT connection; sensors are grouped into them by "
                   "district.")
@click.option("--window", type=click.IntRange(min=1, max=65535), default=256,
              show_default=True, envvar=_env("WINDOW"), show_envvar=True,
              help="Unacknowledged QoS 1 messages per gateway before it waits for PUBACKs "
                   "(capped by the broker's Receive Maximum).")
@click.option("--meter-interval", type=click.IntRange(min=1), default=60, show_default=True,
              envvar=_env("METER_INTERVAL"), show_envvar=True,
              help="Seconds (simulated) between a water or energy meter's readings.")
@click.option("--traffic-interval", type=click.IntRange(min=1, max=3600), default=60,
              show_default=True, envvar=_env("TRAFFIC_INTERVAL"), show_envvar=True,
              help="Seconds (simulated) a traffic counter counts per reading (interval_s).")
@click.option("--shuttle-interval", type=click.IntRange(min=1), default=10, show_default=True,
              envvar=_env("SHUTTLE_INTERVAL"), show_envvar=True,
              help="Seconds (simulated) between a shuttle's readings.")
@click.option("--scenario", type=click.Choice(["baseline", "savings"]), default="baseline",
              show_default=True, envvar=_env("SCENARIO"), show_envvar=True,
              help="baseline: use follows the city's baselines (about 0 % saving). savings: "
                   "an MK:Smart-style programme cuts water, energy and congestion from --start "
                   "on, reaching 1.1 x each target (22 % water, 3.3 % energy, 55 % less "
                   "congestion for the shipped city) after --ramp.")
@click.option("--ramp", "ramp_text", default="1d", show_default=True, envvar=_env("RAMP"),
              show_envvar=True,
              help="Simulated time the savings programme takes to reach its full effect "
                   "(6h, 1d, 4w).")
@click.option("--leak-district", "leak_districts", multiple=True,
              envvar=_env("LEAK_DISTRICT"), show_envvar=True,
              help="A water leak in this district: a quarter of its meters draw extra water "
                   "between 02:00 and 04:00 local time every night (label `leak`). Repeatable.")
@click.option("--fault", "fault_texts", multiple=True, envvar=_env("FAULT"), show_envvar=True,
              help="Inject a fault: KIND=RATE, repeatable. Message faults (probability per "
                   "message): invalid_json, too_large, bad_topic, schema, non_finite, "
                   "out_of_range, sensor_mismatch, future_timestamp, too_old, duplicate, "
                   "reorder. Sensor faults (probability per reading): meter_reset (registers "
                   "and feed counters), silent, clock_skew, stuck (water and energy registers "
                   "freeze). Declared feeds get the first three. See "
                   "docs/simulator.md.")
@click.option("--faults", "all_faults", type=click.FloatRange(0, 0.09),
              envvar=_env("FAULTS"), show_envvar=True,
              help="Every fault kind at this rate (--fault overrides single kinds).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar=_env("RECORD"), show_envvar=True,
              help="Write every published message with its expected outcome to this JSONL "
                   "file (docs/recording.md).")
@click.option("--dry-run", is_flag=True, envvar=_env("DRY_RUN"), show_envvar=True,
              help="Generate (and record) without MQTT and without any pacing: as fast as "
                   "possible, whatever --speed/--rate say; no wall-clock checks.")
@click.option("--host", envvar="CITYSTREAM_MQTT__HOST", show_envvar=True,
              help="MQTT broker host [default: settings, 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), envvar="CITYSTREAM_MQTT__PORT",
              show_envvar=True, help="MQTT broker port [default: settings, 1883].")
@click.option("--username", envvar="CITYSTREAM_MQTT__USERNAME", show_envvar=True,
              help="MQTT username (a gateway allowed to publish on city/#).")
@click.option("--password", envvar="CITYSTREAM_MQTT__PASSWORD", show_envvar=True,
              help="MQTT password.")
@click.option("--ack-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              envvar=_env("ACK_TIMEOUT"), show_envvar=True,
              help="Seconds to wait at the end for outstanding PUBACKs.")
@click.option("--progress/--no-progress", default=None, envvar=_env("PROGRESS"),
              show_envvar=True, help="Progress line on stderr [default: when it is a terminal].")
def sim(city_file: Path | None, seed: int, start_text: str | None, speed: float,
        duration_text: str | None, count: int | None, rate: float, size: float, batch: int,
        gateways: int, window: int, meter_interval: int, traffic_interval: int,
        shuttle_interval: int, scenario: str, ramp_text: str, leak_districts: tuple[str, ...],
        fault_texts: tuple[str, ...], all_faults: float | None, record_path: Path | None,
        dry_run: bool, host: str | None, port: int | None, username: str | None,
        password: str | None, ack_timeout: float, progress: bool | None) -> None:
    """Simulate a city's sensors publishing readings over MQTT (QoS 1, MQTT 5).

    Water and energy meters, junction traffic counters and autonomous shuttles, modelled on
    Milton Keynes' MK:Smart programme, publish on city/<district>/<kind>/<sensor_id> exactly as
    the contract says, from --gateways connections. Every feed the city file declares
    ([[feeds]], e.g. air_quality, car_park, bus_occupancy in the shipped city) is simulated too,
    from its field definitions: plausible values within each field's min/max, counters that
    only grow (until a meter_reset), ratio fields within their `of`, a reading every max(60,
    window_s / 4) s. Faults on demand (--fault, for feeds too), each recorded with the
    dead-letter reason ingest must give (--record).

    \b
    Examples:
      citystream sim --duration 60              # the last 24 h of the city in a minute
      citystream sim --speed 1 --start now-5m   # live, in real time, until Ctrl-C
      citystream sim --scenario savings --ramp 6h --duration 60
      citystream sim --duration 60 --faults 0.002 --fault duplicate=0.01 \\
          --leak-district bletchley --record run.jsonl
      citystream sim --dry-run --speed 0 --count 100000 --seed 7 \\
          --start 2026-11-21T00:00:00Z --record sample.jsonl

    Determinism: --seed, --start and the other options fix every message byte for byte
    (--gateways, --window, --rate and --host do not change the messages). Without --start the
    start follows the wall clock; without --count the number of messages depends on timing.

    MQTT connection: CITYSTREAM_MQTT__HOST, __PORT, __USERNAME, __PASSWORD, __TLS_CA,
    __KEEPALIVE_S (or the options below). Exit status 1 when messages stay unacknowledged,
    the broker refuses some, or the run falls behind the late-data horizon.
    """
    try:
        settings = Settings.load()
    except ConfigError as exc:
        _fail(str(exc), 2)
    try:
        city = load_city(city_file or settings.city.file)
    except CityModelError as exc:
        _fail(f"{exc} (--city, CITYSTREAM_CITY__FILE)", 2)
    try:
        duration_s = parse_duration(duration_text) if duration_text else None
        ramp_s = parse_duration(ramp_text)
        rates: dict[str, float] = {}
        if all_faults is not None:
            rates = dict.fromkeys(faults.FAULT_KINDS, all_faults)
        for text in fault_texts:
            for item in text.split(","):
                if item.strip():
                    kind, value = parse_fault(item)
                    rates[kind] = value
        faults.check_rates(rates)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    horizon_ms = city.windows.horizon_s * 1000
    now_ms = int(time.time()) * 1000
    config = SimConfig(
        start_ms=0, seed=seed, size=size, batch=batch, gateways=gateways,
        meter_interval_s=meter_interval, traffic_interval_s=traffic_interval,
        shuttle_interval_s=shuttle_interval, scenario=_scenario(scenario), ramp_s=ramp_s,
        leak_districts=tuple(leak_districts), fault_rates=rates)
    # batches, reordering, duplicates and skew make a message's oldest reading older than it
    max_back_ms = horizon_ms - START_MARGIN_S * 1000 - lookback_ms(config)
    if max_back_ms <= 0:
        raise click.UsageError(f"--batch {batch} spans more than the late-data horizon")
    if start_text:
        try:
            start_ms = parse_start(start_text, now_ms)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--start") from None
        if not dry_run and start_ms > now_ms:
            raise click.BadParameter(f"{iso_utc(start_ms)} is in the future; readings must "
                                     f"not be (use --dry-run to generate it anyway)",
                                     param_hint="--start")
        if not dry_run and now_ms - start_ms > max_back_ms:
            raise click.BadParameter(
                f"{iso_utc(start_ms)} is more than the late-data horizon minus "
                f"{(horizon_ms - max_back_ms) // 1000} s ago: its readings would be too_old "
                f"(use --dry-run to generate it anyway)", param_hint="--start")
    else:
        back_ms = max_back_ms
        if speed > 0 and duration_s is not None:
            back_ms = min(math.ceil(speed * duration_s) * 1000, max_back_ms)
        start_ms = now_ms - back_ms

    config = dataclasses.replace(config, start_ms=start_ms)
    try:
        simulation = Simulation(city, config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    mqtt = settings.mqtt
    transport: Transport
    if dry_run:
        transport = DryRunTransport()
        target = "dry run"
    else:
        pw = password if password is not None else (
            mqtt.password.get_secret_value() if mqtt.password is not None else None)
        transport = MqttTransport(host or mqtt.host, port or mqtt.port,
                                  username if username is not None else mqtt.username, pw,
                                  gateways=gateways, window=window,
                                  keepalive_s=mqtt.keepalive_s, tls_ca=mqtt.tls_ca)
        target = f"mqtt://{host or mqtt.host}:{port or mqtt.port} via {gateways} gateways"
    per_min = _readings_per_sim_minute(simulation)
    declared = [k.name for k in simulation.kinds if k.feed is not None]
    click.echo(f"sim: {city.name}, {simulation.n_sensors} sensors"
               + (f" (declared feeds: {', '.join(declared)})" if declared else "")
               + f" (~{per_min:,.0f} readings per simulated minute) -> {target}; start "
               f"{iso_utc(start_ms)}, speed {speed:g}, seed {seed}"
               + (f", faults {rates}" if rates else ""), err=True)
    show = stderr_if_tty() if progress is None else (sys.stderr if progress else None)
    recorder = Recorder(record_path) if record_path is not None else None
    pacing = Pacing(speed=speed, rate=rate, realtime=not dry_run, horizon_ms=horizon_ms)
    try:
        summary = run(simulation.messages(), transport, pacing, sim_start_ms=start_ms,
                      count=count, duration_s=duration_s, recorder=recorder, progress=show,
                      ack_timeout_s=ack_timeout)
    except TransportError as exc:
        if recorder is not None:
            recorder.close()
        _fail(str(exc), 1)
    except FellBehind as exc:
        _fail(str(exc), 1)
    click.echo(summary.line())
    if not summary.ok:
        sys.exit(1)


def _scenario(text: str) -> Scenario:
    return "savings" if text == "savings" else "baseline"


def _readings_per_sim_minute(simulation: Simulation) -> float:
    return sum(60_000 * len(k.ids) / k.interval_ms for k in simulation.kinds)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
