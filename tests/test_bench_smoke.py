"""The benchmark's pure helpers: percentiles, ratios and the table they print."""

from __future__ import annotations

import asyncio
import math

import pytest

from bench.load import closed_loop
from bench.stats import Row, format_ratio, median, percentile, ratio, render_table


def test_percentile_interpolates_between_closest_ranks() -> None:
    samples = [4.0, 1.0, 3.0, 2.0]
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 4.0
    assert percentile(samples, 50) == pytest.approx(2.5)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_samples_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_median_of_repeats() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0


def test_ratio_without_baseline_is_nan_and_shown_as_dash() -> None:
    assert math.isnan(ratio(1.0, 0.0))
    assert format_ratio(ratio(1.0, 0.0)) == "-"


def test_ratio_formatting_keeps_about_three_figures() -> None:
    assert format_ratio(0.0312) == "0.03x"
    assert format_ratio(3.456) == "3.46x"
    assert format_ratio(34.56) == "34.6x"
    assert format_ratio(345.6) == "346x"


def test_table_shows_baseline_and_ratio_only_where_given() -> None:
    text = render_table([Row("echo", 5000.0, "rps"), Row("register", 500.0, "rps", "echo", 5000.0)])
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "value", "unit", "baseline", "ratio"]
    assert lines[2].split() == ["echo", "5", "000", "rps"]
    assert lines[3].endswith("0.10x")


def test_closed_loop_stops_at_count_with_that_many_in_flight() -> None:
    in_flight = peak = calls = 0

    async def call(_: int) -> None:
        nonlocal in_flight, peak, calls
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        calls += 1

    rate = asyncio.run(closed_loop(call, concurrency=4, count=10))
    assert calls == 10
    assert peak == 4
    assert rate > 0
