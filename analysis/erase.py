"""`citystream erase`: one sensor's points removed from InfluxDB, with an audit line.

For a data subject's erasure request (GDPR art. 17: a household's water or electricity meter)
or a decommissioned meter. What goes (`targets`), per sensor id, in a period:

- its raw readings in the `telemetry` bucket, every kind: the raw points' tag `sensor_id`
  (connectors/influxdb/lineproto.py, each kind's `RAW` schema);
- its points in the `kpi` bucket that are about this one sensor: `sensor_quality` (tags kind,
  district, sensor_id, window) and the alerts raised on the sensor itself (`alert` with
  entity = the sensor id and rule `silent` or `sensor_quality`).

KPI windows (aggregates over a district, a junction, a route), the hourly roll-ups in `kpi_1h`,
Kafka and backups are not touched: docs/operations.md ("GDPR") says what remains and for how
long.

InfluxDB's delete API (`POST /api/v2/delete`) takes a predicate in an InfluxQL-like syntax:
`key="value" AND ...`, only AND, only equality here. InfluxDB reads a double-quoted value with
InfluxQL's scanner, which knows the escapes `\\\\`, `\\"`, `\\'` and `\\n` and cannot express a
carriage return or a NUL; `predicate_string` escapes, and refuses those. The command accepts
only ids of the contract's sensor-id pattern (section 1, nothing else can be in the buckets), so
escaping is the second line of defence, not the first. Counts are Flux queries (`count_flux`):
points, not field values (a reading with four fields is one point).

`InfluxPoints` talks to InfluxDB through `connectors.influxdb` (counts with the read token
over the query client, deletes with the write token over the management client: a bucket's
write permission allows deletes; failures worded by its error mapping); `MemoryPoints` is its
fake. `AuditLog` appends one
JSON line per erase to `CITYSTREAM_AUDIT__LOG` (default `<stack home>/audit.log`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol

import click

from connectors.influxdb.admin import InfluxAdmin
from connectors.influxdb.errors import describe_http_error, describe_transport_error
from connectors.influxdb.flux import flux_string
from connectors.influxdb.query import query_client
from kpi.quality import RULE as QUALITY_RULE
from models.errors import CitystreamError, ProvisionError
from models.quality import MEASUREMENT as SENSOR_QUALITY
from models.readings import ID_PATTERN
from models.settings import ConfigError, InfluxSettings, Settings, default_stack_home

log = logging.getLogger(__name__)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

SENSOR_TAG: Final = "sensor_id"
"""The tag that names the sensor on every raw point (every kind's raw schema has it)."""
SILENT_RULE: Final = "silent"
"""The alert rule of a silent sensor (kpi/alerts.py); its entity is the sensor id."""
PER_SENSOR_RULES: Final = (SILENT_RULE, QUALITY_RULE)
FUTURE_MS: Final = 3_600_000
"""The default period runs this far past now: readings may be stamped up to 5 minutes ahead
(contract section 1) and hourly points at their hour's end."""
_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EraseError(CitystreamError):
    """Counting or deleting failed, or the audit log cannot be written; the message says which
    setting to check."""


# -- what to delete ---------------------------------------------------------------------------


def predicate_string(value: str) -> str:
    """`value` as a double-quoted string of a delete predicate (escapes: module docstring).
    ValueError for an empty value or one with a carriage return or a NUL, which InfluxDB's
    predicate scanner cannot read."""
    if not value:
        raise ValueError("an empty tag value matches nothing")
    if "\r" in value or "\0" in value:
        raise ValueError(f"{value!r} cannot be expressed in a delete predicate (carriage "
                         "return or NUL)")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _ns(ms: int) -> int:
    return ms * 1_000_000


def rfc3339(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds: `2026-10-01T06:00:00.000Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True)
class Span:
    """A period, both ends included (as the delete API takes it), in epoch ms."""

    start_ms: int
    stop_ms: int

    def __post_init__(self) -> None:
        if self.stop_ms < self.start_ms:
            raise ValueError(f"--to ({rfc3339(self.stop_ms)}) is before --from "
                             f"({rfc3339(self.start_ms)})")

    def as_json(self) -> dict[str, str]:
        return {"from": rfc3339(self.start_ms), "to": rfc3339(self.stop_ms)}


@dataclass(frozen=True)
class Target:
    """The points of one bucket to erase: those whose `_measurement` and tags equal `match`
    (an empty `_measurement`: any measurement). `what` names them for people."""

    bucket: str
    what: str
    match: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        for key, value in self.match:
            if _KEY.fullmatch(key) is None:
                raise ValueError(f"{key!r} is not a tag name")
            predicate_string(value)

    def predicate(self) -> str:
        """The delete API's predicate: `_measurement="m" AND tag="v"`."""
        return " AND ".join(f"{key}={predicate_string(value)}" for key, value in self.match)

    def count_flux(self, span: Span) -> str:
        """Flux counting the matching points in `span`: one row, column `points` (none when
        there are no points). A point is one row after the pivot of its fields."""
        condition = " and ".join(f"r.{key} == {flux_string(value)}" for key, value in self.match)
        return (f"from(bucket: {flux_string(self.bucket)})\n"
                f"  |> range(start: time(v: {_ns(span.start_ms)}), "
                f"stop: time(v: {_ns(span.stop_ms) + 1}))\n"
                f"  |> filter(fn: (r) => {condition})\n"
                '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                "  |> map(fn: (r) => ({r with points: 1}))\n"
                "  |> group()\n"
                '  |> sum(column: "points")')

    def matches(self, measurement: str, tags: Mapping[str, str]) -> bool:
        """Whether a point with `measurement` and `tags` is one of these (the fake's test)."""
        return all((measurement if key == "_measurement" else tags.get(key)) == value
                   for key, value in self.match)


def targets(sensor_id: str, telemetry: str, kpi: str) -> list[Target]:
    """What `citystream erase` deletes for `sensor_id` from the buckets `telemetry` and `kpi`
    (module docstring)."""
    out = [Target(telemetry, "raw readings", ((SENSOR_TAG, sensor_id),)),
           Target(kpi, f"{SENSOR_QUALITY} points",
                  (("_measurement", SENSOR_QUALITY), (SENSOR_TAG, sensor_id)))]
    out += [Target(kpi, f"{rule} alerts", (("_measurement", "alert"), ("rule", rule),
                                           ("entity", sensor_id)))
            for rule in PER_SENSOR_RULES]
    return out


# -- InfluxDB and its fake --------------------------------------------------------------------


class Points(Protocol):
    """What erase asks of InfluxDB. Both raise `EraseError`."""

    def count(self, target: Target, span: Span) -> int:
        """How many points of `target` lie in `span`."""
        ...

    def delete(self, target: Target, span: Span) -> None:
        """Delete the points of `target` in `span`; on return InfluxDB has deleted them."""
        ...


class InfluxPoints:
    """`Points` over InfluxDB 2.x: counts with `read_token` (`token` when unset), deletes with
    `token`. Construction checks the settings and does no I/O."""

    def __init__(self, settings: InfluxSettings, timeout_s: float = 120.0) -> None:
        secrets = (settings.read_token, settings.token)
        self.read_token = next((t.get_secret_value() for t in secrets
                                if t is not None and t.get_secret_value()), "")
        self.write_token = settings.token.get_secret_value() if settings.token else ""
        if not self.write_token:
            raise EraseError("no InfluxDB token to delete with: set CITYSTREAM_INFLUX__TOKEN (a "
                             "token that may write both buckets; eval \"$(citystream env)\" for "
                             "the local stack)")
        self.s = settings
        self.timeout_s = timeout_s

    def count(self, target: Target, span: Span) -> int:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            with query_client(self.s.url, self.read_token, self.s.org,
                              self.timeout_s) as client:
                tables = client.query_api().query(target.count_flux(span))
        except ApiException as exc:
            raise EraseError(f"counting {target.what} in {target.bucket}: " + describe_http_error(
                int(exc.status or 0), exc.body,
                "CITYSTREAM_INFLUX__READ_TOKEN (or __TOKEN)")) from None
        except (HTTPError, OSError) as exc:
            raise EraseError(describe_transport_error(exc, self.s.url,
                                                      "CITYSTREAM_INFLUX__URL")) from None
        return sum(int(rec.values.get("points") or 0) for table in tables
                   for rec in table.records)

    def delete(self, target: Target, span: Span) -> None:
        admin = InfluxAdmin(self.s.url, self.write_token, timeout=self.timeout_s)
        body = {"start": rfc3339(span.start_ms), "stop": rfc3339(span.stop_ms),
                "predicate": target.predicate()}
        try:
            admin.call("POST", "/api/v2/delete", body, org=self.s.org, bucket=target.bucket)
        except ProvisionError as exc:
            hint = {None: "check CITYSTREAM_INFLUX__URL",
                    401: "check CITYSTREAM_INFLUX__TOKEN",
                    403: f"check CITYSTREAM_INFLUX__TOKEN (it must be allowed to write "
                         f"{target.bucket})",
                    404: "check CITYSTREAM_INFLUX__ORG and __BUCKET_TELEMETRY/__BUCKET_KPI",
                    }.get(exc.status, "")
            raise EraseError(f"deleting {target.what} from {target.bucket}: {exc}"
                             + (f"; {hint}" if hint else "")) from None


@dataclass
class MemoryPoints:
    """`Points` in memory, for tests: `points` are (bucket, measurement, tags, time_ms);
    `fail_delete` names a bucket whose delete raises, `on_delete` runs after each delete (a
    point arriving meanwhile)."""

    points: list[tuple[str, str, dict[str, str], int]] = field(default_factory=list)
    fail_delete: str | None = None
    on_delete: Callable[[MemoryPoints], None] | None = None
    deletes: list[dict[str, str]] = field(default_factory=list)

    def add(self, bucket: str, measurement: str, tags: Mapping[str, str], time_ms: int) -> None:
        self.points.append((bucket, measurement, dict(tags), time_ms))

    def _selected(self, target: Target, span: Span) -> list[int]:
        return [i for i, (bucket, measurement, tags, t) in enumerate(self.points)
                if bucket == target.bucket and span.start_ms <= t <= span.stop_ms
                and target.matches(measurement, tags)]

    def count(self, target: Target, span: Span) -> int:
        return len(self._selected(target, span))

    def delete(self, target: Target, span: Span) -> None:
        if target.bucket == self.fail_delete:
            raise EraseError(f"deleting {target.what} from {target.bucket}: POST "
                             "/api/v2/delete: HTTP 500 simulated")
        self.deletes.append({"bucket": target.bucket, "start": rfc3339(span.start_ms),
                             "stop": rfc3339(span.stop_ms), "predicate": target.predicate()})
        gone = set(self._selected(target, span))
        self.points = [p for i, p in enumerate(self.points) if i not in gone]
        if self.on_delete is not None:
            self.on_delete(self)


# -- the audit log ----------------------------------------------------------------------------


def audit_log_path(setting: Path | None) -> Path:
    """The audit log: `setting` (CITYSTREAM_AUDIT__LOG), else `audit.log` in the local stack's
    home (CITYSTREAM_STACK__HOME, else ~/.local/state/citystream)."""
    if setting is not None:
        return setting.expanduser()
    home = os.environ.get("CITYSTREAM_STACK__HOME")
    return (Path(home).expanduser() if home else default_stack_home()) / "audit.log"


def operator() -> str:
    """The OS user running the command."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        return f"uid {os.getuid()}"


class AuditLog:
    """An append-only file of JSON lines (mode 600). `open` before deleting anything, so a log
    that cannot be written stops the erase before it starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EraseError(f"cannot open the audit log {self.path} ({exc.strerror}): check "
                             "CITYSTREAM_AUDIT__LOG") from None

    def append(self, entry: Mapping[str, Any]) -> str:
        """Write `entry` as one line, durably; returns the line."""
        line = json.dumps(entry, separators=(", ", ": "))
        if self._fd is None:
            self.open()
        assert self._fd is not None
        try:
            os.write(self._fd, (line + "\n").encode())
            os.fsync(self._fd)
        except OSError as exc:
            raise EraseError(f"cannot write the audit log {self.path} ({exc.strerror}); the "
                             f"line was: {line}") from None
        return line

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- the erase --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What an erase did: points per target before and after, and the error that stopped it."""

    before: dict[Target, int]
    after: dict[Target, int] = field(default_factory=dict)
    error: str | None = None

    def per_bucket(self, counts: Mapping[Target, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for target in self.before:
            out[target.bucket] = out.get(target.bucket, 0) + counts.get(target, 0)
        return out

    @property
    def deleted(self) -> dict[Target, int]:
        return {t: max(0, n - self.after[t]) for t, n in self.before.items() if t in self.after}

    @property
    def remaining(self) -> int:
        return sum(self.after.values())

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "incomplete" if self.remaining else "done"


def count_all(points: Points, plan: list[Target], span: Span) -> dict[Target, int]:
    return {target: points.count(target, span) for target in plan}


def delete_all(points: Points, outcome: Outcome, span: Span,
               say: Callable[[str], None]) -> None:
    """Delete each target that has points, then count it again (`outcome.after`); an error
    stops here and is kept in `outcome.error`."""
    try:
        for target, n in outcome.before.items():
            if n:
                say(f"deleting {n} {target.what} from {target.bucket} ...")
                points.delete(target, span)
            outcome.after[target] = points.count(target, span)
    except EraseError as exc:
        outcome.error = str(exc)


def audit_entry(sensor_id: str, span: Span, settings: InfluxSettings,
                outcome: Outcome) -> dict[str, Any]:
    """The audit line: when, who, which sensor and period, where, what was deleted."""
    entry: dict[str, Any] = {
        "time": rfc3339(int(time.time() * 1000)), "action": "erase", "operator": operator(),
        "sensor": sensor_id, "range": span.as_json(),
        "influxdb": {"url": settings.url, "org": settings.org},
        "buckets": sorted({t.bucket for t in outcome.before}),
        "deleted": outcome.per_bucket(outcome.deleted), "status": outcome.status}
    if outcome.remaining:
        entry["remaining"] = outcome.per_bucket(outcome.after)
    if outcome.error:
        entry["error"] = outcome.error
    return entry


# -- the command ------------------------------------------------------------------------------


def _fail(message: str, status: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def _sensor_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if re.fullmatch(ID_PATTERN, value) is None:
        raise click.BadParameter(f"{value!r} is not a sensor id: the contract's are "
                                 "[A-Za-z0-9_-]{1,64} and nothing else can be in the buckets")
    return value


def _span(start: str | None, stop: str | None, now_ms: int) -> Span:
    from analysis.cli import parse_when

    try:
        return Span(parse_when(start, now_ms) if start else 0,
                    parse_when(stop, now_ms) if stop else now_ms + FUTURE_MS)
    except ValueError as exc:
        _fail(str(exc), 2)


@click.command(context_settings=CONTEXT)
@click.option("--sensor", "sensor_id", required=True, metavar="ID", callback=_sensor_id,
              help="The sensor id (the last part of its MQTT topic, the `sensor_id` tag).")
@click.option("--from", "start", metavar="WHEN",
              help="Erase from this time on: 2026-10-01 (midnight UTC), 2026-10-01T06:00:00Z, "
                   "an RFC 3339 time with offset, or now-30d [default: 1970-01-01T00:00:00Z].")
@click.option("--to", "stop", metavar="WHEN",
              help="Erase up to this time, included (same forms) [default: an hour from now, "
                   "so points stamped a little ahead go too].")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
@click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path),
              envvar="CITYSTREAM_AUDIT__LOG", show_envvar=True,
              help="Append the audit line here [default: <stack home>/audit.log, i.e. "
                   "~/.local/state/citystream/audit.log].")
def erase(sensor_id: str, start: str | None, stop: str | None, yes: bool,
          audit_log: Path | None) -> None:
    """Erase one sensor's points from InfluxDB (a GDPR erasure request, a decommissioned meter).

    Deletes, in the period (default: all time), the sensor's raw readings from the telemetry
    bucket (every kind) and its per-sensor points from the kpi bucket: its sensor_quality
    points and the silent and sensor_quality alerts raised on it. Counts what will go and asks
    before deleting (not with --yes), deletes with InfluxDB's delete API, counts again, and
    appends one JSON line to the audit log: time, operator (the OS user), sensor, period,
    buckets and points deleted per bucket.

    Not erased (docs/operations.md, "GDPR"): the sensor's readings in Kafka until the topics'
    retention (7 days), KPI windows and hourly roll-ups (aggregates over many sensors), the
    worker's state (the meter's latest reading), backups. Stop the sensor first (revoke its MQTT
    user): readings that arrive meanwhile are written again.

    \b
    Examples:
      citystream erase --sensor wm-bletchley-0042
      citystream erase --sensor wm-bletchley-0042 --from 2026-10-01 --to 2026-11-01 --yes

    InfluxDB from CITYSTREAM_INFLUX__URL, __ORG, __BUCKET_TELEMETRY and __BUCKET_KPI; counts
    with __READ_TOKEN (__TOKEN when unset), deletes with __TOKEN, which must be allowed to
    write both buckets (the pipeline's token from `citystream env`, or the operator's from
    `citystream status --json`). Exit status 0 when done (or nothing was there), 1 when
    InfluxDB or the audit log failed, points remain or the erase was not confirmed, 2 for a
    bad option or setting.
    """
    span = _span(start, stop, int(time.time() * 1000))
    try:
        settings = Settings.load()
        points: Points = InfluxPoints(settings.influx)
    except (ConfigError, EraseError) as exc:
        _fail(str(exc), 2)
    s = settings.influx
    plan = targets(sensor_id, s.bucket_telemetry, s.bucket_kpi)
    audit = AuditLog(audit_log_path(audit_log or settings.audit.log))
    click.echo(f"sensor {sensor_id}, {rfc3339(span.start_ms)} .. {rfc3339(span.stop_ms)}, "
               f"InfluxDB {s.url} org {s.org}; counting ...")
    try:
        outcome = Outcome(count_all(points, plan, span))
    except EraseError as exc:
        _fail(str(exc))
    width = max(len(t.bucket) for t in plan)
    for target, n in outcome.before.items():
        click.echo(f"  {target.bucket:<{width}}  {n:>9} {target.what}  ({target.predicate()})")
    total = sum(outcome.before.values())
    try:
        audit.open()  # before anything is deleted: an unwritable log stops the erase here
        if not total:
            click.echo("nothing to erase")
            outcome.after = dict(outcome.before)
        else:
            if not yes:
                click.confirm(f"Delete these {total} points for good?", abort=True)
            delete_all(points, outcome, span, click.echo)
        line = audit.append(audit_entry(sensor_id, span, s, outcome))
    except EraseError as exc:
        _fail(str(exc))
    finally:
        audit.close()
    log.info("audit: %s", line)
    click.echo(f"audit line appended to {audit.path}: {line}")
    if outcome.error:
        _fail(outcome.error)
    if outcome.remaining:
        _fail(f"{outcome.remaining} points remain in the period after the delete (is the "
              "sensor still sending? stop it and run erase again)")
    click.echo(f"erased {sum(outcome.deleted.values())} points of sensor {sensor_id}")
