"""InfluxDB's errors as sentences an operator can act on: the one mapping every component uses.

An error answer (an HTTP status and a body, usually JSON with a `message`) or a failure to talk to
InfluxDB at all (an exception) becomes a short sentence naming what went wrong and, where one
fits, the setting to fix. The sentences are built from the status, InfluxDB's own message and
the exception's type, never from the request (which carries the token), so they are safe to log
and to show.

- `describe_http_error`: a refused query (the dashboard, the open-data service, `citystream
  report`);
- `describe_transport_error`: no answer (the same, and the management client);
- `describe_request_error`: a refused management request (`admin.InfluxAdmin`, so provisioning,
  the local stack and `citystream check`);
- `describe_write_error` and `describe_missing_buckets`: an empty write with the pipeline's token
  refused (`citystream check`);
- `server_message`: InfluxDB's own message in an answer (also the write client's).
"""

from __future__ import annotations

import socket

import orjson
import urllib3


def server_message(body: bytes | str | None) -> str:
    """InfluxDB's own message in an error answer: the JSON `message`, "" when there is none."""
    if not body:
        return ""
    try:
        message = orjson.loads(body).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return str(message) if message else ""


def describe_http_error(status: int, body: bytes | str | None, token_setting: str) -> str:
    """An operator's sentence for a refused query; `token_setting` names the token's setting."""
    message = server_message(body)
    if status in (401, 403):
        return (f"InfluxDB refused the token (HTTP {status}): check {token_setting} "
                "(it needs read access to the kpi bucket)")
    if status == 404:
        return (f"InfluxDB: {message or 'not found'} (HTTP 404): check CITYSTREAM_INFLUX__ORG "
                "and CITYSTREAM_INFLUX__BUCKET_KPI")
    return f"InfluxDB answered HTTP {status}" + (f": {message}" if message else "")


def transport_reason(exc: BaseException) -> str:
    """Why InfluxDB could not be reached, in a few words (the exception's type otherwise)."""
    reason = getattr(exc, "reason", None) or exc  # urllib's URLError, urllib3's MaxRetryError
    if isinstance(reason, str):
        return reason
    if isinstance(reason, urllib3.exceptions.NameResolutionError | socket.gaierror):
        return "host name not found"
    if isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError):
        return "no answer in time"
    if isinstance(reason, urllib3.exceptions.ProtocolError | ConnectionError):
        return "connection dropped"
    return type(reason).__name__


def describe_transport_error(exc: BaseException, url: str, url_setting: str = "") -> str:
    """An operator's sentence for a failure to talk to InfluxDB at all; names `url_setting`
    when given."""
    text = f"cannot reach InfluxDB at {url}: {transport_reason(exc)}"
    return f"{text}; check {url_setting}" if url_setting else text


def describe_request_error(method: str, path: str, status: int, body: bytes | str | None) -> str:
    """The sentence for an error answer to a management request: the request, the status,
    InfluxDB's message (its JSON `message`, else the start of the body)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    message = server_message(text) or text
    return f"{method} {path}: HTTP {status} {message[:1000]}".rstrip()


def describe_write_error(status: int, message: str, org: str, bucket: str) -> str | None:
    """The sentence for a write to `bucket` of `org` refused with `status` and InfluxDB's
    `message`: the org or the token to fix; None when only the bucket is missing (a 404 that
    does not name the organization: see `describe_missing_buckets`)."""
    if status == 404 and "organization" in message:
        return f"no organization {org!r} in InfluxDB: check CITYSTREAM_INFLUX__ORG"
    if status != 404:
        return (f"HTTP {status} writing to bucket {bucket!r} of org {org!r}: check "
                "CITYSTREAM_INFLUX__TOKEN (it must be allowed to write both buckets) and __ORG")
    return None


def describe_missing_buckets(missing: list[str], org: str) -> str:
    """The sentence for buckets the pipeline writes that `org` does not have."""
    return (f"bucket(s) {missing} missing in org {org!r}: create them or set "
            "CITYSTREAM_INFLUX__BUCKET_TELEMETRY/__BUCKET_KPI")
