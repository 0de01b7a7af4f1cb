"""InfluxDB failures become sentences an operator can act on, never carrying the token: one
mapping for queries, management requests and writes (moved from tests/unit/dashboard/
test_source.py and tests/unit/deploy/test_provision.py with the functions)."""

from __future__ import annotations

import urllib3

from connectors.influxdb.errors import (
    describe_http_error,
    describe_missing_buckets,
    describe_request_error,
    describe_transport_error,
    describe_write_error,
    server_message,
)


def test_http_errors_name_the_setting_to_fix() -> None:
    msg = describe_http_error(401, b'{"code":"unauthorized","message":"unauthorized access"}',
                              "CITYSTREAM_DASHBOARD__TOKEN")
    assert "HTTP 401" in msg and "CITYSTREAM_DASHBOARD__TOKEN" in msg
    msg = describe_http_error(404, b'{"message":"failed to initialize execute state: could not '
                                   b'find bucket \\"kpi\\""}', "X")
    assert 'could not find bucket "kpi"' in msg and "CITYSTREAM_INFLUX__BUCKET_KPI" in msg
    assert describe_http_error(500, b"not json", "X") == "InfluxDB answered HTTP 500"


def test_transport_errors_are_short() -> None:
    url = "http://127.0.0.1:1"
    refused = urllib3.exceptions.MaxRetryError(
        None, "/api/v2/query",  # type: ignore[arg-type]
        urllib3.exceptions.NewConnectionError(None, "refused"))  # type: ignore[arg-type]
    assert describe_transport_error(refused, url).endswith("connection refused")
    assert describe_transport_error(TimeoutError(), url).endswith("no answer in time")
    assert describe_transport_error(ConnectionResetError(), url).endswith("connection dropped")


def test_an_error_answer_names_the_request_and_influxdbs_message() -> None:
    body = b'{"code":"not found","message":"bucket \\"kpi\\" not found"}'
    assert describe_request_error("GET", "/api/v2/buckets", 404, body) == (
        'GET /api/v2/buckets: HTTP 404 bucket "kpi" not found')
    assert describe_request_error("POST", "/api/v2/setup", 502, b"<html>bad gateway</html>") == (
        "POST /api/v2/setup: HTTP 502 <html>bad gateway</html>")
    assert describe_request_error("DELETE", "/api/v2/tasks/1", 500, None) == (
        "DELETE /api/v2/tasks/1: HTTP 500")


def test_server_message_is_influxdbs_own_or_nothing() -> None:
    assert server_message(b'{"code":"invalid","message":"bad"}') == "bad"
    assert server_message(b"<html>bad gateway</html>") == ""
    assert server_message(b'["message"]') == "" and server_message(None) == ""


def test_transport_error_can_name_the_url_setting() -> None:
    assert describe_transport_error(ConnectionRefusedError(), "http://h:1", "X_URL") == (
        "cannot reach InfluxDB at http://h:1: connection refused; check X_URL")


def test_write_errors_name_the_org_the_token_or_the_buckets() -> None:
    org_missing = 'POST /api/v2/write: HTTP 404 organization name "o" not found'
    assert "CITYSTREAM_INFLUX__ORG" in (describe_write_error(404, org_missing, "o", "kpi") or "")
    assert "CITYSTREAM_INFLUX__TOKEN" in (describe_write_error(401, "unauthorized", "o", "kpi")
                                          or "")
    assert describe_write_error(404, 'bucket "kpi" not found', "o", "kpi") is None
    assert "__BUCKET_KPI" in describe_missing_buckets(["kpi"], "o")
