"""InfluxDB set-up for citystream: buckets with retention, InfluxQL mappings, the roll-up task.

`provision(admin, plan)` makes an onboarded InfluxDB 2.x match a `Plan`, idempotently (run it at
every start): it creates missing buckets and changes the retention of existing ones to the
plan's, maps each bucket to an InfluxQL database of the same name (DBRP, retention policy
`autogen`, so `/query?db=kpi` works), and creates or updates the downsampling task
(tasks/kpi_1h.flux) from `kpi` into `kpi_1h`. `read_authorization` keeps one read-only token per
purpose, `write_authorization` makes a write-only one. `citystream up` calls these during
onboarding; deploy/influxdb/init/ does the same for the Docker image with the `influx` CLI.
Every request goes through `connectors.influxdb.admin`; its errors are `ProvisionError`s.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.influxdb.admin import (
    InfluxAdmin,
    authorizations,
    bucket_permissions,
    create_authorization,
    delete_authorization,
    find_bucket,
)
from models.errors import ProvisionError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DOWNSAMPLING_TASK_FILE = HERE / "tasks" / "kpi_1h.flux"
MIN_RETENTION_S = 3600
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?:0|(?:[1-9][0-9]*[smhdw])+)$")


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


def _rules(retention_s: int) -> list[dict[str, Any]]:
    return [{"type": "expire", "everySeconds": retention_s}] if retention_s else []


def _retention_of(bucket: dict[str, Any]) -> int:
    return sum(int(r.get("everySeconds", 0)) for r in bucket.get("retentionRules") or [])


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


def read_authorization(url: str, admin_token: str, org_id: str, bucket_ids: list[str],
                       description: str, current: str = "") -> str:
    """A token that may only READ `bucket_ids`: `current` if InfluxDB still has it with exactly
    those permissions, else a new one. Other authorizations with `description` are deleted."""
    admin = InfluxAdmin(url, admin_token)
    want = sorted(("read", "buckets", bucket_id) for bucket_id in bucket_ids)
    found = ""
    for auth in authorizations(admin, org_id):
        if auth.get("description") != description:
            continue
        perms = sorted((p["action"], p["resource"].get("type"), p["resource"].get("id"))
                       for p in auth["permissions"])
        if (current and auth.get("token") == current and perms == want
                and auth.get("status") == "active" and not found):
            found = current
        else:
            delete_authorization(admin, auth["id"])
    if found:
        return found
    return create_authorization(admin, org_id, description, bucket_permissions(
        "read", org_id, [bucket_id for _, _, bucket_id in want]))


def write_authorization(admin: InfluxAdmin, org: str, buckets: list[str],
                        description: str) -> str:
    """A new token that may write the buckets named `buckets` and nothing else."""
    org_id = admin.org_id(org)
    found = {name: find_bucket(admin, org_id, name) for name in buckets}
    missing = [name for name, bucket in found.items() if bucket is None]
    if missing:
        raise ProvisionError(f"InfluxDB has no bucket(s) {missing} in org {org}")
    return create_authorization(admin, org_id, description, bucket_permissions(
        "write", org_id, [str(bucket["id"]) for bucket in found.values() if bucket]))
