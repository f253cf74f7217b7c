"""The row every benchmark reports, and how a benchmark prints its rows.

Each benchmark module has one ``measure(...)`` (runs it, returns its results as a dict, which
``main`` writes to ``benchmarks/results/<name>.json``) and one ``figures(results)`` (the rows
of docs/benchmarks.md from those results: a figure, its baseline measured in the same run,
the ratio, the target and whether it is met). ``run_all`` renders the document from the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def figure(
    name: str,
    value: Any,
    unit: str,
    baseline: str,
    ratio_value: float | None,
    target: str,
    met: bool | None,
) -> dict[str, Any]:
    """One row of the report: a figure, its baseline measured in the same run, the ratio."""
    return {
        "figure": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio_value,
        "target": target,
        "met": met,
    }


def print_figures(figures: Sequence[dict[str, Any]]) -> None:
    for row in figures:
        verdict = {True: "MET", False: "SHORT", None: ""}[row["met"]]
        print(
            f"  {row['figure']}: {row['value']} {row['unit']} | {row['baseline']}"
            f" | x{row['ratio']} | target {row['target']} {verdict}"
        )
