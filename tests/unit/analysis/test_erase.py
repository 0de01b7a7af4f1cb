"""`citystream erase` without a server: the delete predicate and its escaping, the Flux count,
the confirmation, the audit line, failures; InfluxDB is `analysis.erase.MemoryPoints`."""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from analysis import erase as module
from analysis.erase import (
    FUTURE_MS,
    EraseError,
    InfluxPoints,
    MemoryPoints,
    Span,
    Target,
    predicate_string,
    rfc3339,
    targets,
)
from citystream import cli
from kpi.alerts import AlertRules, AlertSettings
from models import kinds
from models.settings import InfluxSettings

DAY_MS = 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21T14:13:20Z


def scan_predicate(text: str) -> list[tuple[str, str]]:
    """InfluxDB's side: `key="value" AND ...` read as influxql's scanner reads it (a
    double-quoted identifier; escapes \\\\ \\" \\' \\n, anything else after a backslash, a
    line break or the end inside quotes is an error)."""
    out: list[tuple[str, str]] = []
    i = 0
    while True:
        key = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
        assert key, f"bad tag key at {i}: {text!r}"
        i += key.end()
        assert text[i:i + 2] == '="', f"expected =\" at {i}: {text!r}"
        i += 2
        value: list[str] = []
        while True:
            assert i < len(text), "unterminated string"
            ch = text[i]
            assert ch not in "\n\r\0", "bad string"
            if ch == '"':
                i += 1
                break
            if ch == "\\":
                nxt = text[i + 1]
                assert nxt in "n\\\"'", f"bad escape \\{nxt}"
                value.append("\n" if nxt == "n" else nxt)
                i += 2
                continue
            value.append(ch)
            i += 1
        out.append((key.group(), "".join(value)))
        if i == len(text):
            return out
        assert text[i:i + 5] == " AND ", f"expected AND at {i}: {text!r}"
        i += 5


# -- the predicate ----------------------------------------------------------------------------


def test_predicate_strings_escape_what_influxql_unescapes() -> None:
    assert predicate_string("wm-0042") == '"wm-0042"'
    assert predicate_string('a"b') == r'"a\"b"'
    assert predicate_string("a\\b") == r'"a\\b"'
    assert predicate_string("a\\") == r'"a\\"'
    assert predicate_string("line\nbreak") == r'"line\nbreak"'
    assert predicate_string("it's") == '"it\'s"'


@pytest.mark.parametrize("value", ["", "a\rb", "a\0b"])
def test_values_a_predicate_cannot_carry_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        predicate_string(value)


@given(st.text(min_size=1).filter(lambda v: "\r" not in v and "\0" not in v))
def test_any_other_value_reads_back_unchanged(value: str) -> None:
    target = Target("telemetry", "raw readings", (("sensor_id", value),))
    assert scan_predicate(target.predicate()) == [("sensor_id", value)]


def test_the_targets_of_a_sensor() -> None:
    plan = targets("wm-0042", "telemetry", "kpi")
    assert [(t.bucket, t.predicate()) for t in plan] == [
        ("telemetry", 'sensor_id="wm-0042"'),
        ("kpi", '_measurement="sensor_quality" AND sensor_id="wm-0042"'),
        ("kpi", '_measurement="alert" AND rule="silent" AND entity="wm-0042"'),
        ("kpi", '_measurement="alert" AND rule="sensor_quality" AND entity="wm-0042"'),
    ]
    for target in plan:
        assert scan_predicate(target.predicate()) == list(target.match)


def test_every_kind_tags_its_raw_points_with_sensor_id() -> None:
    """The telemetry predicate is on `sensor_id`: every kind's raw schema must have that tag."""
    for spec in kinds.specs():
        assert ("sensor_id", "sensor_id") in spec.raw.tags, spec.name


def test_silent_alerts_are_raised_on_the_sensor_with_rule_silent() -> None:
    alert = AlertRules(AlertSettings()).silent("water", "wm-0042", T0, True, 900.0, 750.0,
                                              set())
    assert alert is not None
    assert (alert.entity, alert.rule) == ("wm-0042", module.SILENT_RULE)


def test_a_tag_key_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="not a tag name"):
        Target("kpi", "x", (("sensor id", "a"),))


