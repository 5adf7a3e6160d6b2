"""The benchmark: its pure helpers (percentiles, ratios, tables, hops), its SQLite baseline, and a
quick run of `python -m bench` that must write every figure issue 5 asks for."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import hops
from bench.cpu import CLIENT, CpuMeter, CpuTally, cpu_figures, render_cpu
from bench.load import closed_loop
from bench.sqlite_txn import sqlite_txn_per_s
from bench.stats import Row, format_ratio, median, percentile, ratio, render_table

ROOT = Path(__file__).resolve().parent.parent

# The keys issue 5 names, and the baselines they are read against.
REQUIRED_KEYS = (
    "echo_rps_1",
    "echo_rps_32",
    "sqlite_txn_per_s",
    "jetstream_roundtrip_p50_ms",
    "jetstream_roundtrip_p99_ms",
    "register_grpc_rps_32",
    "register_http_rps_32",
    "register_grpc_vs_echo",
    "register_http_vs_echo",
    "register_grpc_vs_sqlite_txn",
    "breach_to_suspension_p50_ms",
    "breach_to_suspension_p99_ms",
    "breach_to_suspension_vs_jetstream_p50",
    "hop_breaches",
    # What a registration costs in CPU, by process, beside what an echo call costs.
    "echo_cpu_ms_per_call",
    "echo_cpu_ms_server",
    "echo_cpu_ms_client",
    "register_grpc_cpu_ms_per_call",
    "register_grpc_cpu_ms_registry",
    "register_grpc_cpu_ms_client",
    "register_http_cpu_ms_per_call",
    "register_http_cpu_ms_gateway",
    "register_grpc_cpu_vs_echo",
    "register_http_cpu_vs_echo",
    "bid_submit_cpu_ms_per_call",
    "bid_submit_cpu_ms_tendering",
    "bid_submit_cpu_vs_echo",
    # Issues 8 and 9: self-monitoring ingestion and alerts, sealed bids.
    "ingest_obs_per_s",
    "ingest_vs_jetstream",
    "evaluation_10x_vs_1x",
    "alert_fanout_p99_ms",
    "alert_fanout_dropped",
    "bid_submit_vs_echo",
    "open_10k_bids_s",
    "open_10k_bids_vs_raw",
)


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


def _burn(seconds: float) -> None:
    """Spends `seconds` of this process's CPU."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_cpu_tally_counts_the_measured_stretches_and_not_what_runs_between() -> None:
    tally = CpuTally(CpuMeter.of_client_and({}))
    for _ in range(2):
        with tally.measuring():
            _burn(0.1)
        _burn(0.2)  # between the stretches: minting tokens, warming up
    tally.calls = 100
    # 0.2 s measured over 100 calls: 2 ms a call; the 0.4 s between would make it 6.
    assert 1.8 <= tally.ms_per_call()[CLIENT] < 3.0


def test_cpu_figures_name_each_process_and_their_total() -> None:
    tally = CpuTally(CpuMeter({}))
    tally.seconds.update({"registry": 0.5, CLIENT: 0.25})
    tally.calls = 250
    figures = cpu_figures("register_grpc", tally)
    assert figures == pytest.approx(
        {
            "register_grpc_cpu_calls": 250,
            "register_grpc_cpu_ms_registry": 2.0,
            "register_grpc_cpu_ms_client": 1.0,
            "register_grpc_cpu_ms_per_call": 3.0,
        }
    )
    assert cpu_figures("echo", CpuTally(CpuMeter({}))) == {"echo_cpu_calls": 0}


def test_cpu_table_has_a_line_per_process_and_a_dash_where_one_was_not_measured() -> None:
    text = render_cpu(
        {
            "echo_cpu_ms_per_call": 0.4,
            "echo_cpu_ms_server": 0.2,
            "echo_cpu_ms_client": 0.2,
            "register_grpc_cpu_ms_per_call": 3.0,
            "register_grpc_cpu_ms_registry": 2.5,
            "register_grpc_cpu_ms_client": 0.5,
        }
    )
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert lines == {
        "client": ["0.20", "0.50"],
        "registry": ["-", "2.50"],
        "server": ["0.20", "-"],
        "total": ["0.40", "3.00"],
    }


def test_hops_skip_a_breach_only_where_it_lacks_an_instant() -> None:
    complete = {name: float(second) for second, name in enumerate(hops.TIMELINE)}
    without_stream = {k: v for k, v in complete.items() if k != hops.STORED}
    samples = hops.hop_samples([complete, without_stream])
    assert samples["observation_call"] == [1000.0, 1000.0]
    assert samples["stream_to_registry_unit"] == [2000.0]  # stored at 3 s, registry unit at 5 s
    figures = hops.hop_figures(samples, breaches=2)
    assert figures["hop_breaches"] == 2
    assert figures["hop_accepted_to_stream_samples"] == 1
    assert figures["hop_observation_call_p50_ms"] == 1000.0


def test_hop_without_samples_has_a_count_and_no_percentiles() -> None:
    figures = hops.hop_figures({}, breaches=0)
    assert figures["hop_suspended_read_samples"] == 0
    assert "hop_suspended_read_p50_ms" not in figures
    assert "-" in hops.render_hops(figures)


def test_the_breach_figure_is_the_sum_of_its_hops_sample_by_sample() -> None:
    """accepted -> stored -> registry unit -> seen covers the figure's clock without a gap."""
    chain = [
        hop
        for hop in hops.HOPS
        if hop.name in {"accepted_to_stream", "stream_to_registry_unit", "registry_unit_to_read"}
    ]
    assert [(hop.start, hop.end) for hop in chain] == [
        (hops.ACCEPTED, hops.STORED),
        (hops.STORED, hops.REGISTRY_UNIT),
        (hops.REGISTRY_UNIT, hops.SEEN),
    ]


def test_epoch_reads_sqlite_naive_text_as_utc() -> None:
    moment = dt.datetime(2026, 11, 23, 11, 18, 33, 123456, tzinfo=dt.UTC)
    assert hops.epoch("2026-11-23 11:18:33.123456") == moment.timestamp()
    assert hops.epoch(moment) == moment.timestamp()
    assert hops.epoch(None) is None


def test_sqlite_loop_commits_and_cleans_up(tmp_path: Path) -> None:
    assert sqlite_txn_per_s(tmp_path, duration_s=0.05, repeats=1) > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(output.read_text())
    missing = [key for key in REQUIRED_KEYS if key not in results]
    assert not missing, missing
    for hop in hops.HOPS:
        assert results[f"hop_{hop.name}_samples"] > 0, hop.name
        assert f"hop_{hop.name}_p50_ms" in results and f"hop_{hop.name}_p99_ms" in results
    assert results["sqlite_txn_per_s"] > 0
    assert "where one breach -> suspension spends its time" in run.stdout
    # Every registration costs the registry and the client some CPU, and more than an echo call.
    assert results["register_grpc_cpu_ms_registry"] > 0 and results["register_grpc_cpu_ms_client"] > 0
    assert results["register_grpc_cpu_vs_echo"] > 1
    assert "CPU per call, by process" in run.stdout
