"""deploy/local's Mosquitto without a broker: the built 2.1 broker, its persist-sqlite plugin in
the generated and the production config, and errors that name the fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.local import mosquitto
from deploy.local.mosquitto import (
    BUILD_SCRIPT,
    PERSIST_FLUSH_PERIOD_S,
    install,
    mosquitto_binary,
    mosquitto_config,
    mosquitto_prefix,
    persist_plugin,
)
from deploy.local.settings import StackSettings
from models.errors import StackError

ROOT = Path(__file__).resolve().parents[3]
PRODUCTION_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"


def _settings(text: str) -> dict[str, list[list[str]]]:
    """Each option of a mosquitto.conf with the values of every line that sets it."""
    found: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        words = line.split("#")[0].split()
        if words:
            found.setdefault(words[0], []).append(words[1:])
    return found


def test_the_stack_runs_the_built_2_1_broker(tmp_path: Path) -> None:
    s = StackSettings(cache=tmp_path)
    assert s.mosquitto_version == "2.1.2"
    assert mosquitto_prefix(s) == tmp_path / "mosquitto-2.1.2"
    assert persist_plugin(s) == tmp_path / "mosquitto-2.1.2" / "lib" / "mosquitto_persist_sqlite.so"
    with pytest.raises(StackError, match="run `citystream install`"):
        mosquitto_binary(s)
    broker = tmp_path / "mosquitto-2.1.2" / "sbin" / "mosquitto"
    broker.parent.mkdir(parents=True)
    broker.write_text("")
    assert mosquitto_binary(s) == str(broker)


def test_config_persists_with_the_sqlite_plugin_not_the_file(tmp_path: Path) -> None:
    s = StackSettings(cache=tmp_path, mqtt_port=11883, mqtt_tls_port=18883)
    conf = _settings(mosquitto_config(s, Path("/home/m")))
    assert "persistence" not in conf and "autosave_interval" not in conf
    assert conf["global_plugin"] == [[str(persist_plugin(s))]]
    assert conf["plugin_opt_flush_period"] == [[str(PERSIST_FLUSH_PERIOD_S)]]
    assert PERSIST_FLUSH_PERIOD_S == 5          # the autosave_interval it replaced
    assert conf["persistence_location"] == [["/home/m/data/"]]
    # the rest is as before: auth, ACL, queues, both listeners
    assert conf["password_file"] == [["/home/m/passwd"]]
    assert conf["acl_file"] == [["/home/m/acl"]]
    assert conf["allow_anonymous"] == [["false"]]
    assert conf["max_inflight_messages"] == [["65534"]]  # 0 makes 2.1.2 warn per message
    assert conf["max_queued_messages"] == [["1000000"]]
    assert conf["max_packet_size"] == [["268435455"]]   # 2.0's default, not 2.1's 2,000,000
    assert conf["listener"] == [["11883", "127.0.0.1"], ["18883", "127.0.0.1"]]


def test_plugin_options_follow_their_plugin(tmp_path: Path) -> None:
    """Mosquitto attaches a plugin_opt_* line to the plugin loaded last before it."""
    for text in (mosquitto_config(StackSettings(cache=tmp_path), Path("/m")),
                 PRODUCTION_CONF.read_text()):
        lines = [w[0] for w in (ln.split("#")[0].split() for ln in text.splitlines()) if w]
        plugin = lines.index("global_plugin")
        assert lines[plugin + 1] == "plugin_opt_flush_period"


def test_production_config_uses_the_plugin_too() -> None:
    conf = _settings(PRODUCTION_CONF.read_text())
    assert "persistence" not in conf and "autosave_interval" not in conf
    assert conf["global_plugin"] == [["/usr/lib/mosquitto_persist_sqlite.so"]]
    assert conf["plugin_opt_flush_period"] == [["5"]]
    assert conf["max_packet_size"] == [["268435455"]]
    assert conf["max_inflight_messages"] == [["65534"]]


def test_a_broker_of_ones_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    broker = tmp_path / "opt" / "sbin" / "mosquitto"
    monkeypatch.setenv("CITYSTREAM_STACK__MOSQUITTO_BINARY", str(broker))
    s = StackSettings(cache=tmp_path / "cache")
    assert persist_plugin(s) == tmp_path / "opt" / "lib" / "mosquitto_persist_sqlite.so"
    with pytest.raises(StackError, match="CITYSTREAM_STACK__MOSQUITTO_BINARY"):
        install(s, say=lambda _m: None)
    broker.parent.mkdir(parents=True)
    broker.write_text("")
    with pytest.raises(StackError, match="CITYSTREAM_STACK__MOSQUITTO_PERSIST_PLUGIN"):
        install(s, say=lambda _m: None)
    plugin = tmp_path / "elsewhere.so"
    plugin.write_text("")
    monkeypatch.setenv("CITYSTREAM_STACK__MOSQUITTO_PERSIST_PLUGIN", str(plugin))
    s = StackSettings(cache=tmp_path / "cache")
    assert install(s, say=lambda _m: None) == broker
    assert f"global_plugin {plugin}\n" in mosquitto_config(s, tmp_path)
    assert not (tmp_path / "cache").exists()     # nothing built


def test_a_failed_build_shows_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    script = tmp_path / "build.sh"
    script.write_text("echo 'error: building mosquitto needs cmake' >&2; exit 2\n")
    monkeypatch.setattr(mosquitto, "BUILD_SCRIPT", script)
    with pytest.raises(StackError, match=r"(?s)exit 2.*needs cmake"):
        install(StackSettings(cache=tmp_path / "cache"), say=lambda _m: None)


def test_build_script_is_a_no_op_when_cached(tmp_path: Path) -> None:
    prefix = tmp_path / "mosquitto-2.1.2"
    (prefix / "sbin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "sbin" / "mosquitto").write_text("")
    (prefix / "sbin" / "mosquitto").chmod(0o755)
    (prefix / "lib" / "mosquitto_persist_sqlite.so").write_text("")
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "CITYSTREAM_CACHE": str(tmp_path)},
                          check=True, timeout=30)
    assert done.stdout == f"mosquitto 2.1.2: cached at {prefix}\n"


def test_build_script_pins_the_tarball() -> None:
    text = BUILD_SCRIPT.read_text()
    assert "a8e37cc4c1d4141e56c5a8729c5fa36b1f0b1ca95378a12131d68f0509de122a" in text
    assert "flock" in text
    assert subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], check=False).returncode == 0
