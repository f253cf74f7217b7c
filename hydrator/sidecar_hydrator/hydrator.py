"""The hydrator: the store, one feed per binding, rebuilds, freshness and health state.

The whole recovery story is one loop. Each *cycle* inspects Redis and decides: resume the
served view from its stored offsets, or rebuild it into the spare database (Redis lost its
data, or a stored offset no longer exists on the broker). Any Redis error ends the cycle and
the next one inspects again before writing anything; a Kafka outage ends nothing — feeds
retry on their own while the served view stays as it is (fail static).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import OutOfMemoryError, RedisError

from sidecar_hydrator.aio import Stopped, sleep_or_stop, until
from sidecar_hydrator.config import HydratorConfig
from sidecar_hydrator.consumer import Feed, NeedRebuild
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.store import Store, StoreState

logger = logging.getLogger(__name__)

#: How often freshness is written to the metadata hash and Redis memory is sampled.
HEARTBEAT_SECONDS = 1.0


class Hydrator:
    """Keeps database 0 of the Pod's Redis equal to the bindings' topics."""

    def __init__(self, config: HydratorConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = Store(
            socket_path=config.redis_socket,
            offsets_key=config.offsets_key,
            metadata_key=config.metadata_key,
            spare_db=config.spare_db,
            username=config.redis_user,
            password=config.redis_password(),
        )
        self.feeds = [
            Feed(binding=b, config=config, store=self.store, metrics=self.metrics)
            for b in config.bindings
        ]
        #: Database 0 holds a complete view (what ``/readyz`` reports).
        self.hydrated = False
        #: This process has seen a complete view at least once (what ``/startupz`` reports).
        self.started = False
        self.metrics.staleness.set_function(lambda: _or_minus_one(self.staleness_seconds()))

    # -- state the probes and the metadata report ---------------------------------------------

    def fresh_as_of_ms(self) -> float | None:
        """Up to when the served view is known to be complete (None: never)."""
        marks = [feed.fresh_as_of_ms for feed in self.feeds]
        if any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)

    def staleness_seconds(self) -> float | None:
        fresh = self.fresh_as_of_ms()
        return None if fresh is None else max(0.0, time.time() - fresh / 1000)

    def _set_hydrated(self, value: bool) -> None:
        self.hydrated = value
        self.started = self.started or value
        self.metrics.hydrated.set(1 if value else 0)

    def refused_keys(self) -> int:
        """Writes Redis refused in the current view: not zero means the view is incomplete."""
        return sum(feed.refused_keys for feed in self.feeds)

    def _freshness_meta(self) -> dict[str, str | int]:
        fresh = self.fresh_as_of_ms()
        staleness = self.staleness_seconds()
        refused = self.refused_keys()
        meta: dict[str, str | int] = {
            "lag": sum(feed.lag() for feed in self.feeds),
            "complete": 0 if refused else 1,
            "oom_rejected_keys": refused,
        }
        if fresh is not None and staleness is not None:
            meta["fresh_as_of_ms"] = int(fresh)
            meta["staleness_ms"] = int(staleness * 1000)
        return meta

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Hydrate until ``stop`` is set; then let the batch in flight finish and return."""
        forced: str | None = None
        backoff = 0.05
        try:
            while not stop.is_set():
                if not await self.store.wait_ready(stop=stop):
                    break
                try:
                    await self._cycle(stop=stop, forced=forced)
                    forced = None
                except NeedRebuild as exc:
                    logger.warning("rebuilding the view: %s", exc.reason)
                    forced = exc.reason
                except (RedisError, OSError) as exc:
                    name = type(exc).__name__
                    logger.warning("Redis failed (%s: %s); inspecting it again", name, exc)
                    await sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 1.0)
                else:
                    backoff = 0.05
        finally:
            await asyncio.gather(*(feed.close() for feed in self.feeds))
            await self.store.close()

    async def _cycle(self, *, stop: asyncio.Event, forced: str | None) -> None:
        state = await self.store.inspect()
        loss = state.loss()
        if loss is None and forced is None:
            self._resume(state)
            rebuild = False
        else:
            reason = forced or loss or "unknown"
            if loss is not None:
                self._set_hydrated(False)  # what readers see now is empty or not ours
            self.metrics.rebuilds.labels(reason=reason).inc()
            logger.info("rebuilding into db %d (%s)", self.store.spare_db, reason)
            await self.store.begin_rebuild()
            rebuild = True
        jobs: list[Coroutine[Any, Any, None]] = [
            feed.run(stored=state.offsets, rebuild=rebuild, stop=stop) for feed in self.feeds
        ]
        jobs.append(self._heartbeat(stop))
        if rebuild:
            jobs.append(self._publish_when_caught_up(stop))
        await _all_or_first_error(jobs)

    def _resume(self, state: StoreState) -> None:
        floor = state.meta.get("fresh_as_of_ms")
        for feed in self.feeds:
            feed.fresh_floor_ms = float(floor) if floor else None
        self._set_hydrated(True)
        logger.info("resuming the served view from %d stored offsets", len(state.offsets))

    async def _publish_when_caught_up(self, stop: asyncio.Event) -> None:
        try:
            await until(stop, asyncio.gather(*(feed.caught_up.wait() for feed in self.feeds)))
        except Stopped:
            return
        offsets: dict[str, int] = {}
        for feed in self.feeds:
            offsets.update(feed.applied_offsets)
        started = time.monotonic()
        complete = self.refused_keys() == 0
        await self.store.complete_rebuild(
            offsets=offsets, meta=self._freshness_meta(), complete=complete
        )
        # An incomplete view is published (it is better than none for a running app) but never
        # counts as hydrated: the Pod is not Ready, and a new Pod's app does not start on it.
        self._set_hydrated(complete)
        if not complete:
            logger.error(
                "the view is incomplete: Redis refused %d key writes (maxmemory); raise the "
                "binding's spec.store.maxMemory",
                self.refused_keys(),
            )
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.info("published the rebuilt view (SWAPDB in %.1f ms)", elapsed_ms)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Publish freshness to the app, sample memory — and notice a Redis that restarted
        while no batch was written (its error ends the cycle like a failed batch would)."""
        while not stop.is_set():
            await sleep_or_stop(stop, HEARTBEAT_SECONDS)
            try:
                if self.hydrated and self.refused_keys():
                    self._set_hydrated(False)  # a live write was refused: the view has a hole
                meta = self._freshness_meta()
                meta["hydrated"] = 1 if self.hydrated else 0
                await self.store.write_meta(meta)
            except OutOfMemoryError:
                logger.warning("Redis is full: freshness metadata not updated")
            used, limit = await self.store.memory_usage()
            self.metrics.redis_used_memory.set(used)
            self.metrics.redis_max_memory.set(limit)


async def _all_or_first_error(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else value
