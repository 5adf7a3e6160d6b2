"""CPU time per call, process by process: what a rate costs, read beside what the baseline costs.

On a machine whose cores the client, the baseline server and the suite share, a loaded run is
CPU-bound: a service's rate is bounded by its one process's CPU per call (one core), and the
suite's by the CPU of every process together (all the cores). The per-process split says which
bound holds and where the CPU goes, which is the next step a rate alone hides.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import psutil

from bench.stats import format_value, render_cells

if TYPE_CHECKING:
    from kasvuctl.localsuite import LocalSuite

CLIENT = "client"
"""The bench process itself: the load generator's share."""


class CpuMeter:
    """Reads the CPU seconds (user and system, every thread) of named processes."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}

    @classmethod
    def of_client_and(cls, pids: Mapping[str, int]) -> CpuMeter:
        """The named processes and this one, as CLIENT."""
        return cls({**pids, CLIENT: os.getpid()})

    @classmethod
    def of_client_and_suite(cls, suite: LocalSuite) -> CpuMeter:
        """Every process of a running local suite (its services and nats-server) and this one:
        a call's events reach the other services' consumers while the load runs."""
        return cls.of_client_and({name: process.pid for name, process in suite.processes.items()})

    def read(self) -> dict[str, float]:
        readings = {}
        for name, process in self._processes.items():
            times = process.cpu_times()
            readings[name] = times.user + times.system
        return readings


class CpuTally:
    """CPU seconds spent while measuring, and the calls made meanwhile: CPU per call by process.

    Several measured stretches (the repeats of a figure) add up; what runs between them (minting
    tokens, warming up) stays out.
    """

    def __init__(self, meter: CpuMeter) -> None:
        self._meter = meter
        self.seconds: Counter[str] = Counter()
        self.calls = 0

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        before = self._meter.read()
        try:
            yield
        finally:
            after = self._meter.read()
            self.seconds.update({name: after[name] - before[name] for name in after})

    def ms_per_call(self) -> dict[str, float]:
        """Milliseconds of CPU per call for each process; empty before any call was counted."""
        if self.calls <= 0:
            return {}
        return {name: seconds * 1000 / self.calls for name, seconds in self.seconds.items()}


def cpu_figures(prefix: str, tally: CpuTally) -> dict[str, float]:
    """`<prefix>_cpu_ms_per_call` (every metered process together), `<prefix>_cpu_ms_<process>`
    for each, and `<prefix>_cpu_calls`."""
    per_process = tally.ms_per_call()
    figures: dict[str, float] = {f"{prefix}_cpu_calls": tally.calls}
    if per_process:
        figures[f"{prefix}_cpu_ms_per_call"] = sum(per_process.values())
        figures.update({f"{prefix}_cpu_ms_{name}": value for name, value in per_process.items()})
    return figures


ECHO = "echo"
"""The baseline's prefix; the calls measured against it follow."""
CPU_TABLE_PREFIXES = (ECHO, "register_grpc", "register_http", "bid_submit")


def render_cpu(results: Mapping[str, float | str]) -> str:
    """One line per process (and the total), one column per measured call: ms of CPU per call."""
    columns = [prefix for prefix in CPU_TABLE_PREFIXES if f"{prefix}_cpu_ms_per_call" in results]
    names = {
        key.removeprefix(f"{prefix}_cpu_ms_")
        for prefix in columns
        for key in results
        if key.startswith(f"{prefix}_cpu_ms_")
    } - {"per_call"}

    def cell(prefix: str, name: str) -> str:
        value = results.get(f"{prefix}_cpu_ms_{name}")
        return "-" if value is None else format_value(float(value))

    cells: list[tuple[str, ...]] = [("process", *columns)]
    cells.extend((name, *(cell(prefix, name) for prefix in columns)) for name in sorted(names))
    cells.append(("total", *(cell(prefix, "per_call") for prefix in columns)))
    return render_cells(cells, right_aligned=set(range(1, len(columns) + 1)))
