"""deploy/local without services: configuration, error messages that name the fix."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from deploy.local import kafka
from deploy.local.stack import Credentials, Stack, StackError, StackSettings
from deploy.local.supervision import check_port
from models.errors import CitystreamError
from models.settings import ConfigError, Settings


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITYSTREAM_STACK__MQTT_PORT", "11883")
    monkeypatch.setenv("CITYSTREAM_STACK__HOME", str(tmp_path))
    s = StackSettings()
    assert s.mqtt_port == 11883
    assert s.home == tmp_path


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(StackError, match="apt-get install -y openjdk-17-jre-headless"):
        kafka.java_binary()


def test_port_in_use_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match="CITYSTREAM_STACK__MQTT_PORT"):
            check_port(port, "MQTT_PORT")


def test_credentials_are_stable_and_private(tmp_path: Path) -> None:
    first = Credentials.load_or_create(tmp_path)
    again = Credentials.load_or_create(tmp_path)
    assert first == again
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0
    assert len(first.influxdb_token) >= 48


def test_status_object_has_the_contract_shape(tmp_path: Path) -> None:
    info = Stack(StackSettings(home=tmp_path), say=lambda _m: None).client_info()
    assert info["mqtt"]["port"] == 1883
    assert info["kafka"]["bootstrap"] == "127.0.0.1:9092"
    assert info["influxdb"]["url"] == "http://127.0.0.1:8086"
    assert info["influxdb"]["buckets"] == {"telemetry": "telemetry", "kpi": "kpi"}


def test_credentials_of_an_older_home_load_and_keep_unknown_keys(tmp_path: Path) -> None:
    import json

    old = {"mqtt_gateway_password": "a", "mqtt_service_password": "b",
           "influxdb_password": "c", "influxdb_token": "d", "added_later": "e"}
    (tmp_path / "secrets.json").write_text(json.dumps(old))
    creds = Credentials.load_or_create(tmp_path)
    assert creds.influxdb_read_token == ""
    creds.influxdb_read_token = "r"
    creds.save(tmp_path)
    saved = json.loads((tmp_path / "secrets.json").read_text())
    assert saved == {**old, "influxdb_read_token": "r", "influxdb_write_token": ""}
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0


def test_the_dashboard_gets_the_read_token_and_none_of_the_service_secrets(
        tmp_path: Path) -> None:
    st = Stack(StackSettings(home=tmp_path, dashboard_port=18123), say=lambda _m: None)
    creds = Credentials.load_or_create(tmp_path)
    creds.influxdb_read_token = "read-only"
    creds.save(tmp_path)
    env = st.dashboard_env()
    assert env["CITYSTREAM_DASHBOARD__TOKEN"] == "read-only"
    assert env["CITYSTREAM_DASHBOARD__PORT"] == "18123"
    assert env["CITYSTREAM_DASHBOARD__HOST"] == "127.0.0.1"
    for secret in (creds.influxdb_token, creds.mqtt_service_password,
                   creds.mqtt_gateway_password, creds.influxdb_password):
        assert secret not in env.values()
    assert st.pipeline_argv("dashboard") == ["dashboard"]
    assert "dashboard" in Stack.PIPELINE
    assert st.client_info()["dashboard"] == {"url": "http://127.0.0.1:18123/"}


def test_stack_errors_are_citystream_errors() -> None:
    assert issubclass(StackError, CitystreamError)


def _started_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """A home as `citystream up` leaves it (stack.json and secrets.json), with no CITYSTREAM_*
    setting in the environment but its home."""
    for name in list(os.environ):
        if name.upper().startswith("CITYSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CITYSTREAM_STACK__HOME", str(tmp_path))
    st = Stack(StackSettings(home=tmp_path, mqtt_port=11883, kafka_port=19092,
                             influxdb_port=18086), say=lambda _m: None)
    creds = Credentials.load_or_create(tmp_path)
    creds.influxdb_read_token, creds.influxdb_write_token = "read-only", "write-only"
    creds.save(tmp_path)
    st._save()
    return st


def test_settings_find_the_local_stack_as_citystream_env_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    st = _started_home(tmp_path, monkeypatch)
    monkeypatch.setenv("CITYSTREAM_DASHBOARD__PORT", "18080")
    found = Settings.load()
    monkeypatch.delenv("CITYSTREAM_STACK__HOME")
    for name, value in st.service_env().items():
        monkeypatch.setenv(name, value)
    assert found == Settings.load()
    assert found.influx.token is not None
    assert found.influx.token.get_secret_value() == "write-only"
    assert found.dashboard.port == 18080
    err = capsys.readouterr().err
    assert err.count("using the local stack") == 1
    assert f"using the local stack at {tmp_path} (no CITYSTREAM_* settings" in err


def test_explicit_settings_win_over_the_local_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _started_home(tmp_path, monkeypatch)
    monkeypatch.setenv("CITYSTREAM_DASHBOARD__TOKEN", "mine")
    token = Settings.load().dashboard.token
    assert token is not None and token.get_secret_value() == "mine"
    monkeypatch.setenv("CITYSTREAM_INFLUX__URL", "http://influx.example:8086")
    s = Settings.load()
    assert s.influx.url == "http://influx.example:8086"
    assert s.influx.token is None and s.mqtt.port == 1883          # nothing taken from the stack
    assert capsys.readouterr().err.count("using the local stack") == 1


def test_without_a_local_stack_the_defaults_stay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _started_home(tmp_path, monkeypatch)
    monkeypatch.setenv("CITYSTREAM_STACK__HOME", str(tmp_path / "elsewhere"))
    assert Settings.load() == Settings()


def test_an_unreadable_stack_file_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _started_home(tmp_path, monkeypatch)
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"stack\.json"):
        Settings.load()
