"""InfluxDB set-up for citystream: buckets with retention, InfluxQL mappings, the roll-up task.

`provision(admin, plan)` makes an onboarded InfluxDB 2.x match a `Plan`, idempotently (run it at
every start): it creates missing buckets and changes the retention of existing ones to the
plan's, maps each bucket to an InfluxQL database of the same name (DBRP, retention policy
`autogen`, so `/query?db=kpi` works), and creates or updates the downsampling task
(tasks/kpi_1h.flux) from `kpi` into `kpi_1h`. `citystream up` calls it during onboarding;
deploy/influxdb/init/ does the same for the Docker image with the `influx` CLI.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DOWNSAMPLING_TASK_FILE = HERE / "tasks" / "kpi_1h.flux"
MIN_RETENTION_S = 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?:0|(?:[1-9][0-9]*[smhdw])+)$")


class ProvisionError(RuntimeError):
    """InfluxDB refused part of the set-up; the message names the request and the reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_retention(text: str) -> int:
    """`7d`, `400d`, `1h30m` -> seconds; `0` = keep forever. Less than 1 h is refused (InfluxDB's
    minimum)."""
    text = text.strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a retention like 7d, 400d, 12h or 0 (forever)")
    seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdw])", text))
    if 0 < seconds < MIN_RETENTION_S:
        raise ValueError(f"retention {text!r} is shorter than InfluxDB's minimum of 1h")
    return seconds


def task_name(destination: str) -> str:
    """The roll-up task's name: one task per destination bucket."""
    return f"citystream-{destination}"


def downsampling_flux(source: str = "kpi", destination: str = "kpi_1h") -> str:
    """The roll-up task's Flux (tasks/kpi_1h.flux) reading `source` and writing `destination`."""
    text = DOWNSAMPLING_TASK_FILE.read_text(encoding="utf-8")
    text = text.replace('name: "citystream-kpi_1h"', f"name: {json.dumps(task_name(destination))}")
    text = re.sub(r'^src = ".*"$', f"src = {json.dumps(source)}", text, count=1, flags=re.M)
    return re.sub(r'^dst = ".*"$', f"dst = {json.dumps(destination)}", text, count=1, flags=re.M)


@dataclass(frozen=True)
class Bucket:
    """A bucket and its retention in seconds (0 = forever)."""

    name: str
    retention_s: int


@dataclass(frozen=True)
class Plan:
    """What an org should hold: `telemetry`, `kpi` and the roll-up bucket, with retention."""

    org: str
    telemetry: Bucket
    kpi: Bucket
    kpi_1h: Bucket

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return (self.telemetry, self.kpi, self.kpi_1h)


class InfluxAdmin:
    """A minimal JSON client for InfluxDB's /api/v2 management endpoints (token auth)."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        """One request; the decoded JSON answer (None when empty). `ProvisionError` on HTTP
        errors, with InfluxDB's message."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path + query, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:5000]
            raise ProvisionError(f"{method} {path}: HTTP {exc.code} {detail}",
                                 exc.code) from None
        return json.loads(raw) if raw else None

    def org_id(self, org: str) -> str:
        orgs = self.call("GET", "/api/v2/orgs", org=org).get("orgs", [])
        if not orgs:
            raise ProvisionError(f"org {org!r} does not exist (onboard InfluxDB first)")
        return str(orgs[0]["id"])


def _rules(retention_s: int) -> list[dict[str, Any]]:
    return [{"type": "expire", "everySeconds": retention_s}] if retention_s else []


def _retention_of(bucket: dict[str, Any]) -> int:
    return sum(int(r.get("everySeconds", 0)) for r in bucket.get("retentionRules") or [])


def find_bucket(admin: InfluxAdmin, org_id: str, name: str) -> dict[str, Any] | None:
    """The bucket called `name`, or None. By name: a listing is paged, and an org may hold
    more buckets than a page (InfluxDB answers 404 for a name it does not know)."""
    try:
        found = admin.call("GET", "/api/v2/buckets", orgID=org_id, name=name)["buckets"]
    except ProvisionError as exc:
        if exc.status == 404:
            return None
        raise
    return dict(found[0]) if found else None


def ensure_buckets(admin: InfluxAdmin, org_id: str, buckets: tuple[Bucket, ...]) -> dict[str, str]:
    """Create missing buckets, align retention of existing ones; returns name -> bucket id."""
    ids: dict[str, str] = {}
    for want in buckets:
        found = find_bucket(admin, org_id, want.name)
        if found is None:
            log.info("creating bucket %s (retention %ss)", want.name, want.retention_s)
            found = admin.call("POST", "/api/v2/buckets", {
                "orgID": org_id, "name": want.name, "retentionRules": _rules(want.retention_s)})
        elif _retention_of(found) != want.retention_s:
            log.info("bucket %s: retention %ss -> %ss", want.name, _retention_of(found),
                     want.retention_s)
            admin.call("PATCH", f"/api/v2/buckets/{found['id']}",
                       {"retentionRules": _rules(want.retention_s)})
        ids[want.name] = str(found["id"])
    return ids


def ensure_dbrp(admin: InfluxAdmin, org_id: str, bucket_id: str, database: str) -> None:
    """Map InfluxQL database `database`, retention policy `autogen`, to the bucket.

    InfluxDB 2.7 derives a "virtual" mapping from each bucket's name; a real one is created
    anyway, so the mapping is explicit and also exists on 2.x versions without virtual ones.
    """
    mapped = [m for m in admin.call("GET", "/api/v2/dbrps", orgID=org_id, db=database)["content"]
              if not m.get("virtual")]
    if any(m["bucketID"] == bucket_id and m["retention_policy"] == "autogen" for m in mapped):
        return
    for old in mapped:  # the database points at another bucket (renamed bucket): re-point it
        admin.call("DELETE", f"/api/v2/dbrps/{old['id']}", orgID=org_id)
    admin.call("POST", "/api/v2/dbrps", {"orgID": org_id, "bucketID": bucket_id,
                                         "database": database, "retention_policy": "autogen",
                                         "default": True})


def ensure_task(admin: InfluxAdmin, org_id: str, flux: str, name: str) -> str:
    """Create the task, or update its Flux if it differs; returns the task id."""
    tasks = admin.call("GET", "/api/v2/tasks", orgID=org_id, name=name)["tasks"]
    if not tasks:
        return str(admin.call("POST", "/api/v2/tasks", {"orgID": org_id, "flux": flux})["id"])
    task = tasks[0]
    if task.get("flux") != flux or task.get("status") != "active":
        admin.call("PATCH", f"/api/v2/tasks/{task['id']}", {"flux": flux, "status": "active"})
    return str(task["id"])


def provision(admin: InfluxAdmin, plan: Plan) -> str:
    """Make the org match `plan`; returns the downsampling task's id."""
    org_id = admin.org_id(plan.org)
    ids = ensure_buckets(admin, org_id, plan.buckets)
    for bucket in plan.buckets:
        ensure_dbrp(admin, org_id, ids[bucket.name], bucket.name)
    return ensure_task(admin, org_id, downsampling_flux(plan.kpi.name, plan.kpi_1h.name),
                       task_name(plan.kpi_1h.name))
