"""`citystream import`: past readings from files into the KPIs, through the backfill lane."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TextIO

import click

from ingest.backfill.job import ImportOptions, default_state_dir, locked, prepare
from ingest.backfill.runner import Progress, Summary, run_import
from ingest.history import HistoryError

log = logging.getLogger("ingest")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ENV = "CITYSTREAM_IMPORT_"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _check_name(_ctx: click.Context, _param: click.Parameter, value: str | None
                ) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise click.BadParameter(f"{value!r} is not a name of letters, digits, '.', '_' and "
                                 "'-' (at most 64, the first a letter or digit)")
    return value


@click.command("import", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mapping", "mapping_path", metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar=f"{ENV}MAPPING", show_envvar=True,
              help="For CSV inputs: the TOML file saying which column is sensor_id, ts, each "
                   "field (in the contract's units, `scale` converts), and the kind and "
                   "district (a column or a constant). docs/import.md has examples.")
@click.option("--raw/--no-raw", default=False, show_default=True, envvar=f"{ENV}RAW",
              show_envvar=True,
              help="Also write the raw readings to the telemetry bucket. Off by default: "
                   "that bucket's retention (7 days in the local stack, "
                   "CITYSTREAM_STACK__RETENTION_TELEMETRY) drops older readings at once, "
                   "so for history they are only worth writing to a bucket kept longer "
                   "(CITYSTREAM_INFLUX__BUCKET_TELEMETRY).")
@click.option("--id", "name", metavar="NAME", envvar=f"{ENV}ID", show_envvar=True,
              callback=_check_name,
              help="Name of the import, whose state (engine, position, counters) lives in "
                   "--state-dir/NAME. Default: derived from the files, mapping, city file and "
                   "InfluxDB target, so running the same command again resumes an interrupted "
                   "import, or re-reads a finished one against its state (its readings are "
                   "then duplicates: no KPI changes). The same NAME with later files "
                   "continues the same state across imports (give files in time order).")
@click.option("--fresh", is_flag=True, envvar=f"{ENV}FRESH", show_envvar=True,
              help="Forget the import's state first: recompute from an empty engine and "
                   "rewrite every point (same readings, same points).")
@click.option("--dry-run", is_flag=True, envvar=f"{ENV}DRY_RUN", show_envvar=True,
              help="Validate and compute everything but write nothing to InfluxDB: to check a "
                   "mapping, count rejects by reason and see the period before importing. "
                   "Keeps the report and rejects (in --state-dir/<id>-dry-run), no state.")
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              envvar=f"{ENV}WORKERS", show_envvar=True,
              help="Parallel partitions (processes), each owning a share of the districts, "
                   "junctions and routes; 0 = one per CPU. Fixed for an import when it "
                   "starts (its state is split that way).")
@click.option("--batch", type=click.IntRange(1000), default=20_000, show_default=True,
              envvar=f"{ENV}BATCH", show_envvar=True,
              help="Messages of the input per engine batch and checkpoint boundary: larger "
                   "is faster and holds more in memory. Fixed for an import when it starts.")
@click.option("--checkpoint", "checkpoint_s", type=click.FloatRange(0.05), default=10.0,
              show_default=True, envvar=f"{ENV}CHECKPOINT_S", show_envvar=True,
              help="Seconds between checkpoints: what an interrupted import does again "
                   "(points written since the last checkpoint are written again, "
                   "unchanged).")
@click.option("--retry-for", "retry_for_s", type=click.FloatRange(0), default=300.0,
              show_default=True, envvar=f"{ENV}RETRY_FOR_S", show_envvar=True,
              help="Seconds to keep retrying while InfluxDB cannot take points; then the "
                   "import stops at its last checkpoint (run it again to resume).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar=f"{ENV}STATE_DIR", show_envvar=True,
              help="Where imports keep their state, report.json and rejects.jsonl "
                   "[default: ~/.local/state/citystream/imports].")
@click.option("--city", "city_file", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path),
              envvar="CITYSTREAM_CITY__FILE", show_envvar=True,
              help="The city file: baselines, targets, grace and horizon, declared feeds "
                   "[default: the Milton Keynes example].")
@click.option("--progress/--no-progress", default=None, envvar=f"{ENV}PROGRESS",
              show_envvar=True,
              help="A progress bar on stderr (readings/s, ETA) [default: when it is a "
                   "terminal; otherwise --progress prints a line every 2 s].")
def import_(paths: tuple[Path, ...], mapping_path: Path | None, raw: bool, name: str | None,
            fresh: bool, dry_run: bool, workers: int, batch: int, checkpoint_s: float,
            retry_for_s: float, state_dir: Path | None, city_file: Path | None,
            progress: bool | None) -> None:
    """Import past readings from files and compute their KPIs into InfluxDB.

    PATHS are read in the order given, as one stream, each line or row in file order, like
    the live pipeline reads readings in arrival order (export in time order: a reading more
    than the late-data horizon older than one before it of the same district, junction or
    route is dropped, as live):

    \b
      *.csv                   a vendor export, one reading per row (--mapping)
      *.jsonl/.ndjson/.json   JSON lines, one message each: {"topic": "city/<district>/
                              <kind>/<sensor_id>", "payload": {...}} (or "payload_b64", or
                              the reading's fields beside "topic"); optional "received_at";
                              `citystream sim --record` files are such lines
      *.gz                    either, gzipped

    Every kind of the city can be imported, the declared feeds too. Each message is validated
    as live ingest does, with the same dead-letter reasons (written to rejects.jsonl with file
    and line); a message that says when it was received is held to the late-data horizon
    from then (too_old), other messages to none. Valid readings go through the same KPI
    engine as the worker: dedupe, ordering, meter resets, windows and late corrections as the
    contract's section 3, so the points are those the live pipeline would have written for
    the same readings; windows still open at the end of the input are final. KPI points,
    sensor_quality and alerts go to the kpi bucket (alerts are not published on MQTT).
    Nothing touches MQTT or Kafka: live processing is never disturbed.

    An interrupted import (Ctrl-C, a crash, kill -9) resumes where it stopped when the same
    command runs again; a finished one changes nothing when run again. Then learn baselines
    from the period and report on it:

    \b
      citystream import meters-2026-*.csv --mapping meters.toml
      citystream baseline learn --from 2026-09-01 --to 2026-10-27 --out city.toml
      citystream report --from 2026-10-01 --to 2026-11-01
      citystream import run.jsonl --dry-run       # check first: rejects by reason

    Writes with CITYSTREAM_INFLUX__URL, __ORG, __TOKEN to __BUCKET_KPI (and
    __BUCKET_TELEMETRY with --raw). Exit status 0 when the import finished, 1 when it failed
    or was interrupted (run it again to resume), 2 for bad settings, mapping or input.
    """
    from connectors.influxdb.admin import can_write
    from ingest.csvmap import MappingError, load_mapping
    from models.city import load_city
    from models.errors import CityModelError, ProvisionError
    from models.settings import ConfigError, Settings

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        settings = Settings.load()
        city_path = city_file or settings.city.file
        city = load_city(city_path)
        mapping = load_mapping(mapping_path) if mapping_path else None
        from ingest.history import Inputs, describe_inputs

        files = describe_inputs(list(paths), mapping)
        Inputs(files, mapping)  # every CSV header against the mapping
    except (ConfigError, CityModelError, MappingError, HistoryError) as exc:
        _fail(str(exc), 2)
    influx = settings.influx
    buckets = [influx.bucket_kpi, *([influx.bucket_telemetry] if raw else [])]
    if not dry_run:
        if influx.token is None:
            _fail("CITYSTREAM_INFLUX__TOKEN is not set: the import needs a token that may "
                  f"write {' and '.join(buckets)} (against the local stack: "
                  "eval \"$(citystream env)\")", 2)
        try:
            allowed = can_write(influx.url, influx.token.get_secret_value(), influx.org,
                                buckets)
        except ProvisionError as exc:
            _fail(f"cannot reach InfluxDB at {influx.url} (CITYSTREAM_INFLUX__URL): {exc}")
        if not allowed:
            _fail(f"InfluxDB refuses writes to {' and '.join(buckets)} with "
                  "CITYSTREAM_INFLUX__TOKEN (org CITYSTREAM_INFLUX__ORG): the bucket is "
                  "missing or the token may not write it")
    city_text = city_path.read_text() if city_path else _shipped_city()
    options = ImportOptions(state_dir=state_dir or default_state_dir(), name=name, raw=raw,
                            workers=workers, batch=batch, checkpoint_s=checkpoint_s,
                            retry_for_s=retry_for_s, fresh=fresh, dry_run=dry_run)
    try:
        job = prepare(files, mapping, mapping_path.read_text() if mapping_path else "", city,
                      city_text, influx, settings.quality, options)
        with locked(job):
            for note in job.notes:
                click.echo(note, err=True)
            what = "dry run, nothing written" if dry_run else (
                f"into {influx.url} bucket {influx.bucket_kpi}"
                + (f" and {influx.bucket_telemetry}" if raw else ""))
            click.echo(f"import {job.id}: {len(files)} file(s), {_size(files)}, city "
                       f"{city.name}, {job.workers} partition(s), {what}; state in {job.dir}",
                       err=True)
            stop = threading.Event()
            previous = {sig: signal.signal(sig, lambda *_: stop.set())
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            bar = _Bar(sys.stderr if progress or (progress is None and sys.stderr.isatty())
                       else None, sys.stderr.isatty())
            try:
                summary = run_import(job, bar.show, stop)
            finally:
                bar.clear()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    except HistoryError as exc:
        _fail(str(exc))
    click.echo(render(summary))
    if summary.status != "done":
        sys.exit(1)


def _shipped_city() -> str:
    from models.city import DEFAULT_CITY_FILE

    return DEFAULT_CITY_FILE.read_text()


def _size(files: Sequence[object]) -> str:
    total = sum(getattr(f, "size", 0) for f in files)
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:,.0f} {unit}" if unit == "B" else f"{total:,.1f} {unit}"
        total /= 1000
    return ""


class _Bar:
    """The progress bar: redrawn in place on a terminal (5 times a second), else a line every
    2 seconds."""

    def __init__(self, out: TextIO | None, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.next = 0.0
        self.width = 0

    def show(self, progress: Progress) -> None:
        now = time.monotonic()
        if self.out is None or now < self.next:
            return
        self.next = now + (0.2 if self.tty else 2.0)
        fraction = progress.fraction()
        filled = int(fraction * 24)
        eta = progress.eta_s()
        text = (f"[{'#' * filled}{'.' * (24 - filled)}] {fraction * 100:3.0f}%  "
                f"{progress.readings():,} readings  {progress.rate():,.0f} readings/s  "
                f"ETA {_clock(eta) if eta is not None else '--:--'}")
        if self.tty:
            self.out.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def clear(self) -> None:
        if self.out is not None and self.tty and self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.out.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(summary: Summary) -> str:
    """The summary printed at the end (report.json has the same as JSON)."""
    job, c = summary.job, summary.counts
    lines = [f"import {job.id}: {summary.status} in {summary.seconds:.1f} s, {c.readings:,} "
             f"readings ({summary.readings_per_s:,.0f} readings/s), {len(job.files)} file(s)"]
    if summary.error:
        lines.append(f"  error: {summary.error}")
    lines.append(f"  accepted {c.accepted:,}: {c.duplicates:,} duplicates (dropped), "
                 f"{c.late:,} late (their windows corrected), {c.beyond_horizon:,} beyond the "
                 "late-data horizon (dropped)")
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(c.rejected.items()))
    lines.append(f"  rejected {c.rejected_total:,}" + (f": {reasons}" if reasons else ""))
    windows = sum(summary.windows.values())
    per = ", ".join(f"{m} {n:,}" for m, n in sorted(summary.windows.items()))
    verb = "computed" if job.dry_run else "written"
    lines.append(f"  windows {verb} {windows:,}" + (f" ({per})" if per else "")
                 + f"; {c.quality_points:,} sensor_quality points, {c.alerts:,} alerts")
    if job.raw:
        lines.append(f"  raw readings {verb}: {c.raw_points:,} to "
                     f"{job.influx.bucket_telemetry} (kept for that bucket's retention only)")
    else:
        lines.append("  raw readings: not written (--raw writes them to the telemetry bucket, "
                     "whose retention, 7 days in the local stack, drops older ones at once)")
    if c.refused:
        lines.append(f"  refused by InfluxDB: {c.refused:,} points -> {summary.refused_path}")
    if c.engine_errors:
        lines.append(f"  engine errors: {c.engine_errors:,} readings kept in the rejects")
    if c.first_ts is not None and c.last_ts is not None:
        lines.append(f"  period: {_iso(c.first_ts)} .. {_iso(c.last_ts)} (the readings' ts)")
    lines.append(f"  report: {summary.report_path}" + (
        f"; rejects: {summary.rejects_path}" if summary.status == "done" else ""))
    if c.beyond_horizon:
        lines.append(
            f"  note: {c.beyond_horizon:,} readings were more than the late-data horizon older "
            "than a reading before them of the same district, junction or route. If the "
            "input is not in time order (an export sorted by meter), sort it by time and "
            "import it again with --fresh.")
    if summary.status == "interrupted":
        lines.append("  interrupted: run the same command again to resume at the last "
                     "checkpoint")
    elif summary.status == "done" and c.first_ts is not None and c.last_ts is not None \
            and not job.dry_run:
        start = _iso(c.first_ts - c.first_ts % 86_400_000)
        stop = _iso(c.last_ts - c.last_ts % 86_400_000 + 86_400_000)
        lines.append(f"  next: citystream report --from {start} --to {stop}; "
                     f"citystream baseline learn --from {start} --to {stop} --out city.toml "
                     "(whole weeks before any savings programme)")
    return "\n".join(lines)
