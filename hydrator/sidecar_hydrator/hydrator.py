"""The hydrator: the store, one feed per binding, rebuilds, freshness and health state.

The whole recovery story is one loop. Each *cycle* inspects Redis and decides: resume the
served view from its stored offsets, or rebuild it into the spare database (Redis lost its
data, the view was damaged, a stored offset no longer exists on the broker, a topic was
re-created). A rebuild forced by one binding re-reads only that binding and carries the others'
keys over; a rebuild is published only if it is at least as complete as the view it replaces.
Any store error ends the cycle and the next one inspects again before writing anything (a
streak of them makes the Pod unready); a source's outage (Kafka, NATS) ends nothing — feeds
retry on their own while the served view stays as it is (fail static). Both kinds of error are
neutral (:class:`StoreError`, :class:`SourceError`): no client library is known here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

from sidecar_hydrator.aio import Stopped, sleep_or_stop, until
from sidecar_hydrator.config import BindingSource, HydratorConfig
from sidecar_hydrator.consumer import Feed, NeedRebuild
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.reasons import Problem, Reason, State, progress_detail, worst
from sidecar_hydrator.source import Source, SourceError
from sidecar_hydrator.store import Store, StoreError, StoreState, ViewStore

logger = logging.getLogger(__name__)

#: How often freshness is written to the metadata hash and Redis memory is sampled.
HEARTBEAT_SECONDS = 1.0
#: Redis failing for this long without a successful heartbeat in between makes the Pod not
#: ready: one stalled command is a blip, a loop that keeps failing is an outage.
UNREADY_AFTER_FAILING_SECONDS = 2.0


class FailureStreak:
    """Redis errors since the last successful heartbeat: for readiness, logs and metrics.

    Every failure is counted (by exception kind); each kind is logged once per streak, so an
    apply loop that fails ten times a second says why without flooding the log.
    """

    def __init__(self, *, metrics: Metrics) -> None:
        self._metrics = metrics
        self.since: float | None = None
        self.count = 0
        #: The last failure, for the state's detail.
        self.last = ""
        self._logged: set[str] = set()

    def failed(self, exc: StoreError) -> None:
        kind = exc.kind
        self.last = f"{kind}: {exc}"
        self._metrics.store_failures.labels(kind=kind).inc()
        if self.since is None:
            self.since = time.monotonic()
        self.count += 1
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning(
                "Redis failed (%s: %s); inspecting it again (further %s failures are "
                "counted in store_failures_total, not logged)",
                kind,
                exc,
                kind,
            )

    def succeeded(self) -> None:
        if self.since is not None:
            logger.info(
                "Redis works again after %d failures in %.1f s",
                self.count,
                time.monotonic() - self.since,
            )
        self.since = None
        self.count = 0
        self._logged.clear()

    def failing_for(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


class Hydrator:
    """Keeps database 0 of the Pod's Redis equal to the bindings' topics."""

    def __init__(
        self,
        config: HydratorConfig,
        *,
        metrics: Metrics | None = None,
        sources: Mapping[str, Source] | None = None,
    ) -> None:
        """``sources`` (by binding name) replace the Kafka source a binding gets by default."""
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.store: ViewStore = _store_of(config)
        self.feeds = [
            Feed(
                binding=b,
                config=config,
                store=self.store,
                metrics=self.metrics,
                source=(sources or {}).get(b.name) or _source_of(b, config, self.metrics),
            )
            for b in config.bindings
        ]
        #: Database 0 holds this hydrator's view (resumed, or published by a rebuild).
        self._serving = False
        #: The generation of that view (its sentinel); ``None`` when none of ours is served.
        self._generation: str | None = None
        #: Held while a rebuilt view is published, and by each heartbeat.
        self._publishing = asyncio.Lock()
        #: A rebuild is being written into the spare database (the served view is untouched).
        self._rebuilding = False
        self._started = False
        #: Why the next cycle must rebuild even if the store looks resumable; taken up (and
        #: cleared) by the cycle that starts the rebuild, so a later transient error does not
        #: re-read every topic again.
        self._forced: str | None = None
        #: The one binding the forced rebuild is for (``None``: all of them).
        self._forced_binding: str | None = None
        #: The rebuild in the spare database is what was found wanting (a stored offset of it
        #: gone, writes of it refused): the next rebuild starts the spare afresh, not from it.
        self._spare_spent = False
        self.failures = FailureStreak(metrics=self.metrics)
        #: Waiting for Redis to answer on the socket (it starts before us, but may restart).
        self._store_waiting = True
        #: The view being rebuilt was found damaged (flushed, or written over).
        self._damaged = False
        #: Redis ``maxmemory`` as last sampled (0: unlimited, or not known yet).
        self._max_memory = 0
        #: The reason last logged (each change is logged once).
        self._noted: Reason | None = None
        self.metrics.staleness_source = self.staleness_seconds
        self.metrics.hydrated.set_function(lambda: 1 if self.hydrated else 0)
        self.metrics.state_source = self.state

    # -- state the probes and the metadata report ---------------------------------------------

    @property
    def hydrated(self) -> bool:
        """Database 0 holds a complete view: ours, and no write refused (what the metadata's
        ``hydrated`` says). A rebuild's refusals are in the spare database, not in it."""
        return self._serving and (self._rebuilding or self.refused_keys() == 0)

    @property
    def started(self) -> bool:
        """This process has seen a complete view at least once (what ``/startupz`` reports)."""
        self._started = self._started or self.hydrated
        return self._started

    def ready(self) -> bool:
        """What ``/readyz`` reports: a complete view, and Redis not failing for seconds."""
        return self.hydrated and self.failures.failing_for() < UNREADY_AFTER_FAILING_SECONDS

    def state(self) -> State:
        """Why the hydrator is (not) hydrated, worst first (:data:`reasons.PRIORITY`).

        A problem the sources report is the reason even while a complete view is served
        (fail static: ``hydrated`` stays 1, the reason says why it does not advance).
        """
        read = target = 0
        for feed in self.feeds:
            done, total = feed.progress()
            read, target = read + done, target + total
        problems: list[Problem] = []
        socket = self.config.redis_socket
        if self._store_waiting:
            problems.append(Problem(Reason.STORE_UNAVAILABLE, f"waiting for Redis at {socket}"))
        elif self.failures.failing_for() >= UNREADY_AFTER_FAILING_SECONDS:
            problems.append(
                Problem(
                    Reason.STORE_UNAVAILABLE,
                    f"Redis at {socket} fails for {self.failures.failing_for():.0f} s "
                    f"({self.failures.last})",
                )
            )
        refused = self.refused_keys()
        if refused:
            limit = f"maxmemory {self._max_memory} bytes" if self._max_memory else "maxmemory"
            where = (
                "the rebuilt view does not fit next to the served one: "
                if (self._serving and self._rebuilding)
                else ""
            )
            problems.append(
                Problem(
                    Reason.STORE_FULL,
                    f"{where}Redis refused {refused} key writes ({limit} reached)",
                )
            )
        if self._damaged and not self.hydrated:
            problems.append(
                Problem(
                    Reason.DAMAGED,
                    "the served view was flushed or written over; rebuilding it: "
                    + progress_detail(read=read, target=target),
                )
            )
        for feed in self.feeds:
            problem = feed.problem
            if problem is not None:
                detail = problem.detail
                if len(self.feeds) > 1:
                    detail += f" (binding {feed.binding.name})"
                problems.append(Problem(problem.reason, detail))
        if not self.hydrated:
            progress = progress_detail(read=read, target=target)
            if not all(feed.positioned for feed in self.feeds):
                progress = "asking the source where its topics begin and end"
            problems.append(Problem(Reason.HYDRATING, progress))
        found = worst(problems) or Problem(Reason.HYDRATED, "")
        return State(found.reason, found.detail, read_records=read, target_records=target)

    def _note_state(self, state: State) -> None:
        """Log the state once per change of reason (the sources log what changed in theirs)."""
        if state.reason is self._noted:
            return
        quiet = state.reason in (Reason.HYDRATED, Reason.HYDRATING)
        # A source's problem was logged by the source, with its binding: not twice.
        from_source = any(f.problem and f.problem.reason is state.reason for f in self.feeds)
        detail = "see the binding's message above" if from_source else state.detail
        logger.log(
            logging.INFO if quiet else logging.WARNING,
            "state %s (was %s): %s",
            state.reason,
            self._noted or "starting",
            detail or "a complete view is served",
            extra={"reason": str(state.reason)},
        )
        self._noted = state.reason

    def fresh_as_of_ms(self) -> float | None:
        """Up to when the served view is known to be complete (None: never)."""
        marks = [feed.fresh_as_of_ms for feed in self.feeds]
        if any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)

    def staleness_seconds(self) -> float | None:
        fresh = self.fresh_as_of_ms()
        return None if fresh is None else max(0.0, time.time() - fresh / 1000)

    def refused_keys(self) -> int:
        """Writes Redis refused in the current view: not zero means the view is incomplete."""
        return sum(feed.refused_keys for feed in self.feeds)

    def _freshness_meta(self) -> dict[str, str | int]:
        fresh = self.fresh_as_of_ms()
        staleness = self.staleness_seconds()
        complete = 1 if self.hydrated else 0
        meta: dict[str, str | int] = {
            "lag": sum(feed.lag() for feed in self.feeds),
            "hydrated": complete,
            "complete": complete,
            "oom_rejected_keys": self.refused_keys(),
        }
        state = self.state()
        meta["state"] = str(state.reason)
        meta["state_detail"] = state.detail
        meta["hydration_read_records"] = state.read_records
        meta["hydration_target_records"] = state.target_records
        if fresh is not None and staleness is not None:
            meta["fresh_as_of_ms"] = int(fresh)
            meta["staleness_ms"] = int(staleness * 1000)
        return meta

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Hydrate until ``stop`` is set; then let the batch in flight finish and return."""
        backoff = 0.05
        try:
            while not stop.is_set():
                self._store_waiting = True
                if not await self.store.wait_ready(stop=stop):
                    break
                self._store_waiting = False
                try:
                    await self._cycle(stop=stop)
                except NeedRebuild as exc:
                    logger.warning("rebuilding the view: %s", exc)
                    self._damaged = self._damaged or exc.reason == "damaged"
                    self._forced = exc.reason
                    self._forced_binding = exc.binding
                    self._spare_spent = self._spare_spent or self._rebuilding
                except StoreError as exc:
                    self.failures.failed(exc)
                    await sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 1.0)
                except SourceError as exc:
                    # The source's trouble, never the store's: no rebuild, the view stays
                    # served (fail static), and the next cycle positions the binding again.
                    self.metrics.source_errors.labels(
                        binding=exc.binding, source=exc.source, kind=exc.kind
                    ).inc()
                    logger.warning("%s; positioning again", exc)
                    await sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 1.0)
                else:
                    backoff = 0.05
        finally:
            await asyncio.gather(*(feed.close() for feed in self.feeds))
            await self.store.close()

    async def _cycle(self, *, stop: asyncio.Event) -> None:
        self._rebuilding = False
        state = await self.store.inspect()
        loss = state.loss()
        rebuilt = {feed.binding.name for feed in self.feeds}
        if loss is None and self._forced is None:
            self._resume(state)
            rebuilt.clear()
            leftover = await self.store.discard_spare()
            if leftover:
                logger.info("freed %d keys left in the spare database", leftover)
        else:
            reason = self._forced or loss or "unknown"
            if loss is not None:
                self._serving = False  # what readers see now is empty or not ours
                self._generation = None
                self._damaged = self._damaged or loss == "damaged"
            self.metrics.rebuilds.labels(reason=reason).inc()
            logger.info("rebuilding into %s (%s)", self.store.spare, reason)
            forced_binding = self._forced_binding
            partial = loss is None and forced_binding is not None and forced_binding in rebuilt
            # Going on from a spent spare would meet the same gone offset again, forever.
            interrupted = await self.store.begin_rebuild(
                resume=not partial and not self._spare_spent
            )
            self._spare_spent = False
            self._rebuilding = True
            if interrupted is not None:
                logger.info(
                    "continuing the rebuild an earlier hydrator left (%d stored offsets)",
                    len(interrupted.offsets),
                )
                state = interrupted
                rebuilt.clear()  # every binding goes on from the rebuild's own offsets
            elif partial:
                # One binding's positions are gone; the others' keys come along unchanged and
                # those bindings resume from their stored offsets.
                rebuilt = {forced_binding} if forced_binding is not None else rebuilt
                for feed in self.feeds:
                    if feed.binding.name not in rebuilt:
                        copied = await self.store.carry_over(
                            prefix=feed.binding.keys.prefix, binding=feed.binding.name
                        )
                        logger.info("binding %s: %d keys carried over", feed.binding.name, copied)
            # Taken up. Should this rebuild fail half-way, the next cycle finds the cause
            # again by itself (a stored offset still out of range, a store still damaged).
            self._forced = self._forced_binding = None
        jobs: list[Coroutine[Any, Any, None]] = [
            feed.run(
                stored=state.offsets,
                stored_topic_ids=state.topic_ids,
                rebuild=feed.binding.name in rebuilt,
                stop=stop,
            )
            for feed in self.feeds
        ]
        jobs.append(self._heartbeat(stop))
        if self._rebuilding:
            jobs.append(self._publish_when_caught_up(stop))
        await _all_or_first_error(jobs)

    def _resume(self, state: StoreState) -> None:
        floor = state.meta.get("fresh_as_of_ms")
        for feed in self.feeds:
            feed.fresh_floor_ms = float(floor) if floor else None
        self._serving = True
        self._generation = state.generation
        logger.info("resuming the served view from %d stored offsets", len(state.offsets))

    async def _publish_when_caught_up(self, stop: asyncio.Event) -> None:
        async def all_caught_up() -> None:
            # A plain coroutine, not gather(): a gather cancelled by a stop before the first
            # hydration finished with an exception nobody retrieved, logged at ERROR.
            for feed in self.feeds:
                await feed.caught_up.wait()

        try:
            await until(stop, all_caught_up())
        except Stopped:
            return
        # A complete served view is never replaced by a less complete one: while the rebuild
        # has refused writes (Redis is full, holding both copies), the old view stays.
        warned = False
        while self._serving and self.refused_keys():
            if not warned:
                logger.error(
                    "the rebuilt view does not fit next to the served one (Redis refused %d "
                    "key writes): serving the old view until it does; a rebuild needs room "
                    "for two copies (see the README on memory)",
                    self.refused_keys(),
                )
                warned = True
            await sleep_or_stop(stop, 0.5)
            if stop.is_set():
                return
        offsets: dict[str, int] = {}
        for feed in self.feeds:
            offsets.update(feed.applied_offsets)
        started = time.monotonic()
        complete = self.refused_keys() == 0
        generation = uuid.uuid4().hex
        meta = self._freshness_meta()
        if complete:
            # As of the swap; the next heartbeat adds a source's trouble, should there be any.
            meta.update(state=str(Reason.HYDRATED), state_detail="")
        async with self._publishing:
            await self.store.complete_rebuild(
                offsets=offsets,
                meta=meta,
                generation=generation,
                complete=complete,
            )
            self._rebuilding = False
            self._serving = True
            self._generation = generation
            self._damaged = False
        # An incomplete view is published only over an empty or broken one (it is better than
        # none for a running app) and does not count as hydrated until its refused writes got
        # in: the Pod is not Ready, and a new Pod's app does not start on it.
        if not complete:
            logger.error(
                "the view is incomplete: Redis refused %d key writes (maxmemory); raise the "
                "binding's spec.store.maxMemory",
                self.refused_keys(),
            )
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.info("published the rebuilt view (SWAPDB in %.1f ms)", elapsed_ms)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Publish freshness to the app, sample memory, notice a Redis that restarted while
        no batch was written (its error ends the cycle like a failed batch would) — and check
        that the served view is still the one published: flushed or written over by someone
        else, it is reported at once (``hydrated=0``, ``/readyz`` 503) and rebuilt."""
        while not stop.is_set():
            await sleep_or_stop(stop, HEARTBEAT_SECONDS)
            # Not across a publish: metadata computed for the old view must not land in the
            # new one, nor the new one's sentinel be checked against the old generation.
            async with self._publishing:
                generation = self._generation
                beat = await self.store.heartbeat(
                    fields=self._freshness_meta(), generation=generation
                )
            self.failures.succeeded()
            if generation is not None and not beat.intact:
                self._serving = False
                self._generation = None
                logger.error(
                    "the served view was damaged (its sentinel or bookkeeping is gone: a "
                    "FLUSHALL, or a write over the hydrator's keys): rebuilding it"
                )
                raise NeedRebuild("damaged")
            if beat.full:
                logger.warning("Redis is full: freshness metadata not updated")
            used, limit = await self.store.memory_usage()
            self._max_memory = limit
            self.metrics.redis_used_memory.set(used)
            self.metrics.redis_max_memory.set(limit)
            self._note_state(self.state())


