"""Percentiles and ratios, computed the same way by every benchmark."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarize_ns(samples: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max in µs of nanosecond samples."""
    values = sorted(samples)
    return {
        "n": len(values),
        "p50_us": round(percentile(values, 0.50) / 1000, 1),
        "p90_us": round(percentile(values, 0.90) / 1000, 1),
        "p99_us": round(percentile(values, 0.99) / 1000, 1),
        "max_us": round(values[-1] / 1000, 1) if values else float("nan"),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")
