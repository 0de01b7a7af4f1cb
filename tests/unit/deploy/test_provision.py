"""deploy/influxdb without a server: retention parsing and the settings that use it (the admin
client: tests/unit/connectors/influxdb/test_admin.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploy.influxdb.provision import parse_retention
from deploy.local.settings import StackSettings


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
