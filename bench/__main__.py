"""`python -m bench`: measures the suite against bare gRPC, JetStream and SQLite baselines taken in
the same run, prints a table of figures and one of where a breach -> suspension spends its time,
and writes bench/results.json (a flat object of named figures)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import hops
from bench.cpu import CPU_TABLE_PREFIXES, ECHO, CpuMeter, CpuTally, cpu_figures, render_cpu
from bench.echo import echo_cpu, echo_rps, echo_server
from bench.jetstream import jetstream_roundtrips
from bench.load import Load
from bench.registry_list import provider_list_figures
from bench.selfmonitoring_load import selfmonitoring_figures
from bench.sqlite_txn import sqlite_txn_per_s
from bench.stats import Row, percentile, ratio, render_table
from bench.suite_load import (
    Fixture,
    breach_to_suspension,
    prepare,
    register_grpc_rps,
    register_http_rps,
)
from bench.tendering_load import bid_submit_rps, open_bids_figures
from kasvuctl.localsuite import LocalSuite

RESULTS = Path(__file__).parent / "results.json"


@dataclass(frozen=True)
class Plan:
    """How much to measure; the defaults keep a run on two cores under about four minutes."""

    echo_seconds: float = 3.0
    echo_cpu_calls: int = 10_000
    sqlite_seconds: float = 2.0
    repeats: int = 3
    in_flight: int = 32
    registrations: int = 1000
    # Caps on a slow service's share of the time budget; the sample counts say if they bit.
    registration_max_seconds: float = 15.0
    roundtrips: int = 500
    breaches: int = 500
    # One provider at a time: with 8 at once, 8 pollers every 2 ms queue on the registry's
    # two cores and the figure measured that queue (p50 ~390 ms vs ~25 ms alone). One at
    # a time, 500 samples take ~15 s.
    breach_concurrency: int = 1
    breach_max_seconds: float = 60.0
    # The capabilities' own figures (self-monitoring ingestion and alerts, sealed bids).
    quick: bool = False
    bids_opened: int = 10_000


async def measure(plan: Plan, data_dir: Path) -> dict[str, float | str]:
    results: dict[str, float | str] = {}
    suite = LocalSuite(data_dir)
    try:
        started = time.perf_counter()
        await suite.start()
        log(f"suite up in {time.perf_counter() - started:.1f} s")
        # The echo server runs while the suite idles, so both see the same background.
        with echo_server() as echo:
            results["echo_rps_1"] = await echo_rps(echo.address, 1, plan.echo_seconds, plan.repeats)
            log(f"echo 1 in flight: {results['echo_rps_1']:.0f} rps")
            results["echo_rps_32"] = await echo_rps(
                echo.address, plan.in_flight, plan.echo_seconds, plan.repeats
            )
            log(f"echo {plan.in_flight} in flight: {results['echo_rps_32']:.0f} rps")
            results.update(cpu_figures("echo", await echo_cpu(echo, plan.in_flight, plan.echo_cpu_calls)))
        # In a thread: it blocks on fsync, and the suite idles meanwhile as for the echo.
        results["sqlite_txn_per_s"] = await asyncio.to_thread(
            sqlite_txn_per_s, data_dir, plan.sqlite_seconds, plan.repeats
        )
        log(f"sqlite transactions: {results['sqlite_txn_per_s']:.0f} /s")

        roundtrips = await jetstream_roundtrips(suite.nats_url, plan.roundtrips, suite.nats_access())
        results["jetstream_roundtrip_p50_ms"] = percentile(roundtrips, 50)
        results["jetstream_roundtrip_p99_ms"] = percentile(roundtrips, 99)
        results["jetstream_roundtrip_samples"] = len(roundtrips)
        log(f"jetstream round trip p50 {results['jetstream_roundtrip_p50_ms']:.2f} ms")

        async with (
            grpc.aio.insecure_channel(suite.address("registry")) as registry,
            grpc.aio.insecure_channel(suite.address("selfmonitoring")) as selfmonitoring,
        ):
            fixture = await prepare(suite, registry, selfmonitoring)
            results.update(await registration_figures(suite, fixture, plan))
            results["register_count_per_repeat"] = plan.registrations
            results["repeats"] = plan.repeats

            timings = await breach_to_suspension(
                fixture, plan.breaches, plan.breach_concurrency, plan.breach_max_seconds
            )
        latencies = [timing.latency_ms for timing in timings]
        results["breach_to_suspension_p50_ms"] = percentile(latencies, 50)
        results["breach_to_suspension_p99_ms"] = percentile(latencies, 99)
        results["breach_to_suspension_samples"] = len(latencies)
        results["breach_to_suspension_concurrency"] = plan.breach_concurrency
        log(f"breach -> suspension p50 {results['breach_to_suspension_p50_ms']:.1f} ms")
        # Before the suite stops: the stream's timestamps are read from nats-server.
        results.update(await hop_figures(suite, timings))
        results.update(await capability_figures(suite, plan))
    finally:
        suite.stop()

    opening = data_dir / "opening"
    opening.mkdir(parents=True, exist_ok=True)
    results.update(await open_bids_figures(opening, count=plan.bids_opened))
    log(f"{plan.bids_opened} bids opened in {results['open_10k_bids_s']:.1f} s")
    results["bid_submit_vs_echo"] = ratio(float(results["bid_submit_rps_32"]), float(results["echo_rps_32"]))
    results["register_grpc_vs_echo"] = ratio(
        float(results["register_grpc_rps_32"]), float(results["echo_rps_32"])
    )
    results["register_grpc_vs_sqlite_txn"] = ratio(
        float(results["register_grpc_rps_32"]), float(results["sqlite_txn_per_s"])
    )
    results["register_http_vs_echo"] = ratio(
        float(results["register_http_rps_32"]), float(results["echo_rps_32"])
    )
    for call in CPU_TABLE_PREFIXES:
        if call != ECHO:
            results[f"{call}_cpu_vs_echo"] = ratio(
                float(results.get(f"{call}_cpu_ms_per_call", math.nan)),
                float(results.get(f"{ECHO}_cpu_ms_per_call", math.nan)),
            )
    results["breach_to_suspension_vs_jetstream_p50"] = ratio(
        float(results["breach_to_suspension_p50_ms"]), float(results["jetstream_roundtrip_p50_ms"])
    )
    results.update(metadata())
    return results


async def registration_figures(suite: LocalSuite, fixture: Fixture, plan: Plan) -> dict[str, float | str]:
    """Registrations per second over gRPC and HTTP, and the CPU each costs the suite and the client."""
    meter = CpuMeter.of_client_and_suite(suite)
    grpc_cpu, http_cpu = CpuTally(meter), CpuTally(meter)
    load = Load(plan.registrations, plan.in_flight, plan.repeats, plan.registration_max_seconds)
    results: dict[str, float | str] = {}
    results["register_grpc_rps_32"] = await register_grpc_rps(fixture, load, tally=grpc_cpu)
    log(f"register over gRPC: {results['register_grpc_rps_32']:.0f} rps")
    results["register_http_rps_32"] = await register_http_rps(fixture, load, tally=http_cpu)
    log(f"register over HTTP: {results['register_http_rps_32']:.0f} rps")
    results.update(cpu_figures("register_grpc", grpc_cpu))
    results.update(cpu_figures("register_http", http_cpu))
    return results


async def capability_figures(suite: LocalSuite, plan: Plan) -> dict[str, float | str]:
    """Self-monitoring's ingestion and alert fan-out, and sealed-bid submission, on the running suite."""
    results: dict[str, float | str] = dict(await selfmonitoring_figures(suite, quick=plan.quick))
    log(f"observations ingested: {results['ingest_obs_per_s']:.0f} /s")
    bid_cpu = CpuTally(CpuMeter.of_client_and_suite(suite))
    results["bid_submit_rps_32"] = await bid_submit_rps(
        suite.address("tendering"),
        lambda role, organisation, subject: suite.token(role, organisation),
        concurrency=plan.in_flight,
        duration_s=1.0 if plan.quick else 3.0,
        repeats=plan.repeats,
        tally=bid_cpu,
    )
    results.update(cpu_figures("bid_submit", bid_cpu))
    log(f"bids submitted: {results['bid_submit_rps_32']:.0f} /s")
    if not plan.quick:
        # 11 000 registrations to fill two regions first: about a minute, so not in --quick.
        results.update(await provider_list_figures(suite))
        log(f"provider list p99: {results['provider_list_p99_ms_1k']:.1f} ms at 1k")
    return results


