"""How the benchmarks print their figures: rates, percentiles, goals."""

from __future__ import annotations

import math


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
