"""deploy/influxdb without a server: retention parsing and the settings that use it, the admin
client's error mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploy.influxdb.admin import InfluxAdmin, ProvisionError, describe_http_error
from deploy.influxdb.provision import parse_retention
from deploy.local.settings import StackSettings
from deploy.local.supervision import free_port
from models.errors import CitystreamError


@pytest.mark.parametrize("text,seconds", [
    ("0", 0), ("1h", 3600), ("7d", 7 * 86400), ("400d", 400 * 86400), ("2w", 14 * 86400),
    ("1h30m", 5400), (" 12h ", 43200)])
def test_retention_durations(text: str, seconds: int) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "7 d", "-1d", "1y", "07d", "d", "1.5h"])
def test_bad_retention_names_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="is not a retention like 7d"):
        parse_retention(text)


def test_retention_below_influxdb_minimum() -> None:
    with pytest.raises(ValueError, match="minimum of 1h"):
        parse_retention("30m")


def test_stack_settings_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_STACK__RETENTION_TELEMETRY", "3d")
    monkeypatch.setenv("CITYSTREAM_STACK__BUCKET_KPI_1H", "hourly")
    plan = StackSettings().influx_plan()
    assert (plan.telemetry.name, plan.telemetry.retention_s) == ("telemetry", 3 * 86400)
    assert (plan.kpi.name, plan.kpi.retention_s) == ("kpi", 400 * 86400)
    assert (plan.kpi_1h.name, plan.kpi_1h.retention_s) == ("hourly", 0)


def test_bad_retention_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_STACK__RETENTION_KPI", "forever")
    with pytest.raises(ValidationError, match="retention_kpi"):
        StackSettings()


def test_an_error_answer_names_the_request_and_influxdbs_message() -> None:
    body = b'{"code":"not found","message":"bucket \\"kpi\\" not found"}'
    assert describe_http_error("GET", "/api/v2/buckets", 404, body) == (
        'GET /api/v2/buckets: HTTP 404 bucket "kpi" not found')
    assert describe_http_error("POST", "/api/v2/setup", 502, b"<html>bad gateway</html>") == (
        "POST /api/v2/setup: HTTP 502 <html>bad gateway</html>")
    assert describe_http_error("DELETE", "/api/v2/tasks/1", 500, None) == (
        "DELETE /api/v2/tasks/1: HTTP 500")


def test_no_answer_is_a_provision_error_without_status() -> None:
    admin = InfluxAdmin(f"http://127.0.0.1:{free_port()}", "token", timeout=2)
    with pytest.raises(ProvisionError, match="cannot reach InfluxDB") as caught:
        admin.call("GET", "/api/v2/orgs")
    assert caught.value.status is None
    assert isinstance(caught.value, CitystreamError)