def _store_of(config: HydratorConfig) -> ViewStore:
    """The store engine the config names: the Pod's Redis, or an LMDB environment."""
    if config.store_engine == "lmdb":
        # Imported only for the LMDB engine (and Kafka's client only for a Kafka binding,
        # below): what a hydrator does not use stays out of its memory.
        from sidecar_hydrator.store_lmdb import LmdbStore

        return LmdbStore(
            path=config.lmdb_path,
            map_size=config.lmdb_map_size,
            max_readers=config.lmdb_max_readers,
        )
    return Store(
        socket_path=config.redis_socket,
        offsets_key=config.offsets_key,
        metadata_key=config.metadata_key,
        spare_db=config.spare_db,
        username=config.redis_user,
        password=config.redis_password(),
    )


def _source_of(binding: BindingSource, config: HydratorConfig, metrics: Metrics) -> Source:
    """The source a binding's config names: NATS JetStream or Kafka (exactly one is set)."""
    if binding.nats is not None:
        # Imported only for a NATS binding: nats-py and what it pulls in are over a
        # quarter of an idle Kafka-only hydrator's memory (benchmarks/footprint.py).
        from sidecar_hydrator.nats_source import NatsSource

        return NatsSource(binding=binding, config=config, metrics=metrics)
    from sidecar_hydrator import lazy_imports

    lazy_imports.defer()  # before aiokafka is imported: its codecs load at the first use
    from sidecar_hydrator.kafka_source import KafkaSource

    return KafkaSource(binding=binding, config=config, metrics=metrics)


async def _all_or_first_error(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [task for task in tasks if not task.done()]
        while pending:
            for task in pending:
                task.cancel()
            # A cancellation can be lost (Python 3.11's wait_for swallows one that races
            # with its timeout), and the task runs on: cancel it again rather than wait for
            # it forever, which froze the whole hydrator in a cycle that had ended.
            await asyncio.wait(pending, timeout=0.5)
            pending = [task for task in pending if not task.done()]
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
