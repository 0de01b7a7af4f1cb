"""The benchmark's bookkeeping: the ledger of readings per Kafka record, Telegraf's config, the
table rows."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiokafka import TopicPartition

from bench.kafka import Ledger, ledger_for_units
from bench.peers import telegraf_config, telegraf_kafka_configs, telegraf_kafka_topic
from bench.procs import Namespace
from bench.report import cpu_rows, summary_rows, table_text


def test_ledger_counts_items_below_committed_offsets() -> None:
    ledger = Ledger()
    a, b = TopicPartition("p.telemetry.water", 0), TopicPartition("p.telemetry.water", 1)
    for offset, items in enumerate([500, 500, 20]):
        ledger.add(a, offset, items)
    ledger.add(b, 7, 3)
    assert ledger.total == 1023
    assert ledger.done({}) == 0
    assert ledger.done({a: 0, b: 0}) == 0
    assert ledger.done({a: 1}) == 500
    assert ledger.done({a: 3, b: 7}) == 1020
    assert ledger.done({a: 3, b: 8}) == 1023


def test_ledger_for_units_counts_one_point_per_record() -> None:
    ledger = Ledger()
    water = TopicPartition("p.telemetry.water", 0)
    ledger.add(water, 0, 100)
    kpi = TopicPartition("p.kpi.records", 3)
    full = ledger_for_units(ledger, {kpi: 40}, ["p.kpi.records"])
    assert full.total == 140
    assert full.done({water: 1, kpi: 25}) == 125
    assert ledger.total == 100  # the original is unchanged


class _Stack:
    info: ClassVar[dict[str, Any]] = {
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "influxdb": {"url": "http://127.0.0.1:8086", "org": "citystream", "token": "t0k"}}
    bootstrap = "127.0.0.1:9092"

    def service_login(self) -> tuple[str, str]:
        return "citystream", "pw"


def test_telegraf_config_matches_the_raw_schema() -> None:
    ns = Namespace("t")
    conf = tomllib.loads(telegraf_config(_Stack(), ns, "abc"))  # type: ignore[arg-type]
    assert conf["outputs"]["influxdb_v2"][0]["bucket"] == ns.telemetry
    assert conf["outputs"]["influxdb_v2"][0]["content_encoding"] == "identity"
    inputs = {i["name_override"]: i for i in conf["inputs"]["mqtt_consumer"]}
    assert set(inputs) == {"water", "energy", "traffic", "shuttle"}
    for kind, i in inputs.items():
        assert i["topics"] == [f"city/+/{kind}/+"]
        assert i["qos"] == 1 and i["persistent_session"] is True
        assert i["data_format"] == "json" and i["json_time_key"] == "ts"
        assert i["topic_parsing"][0]["tags"] == "_/district/_/_"
        assert "sensor_id" in i["tag_keys"]
    assert len({i["client_id"] for i in inputs.values()}) == 4
    assert inputs["water"]["json_time_format"] == "unix_ms"
    assert inputs["energy"]["json_time_format"].startswith("2006-01-02T15:04:05")
    assert inputs["shuttle"]["json_string_fields"] == ["status", "stop_id"]


def test_summary_rows_compare_with_peers_and_floor() -> None:
    summary = {
        "floor.single": {"rate_per_s": 40_000.0, "cpu_s_per_1k": 0.025},
        "ingest.1": {"rate_per_s": 2_000.0, "cpu_s_per_1k": 0.1,
                     "services_cpu_s_per_1k": {"mosquitto": 0.05, "kafka": 0.05},
                     "memory_mb": {"ingest-0": {"rss_mb": 60.0, "hwm_mb": 61.0}}},
        "e2e.citystream": {"rate_per_s": 1_500.0, "cpu_s_per_1k": 0.2, "complete": True},
        "e2e.telegraf": {"rate_per_s": 12_000.0, "cpu_s_per_1k": 0.025},
        "latency.50.citystream": {"delivered_rate_per_s": 750.0, "offered_rate_per_s": 750.0,
                                  "latency": {"p50_s": 0.3, "p95_s": 0.6, "p99_s": 1.0},
                                  "kpi_latency": {"grace_s": 120,
                                                  "first": {"p50_s": 121.0},
                                                  "final": {"n": 20, "p50_s": 122.0,
                                                            "p95_s": 125.0, "p99_s": 126.0}}},
        "latency.50.telegraf": {"delivered_rate_per_s": 750.0,
                                "latency": {"p50_s": 0.5, "p95_s": 1.0, "p99_s": 2.0}},
        "rss.100000.citystream": {"system": "citystream", "rate_per_s": 1.0,
                                  "memory_mb": {"worker-0": {"rss_mb": 300.0, "hwm_mb": 310.0}}},
    }
    rows = {r[0]: r for r in summary_rows(summary)}
    ingest = rows["MQTT -> Kafka, 1 ingest"]
    assert ingest[1:4] == [2_000.0, 0.1, 0.1]
    assert ingest[7] == "ingest 60.0"
    assert "5.0% of floor" in ingest[8] and "0.25x Telegraf per CPU-s" in ingest[8]
    assert "0.12x Telegraf" in rows["end to end MQTT -> InfluxDB raw, citystream"][8]
    latency = rows["latency at 50 % of max, citystream"]
    assert latency[4:7] == [0.3, 0.6, 1.0] and "p99 0.50x Telegraf" in latency[8]
    kpi = rows["window end -> final KPI visible at 50 % (incl. grace)"]
    assert kpi[4:7] == [122.0, 125.0, 126.0] and "20 windows" in kpi[8]
    assert rows["RSS at 100,000 sensors, citystream"][7] == "worker 300"
    assert not any(r[0].startswith("(a)") for r in rows.values())  # absent: left out


def test_namespace_names_are_fresh_and_valid() -> None:
    a, b = Namespace("e2e"), Namespace("e2e")
    assert a.prefix != b.prefix and a.group != b.group
    assert a.env()["CITYSTREAM_KAFKA__TOPIC_PREFIX"] == a.prefix
    assert Path(a.telemetry).name == a.telemetry


def test_every_row_says_how_long_its_rate_was_measured() -> None:
    summary = {
        "kpi.1": {"rate_per_s": 40_000.0, "measured_s": 24.5, "rate_samples": 30},
        "sink": {"rate_per_s": 60_000.0, "measured_s": 1.5, "rate_samples": 0},
        "steady.citystream": {"delivered_rate_per_s": 9_000.0, "measured_s": 150.0},
    }
    rows = {r[0]: r for r in summary_rows(summary)}
    assert rows["Kafka -> KPI, 1 worker"][9] == 24.5
    assert "coarse" not in rows["Kafka -> KPI, 1 worker"][8]
    assert rows["KPI + raw -> InfluxDB, sink"][9] == 1.5
    assert "coarse" in rows["KPI + raw -> InfluxDB, sink"][8]
    assert rows["(a) steady city, citystream"][9] == 150.0


def test_telegraf_via_kafka_has_citystreams_durability() -> None:
    ns = Namespace("t")
    configs = telegraf_kafka_configs(_Stack(), ns, "abc")  # type: ignore[arg-type]
    edge, sink = tomllib.loads(configs["edge"]), tomllib.loads(configs["sink"])
    out = edge["outputs"]["kafka"][0]
    assert "influxdb_v2" not in edge["outputs"] and "kafka" not in sink["outputs"]
    assert out["topic"] == telegraf_kafka_topic(ns) and out["topic"].startswith(ns.prefix)
    assert out["required_acks"] == -1 and out["idempotent_writes"] is True
    assert out["routing_tag"] == "sensor_id"  # a sensor's readings stay in order
    assert len(edge["inputs"]["mqtt_consumer"]) == 4
    consumer = sink["inputs"]["kafka_consumer"][0]
    assert consumer["topics"] == [out["topic"]] and consumer["offset"] == "oldest"
    assert consumer["data_format"] == out["data_format"] == "influx"
    assert sink["outputs"]["influxdb_v2"][0]["bucket"] == ns.telemetry


def test_end_to_end_is_compared_with_both_telegraf_layouts_and_costed_by_component() -> None:
    summary = {
        "e2e.citystream": {"rate_per_s": 15_000.0,
                           "cpu_s_per_1k_by_process": {"worker-0": 0.035, "ingest-0": 0.015},
                           "services_cpu_s_per_1k": {"mosquitto": 0.01, "kafka": 0.03,
                                                     "influxdb": 0.02}},
        "e2e.telegraf": {"rate_per_s": 25_000.0,
                         "cpu_s_per_1k_by_process": {"telegraf": 0.03},
                         "services_cpu_s_per_1k": {"mosquitto": 0.01, "kafka": None}},
        "e2e.telegraf-kafka": {"rate_per_s": 12_000.0,
                               "cpu_s_per_1k_by_process": {"telegraf-edge": 0.03,
                                                           "telegraf-sink": 0.01}},
    }
    rows = {r[0]: r for r in summary_rows(summary)}
    note = rows["end to end MQTT -> InfluxDB raw, citystream"][8]
    assert "0.60x Telegraf" in note and "1.25x Telegraf via Kafka" in note
    cpu = {r[0]: r for r in cpu_rows(summary)}
    ours = cpu["end to end MQTT -> InfluxDB raw, citystream"]
    assert ours[1:3] == [0.015, 0.035] and ours[-1] == pytest.approx(0.11)
    via_kafka = cpu["end to end, Telegraf via Kafka (citystream's durability)"]
    assert via_kafka[4:6] == [0.03, 0.01]
    text = table_text(list(rows.values()), {"summary": summary})
    assert "CPU s per 1,000 readings by component" in text and "telegraf-edge" in text


def test_latency_rows_follow_the_percents_measured() -> None:
    summary = {"latency.25.citystream": {"delivered_rate_per_s": 3_000.0,
                                         "latency": {"p50_s": 0.2, "p95_s": 0.3, "p99_s": 0.4}},
               "latency.90.citystream": {"delivered_rate_per_s": 9_000.0,
                                         "latency": {"p50_s": 0.5, "p95_s": 1.5, "p99_s": 2.5}}}
    labels = [r[0] for r in summary_rows(summary)]
    assert labels == ["latency at 25 % of max, citystream", "latency at 90 % of max, citystream"]


def test_latency_at_takes_percents_and_refuses_the_rest() -> None:
    from click.testing import CliRunner

    from bench.cli import _percents, bench

    assert _percents("25, 50,90") == (25, 50, 90)
    refused = CliRunner().invoke(bench, ["--latency-at", "0,150", "--stages", "none"])
    assert refused.exit_code == 2 and "--latency-at" in refused.output


def test_burst_recovery_is_not_claimed_when_no_probe_came_after_the_burst() -> None:
    from types import SimpleNamespace

    from bench.influx import Visibility
    from bench.load import Burst, LiveSpec
    from bench.suite import _phases

    spec = LiveSpec(mqtt={}, sensors=10, rate=10.0, duration_s=30.0,
                    bursts=(Burst("traffic", 10.0, 20.0, 10.0),))

    def phases(published_at: list[float], latency: float) -> dict[str, Any]:
        published = {("p", i): at for i, at in enumerate(published_at)}
        seen = Visibility(seen={k: at + latency for k, at in published.items()})
        return _phases(SimpleNamespace(published=published, result=seen),  # type: ignore[arg-type]
                       spec, 0.0)

    assert phases([1.0, 5.0, 12.0, 25.0], 0.3)["recovery_s"] == 0.0
    stopped = phases([1.0, 5.0, 12.0, 15.0], 0.3)  # the feed stopped during the burst
    assert stopped["after"]["n"] == 0 and stopped["recovery_s"] is None
    rows = summary_rows({"burst.citystream": {"delivered_rate_per_s": 1.0, "phases": stopped}})
    assert "recovery not measured" in rows[0][8]
