"""Live batches are sized by bytes as well as by keys: each is one MULTI/EXEC on the served
view, during which Redis serves none of the app's reads, and its time grows with its bytes."""

from __future__ import annotations

from sidecar_hydrator.consumer import LIVE_BATCH_MAX_BYTES, LIVE_BATCH_MIN_KEYS, next_live_cap


def test_small_values_keep_the_configured_cap() -> None:
    assert next_live_cap(keys=500, written_bytes=500 * 80, cap=500, most=500) == 500


def test_large_values_shrink_the_next_batch_to_the_byte_budget() -> None:
    # 64 KiB values: 16 of them fill the 1 MiB a live EXEC may write.
    per_key = 64 * 1024
    cap = next_live_cap(keys=500, written_bytes=500 * per_key, cap=500, most=500)
    assert cap == LIVE_BATCH_MAX_BYTES // per_key == 16


def test_the_cap_grows_back_when_values_are_small_again() -> None:
    assert next_live_cap(keys=3, written_bytes=3 * 10_000, cap=16, most=500) == 104
    assert next_live_cap(keys=104, written_bytes=104 * 100, cap=104, most=500) == 500


def test_huge_values_still_move_at_the_minimum() -> None:
    big = 1024 * 1024
    assert next_live_cap(keys=16, written_bytes=16 * big, cap=16, most=500) == LIVE_BATCH_MIN_KEYS


def test_an_empty_write_leaves_the_cap() -> None:
    assert next_live_cap(keys=0, written_bytes=0, cap=123, most=500) == 123


def test_a_configured_cap_below_the_minimum_is_kept() -> None:
    assert next_live_cap(keys=5, written_bytes=5 * 2**20, cap=5, most=5) == 5
