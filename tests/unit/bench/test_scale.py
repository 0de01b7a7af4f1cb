"""The scale benchmark's bookkeeping: stretches of a live feed around its events, the table,
the Kafka settings of a namespace on a cluster."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import click
import pytest

from bench.procs import BenchStack, Namespace
from bench.scale import _ints, table
from bench.suite import _after_events, _longest_flat


def test_longest_flat_is_the_longest_stretch_without_growth() -> None:
    samples = [(0.0, 0), (1.0, 5), (2.0, 5), (3.0, 5), (4.0, 9), (5.0, 9), (6.0, 12)]
    assert _longest_flat(samples, 0.0, 10.0) == 2.0
    assert _longest_flat(samples, 3.5, 10.0) == 1.0
    assert _longest_flat(samples, 1.5, 10.0) == 1.5
    assert _longest_flat([(0.0, 1), (1.0, 2)], 0.0, 10.0) == 0.0


def test_after_events_splits_the_probes_at_each_event() -> None:
    probes: Any = SimpleNamespace(
        published={("a", 1): 100.0, ("a", 2): 110.0, ("a", 3): 120.0, ("a", 4): 121.0},
        result=SimpleNamespace(seen={("a", 1): 100.5, ("a", 2): 113.0, ("a", 3): 120.2}))
    samples = [(100.0, 0), (105.0, 10), (111.0, 10), (114.0, 20), (121.0, 30)]
    out = _after_events(probes, samples, 100.0, 125.0, {"joins": 108.0, "leaves": 118.0})
    assert [e["what"] for e in out] == ["before", "joins", "leaves"]
    assert [(e["from_s"], e["to_s"]) for e in out] == [(0.0, 8.0), (8.0, 18.0), (18.0, 25.0)]
    assert out[0]["latency"]["max_s"] == 0.5
    assert out[1]["latency"]["max_s"] == 3.0
    assert out[1]["longest_no_write_s"] == 3.0  # flat since 105, counted from 108 to 111
    assert out[2]["probes_not_seen"] == 1


def test_ints_refuses_what_is_not_a_list_of_counts() -> None:
    assert _ints("1,2, 4") == [1, 2, 4]
    for bad in ("", "a,b", "0,2"):
        with pytest.raises(click.BadParameter):
            _ints(bad)


def test_table_has_a_row_per_combination_and_the_rebalance() -> None:
    drain = {"rate_per_s": 12345.6, "cpu_s_per_1k": 0.031,
             "services_cpu_s_per_1k": {"kafka-1": 0.01, "kafka-2": 0.01, "kafka-3": 0.005,
                                       "influxdb": 0.02}}
    live = {"delivered_rate_per_s": 1999.0, "latency": {"p50_s": 0.3, "p99_s": 1.2}}
    lat = {"p50_s": 0.3, "p99_s": 4.0, "max_s": 6.5}
    text = table({"rate": 2000, "live_s": 60, "readings": 150000,
                  "configs": {"1 x 8": {"drain": drain, "live": live}, "2 x 8": {}},
                  "rebalance": {"what": "a third joins", "events": [
                      {"what": "before", "from_s": 0, "latency": lat,
                       "longest_no_write_s": 1.0}]}})
    assert "| 1 x 8 | 12,346 | 0.0310 | 0.0250 | 0.0200 | 1,999 | 0.30 | 1.20 |" in text
    assert "| 2 x 8 | - | - | - | - | - | - | - |" in text
    assert "| before | 0 | 0.30 | 4.00 | 6.50 | 1.0 |" in text


def test_a_namespace_s_kafka_settings_carry_its_partitions_and_the_cluster_s_replication(
        ) -> None:
    stack = BenchStack.__new__(BenchStack)
    stack.stack = SimpleNamespace(client_info=lambda: {"kafka": {  # type: ignore[assignment]
        "bootstrap": "10.0.0.1:9092", "replication_factor": 3, "min_insync_replicas": 2}})
    ns = Namespace("scale", partitions=16)
    settings = stack.kafka(ns.prefix, ns.partitions)
    assert (settings.partitions, settings.replication_factor, settings.min_insync_replicas) == (
        16, 3, 2)
    assert ns.env()["CITYSTREAM_KAFKA__PARTITIONS"] == "16"
    assert "CITYSTREAM_KAFKA__PARTITIONS" not in Namespace("e2e").env()
    stack.stack = SimpleNamespace(client_info=lambda: {  # type: ignore[assignment]
        "kafka": {"bootstrap": "127.0.0.1:9092"}})
    assert stack.kafka("p.").partitions == 8
