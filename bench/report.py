"""How the benchmarks print their figures: rates, percentiles, goals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of *values* (``fraction`` 0.5 is the median)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread(values: list[float], unit: float = 1000.0, suffix: str = "ms") -> str:
    """p50, p99 and max of *values* (seconds), scaled by *unit*."""
    if not values:
        return "no values"
    return (f"p50 {percentile(values, 0.5) * unit:.1f} {suffix}, "
            f"p99 {percentile(values, 0.99) * unit:.1f} {suffix}, "
            f"max {max(values) * unit:.1f} {suffix} (n={len(values)})")


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:9,.1f} msg/s ({n:,} in {seconds:.2f} s)"


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


@dataclass(frozen=True)
class Figure:
    """One row of the summary: what was measured, its value as printed, its goal, and
    whether it met it (``None``: not measured in this run)."""

    name: str
    value: str
    goal: str
    met: bool | None


# Figures the summary always lists, measured or not, so a missing one shows: (name, goal).
# A scenario that measures one adds a row of the same name.
EXPECTED: list[tuple[str, str]] = [
    ("sink: campaign vs. tutorial loop", ">= 4x"),
    ("sink: campaign vs. the Flask docs' Celery pattern", ">= 10x"),
    ("delay: campaign vs. tutorial loop", ">= 175x"),
    ("delay: campaign vs. the Flask docs' Celery pattern", ">= 50x"),
    ("delay: OTP during the campaign, p99", "< 2 s"),
    ("sessions: campaign sessions, MAIL_MAX_EMAILS=N", "exactly ceil(n/N)"),
    ("memory: Redis bytes per campaign recipient", "<= 300"),
    ("enqueue: POST /api/messages p99, relay down", "< 25 ms"),
    ("enqueue: POST /api/messages p99, relay up", "< 25 ms"),
    ("single-message capacity", ">= 200 msg/s"),
]


@dataclass
class Summary:
    """Every figure a run measured, with its goal: printed as one table at the end."""

    rows: list[Figure] = field(default_factory=list)

    def add(self, name: str, value: str, goal: str, met: bool | None) -> None:
        self.rows.append(Figure(name, value, goal, met))

    def table(self) -> list[Figure]:
        """Every expected figure in order (those no scenario of this run measured say so),
        then any other row added."""
        expected = [name for name, _ in EXPECTED]
        table = []
        for name, goal in EXPECTED:
            rows = [row for row in self.rows if row.name == name]
            table += rows or [Figure(name, "not measured in this run", goal, None)]
        return table + [row for row in self.rows if row.name not in expected]

    def render(self) -> str:
        rows = [(f.name, f.value, f.goal, "-" if f.met is None else verdict(f.met).upper())
                for f in self.table()]
        head = ("figure", "value", "goal", "verdict")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                 for r in [head, *rows]]
        return "\n".join(lines)