def test_the_count_query_counts_points_in_the_inclusive_span() -> None:
    target = targets("wm-0042", 'tele"metry', "kpi")[1]
    flux = target.count_flux(Span(0, 1000))
    assert flux.startswith('from(bucket: "kpi")')
    assert "range(start: time(v: 0), stop: time(v: 1000000001))" in flux
    assert ('filter(fn: (r) => r._measurement == "sensor_quality" and '
            'r.sensor_id == "wm-0042")') in flux
    assert 'pivot(rowKey: ["_time"], columnKey: ["_field"]' in flux  # points, not field values
    assert 'sum(column: "points")' in flux  # Flux cannot count a time column
    assert targets("x", 'tele"metry', "kpi")[0].count_flux(Span(0, 1)).startswith(
        r'from(bucket: "tele\"metry")')


def test_times_and_spans() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(T0 + 5) == "2026-09-21T14:13:20.005Z"
    with pytest.raises(ValueError, match="before --from"):
        Span(10, 5)


def test_influx_points_needs_a_token_to_delete_with() -> None:
    with pytest.raises(EraseError, match="CITYSTREAM_INFLUX__TOKEN"):
        InfluxPoints(InfluxSettings(read_token="r"))  # type: ignore[arg-type]


# -- the command ------------------------------------------------------------------------------


def seeded() -> MemoryPoints:
    """Two water meters, each with raw readings over 3 days, hourly quality points and a silent
    alert; a district KPI window (not per sensor)."""
    points = MemoryPoints()
    for sensor in ("wm-a", "wm-b"):
        for k in range(12):
            t = T0 - 3 * DAY_MS + k * 6 * 3_600_000
            points.add("telemetry", "water", {"district": "bletchley", "sensor_id": sensor}, t)
        for k in range(5):
            points.add("kpi", "sensor_quality", {"kind": "water", "district": "bletchley",
                                                 "sensor_id": sensor, "window": "1h"},
                       T0 - k * 3_600_000)
        points.add("kpi", "alert", {"kind": "water", "entity": sensor, "rule": "silent"}, T0)
    points.add("kpi", "alert", {"kind": "water", "entity": "wm-a", "rule": "off_track"}, T0)
    points.add("kpi", "water_kpi", {"district": "bletchley", "window": "15m"}, T0)
    return points


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MemoryPoints:
    points = seeded()
    monkeypatch.setattr(module, "InfluxPoints", lambda settings: points)
    monkeypatch.setattr(module.getpass, "getuser", lambda: "ops-alice")
    for name in [n for n in os.environ if n.startswith("CITYSTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CITYSTREAM_STACK__HOME", str(tmp_path / "home"))  # no local stack
    monkeypatch.setenv("CITYSTREAM_INFLUX__URL", "http://influx.test:8086")
    return points


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli.main, ["erase", *args], input=stdin)


def audit_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def left(points: MemoryPoints, sensor: str) -> list[tuple[str, str]]:
    return [(b, m) for b, m, tags, _ in points.points
            if sensor in (tags.get("sensor_id"), tags.get("entity"))]


