"""Small asyncio helpers shared by the store, the feeds and the hydrator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


class Stopped(Exception):
    """The stop event fired while waiting."""


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake up as soon as ``stop`` is set (shutdown must not wait out a backoff)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def until(stop: asyncio.Event, awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` unless ``stop`` fires first (then cancel it and raise Stopped)."""
    if stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise Stopped
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():  # stop fired, or we are being cancelled ourselves
            task.cancel()
    if task in done:
        return task.result()
    raise Stopped
