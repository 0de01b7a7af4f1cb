"""How `citystream opendata` is configured and started: settings, the local stack, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from citystream.cli import main
from deploy.local.stack import Credentials, Stack, StackSettings
from models.settings import Settings
from opendata import queries
from opendata.datasets import published
from tests.unit.opendata.fakes import city


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.load().opendata
    assert (s.host, s.port, s.min_meters, s.max_rows, s.live_cache_s) == (
        "127.0.0.1", 8090, 5, 100_000, 0.0)
    monkeypatch.setenv("CITYSTREAM_OPENDATA__PORT", "18090")
    monkeypatch.setenv("CITYSTREAM_OPENDATA__MIN_METERS", "10")
    monkeypatch.setenv("CITYSTREAM_OPENDATA__TOKEN", "read-only")
    s = Settings.load().opendata
    assert (s.port, s.min_meters) == (18090, 10)
    assert s.token is not None and "read-only" not in repr(s)
    monkeypatch.setenv("CITYSTREAM_OPENDATA__PUBLIC_URL", "javascript:alert(1)")
    with pytest.raises(Exception, match="CITYSTREAM_OPENDATA__PUBLIC_URL"):
        Settings.load()


def test_the_stack_starts_it_with_the_read_token_only(tmp_path: Path) -> None:
    st = Stack(StackSettings(home=tmp_path, opendata_port=18124), say=lambda _m: None)
    creds = Credentials.load_or_create(tmp_path)
    creds.influxdb_read_token = "read-only"
    creds.influxdb_write_token = "write-only"
    creds.save(tmp_path)
    env = st.opendata_env()
    assert env["CITYSTREAM_OPENDATA__TOKEN"] == "read-only"
    assert env["CITYSTREAM_OPENDATA__PORT"] == "18124"
    assert env["CITYSTREAM_OPENDATA__HOST"] == "127.0.0.1"
    for secret in (creds.influxdb_token, creds.influxdb_write_token,
                   creds.mqtt_service_password, creds.mqtt_gateway_password,
                   creds.influxdb_password):
        assert secret not in env.values()
    assert st.pipeline_argv("opendata") == ["opendata"]
    assert "opendata" in Stack.PIPELINE
    assert st.client_info()["opendata"] == {"url": "http://127.0.0.1:18124/"}
    assert StackSettings().opendata_port == 8090


def test_help_names_the_settings() -> None:
    result = CliRunner().invoke(main, ["opendata", "--help"])
    assert result.exit_code == 0
    for name in ("CITYSTREAM_OPENDATA__HOST", "CITYSTREAM_OPENDATA__PORT",
                 "CITYSTREAM_OPENDATA__TOKEN", "CITYSTREAM_OPENDATA__MIN_METERS"):
        assert name in result.output


def test_no_read_token_no_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CITYSTREAM_OPENDATA__TOKEN", "CITYSTREAM_INFLUX__READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CITYSTREAM_INFLUX__TOKEN", "the-write-token")
    result = CliRunner().invoke(main, ["opendata"])
    assert result.exit_code == 2
    assert "CITYSTREAM_OPENDATA__TOKEN" in result.output


def test_flux_names_only_registry_names_escaped() -> None:
    datasets = published(city())
    hostile = 'kpi") |> drop(columns: ["x"]) //'
    for ds in datasets.values():
        flux = queries.points_query(hostile, ds, 0, 10**18, 100)
        assert 'from(bucket: "kpi\\") |> drop(columns: [\\"x\\"]) //")' in flux
        assert "telemetry" not in flux
    flux = queries.latest_query("kpi", list(datasets.values()), 1, 2)
    assert "shuttle_kpi" not in flux and "water_kpi" in flux and "noise_kpi" in flux
    assert "time(v: 1)" in flux and "time(v: 2)" in flux
    flux = queries.coverage_query("kpi", list(datasets.values()), 5)
    assert '"sensor_quality" and r._field == "readings"' in flux