def test_erase_with_yes_deletes_one_sensor_and_writes_the_audit_line(
        fake: MemoryPoints, tmp_path: Path) -> None:
    log = tmp_path / "audit" / "audit.log"
    before = time.time()
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(log))
    assert result.exit_code == 0, result.output
    assert "Delete these" not in result.output  # no question with --yes
    assert "12 raw readings" in result.output and "5 sensor_quality points" in result.output
    assert 'sensor_id="wm-a"' in result.output
    assert "erased 18 points of sensor wm-a" in result.output
    # wm-a's raw, quality and silent alert are gone; its off_track alert (rule on a district,
    # here made to carry the sensor's id) and the district KPI stay; wm-b is untouched
    assert left(fake, "wm-a") == [("kpi", "alert")]
    assert len(left(fake, "wm-b")) == 12 + 5 + 1
    assert any(m == "water_kpi" for _, m, _, _ in fake.points)
    [entry] = audit_lines(log)
    assert entry["action"] == "erase" and entry["sensor"] == "wm-a"
    assert entry["operator"] == "ops-alice"
    assert entry["deleted"] == {"telemetry": 12, "kpi": 6}
    assert entry["buckets"] == ["kpi", "telemetry"]
    assert entry["status"] == "done"
    assert entry["influxdb"] == {"url": "http://influx.test:8086", "org": "citystream"}
    assert entry["range"] == {"from": "1970-01-01T00:00:00.000Z",
                              "to": fake.deletes[0]["stop"]}
    stop_ms = datetime.fromisoformat(fake.deletes[0]["stop"]).timestamp() * 1000
    assert before * 1000 + FUTURE_MS - 2000 <= stop_ms <= time.time() * 1000 + FUTURE_MS
    assert str(entry["time"]).endswith("Z")
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    # the deletes InfluxDB got: the whole period, the escaped predicates
    assert [(d["bucket"], d["start"], d["predicate"]) for d in fake.deletes] == [
        ("telemetry", "1970-01-01T00:00:00.000Z", 'sensor_id="wm-a"'),
        ("kpi", "1970-01-01T00:00:00.000Z", '_measurement="sensor_quality" AND sensor_id="wm-a"'),
        ("kpi", "1970-01-01T00:00:00.000Z",
         '_measurement="alert" AND rule="silent" AND entity="wm-a"'),
    ]  # no sensor_quality alert: nothing to delete, no request


