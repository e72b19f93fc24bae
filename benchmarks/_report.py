"""How benchmarks print their results: medians, ratios, milliseconds, Markdown tables and the lines that say
on what machine and with what command the numbers were taken."""

from __future__ import annotations

import os
import shlex
import statistics
import sys
from collections.abc import Sequence

import psutil


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(ours: float, base: float) -> str:
    if not base or base != base or ours != ours:
        return "n/a"
    return f"{ours / base:.2f}x"


def fmt_ms(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with aligned columns."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def reproduce_command(module: str) -> str:
    return " ".join([".venv/bin/python", "-m", module, *(shlex.quote(arg) for arg in sys.argv[1:])])


def load_line() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_line() -> str:
    return f"{psutil.cpu_count()} CPUs, {load_line()} at start, Python {sys.version.split()[0]}"
