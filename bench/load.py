"""A closed-loop load generator: a fixed number of calls in flight, by count or by duration."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.cpu import CpuTally


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    count: int | None = None,
    duration_s: float | None = None,
) -> float:
    """Runs call(0), call(1), ... with `concurrency` in flight; returns completed calls per second.

    Stops after `count` calls or once `duration_s` has passed, whichever comes first
    (calls under way at the deadline finish and count). A count with a duration caps
    a slow service's share of the run's time budget.
    """
    if count is None and duration_s is None:
        raise ValueError("give a count, a duration or both")
    indices = itertools.count()
    completed = 0
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        nonlocal completed
        # One event loop: next() on the shared counter cannot interleave.
        for index in indices:
            if (count is not None and index >= count) or time.perf_counter() >= deadline:
                return
            await call(index)
            completed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return completed / (time.perf_counter() - start)


@dataclass(frozen=True)
class Load:
    """How a rate figure loads the suite: calls per repeat (None: as many as the time allows),
    calls in flight, repeats, and a cap on each repeat's seconds."""

    count: int | None
    concurrency: int
    repeats: int = 1
    max_seconds: float | None = None


async def timed_repeat(call: Callable[[int], Awaitable[object]], load: Load, tally: CpuTally | None) -> float:
    """One repeat's calls per second; with `tally`, its CPU and completed calls are added to it."""
    completed = 0

    async def counted(index: int) -> None:
        nonlocal completed
        await call(index)
        completed += 1

    with tally.measuring() if tally is not None else contextlib.nullcontext():
        rate = await closed_loop(
            counted, concurrency=load.concurrency, count=load.count, duration_s=load.max_seconds
        )
    if tally is not None:
        tally.calls += completed
    return rate
