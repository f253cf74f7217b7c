"""benchmarks.freshness: pooling repeated runs and reading py-spy's collapsed stacks."""

from __future__ import annotations

from benchmarks.freshness import figures, pooled, profile_of, row_of


def _row(visible: list[float], floor: list[float]) -> dict[str, object]:
    return row_of(1000, len(visible), {
        "": sorted(visible), "kafka_floor_": sorted(floor), "kafka_floor_in_process_": floor,
    })  # fmt: skip


def test_repeated_runs_are_pooled_and_each_runs_ratio_is_kept() -> None:
    first = _row([2.0] * 100, [1.0] * 100)
    second = _row([6.0] * 100, [2.0] * 100)
    assert first["ratios"]["p50_over_kafka_floor"] == 2.0
    both = pooled([first, second])
    assert both["records"] == 200
    assert both["repeats"] == [first["ratios"], second["ratios"]]
    assert both["kafka_floor_max_ms"] == 2.0
    assert both["max_ms"] == 6.0


def test_the_figure_is_judged_against_the_observed_floor_at_1k() -> None:
    row = _row([1.2] * 100, [1.0] * 100)
    del row["samples"]
    [figure] = figures({"runs": [row]})
    assert figure["ratio"] == 1.2
    assert figure["met"] is True
    assert "in the consumer's process" in figure["baseline"]


def test_profile_shares_of_collapsed_stacks() -> None:
    found = profile_of("main;run;write 3\nmain;run 2\nmain;fetch 5\nnot a stack line\n")
    assert found["samples"] == 10
    assert found["top_own"][0] == {"function": "fetch", "share": 0.5}
    assert {"function": "main", "share": 1.0} in found["top_inclusive"]
