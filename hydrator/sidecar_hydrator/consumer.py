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
import os
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.helpers import create_ssl_context

from sidecar_hydrator.aio import Stopped, sleep_or_stop, until
from sidecar_hydrator.batch import Batch, build_batch, guard_reserved
from sidecar_hydrator.config import (
    RESERVED_PREFIX,
    BindingSource,
    HydratorConfig,
    KafkaConnection,
)
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.kafka_internals import (
    fetch_topic_ids,
    recreated,
    refresh_metadata,
    set_fetch_bytes,
    track_topics,
)
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
#: How often a Kafka client that cannot be set up as configured is tried again.
CONFIG_RETRY_SECONDS = 5.0
#: Refused writes are retried after this long, doubling up to the maximum while Redis stays
#: full; a batch that gets in (memory was freed) makes the next write retry at once.
REFUSED_RETRY_SECONDS = 0.25
REFUSED_RETRY_MAX_SECONDS = 2.0
#: Refused values kept for retrying, at most: beyond it they are dropped and the view can
#: only be made whole by a rebuild (the records are re-read from Kafka).
REFUSED_KEEP_MAX_BYTES = 16 * 1024 * 1024


class KafkaConfigError(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The Kafka client cannot be set up as configured (a TLS file that does not load, say).

    A Kafka error like any other: reported as one, retried (a mounted Secret may be fixed in
    place), and never a reason to touch the store.
    """


class NeedRebuild(Exception):
    """The stored positions cannot be continued from; the view must be rebuilt.

    ``binding`` names the one binding whose part of the view must be re-read (the others'
    keys are carried over into the rebuilt view); ``None`` means all of them.
    """

    def __init__(self, reason: str, *, binding: str | None = None) -> None:
        super().__init__(reason if binding is None else f"{reason} (binding {binding})")
        self.reason = reason
        self.binding = binding


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
        # ``ca.crt`` is optional in the Secret: without it, the system's CAs verify the
        # broker (a public CA, or one the image trusts), as any TLS client would.
        cafile = conn.ca_file if conn.ca_file and os.path.exists(conn.ca_file) else None
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=cafile, certfile=conn.cert_file, keyfile=conn.key_file
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise KafkaConfigError(f"TLS settings: {exc}") from exc
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
        self._decode = guard_reserved(
            make_decoder(
                format=binding.format, keys=binding.keys, max_value_bytes=config.max_value_bytes
            ),
            prefix=binding.keys.prefix,
            reserved=RESERVED_PREFIX,
        )
        self._consumer: AIOKafkaConsumer | None = None
        #: Set once every partition reached the end offsets snapshotted at (re)positioning.
        self.caught_up = asyncio.Event()
        #: Key writes Redis refused (maxmemory, ``noeviction``), newest value per key, to be
        #: retried: while any is left, the view is incomplete and must not count as hydrated.
        self._refused: dict[bytes, bytes] = {}
        self._refused_bytes = 0
        #: Refused writes were dropped (too many to keep): only a rebuild makes the view whole.
        self.refused_lost = False
        self._retry_at = 0.0
        self._retry_backoff = REFUSED_RETRY_SECONDS
        #: Records of batches with refused writes: counted as applied once those got in.
        self._refused_records = 0
        self._snapshot: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        #: The last Kafka configuration error logged (each is logged once).
        self._config_error = ""
        #: Topic name -> Kafka topic ID, as of the last positioning.
        self._topic_ids: dict[str, str] = {}
        #: Per partition, the position last handed to a write (in flight or done).
        self._handed: dict[TopicPartition, int] = {}
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

    async def run(
        self,
        *,
        stored: Mapping[str, int],
        rebuild: bool,
        stop: asyncio.Event,
        stored_topic_ids: Mapping[str, str] | None = None,
    ) -> None:
        """Position every partition, then pump batches into the store until ``stop``.

        Raises :class:`NeedRebuild` when a stored position no longer exists on the broker; any
        Redis error propagates (the hydrator re-inspects the store before writing again).
        """
        if rebuild:
            self._forget_refused()  # a new view starts whole
        try:
            await self._position(
                stored=stored, rebuild=rebuild, stop=stop, stored_topic_ids=stored_topic_ids or {}
            )
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
    def refused_keys(self) -> int:
        """Writes Redis refused and that are not in the view yet (1 at least once dropped)."""
        return len(self._refused) or int(self.refused_lost)

    def _forget_refused(self) -> None:
        self._refused.clear()
        self._refused_bytes = 0
        self.refused_lost = False
        self._retry_backoff = REFUSED_RETRY_SECONDS
        self._refused_records = 0

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
            try:
                consumer = AIOKafkaConsumer(
                    **consumer_options(
                        self.binding.kafka,
                        client_id=f"sidecar-state-hydrator.{self.binding.name}",
                        config=self._config,
                    )
                )
            except KafkaConfigError as exc:
                if str(exc) != self._config_error:
                    self._config_error = str(exc)
                    logger.error(
                        "binding %s: the Kafka client cannot be set up: %s (retrying every "
                        "%.0f s; the served view stays as it is)",
                        self.binding.name,
                        exc,
                        CONFIG_RETRY_SECONDS,
                    )
                self._metrics.kafka_errors.labels(binding=self.binding.name, kind="config").inc()
                await until(stop, asyncio.sleep(CONFIG_RETRY_SECONDS))
                continue
            self._config_error = ""
            try:
                await until(stop, consumer.start())
                self._consumer = consumer
            except KafkaError as exc:
                self._metrics.kafka_errors.labels(
                    binding=self.binding.name, kind="unreachable"
                ).inc()
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
        await until(stop, track_topics(consumer, topics))
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
            await until(stop, refresh_metadata(consumer))

    async def _position(
        self,
        *,
        stored: Mapping[str, int],
        rebuild: bool,
        stop: asyncio.Event,
        stored_topic_ids: Mapping[str, str],
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
                topic_ids = await until(stop, fetch_topic_ids(consumer, self.binding.topics))
                break
            except KafkaError as exc:
                logger.warning("binding %s: positioning failed: %r", self.binding.name, exc)
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
        own_ids = {
            field.split("/", 1)[1]: topic_id
            for field, topic_id in stored_topic_ids.items()
            if is_binding_field(field, self.binding.name)
        }
        if not rebuild and recreated(own_ids, topic_ids):
            # Deleted and created again: its offsets start over, and stored positions may
            # well fall inside the new range. Only its identity tells.
            raise NeedRebuild("topic_recreated", binding=self.binding.name)
        self._topic_ids = topic_ids
        await self._store.record_topic_ids(
            {f"{self.binding.name}/{topic}": topic_id for topic, topic_id in topic_ids.items()}
        )
        resumed = not rebuild and any(is_binding_field(f, self.binding.name) for f in stored)
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            field = offset_field(self.binding.name, tp.topic, tp.partition)
            if not rebuild and field in stored:
                offset = stored[field]
                if not beginnings[tp] <= offset <= ends[tp]:
                    # Retention removed records we never read, or the topic was recreated.
                    raise NeedRebuild("offset_out_of_range", binding=self.binding.name)
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
        self._handed = dict(starts)
        self._snapshot = dict(ends)
        self.applied_offsets = {
            offset_field(self.binding.name, tp.topic, tp.partition): offset
            for tp, offset in starts.items()
        }
        set_fetch_bytes(consumer, self._config.catchup_fetch_bytes)
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
                    raise NeedRebuild("offset_out_of_range", binding=self.binding.name) from exc
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
                else:
                    skipped = await self._skipped_positions(consumer)
                    retry = self._refused and time.monotonic() >= self._retry_at
                    if skipped or retry:
                        # Markers or aborted records only (store the new positions), or
                        # refused writes due for another try.
                        await self._write(Batch(), skipped)
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
        fetched = await self._skipped_positions(consumer)
        for tp in data:
            # The consumer's position also skips trailing control records, which the last
            # record's offset + 1 would not.
            fetched[tp] = max(await consumer.position(tp), batch.offsets[(tp.topic, tp.partition)])
        self._handed.update(fetched)
        return batch, fetched

    async def _skipped_positions(self, consumer: AIOKafkaConsumer) -> dict[Any, int]:
        """Partitions whose consumer position moved past what was handed to a write without
        returning a record: transaction markers and aborted transactions (read_committed)
        take offsets too, and a partition whose tail is one would otherwise never reach its
        end. Progress is the consumer's position, never "the last record seen"."""
        skipped: dict[Any, int] = {}
        for tp, handed in self._handed.items():
            position = await consumer.position(tp)
            if position > handed:
                skipped[tp] = position
        self._handed.update(skipped)
        return skipped

    async def _write(self, batch: Batch, fetched: Mapping[Any, int]) -> None:
        offsets = {
            offset_field(self.binding.name, tp.topic, tp.partition): position
            for tp, position in fetched.items()
        }
        now = time.time()
        meta: dict[str, str | int] = {"last_apply_ms": int(now * 1000)}
        if batch.last_event_ms is not None:
            meta["last_event_ms"] = batch.last_event_ms
        sets = batch.sets
        if self._refused:
            # A newer record of a refused key replaces the refused write (or deletes it).
            for key in batch.sets.keys() | batch.deletes:
                value = self._refused.pop(key, None)
                if value is not None:
                    self._refused_bytes -= len(key) + len(value)
            if self._refused and time.monotonic() >= self._retry_at:
                sets = {**self._refused, **batch.sets}
        retried = len(sets) - len(batch.sets)
        started = time.perf_counter()
        result = await self._store.apply(
            sets=sets, deletes=batch.deletes, offsets=offsets, meta=meta
        )
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        if self.caught_up.is_set() and batch.last_event_ms is not None:
            self._metrics.event_to_visible.observe(
                max(0.0, time.time() - batch.last_event_ms / 1000)
            )
        self._positions.update(fetched)
        # The refused writes are kept here, so the positions go on: later records (deletes
        # among them, which free memory) must not wait behind a full Redis.
        self.applied_offsets.update(offsets)
        if result.refused:
            self._keep_refused(result.refused, retried=retried)
            self._refused_records += batch.records
        elif self.refused_lost and sets:
            raise NeedRebuild(
                "refused", binding=self.binding.name
            )  # writes get in again; the dropped ones need re-reading
        else:
            applied_records = batch.records
            if not self.refused_lost and (retried or (self._refused_records and not self._refused)):
                logger.info("Redis took the %d key writes it had refused", retried)
                applied_records += self._refused_records
                self._forget_refused()
            elif self._refused and sets:
                self._retry_at = 0.0  # writes got in again: memory was freed, retry now
            self._m_applied.inc(applied_records)
        self._m_keys.inc(result.applied)
        self._metrics.mark_applied(now)
        for bad in batch.bad:
            self._metrics.bad_records.labels(binding=self.binding.name, kind=bad.kind).inc()
            self._log_bad(bad)

    def _keep_refused(self, refused: Mapping[bytes, bytes], *, retried: int) -> None:
        new = len(refused) - retried
        if new > 0:
            self._metrics.oom_rejections.inc(new)
        if not self._refused and not self.refused_lost:
            logger.error(
                "Redis refused %d key writes: maxmemory reached (noeviction); the view is "
                "incomplete (not ready, staleness growing) until memory is raised or keys are "
                "deleted; retrying",
                len(refused),
            )
        for key, value in refused.items():
            if key not in self._refused:
                self._refused_bytes += len(key) + len(value)
            self._refused[key] = value
        if self._refused_bytes > REFUSED_KEEP_MAX_BYTES:
            logger.error(
                "binding %s: %d refused writes are more than can be kept for retrying; the "
                "view will be rebuilt once Redis takes writes again",
                self.binding.name,
                len(self._refused),
            )
            self._refused.clear()
            self._refused_bytes = 0
            self.refused_lost = True
        self._retry_at = time.monotonic() + self._retry_backoff
        self._retry_backoff = min(self._retry_backoff * 2, REFUSED_RETRY_MAX_SECONDS)

    def _observe(self, consumer: AIOKafkaConsumer) -> None:
        """Freshness and lag from the last fetch responses (no I/O)."""
        for tp, position in self._positions.items():
            end = _end_offset(consumer, tp)
            if end is None:
                continue
            self._metrics.lag.labels(
                binding=self.binding.name, topic=tp.topic, partition=str(tp.partition)
            ).set(max(0, end - position))
            if position >= end and not self.refused_keys:
                # With refused writes outstanding the view is not "fully applied" anywhere:
                # its staleness grows until Redis takes them.
                polled = consumer.last_poll_timestamp(tp)
                if polled is not None:
                    self._fresh[tp] = polled

    def _check_caught_up(self) -> None:
        if all(self._positions.get(tp, 0) >= end for tp, end in self._snapshot.items()):
            for tp in self._positions:
                self._fresh.setdefault(tp, self._snapshot_ms)
            if self._consumer is not None:
                set_fetch_bytes(self._consumer, LIVE_FETCH_BYTES)
            self.caught_up.set()
            logger.info("binding %s: caught up", self.binding.name)

    async def _pick_up_new_partitions(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event
    ) -> None:
        self._next_partition_check = time.monotonic() + self._config.metadata_refresh_ms / 1000
        try:
            topic_ids = await until(stop, fetch_topic_ids(consumer, self.binding.topics))
        except KafkaError as exc:
            logger.warning("binding %s: topic IDs: %r", self.binding.name, exc)
        else:
            if recreated(self._topic_ids, topic_ids):
                raise NeedRebuild("topic_recreated", binding=self.binding.name)
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
        known = min(self._fresh.values(), default=None)
        for tp in added:
            # Everything in a partition that appeared after start-up is news: read it all.
            # Until it is read to its end, the binding is as fresh as it was when the
            # partition appeared, not "unknown".
            if known is not None:
                self._fresh[tp] = known
            consumer.seek(tp, beginnings[tp])
            self._positions[tp] = beginnings[tp]
            self._handed[tp] = beginnings[tp]
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


def _end_offset(consumer: AIOKafkaConsumer, tp: Any) -> int | None:
    """The partition's end as the last fetch response reported it (read_committed: the LSO)."""
    lso = consumer.last_stable_offset(tp)
    if lso is not None and lso >= 0:
        return int(lso)
    highwater = consumer.highwater(tp)
    return None if highwater is None else int(highwater)
