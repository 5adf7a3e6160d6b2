"""Pure helpers of the benchmarks: percentiles, medians, ratios and the printed table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between the closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def ratio(value: float, baseline: float) -> float:
    """value / baseline; NaN when there is no baseline to divide by."""
    return value / baseline if baseline else math.nan


def format_ratio(value: float) -> str:
    """ "0.12x", "3.4x", "250x": about three significant figures without a long tail."""
    if math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def format_value(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}".replace(",", " ")
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Row:
    """One printed figure, with the baseline it is read against (if any)."""

    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None


def render_table(rows: Sequence[Row]) -> str:
    header = ("figure", "value", "unit", "baseline", "ratio")
    cells: list[tuple[str, ...]] = [header]
    for row in rows:
        if row.baseline is None or row.baseline_value is None:
            baseline, shown_ratio = "", ""
        else:
            baseline = f"{row.baseline} = {format_value(row.baseline_value)}"
            shown_ratio = format_ratio(ratio(row.value, row.baseline_value))
        cells.append((row.name, format_value(row.value), row.unit, baseline, shown_ratio))
    return render_cells(cells, right_aligned={1, 4})


def render_cells(cells: Sequence[Sequence[str]], right_aligned: set[int]) -> str:
    """A plain-text table: the first row is the header, underlined; columns padded to fit."""
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = []
    for index, line in enumerate(cells):
        lines.append(
            "  ".join(
                cell.rjust(w) if i in right_aligned else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
