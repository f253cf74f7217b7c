"""One binding's Kafka feed: every partition of its topics, read into the store in batches.

No consumer group: each Pod needs the whole state, so the feed assigns every partition itself
and keeps its positions in Redis, next to the data (see :mod:`sidecar_hydrator.store`).
Positions are always set with an explicit ``seek`` to offsets fetched with a timeout, never
with aiokafka's lazy resets, so no call here can hang on a broker that went away — the Pod
keeps serving the last view (fail static) and its staleness grows instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.helpers import create_ssl_context

from sidecar_hydrator.aio import Stopped, sleep_or_stop, until
from sidecar_hydrator.batch import Batch, build_batch
from sidecar_hydrator.changes import change_channel, change_message
from sidecar_hydrator.config import BindingSource, HydratorConfig, KafkaConnection
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.records import BadRecord, make_decoder
from sidecar_hydrator.store import Store, is_binding_field, offset_field

logger = logging.getLogger(__name__)

#: Per-partition fetch size once hydrated: live traffic is small, and prefetch buffers count
#: against the sidecar's memory limit.
LIVE_FETCH_BYTES = 1024 * 1024
#: How long one ``getmany`` waits for data; bounds how late a stop request is noticed.
POLL_TIMEOUT_MS = 200
#: At most this many bad records are logged per second; all of them are counted.
BAD_RECORD_LOG_RATE = 10


class NeedRebuild(Exception):
    """The stored positions cannot be continued from; the view must be rebuilt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def consumer_options(
    conn: KafkaConnection, *, client_id: str, config: HydratorConfig
) -> dict[str, Any]:
    """aiokafka consumer settings for one binding (pure, apart from reading secret env vars)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(conn.bootstrap_servers),
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        # Positions come from Redis; a position the broker no longer has means a rebuild.
        "auto_offset_reset": "none",
        # A materialized view must not show writes of aborted transactions.
        "isolation_level": "read_committed",
        "fetch_max_wait_ms": config.fetch_max_wait_ms,
        "max_partition_fetch_bytes": config.catchup_fetch_bytes,
        "fetch_max_bytes": max(config.catchup_fetch_bytes * 2, 50 * 1024 * 1024),
        "metadata_max_age_ms": config.metadata_refresh_ms,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
        "security_protocol": conn.security_protocol,
    }
    if conn.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=conn.ca_file, certfile=conn.cert_file, keyfile=conn.key_file
        )
    if conn.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = conn.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = conn.username()
        options["sasl_plain_password"] = conn.password()
    return options


class Feed:
    """Reads one binding's partitions and writes them to the store, batch by batch."""

    def __init__(
        self, *, binding: BindingSource, config: HydratorConfig, store: Store, metrics: Metrics
    ) -> None:
        self.binding = binding
        self._config = config
        self._store = store
        self._decode = make_decoder(
            format=binding.format, keys=binding.keys, max_value_bytes=config.max_value_bytes
        )
        self._consumer: AIOKafkaConsumer | None = None
        #: Set once every partition reached the end offsets snapshotted at (re)positioning.
        self.caught_up = asyncio.Event()
        #: Key writes Redis refused (maxmemory) in the view being served or built: while not
        #: zero, the view is incomplete and must not count as hydrated.
        self.refused_keys = 0
        self._snapshot: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        #: Offsets whose records are in Redis (field -> next offset); what a rebuild publishes.
        self.applied_offsets: dict[str, int] = {}
        #: Per partition: wall-clock ms at which it was last known to be fully applied.
        self._fresh: dict[TopicPartition, float] = {}
        #: Lower bound carried over from Redis metadata, for before the first fetch response.
        self.fresh_floor_ms: float | None = None
        self._next_partition_check = 0.0
        self._snapshot_ms = 0.0
        self._bad_logged_at = 0.0
        self._bad_logged = 0
        label = binding.name
        self._m_read = metrics.records_read.labels(binding=label)
        self._m_applied = metrics.records_applied.labels(binding=label)
        self._m_keys = metrics.keys_written.labels(binding=label)
        self._metrics = metrics

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, *, stored: Mapping[str, int], rebuild: bool, stop: asyncio.Event) -> None:
        """Position every partition, then pump batches into the store until ``stop``.

        Raises :class:`NeedRebuild` when a stored position no longer exists on the broker; any
        Redis error propagates (the hydrator re-inspects the store before writing again).
        """
        if rebuild:
            self.refused_keys = 0  # a new view starts whole
        try:
            await self._position(stored=stored, rebuild=rebuild, stop=stop)
            await self._pump(stop)
        except Stopped:
            return

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await asyncio.wait_for(consumer.stop(), timeout=1.0)
            except (TimeoutError, KafkaError) as exc:
                logger.warning("closing the Kafka consumer of %s: %r", self.binding.name, exc)

    @property
    def fresh_as_of_ms(self) -> float | None:
        """Up to when this binding's data is known to be in Redis (None: never known)."""
        if self.caught_up.is_set() and self._fresh and len(self._fresh) == len(self._positions):
            return min(self._fresh.values())
        return self.fresh_floor_ms

    def lag(self) -> int:
        """Records between the written positions and the ends the broker last reported."""
        consumer = self._consumer
        total = 0
        for tp, position in self._positions.items():
            end = _end_offset(consumer, tp) if consumer is not None else None
            total += max(0, (self._snapshot.get(tp, position) if end is None else end) - position)
        return total

    # -- positioning --------------------------------------------------------------------------

    async def _open(self, stop: asyncio.Event) -> AIOKafkaConsumer:
        backoff = 0.1
        while self._consumer is None:
            consumer = AIOKafkaConsumer(
                **consumer_options(
                    self.binding.kafka,
                    client_id=f"sidecar-state-hydrator.{self.binding.name}",
                    config=self._config,
                )
            )
            try:
                await until(stop, consumer.start())
                self._consumer = consumer
            except KafkaError as exc:
                logger.warning(
                    "Kafka unreachable for binding %s: %r (retrying in %.1f s)",
                    self.binding.name,
                    exc,
                    backoff,
                )
                await consumer.stop()
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
            except BaseException:
                await consumer.stop()
                raise
        return self._consumer

    async def _partitions(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> set[Any]:
        """Every partition of every topic, waiting (and saying so) for missing topics."""
        topics = self.binding.topics
        # aiokafka only fetches metadata for topics it tracks; assign() tracks the assigned
        # ones, but the partitions are what we need to know first.
        await until(stop, consumer._client.set_topics(list(topics)))
        warned = False
        while True:
            found = {t: consumer.partitions_for_topic(t) for t in topics}
            missing = sorted(t for t, parts in found.items() if not parts)
            if not missing:
                return {TopicPartition(t, p) for t, parts in found.items() for p in parts or ()}
            if not warned:
                logger.warning("binding %s: waiting for topics %s", self.binding.name, missing)
                warned = True
            await until(stop, asyncio.sleep(1.0))
            await until(stop, consumer._client.force_metadata_update())

    async def _position(
        self, *, stored: Mapping[str, int], rebuild: bool, stop: asyncio.Event
    ) -> None:
        # The served view stops advancing here (a rebuild writes elsewhere): keep its mark.
        self.fresh_floor_ms = self.fresh_as_of_ms
        self.caught_up.clear()
        self._fresh.clear()
        backoff = 0.1
        while True:
            consumer = await self._open(stop)
            try:
                self._snapshot_ms = time.time() * 1000
                partitions = await self._partitions(consumer, stop)
                beginnings = await until(stop, consumer.beginning_offsets(list(partitions)))
                ends = await until(stop, consumer.end_offsets(list(partitions)))
                break
            except KafkaError as exc:
                logger.warning("binding %s: positioning failed: %r", self.binding.name, exc)
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
        resumed = not rebuild and any(is_binding_field(f, self.binding.name) for f in stored)
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            field = offset_field(self.binding.name, tp.topic, tp.partition)
            if not rebuild and field in stored:
                offset = stored[field]
                if not beginnings[tp] <= offset <= ends[tp]:
                    # Retention removed records we never read, or the topic was recreated.
                    raise NeedRebuild("offset_out_of_range")
                starts[tp] = offset
            elif self.binding.start_from == "latest" and not resumed:
                # A partition missing from a resumed binding appeared while we were away.
                starts[tp] = ends[tp]
            else:
                starts[tp] = beginnings[tp]
        consumer.assign(sorted(partitions))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        self._positions = dict(starts)
        self._snapshot = dict(ends)
        self.applied_offsets = {
            offset_field(self.binding.name, tp.topic, tp.partition): offset
            for tp, offset in starts.items()
        }
        self._set_fetch_bytes(consumer, self._config.catchup_fetch_bytes)
        self._next_partition_check = time.monotonic() + self._config.metadata_refresh_ms / 1000
        behind = sum(max(0, ends[tp] - starts[tp]) for tp in partitions)
        logger.info(
            "binding %s: %d partitions, %d records to read (%s)",
            self.binding.name,
            len(partitions),
            behind,
            "rebuild" if rebuild else "resume",
        )
        self._check_caught_up()

    # -- pumping ------------------------------------------------------------------------------

    async def _pump(self, stop: asyncio.Event) -> None:
        """Fetch, decode, write — with one write in flight while the next batch is decoded.

        Decoding is Python on this process's core and a write is Redis on another one, so
        overlapping them is most of the bootstrap speed. Writes stay strictly in order (the
        next starts after the previous finished), and freshness, lag and "caught up" follow
        the *written* positions only.
        """
        consumer = self._consumer
        assert consumer is not None
        live_cap = self._config.live_batch_max_keys
        bootstrap_cap = self._config.bootstrap_batch_max_keys
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                cap = live_cap if self.caught_up.is_set() else bootstrap_cap
                # With a write in flight, only take what is already buffered: when nothing
                # is, finishing that write (and noticing we caught up) comes first.
                timeout_ms = 0 if writing is not None else POLL_TIMEOUT_MS
                try:
                    data = await consumer.getmany(timeout_ms=timeout_ms, max_records=cap)
                except OffsetOutOfRangeError as exc:
                    raise NeedRebuild("offset_out_of_range") from exc
                except KafkaError as exc:
                    logger.warning("binding %s: fetch failed: %r", self.binding.name, exc)
                    await sleep_or_stop(stop, 0.5)
                    continue
                if data:
                    batch, fetched = await self._decode_batch(consumer, data)
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._write(batch, fetched))
                elif writing is not None:
                    await writing
                    writing = None
                self._observe(consumer)
                if not self.caught_up.is_set():
                    self._check_caught_up()
                if time.monotonic() >= self._next_partition_check:
                    if writing is not None:  # re-assigning re-seeks to the written positions
                        await writing
                        writing = None
                    await self._pick_up_new_partitions(consumer, stop)
            if writing is not None:
                await writing  # SIGTERM: the batch in flight is finished, not abandoned
                writing = None
        finally:
            if writing is not None and not writing.done():
                writing.cancel()

    async def _decode_batch(
        self, consumer: AIOKafkaConsumer, data: Mapping[Any, list[Any]]
    ) -> tuple[Batch, dict[Any, int]]:
        batch = build_batch(data.values(), self._decode)
        self._m_read.inc(batch.records)
        fetched: dict[Any, int] = {}
        for tp in data:
            # The consumer's position also skips trailing control records, which the last
            # record's offset + 1 would not.
            fetched[tp] = max(await consumer.position(tp), batch.offsets[(tp.topic, tp.partition)])
        return batch, fetched

    async def _write(self, batch: Batch, fetched: Mapping[Any, int]) -> None:
        offsets = {
            offset_field(self.binding.name, tp.topic, tp.partition): position
            for tp, position in fetched.items()
        }
        now = time.time()
        meta: dict[str, str | int] = {"last_apply_ms": int(now * 1000)}
        if batch.last_event_ms is not None:
            meta["last_event_ms"] = batch.last_event_ms
        started = time.perf_counter()
        notify = None
        if batch.sets or batch.deletes:
            message = change_message(
                binding=self.binding.name, sets=batch.sets, deletes=batch.deletes
            )
            notify = (change_channel(self.binding.name), message)
        result = await self._store.apply(
            sets=batch.sets, deletes=batch.deletes, offsets=offsets, meta=meta, notify=notify
        )
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        if self.caught_up.is_set() and batch.last_event_ms is not None:
            self._metrics.event_to_visible.observe(
                max(0.0, time.time() - batch.last_event_ms / 1000)
            )
        self._positions.update(fetched)
        if not result.oom_rejected:
            self.applied_offsets.update(offsets)
        else:
            self.refused_keys += result.oom_rejected
            self._metrics.oom_rejections.inc(result.oom_rejected)
            logger.error(
                "Redis refused %d key writes: maxmemory reached (noeviction); the view is "
                "incomplete until memory is raised or keys are deleted",
                result.oom_rejected,
            )
        self._m_applied.inc(batch.records)
        self._m_keys.inc(result.applied)
        self._metrics.mark_applied(now)
        for bad in batch.bad:
            self._metrics.bad_records.labels(binding=self.binding.name, kind=bad.kind).inc()
            self._log_bad(bad)

    def _observe(self, consumer: AIOKafkaConsumer) -> None:
        """Freshness and lag from the last fetch responses (no I/O)."""
        for tp, position in self._positions.items():
            end = _end_offset(consumer, tp)
            if end is None:
                continue
            self._metrics.lag.labels(
                binding=self.binding.name, topic=tp.topic, partition=str(tp.partition)
            ).set(max(0, end - position))
            if position >= end:
                polled = consumer.last_poll_timestamp(tp)
                if polled is not None:
                    self._fresh[tp] = polled

    def _check_caught_up(self) -> None:
        if all(self._positions.get(tp, 0) >= end for tp, end in self._snapshot.items()):
            for tp in self._positions:
                self._fresh.setdefault(tp, self._snapshot_ms)
            if self._consumer is not None:
                self._set_fetch_bytes(self._consumer, LIVE_FETCH_BYTES)
            self.caught_up.set()
            logger.info("binding %s: caught up", self.binding.name)

    async def _pick_up_new_partitions(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event
    ) -> None:
        self._next_partition_check = time.monotonic() + self._config.metadata_refresh_ms / 1000
        current = {
            TopicPartition(t, p)
            for t in self.binding.topics
            for p in consumer.partitions_for_topic(t) or ()
        }
        added = current - self._positions.keys()
        if not added:
            return
        try:
            beginnings = await until(stop, consumer.beginning_offsets(sorted(added)))
        except KafkaError as exc:
            logger.warning("binding %s: new partitions wait: %r", self.binding.name, exc)
            return
        consumer.assign(sorted(self._positions.keys() | added))
        for tp, offset in self._positions.items():
            consumer.seek(tp, offset)
        for tp in added:
            # Everything in a partition that appeared after start-up is news: read it all.
            consumer.seek(tp, beginnings[tp])
            self._positions[tp] = beginnings[tp]
        logger.info(
            "binding %s: picked up new partitions %s",
            self.binding.name,
            sorted(f"{tp.topic}/{tp.partition}" for tp in added),
        )

    def _log_bad(self, bad: BadRecord) -> None:
        now = time.monotonic()
        if now - self._bad_logged_at >= 1.0:
            self._bad_logged_at = now
            self._bad_logged = 0
        if self._bad_logged < BAD_RECORD_LOG_RATE:
            self._bad_logged += 1
            logger.warning(
                "skipped bad record: %s",
                bad,
                extra={
                    "binding": self.binding.name,
                    "topic": bad.topic,
                    "partition": bad.partition,
                    "offset": bad.offset,
                    "kind": bad.kind,
                },
            )

    @staticmethod
    def _set_fetch_bytes(consumer: AIOKafkaConsumer, size: int) -> None:
        # aiokafka fixes the per-partition fetch size at construction; its fetcher reads this
        # attribute for every request, so big catch-up fetches can shrink once live.
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_max_partition_fetch_bytes"):
            fetcher._max_partition_fetch_bytes = size


def _end_offset(consumer: AIOKafkaConsumer, tp: Any) -> int | None:
    """The partition's end as the last fetch response reported it (read_committed: the LSO)."""
    lso = consumer.last_stable_offset(tp)
    if lso is not None and lso >= 0:
        return int(lso)
    highwater = consumer.highwater(tp)
    return None if highwater is None else int(highwater)