def test_a_second_erase_appends_a_line(fake: MemoryPoints, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    assert run("--sensor", "wm-a", "--yes", "--audit-log", str(log)).exit_code == 0
    result = run("--sensor", "wm-b", "--yes", "--audit-log", str(log))
    assert result.exit_code == 0, result.output
    assert [e["sensor"] for e in audit_lines(log)] == ["wm-a", "wm-b"]


def test_the_audit_log_defaults_to_the_stack_home_and_follows_its_setting(
        fake: MemoryPoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("--sensor", "wm-a", "--yes").exit_code == 0
    assert audit_lines(tmp_path / "home" / "audit.log")[0]["sensor"] == "wm-a"
    monkeypatch.setenv("CITYSTREAM_AUDIT__LOG", str(tmp_path / "elsewhere.log"))
    assert run("--sensor", "wm-b", "--yes").exit_code == 0
    assert audit_lines(tmp_path / "elsewhere.log")[0]["sensor"] == "wm-b"


def test_without_yes_it_asks_and_a_no_deletes_nothing(fake: MemoryPoints, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    result = run("--sensor", "wm-a", "--audit-log", str(log), stdin="n\n")
    assert result.exit_code == 1
    assert "Delete these 18 points for good? [y/N]" in result.output
    assert "Aborted" in result.output
    assert fake.deletes == []
    assert len(left(fake, "wm-a")) == 19
    assert not log.exists() or log.read_text() == ""


def test_without_yes_a_yes_answer_deletes(fake: MemoryPoints, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    result = run("--sensor", "wm-a", "--audit-log", str(log), stdin="y\n")
    assert result.exit_code == 0, result.output
    assert left(fake, "wm-a") == [("kpi", "alert")]
    assert audit_lines(log)[0]["deleted"] == {"telemetry": 12, "kpi": 6}


def test_a_period_erases_only_inside_it(fake: MemoryPoints, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    start, stop = rfc3339(T0 - 2 * DAY_MS), rfc3339(T0 - DAY_MS)
    result = run("--sensor", "wm-a", "--from", start, "--to", stop, "--yes",
                 "--audit-log", str(log))
    assert result.exit_code == 0, result.output
    inside = [t for k in range(12) if T0 - 2 * DAY_MS <= (t := T0 - 3 * DAY_MS
                                                           + k * 6 * 3_600_000) <= T0 - DAY_MS]
    assert len(inside) == 5  # both ends included
    entry = audit_lines(log)[0]
    assert entry["range"] == {"from": start, "to": stop}
    assert entry["deleted"] == {"telemetry": 5, "kpi": 0}
    assert len(left(fake, "wm-a")) == 19 - 5


def test_nothing_to_erase_still_leaves_an_audit_line(fake: MemoryPoints, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    result = run("--sensor", "wm-gone", "--audit-log", str(log))  # no question either
    assert result.exit_code == 0, result.output
    assert "nothing to erase" in result.output
    assert fake.deletes == []
    entry = audit_lines(log)[0]
    assert entry["deleted"] == {"telemetry": 0, "kpi": 0} and entry["status"] == "done"


@pytest.mark.parametrize("sensor", ['wm"a', "wm a", "wm\\a", "", "x" * 65, "wm-ä",
                                    'a" OR sensor_id="b'])
def test_ids_outside_the_contract_are_refused_before_anything_happens(
        fake: MemoryPoints, tmp_path: Path, sensor: str) -> None:
    result = run("--sensor", sensor, "--yes", "--audit-log", str(tmp_path / "audit.log"))
    assert result.exit_code == 2
    assert "is not a sensor id" in result.output
    assert fake.deletes == [] and not (tmp_path / "audit.log").exists()


def test_a_bad_time_is_a_usage_error(fake: MemoryPoints, tmp_path: Path) -> None:
    result = run("--sensor", "wm-a", "--from", "yesterday", "--yes")
    assert result.exit_code == 2 and "is not a date or time" in result.output
    result = run("--sensor", "wm-a", "--from", "2026-10-02", "--to", "2026-10-01", "--yes")
    assert result.exit_code == 2 and "before --from" in result.output
    assert fake.deletes == []


def test_a_failed_delete_exits_1_and_is_audited(fake: MemoryPoints, tmp_path: Path) -> None:
    fake.fail_delete = "kpi"
    log = tmp_path / "audit.log"
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(log))
    assert result.exit_code == 1
    assert "error: deleting sensor_quality points from kpi: POST /api/v2/delete: HTTP 500" in (
        result.output)
    entry = audit_lines(log)[0]
    assert entry["status"] == "failed"
    assert entry["deleted"] == {"telemetry": 12, "kpi": 0}
    assert "HTTP 500" in str(entry["error"])


def test_points_that_arrive_during_the_erase_are_reported(fake: MemoryPoints,
                                                         tmp_path: Path) -> None:
    def the_sensor_still_sends(points: MemoryPoints) -> None:
        if len(points.deletes) == 1:
            points.add("telemetry", "water", {"district": "bletchley", "sensor_id": "wm-a"}, T0)

    fake.on_delete = the_sensor_still_sends
    log = tmp_path / "audit.log"
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(log))
    assert result.exit_code == 1
    assert "1 points remain" in result.output and "still sending" in result.output
    entry = audit_lines(log)[0]
    assert entry["status"] == "incomplete"
    assert entry["remaining"] == {"telemetry": 1, "kpi": 0}


def test_an_unwritable_audit_log_stops_before_deleting(fake: MemoryPoints,
                                                       tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(tmp_path / "dir"))
    assert result.exit_code == 2  # click refuses a directory for a file option
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(blocker / "audit.log"))
    assert result.exit_code == 1
    assert "cannot open the audit log" in result.output
    assert "CITYSTREAM_AUDIT__LOG" in result.output
    assert fake.deletes == []


def test_influxdb_failing_to_count_is_an_error(fake: MemoryPoints, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(target: Target, span: Span) -> int:
        raise EraseError("cannot reach InfluxDB at http://influx.test:8086: connection refused")

    monkeypatch.setattr(fake, "count", refuse)
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(tmp_path / "audit.log"))
    assert result.exit_code == 1
    assert "error: cannot reach InfluxDB" in result.output
    assert fake.deletes == []


def test_no_token_is_a_setting_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("CITYSTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CITYSTREAM_STACK__HOME", str(tmp_path))
    monkeypatch.setenv("CITYSTREAM_INFLUX__READ_TOKEN", "read-only")
    result = run("--sensor", "wm-a", "--yes", "--audit-log", str(tmp_path / "audit.log"))
    assert result.exit_code == 2
    assert "CITYSTREAM_INFLUX__TOKEN" in result.output


def test_help_teaches() -> None:
    result = CliRunner().invoke(cli.main, ["erase", "--help"], terminal_width=100)
    assert result.exit_code == 0
    for text in ("CITYSTREAM_AUDIT__LOG", "CITYSTREAM_INFLUX__URL", "__TOKEN", "Examples:",
                 "citystream erase --sensor", "docs/operations.md", "Kafka"):
        assert text in result.output, text
    assert "erase" in cli.COMPONENTS and cli.COMPONENTS["erase"] == "analysis.erase:erase"
