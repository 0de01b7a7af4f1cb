"""InfluxDB 2.x's management API: the one client citystream uses for it.

`InfluxAdmin(url, token)` sends JSON requests with token auth. Whatever goes wrong, an error
answer or no answer at all, becomes a `ProvisionError` whose `status` is the HTTP status (None
when InfluxDB could not be reached) and whose message says the request and, from
`connectors.influxdb.errors`, the status and InfluxDB's own message or why there was no answer.
The functions below are the requests citystream makes: health and onboarding, orgs, buckets,
authorizations (tokens) and write access. Idempotent set-up built on them (buckets with
retention, InfluxQL mappings, the roll-up task, the read-only token) is in
`deploy.influxdb.provision`; the local stack (`deploy.local.influxdb`) uses both, and
`citystream check` probes the pipeline's token with this client.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from connectors.influxdb.errors import describe_request_error, describe_transport_error
from models.errors import ProvisionError

__all__ = ["InfluxAdmin", "ProvisionError", "authorizations", "bucket_permissions",
           "can_write", "create_authorization", "delete_authorization", "find_bucket",
           "healthy", "onboard"]


class InfluxAdmin:
    """A JSON client for InfluxDB's /api/v2 management endpoints (token auth; none when `token`
    is empty, as for /health and onboarding)."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
             **params: str) -> Any:
        """One request with a JSON `body` (or raw `data`); the decoded JSON answer (None when
        empty). `ProvisionError` when InfluxDB answers an error or cannot be reached."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path + query, data=data, method=method)
        if body is not None or data is None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ProvisionError(describe_request_error(method, path, exc.code, exc.read()),
                                 exc.code) from None
        except OSError as exc:  # URLError, refused, reset, timed out
            raise ProvisionError(f"{method} {path}: {describe_transport_error(exc, self.url)}"
                                 ) from None
        return json.loads(raw) if raw else None

    def org_id(self, org: str) -> str:
        orgs = self.call("GET", "/api/v2/orgs", org=org).get("orgs", [])
        if not orgs:
            raise ProvisionError(f"org {org!r} does not exist (onboard InfluxDB first)")
        return str(orgs[0]["id"])


def healthy(admin: InfluxAdmin) -> bool:
    """Whether InfluxDB's /health says `pass`."""
    return bool(admin.call("GET", "/health")["status"] == "pass")


def onboard(admin: InfluxAdmin, *, username: str, password: str, org: str, bucket: str,
            token: str) -> bool:
    """Onboard a new InfluxDB (first user, org, bucket and the operator's all-access `token`);
    False, doing nothing, when it was onboarded before."""
    if not admin.call("GET", "/api/v2/setup").get("allowed"):
        return False
    admin.call("POST", "/api/v2/setup", {"username": username, "password": password,
                                         "org": org, "bucket": bucket, "token": token})
    return True


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


def bucket_permissions(action: str, org_id: str, bucket_ids: list[str]) -> list[dict[str, Any]]:
    """`action` ("read" or "write") on each of `bucket_ids`, as an authorization lists them."""
    return [{"action": action, "resource": {"type": "buckets", "id": bucket_id, "orgID": org_id}}
            for bucket_id in bucket_ids]


def authorizations(admin: InfluxAdmin, org_id: str) -> list[dict[str, Any]]:
    """Every authorization (token) of the org, with its description and permissions."""
    return list(admin.call("GET", "/api/v2/authorizations", orgID=org_id)["authorizations"])


def create_authorization(admin: InfluxAdmin, org_id: str, description: str,
                         permissions: list[dict[str, Any]]) -> str:
    """A new token with exactly `permissions`; returns the token."""
    made = admin.call("POST", "/api/v2/authorizations", {
        "orgID": org_id, "description": description, "permissions": permissions})
    return str(made["token"])


def delete_authorization(admin: InfluxAdmin, authorization_id: str) -> None:
    admin.call("DELETE", f"/api/v2/authorizations/{authorization_id}")


def can_write(url: str, token: str, org: str, buckets: list[str]) -> bool:
    """Whether `token` may write every one of `buckets` (an empty write: nothing stored).
    `ProvisionError` when InfluxDB cannot be reached."""
    client = InfluxAdmin(url, token, timeout=5.0)
    for bucket in buckets:
        try:
            client.call("POST", "/api/v2/write", data=b"", org=org, bucket=bucket)
        except ProvisionError as exc:
            if exc.status is None:
                raise
            return False
    return True
