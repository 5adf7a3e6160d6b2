"""Baseline: a bare grpc.aio unary echo, server in its own process as the services are."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import grpc

from bench.cpu import CpuMeter, CpuTally
from bench.echo_server import METHOD
from bench.load import Load, closed_loop, timed_repeat
from bench.stats import median

PAYLOAD = b"x" * 128  # about the size of a small request message


@dataclass(frozen=True)
class EchoServer:
    address: str
    pid: int


@contextmanager
def echo_server() -> Iterator[EchoServer]:
    """Starts bench.echo_server in a subprocess; yields its address and process id."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield EchoServer(f"127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.wait(10)


@asynccontextmanager
async def _warm_echo(address: str, concurrency: int) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """An echo call on a channel already warmed up (connection, caches) with `concurrency` in flight."""
    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary(METHOD)

        async def call(_: int) -> None:
            await echo(PAYLOAD, timeout=10)

        await closed_loop(call, concurrency=concurrency, count=200)
        yield call


async def echo_rps(address: str, concurrency: int, duration_s: float, repeats: int) -> float:
    """The median over `repeats` of echo calls per second with `concurrency` in flight."""
    async with _warm_echo(address, concurrency) as call:
        return median(
            [await closed_loop(call, concurrency=concurrency, duration_s=duration_s) for _ in range(repeats)]
        )


async def echo_cpu(server: EchoServer, concurrency: int, count: int) -> CpuTally:
    """CPU of the echo server ("server") and of this client per call, over `count` calls."""
    tally = CpuTally(CpuMeter.of_client_and({"server": server.pid}))
    async with _warm_echo(server.address, concurrency) as call:
        await timed_repeat(call, Load(count, concurrency), tally)
    return tally
