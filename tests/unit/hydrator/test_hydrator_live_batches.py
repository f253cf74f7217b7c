"""Live batches are sized by time as well as by keys: each is one MULTI/EXEC on the served
view, during which Redis serves none of the app's reads."""

from __future__ import annotations

import pytest

from sidecar_hydrator.consumer import (
    LIVE_BATCH_MIN_KEYS,
    LIVE_WRITE_TARGET_SECONDS,
    next_live_cap,
)


def test_small_fast_writes_keep_the_configured_cap() -> None:
    assert next_live_cap(keys=500, seconds=0.0005, cap=500, most=500) == 500


def test_slow_writes_shrink_the_next_batch_to_the_target_time() -> None:
    # 500 keys of large values took 50 ms: 100 µs a key, so 20 fit in the 2 ms target.
    cap = next_live_cap(keys=500, seconds=0.05, cap=500, most=500)
    assert cap == int(500 * LIVE_WRITE_TARGET_SECONDS / 0.05) == 20


def test_the_cap_grows_back_when_writes_are_fast_again() -> None:
    assert next_live_cap(keys=20, seconds=0.0001, cap=20, most=500) == 400
    assert next_live_cap(keys=400, seconds=0.0001, cap=400, most=500) == 500


def test_a_slow_round_trip_never_starves_the_feed() -> None:
    assert next_live_cap(keys=500, seconds=5.0, cap=500, most=500) == LIVE_BATCH_MIN_KEYS


@pytest.mark.parametrize("keys", [0, 1, LIVE_BATCH_MIN_KEYS - 1])
def test_a_batch_too_small_to_tell_leaves_the_cap(keys: int) -> None:
    assert next_live_cap(keys=keys, seconds=0.01, cap=123, most=500) == 123


def test_a_configured_cap_below_the_minimum_is_kept() -> None:
    assert next_live_cap(keys=100, seconds=5.0, cap=5, most=5) == 5
