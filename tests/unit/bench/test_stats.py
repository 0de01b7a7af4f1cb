"""The benchmark's pure figures: percentiles, rates from progress samples, medians, the table."""

from __future__ import annotations

import itertools

import pytest

from bench.stats import (
    crossing_time,
    fmt,
    latency_summary,
    measured_rate,
    merge_runs,
    percentile,
    progress,
    ratio,
    sustained_rate,
    table,
)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_never_interpolates_a_tail() -> None:
    values = [0.1] * 98 + [5.0, 9.0]
    assert percentile(values, 99) == 5.0  # an observed value, not a blend of 5 and 9
    assert percentile(values, 95) == 0.1


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_rejects_nonsense(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_latency_summary() -> None:
    summary = latency_summary([1.0, 2.0, 3.0, 4.0])
    assert summary == {"n": 4, "p50_s": 2.0, "p95_s": 4.0, "p99_s": 4.0, "max_s": 4.0}
    assert latency_summary([])["p50_s"] is None


def test_crossing_time_interpolates_between_samples() -> None:
    samples = [(10.0, 0.0), (11.0, 100.0), (12.0, 300.0)]
    assert crossing_time(samples, 50) == pytest.approx(10.5)
    assert crossing_time(samples, 200) == pytest.approx(11.5)
    assert crossing_time(samples, 300) == pytest.approx(12.0)
    assert crossing_time(samples, 301) is None
    assert crossing_time([(5.0, 10.0)], 1) == 5.0  # already there at the first sample


def test_sustained_rate_leaves_start_up_and_stragglers_out() -> None:
    # 10 s of start-up with nothing done, then 1000 items/s for 10 s, then a slow tail
    samples = [(0.0, 0.0), (10.0, 0.0)] + [(10.0 + i, 1000.0 * i) for i in range(1, 11)]
    samples.append((40.0, 10_500.0))
    assert sustained_rate(samples, 10_500) == pytest.approx(1000.0)


def test_sustained_rate_none_when_unfinished_or_instant() -> None:
    assert sustained_rate([(0.0, 0.0), (1.0, 50.0)], 100) is None
    assert sustained_rate([(0.0, 100.0)], 100) is None
    assert sustained_rate([], 0) is None


def test_merge_runs_takes_medians_of_numbers_recursively() -> None:
    runs = [{"rate": 10.0, "what": "x", "nested": {"p50": 1.0}, "flag": True},
            {"rate": 30.0, "what": "x", "nested": {"p50": 3.0}, "flag": True},
            {"rate": 20.0, "what": "x", "nested": {"p50": 2.0, "extra": 5}, "flag": False}]
    merged = merge_runs(runs)
    assert merged["rate"] == 20.0
    assert merged["nested"] == {"p50": 2.0, "extra": 5}
    assert merged["what"] == "x"
    assert merged["flag"] is True  # booleans are not averaged


def test_merge_runs_ignores_missing_values() -> None:
    merged = merge_runs([{"p99": None}, {"p99": 4.0}, {"p99": 2.0}])
    assert merged["p99"] == 3.0


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


@pytest.mark.parametrize(("value", "text"), [
    (None, "-"), (0, "0"), (12345.6, "12,346"), (123.4, "123"), (1.2345, "1.23"),
    (0.012345, "0.0123"), ("abc", "abc"), (True, "True")])
def test_fmt(value: object, text: str) -> None:
    assert fmt(value) == text


def test_table_is_markdown_with_right_aligned_figures() -> None:
    text = table([["ingest", 1234.6, None], ["sink", 56789.0, 0.5]], ["what", "rate", "p99"])
    lines = text.splitlines()
    assert lines == ["| what   |   rate |   p99 |",
                     "|--------|-------:|------:|",
                     "| ingest |  1,235 |     - |",
                     "| sink   | 56,789 | 0.500 |"]


def test_measured_rate_says_how_long_it_measured() -> None:
    samples = [(0.0, 0.0), (1.0, 100.0), (2.0, 600.0), (3.0, 1100.0), (4.0, 1000.0 + 200)]
    got = measured_rate(samples, 1000)
    assert got["rate_per_s"] == pytest.approx(500.0)
    assert got["measured_s"] == pytest.approx(1.6)  # 100 done at 1.0 s, 900 at 2.6 s
    assert got["rate_samples"] == 1  # the sample at 2.0 s
    assert measured_rate([(0.0, 100.0)], 100) == {"rate_per_s": None, "measured_s": None,
                                                  "rate_samples": 0}


def test_progress_gives_a_rate_when_one_sample_holds_everything() -> None:
    # a stage that took its whole input between two polls: without the start, no rate
    polled = [(5.0, 200_000.0), (10.0, 200_000.0)]
    assert sustained_rate(polled, 200_000) is None
    points = progress(polled, start=3.0)
    assert points == [(3.0, 0.0), (5.0, 200_000.0)]
    got = measured_rate(points, 200_000)
    assert got["rate_per_s"] == pytest.approx(100_000.0)
    assert got["measured_s"] == pytest.approx(1.6)


def test_progress_reads_a_staircase_at_its_steps() -> None:
    # committed offsets polled every 0.2 s, committed every second
    polled = [(0.2 * i, float(1000 * int(0.2 * i))) for i in range(1, 51)]
    points = progress(polled, start=0.0)
    assert all(a[1] != b[1] for a, b in itertools.pairwise(points))
    assert measured_rate(points, 10_000)["rate_per_s"] == pytest.approx(1000.0, rel=0.05)