async def hop_figures(suite: LocalSuite, timings: list[hops.BreachTiming]) -> dict[str, float]:
    """The hop-by-hop breakdown; a failure to read it back is reported, not fatal to the run's
    other figures (the smoke test checks the hop keys are there)."""
    # The relay marks an event published after the registry may already show the
    # suspension: a moment's pause lets the last breach's mark land before it is read.
    await asyncio.sleep(0.5)
    try:
        samples = hops.hop_samples(
            await hops.timelines(suite.data_dir, suite.nats_url, suite.nats_access(), timings)
        )
    except Exception as error:
        log(f"hop breakdown failed: {type(error).__name__}: {error}")
        return {"hop_breaches": len(timings)}
    return hops.hop_figures(samples, len(timings))


def metadata() -> dict[str, float | str]:
    return {
        "meta_measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "meta_python": platform.python_version(),
        "meta_grpcio": grpc.__version__,
        "meta_platform": platform.platform(),
        "meta_cpu_count": os.cpu_count() or 0,
        "meta_code": code_version(),
    }


def code_version() -> str:
    """The commit measured, "+dirty" when the suite's code differs from it: the working tree is
    shared, so a figure must say which kernel it belongs to."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "services", "kasvuctl", "gen"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if changes else commit


def table(results: dict[str, float | str]) -> str:
    def figure(name: str) -> float:
        return float(results[name])

    echo_32 = ("echo_rps_32", figure("echo_rps_32"))
    sqlite = ("sqlite_txn_per_s", figure("sqlite_txn_per_s"))
    js_p50 = ("jetstream_roundtrip_p50_ms", figure("jetstream_roundtrip_p50_ms"))
    js_p99 = ("jetstream_roundtrip_p99_ms", figure("jetstream_roundtrip_p99_ms"))
    echo_cpu = ("echo_cpu_ms_per_call", figure("echo_cpu_ms_per_call"))
    return render_table(
        [
            Row("echo_rps_1", figure("echo_rps_1"), "rps"),
            Row("echo_rps_32", figure("echo_rps_32"), "rps"),
            Row("sqlite_txn_per_s", figure("sqlite_txn_per_s"), "txn/s"),
            Row("jetstream_roundtrip_p50_ms", figure("jetstream_roundtrip_p50_ms"), "ms"),
            Row("jetstream_roundtrip_p99_ms", figure("jetstream_roundtrip_p99_ms"), "ms"),
            Row("register_grpc_rps_32", figure("register_grpc_rps_32"), "rps", *echo_32),
            Row("register_grpc_rps_32", figure("register_grpc_rps_32"), "rps", *sqlite),
            Row("register_http_rps_32", figure("register_http_rps_32"), "rps", *echo_32),
            Row("echo_cpu_ms_per_call", figure("echo_cpu_ms_per_call"), "ms"),
            Row("register_grpc_cpu_ms_per_call", figure("register_grpc_cpu_ms_per_call"), "ms", *echo_cpu),
            Row("register_http_cpu_ms_per_call", figure("register_http_cpu_ms_per_call"), "ms", *echo_cpu),
            Row("breach_to_suspension_p50_ms", figure("breach_to_suspension_p50_ms"), "ms", *js_p50),
            Row("breach_to_suspension_p99_ms", figure("breach_to_suspension_p99_ms"), "ms", *js_p99),
            Row(
                "ingest_obs_per_s",
                figure("ingest_obs_per_s"),
                "obs/s",
                "jetstream_publish_async_per_s",
                figure("jetstream_publish_async_per_s"),
            ),
            Row("evaluation_10x_vs_1x", figure("evaluation_10x_vs_1x"), "x"),
            Row("alert_fanout_p99_ms", figure("alert_fanout_p99_ms"), "ms"),
            Row("alert_fanout_dropped", figure("alert_fanout_dropped"), "alerts"),
            Row("bid_submit_rps_32", figure("bid_submit_rps_32"), "rps", *echo_32),
            Row("bid_submit_cpu_ms_per_call", figure("bid_submit_cpu_ms_per_call"), "ms", *echo_cpu),
            Row(
                "open_10k_bids_s",
                figure("open_10k_bids_s"),
                "s",
                "open_10k_bids_raw_s",
                figure("open_10k_bids_raw_s"),
            ),
        ]
    )


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON figures")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args()
    plan = (
        Plan(
            echo_seconds=0.5,
            echo_cpu_calls=1000,
            sqlite_seconds=0.25,
            repeats=1,
            registrations=100,
            roundtrips=50,
            breaches=20,
            quick=True,
            bids_opened=200,
        )
        if args.quick
        else Plan()
    )
    with tempfile.TemporaryDirectory(prefix="kasvu-bench-") as tmp:
        results = asyncio.run(measure(plan, Path(tmp)))
    print(table(results))
    print()
    print("CPU per call, by process (ms; the echo baseline's client and server beside it):")
    print(render_cpu(results))
    print()
    print("where one breach -> suspension spends its time (wall clock, one host):")
    print(hops.render_hops(results))
    args.output.write_text(json.dumps(results, sort_keys=True, indent=2) + "\n")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
