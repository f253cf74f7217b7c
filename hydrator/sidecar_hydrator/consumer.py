"""One binding's feed: a source's record runs applied to the store, batch by batch.

The applier half of the Source seam (see :mod:`sidecar_hydrator.source`), and source-neutral:
decode and collapse a run of records, write it with its positions and metadata in one
transaction, keep and retry writes a full Redis refused, decide when the view has caught up
and how fresh it is, and count all of it. Where the records come from (Kafka:
:mod:`sidecar_hydrator.kafka_source`) is the source's business.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from sidecar_hydrator.aio import Stopped
from sidecar_hydrator.batch import Batch, build_batch, guard_reserved, index_commands
from sidecar_hydrator.changes import change_channel, change_message
from sidecar_hydrator.config import RESERVED_PREFIX, BindingSource, HydratorConfig
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.reasons import Problem
from sidecar_hydrator.records import BadRecord, RecordLike, make_decoder
from sidecar_hydrator.source import NeedRebuild, Partition, Source, recreated
from sidecar_hydrator.store import ViewStore, is_binding_field, offset_field

__all__ = ["Feed", "NeedRebuild"]

logger = logging.getLogger(__name__)

#: How long one fetch waits for data; bounds how late a stop request is noticed.
POLL_TIMEOUT_MS = 200
#: A live batch is one MULTI/EXEC on the served view, and Redis serves no read of the app while
#: it runs; the time it takes grows with the bytes it writes. So live batches are sized by
#: bytes as well as by keys: the next one takes as many records as fit in this many bytes at the
#: last batch's bytes per key (:func:`next_live_cap`), within ``live_batch_max_keys``. Timing
#: the writes from here would measure the node's scheduler as much as Redis: on a busy node
#: batches would shrink, the feed slow down, and freshness suffer (measured: p50 x2-3 worse).
LIVE_BATCH_MAX_BYTES = 1024 * 1024
#: ...but never fewer keys than this: a feed of large values must still move.
LIVE_BATCH_MIN_KEYS = 16
#: At most this many bad records are logged per second; all of them are counted.
BAD_RECORD_LOG_RATE = 10
#: Refused writes are retried after this long, doubling up to the maximum while Redis stays
#: full; a batch that gets in (memory was freed) makes the next write retry at once.
REFUSED_RETRY_SECONDS = 0.25
REFUSED_RETRY_MAX_SECONDS = 2.0
#: Refused values kept for retrying, at most: beyond it they are dropped and the view can
#: only be made whole by a rebuild (the records are re-read from the source).
REFUSED_KEEP_MAX_BYTES = 16 * 1024 * 1024


class Feed:
    """Reads one binding's partitions and writes them to the store, batch by batch."""

    def __init__(
        self,
        *,
        binding: BindingSource,
        config: HydratorConfig,
        store: ViewStore,
        metrics: Metrics,
        source: Source,
    ) -> None:
        self.binding = binding
        self._source = source
        self._config = config
        self._store = store
        self._decode = guard_reserved(
            make_decoder(
                format=binding.format,
                keys=binding.keys,
                max_value_bytes=config.max_value_bytes,
                max_key_bytes=config.max_key_bytes,
                binding=binding.name,
                allow_empty_key=config.store_engine != "lmdb",
            ),
            prefix=binding.keys.prefix,
            reserved=RESERVED_PREFIX,
        )
        #: Set once every partition reached the end offsets snapshotted at (re)positioning.
        self.caught_up = asyncio.Event()
        #: Key writes Redis refused (maxmemory, ``noeviction``), newest value per key, to be
        #: retried: while any is left, the view is incomplete and must not count as hydrated.
        self._refused: dict[bytes, bytes] = {}
        #: Debezium: the table index key of each refused key that names one. A full Redis
        #: refuses the index's ``SADD`` with the row, so a retry must add it again, or a later
        #: truncate would not find the row.
        self._refused_index: dict[bytes, bytes] = {}
        self._refused_bytes = 0
        #: Refused writes were dropped (too many to keep): only a rebuild makes the view whole.
        self.refused_lost = False
        self._retry_at = 0.0
        self._retry_backoff = REFUSED_RETRY_SECONDS
        #: Records of batches with refused writes: counted as applied once those got in.
        self._refused_records = 0
        self._snapshot: dict[Partition, int] = {}
        #: Keys of the next live batch, sized by bytes (see LIVE_BATCH_MAX_BYTES).
        self._live_cap = config.live_batch_max_keys
        #: Per partition, where the current positioning started reading.
        self._starts: dict[Partition, int] = {}
        #: Per partition, the position written to the store (the next one to read).
        self._positions: dict[Partition, int] = {}
        #: Stream name -> identity (Kafka's topic ID), as of the last positioning.
        self._identities: dict[str, str] = {}
        #: Per partition, the position last handed to a write (in flight or done).
        self._handed: dict[Partition, int] = {}
        #: Offsets whose records are in Redis (field -> next offset); what a rebuild publishes.
        self.applied_offsets: dict[str, int] = {}
        #: Per partition: wall-clock ms at which it was last known to be fully applied.
        self._fresh: dict[Partition, float] = {}
        #: Lower bound carried over from Redis metadata, for before the first fetch response.
        self.fresh_floor_ms: float | None = None
        self._next_partition_check = 0.0
        self._snapshot_ms = 0.0
        self._bad_logged_at = 0.0
        self._bad_logged = 0
        labels = {"binding": binding.name, "source": binding.source_kind}
        self._labels = labels
        self._m_read = metrics.records_read.labels(**labels)
        self._m_applied = metrics.records_applied.labels(**labels)
        self._m_keys = metrics.keys_written.labels(**labels)
        self._m_ignored = metrics.records_ignored.labels(**labels)
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
        await self._source.close()

    @property
    def refused_keys(self) -> int:
        """Writes Redis refused and that are not in the view yet (1 at least once dropped)."""
        return len(self._refused) or int(self.refused_lost)

    def _forget_refused(self) -> None:
        self._refused.clear()
        self._refused_index.clear()
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

    @property
    def problem(self) -> Problem | None:
        """Why this binding cannot be read right now (its source says)."""
        return self._source.problem

    @property
    def positioned(self) -> bool:
        """The source told where every partition begins and ends (a snapshot was taken)."""
        return bool(self._snapshot)

    def progress(self) -> tuple[int, int]:
        """(records read, records to read) since this binding was last positioned, up to the
        ends snapshotted then: how far a bootstrap or rebuild is."""
        read = target = 0
        for tp, end in self._snapshot.items():
            start = self._starts.get(tp, end)
            target += max(0, end - start)
            read += max(0, min(self._positions.get(tp, start), end) - start)
        return read, target

    def lag(self) -> int:
        """Records between the written positions and the ends the source last reported."""
        total = 0
        for tp, position in self._positions.items():
            end = self._source.end(tp)
            total += max(0, (self._snapshot.get(tp, position) if end is None else end) - position)
        return total

    # -- positioning --------------------------------------------------------------------------

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
        snapshot = await self._source.snapshot(stop)
        self._snapshot_ms = snapshot.taken_ms
        beginnings, ends, topic_ids = snapshot.beginnings, snapshot.ends, snapshot.identities
        partitions = set(ends)
        own_ids = {
            field.split("/", 1)[1]: topic_id
            for field, topic_id in stored_topic_ids.items()
            if is_binding_field(field, self.binding.name)
        }
        if not rebuild and recreated(own_ids, topic_ids):
            # Deleted and created again: its offsets start over, and stored positions may
            # well fall inside the new range. Only its identity tells.
            raise NeedRebuild("topic_recreated", binding=self.binding.name)
        self._identities = dict(topic_ids)
        await self._store.record_topic_ids(
            {f"{self.binding.name}/{topic}": topic_id for topic, topic_id in topic_ids.items()}
        )
        resumed = not rebuild and any(is_binding_field(f, self.binding.name) for f in stored)
        starts: dict[Partition, int] = {}
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
        self._source.assign(starts)
        self._positions = dict(starts)
        self._starts = dict(starts)
        self._handed = dict(starts)
        self._snapshot = dict(ends)
        self.applied_offsets = {
            offset_field(self.binding.name, tp.topic, tp.partition): offset
            for tp, offset in starts.items()
        }
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
        bootstrap_cap = self._config.bootstrap_batch_max_keys
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                cap = self._live_cap if self.caught_up.is_set() else bootstrap_cap
                # With a write in flight, only take what is already buffered: when nothing
                # is, finishing that write (and noticing we caught up) comes first.
                timeout_ms = 0 if writing is not None else POLL_TIMEOUT_MS
                data = await self._source.fetch(max_records=cap, timeout_ms=timeout_ms, stop=stop)
                if data:
                    batch, fetched = await self._decode_batch(data)
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._write(batch, fetched))
                elif writing is not None:
                    await writing
                    writing = None
                else:
                    skipped = await self._skipped_positions()
                    retry = self._refused and time.monotonic() >= self._retry_at
                    if skipped or retry:
                        # Markers or aborted records only (store the new positions), or
                        # refused writes due for another try.
                        await self._write(Batch(), skipped)
                self._observe()
                if not self.caught_up.is_set():
                    self._check_caught_up()
                if time.monotonic() >= self._next_partition_check:
                    if writing is not None:  # re-assigning re-seeks to the written positions
                        await writing
                        writing = None
                    await self._pick_up_new_partitions(stop)
            if writing is not None:
                await writing  # SIGTERM: the batch in flight is finished, not abandoned
                writing = None
        finally:
            if writing is not None and not writing.done():
                writing.cancel()

    async def _decode_batch(
        self, data: Mapping[Partition, Sequence[RecordLike]]
    ) -> tuple[Batch, dict[Partition, int]]:
        batch = build_batch(data.values(), self._decode)
        self._m_read.inc(batch.records)
        fetched = await self._skipped_positions()
        for tp in data:
            # The source's position also skips trailing control records, which the last
            # record's offset + 1 would not.
            position = await self._source.position(tp)
            fetched[tp] = max(position, batch.offsets[(tp.topic, tp.partition)])
        self._handed.update(fetched)
        return batch, fetched

    async def _skipped_positions(self) -> dict[Partition, int]:
        """Partitions whose source position moved past what was handed to a write without
        returning a record: transaction markers and aborted transactions (read_committed)
        take offsets too, and a partition whose tail is one would otherwise never reach its
        end. Progress is the source's position, never "the last record seen"."""
        skipped: dict[Partition, int] = {}
        for tp, handed in self._handed.items():
            position = await self._source.position(tp)
            if position > handed:
                skipped[tp] = position
        self._handed.update(skipped)
        return skipped

    async def _write(self, batch: Batch, fetched: Mapping[Partition, int]) -> None:
        offsets = {
            offset_field(self.binding.name, tp.topic, tp.partition): position
            for tp, position in fetched.items()
        }
        now = time.time()
        meta: dict[str, str | int] = {"last_apply_ms": int(now * 1000)}
        if batch.last_event_ms is not None:
            meta["last_event_ms"] = batch.last_event_ms
        sets = batch.sets
        commands = batch.commands
        if self._refused:
            self._supersede_refused(batch)
            if self._refused and time.monotonic() >= self._retry_at:
                sets = {**self._refused, **batch.sets}
                # Their table index entries were refused with them: they go in together.
                commands += index_commands(self._refused_index, sets=self._refused)
        retried = len(sets) - len(batch.sets)
        started = time.perf_counter()
        notify: Callable[[], tuple[str, bytes]] | None = None
        if sets or batch.deletes:
            # Retried writes that get in now are changes the app sees now, too. Built only
            # if the store writes the served view: a rebuild publishes nothing, and sorting
            # and encoding every key of a bootstrap batch cost a tenth of its CPU.
            notify = functools.partial(self._change, sets=sets, deletes=batch.deletes)
        result = await self._store.apply(
            sets=sets,
            deletes=batch.deletes,
            offsets=offsets,
            meta=meta,
            notify=notify,
            commands=commands,
        )
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        if self.caught_up.is_set() and (sets or batch.deletes):
            self._live_cap = next_live_cap(
                keys=len(sets) + len(batch.deletes),
                written_bytes=sum(len(k) + len(v) for k, v in sets.items())
                + sum(len(k) for k in batch.deletes),
                cap=self._live_cap,
                most=self._config.live_batch_max_keys,
            )
        if self.caught_up.is_set() and batch.last_event_ms is not None:
            self._metrics.event_to_visible.observe(
                max(0.0, time.time() - batch.last_event_ms / 1000)
            )
        self._positions.update(fetched)
        # The refused writes are kept here, so the positions go on: later records (deletes
        # among them, which free memory) must not wait behind a full Redis.
        self.applied_offsets.update(offsets)
        if result.refused:
            self._keep_refused(result.refused, retried=retried, index_of=batch.index_of)
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
        self._m_ignored.inc(batch.ignored)
        self._m_keys.inc(result.applied)
        self._metrics.mark_applied(now)
        for bad in batch.bad:
            self._metrics.bad_records.labels(**self._labels, kind=bad.kind).inc()
            self._log_bad(bad)

    def _change(self, *, sets: Iterable[bytes], deletes: Iterable[bytes]) -> tuple[str, bytes]:
        """The change notification of one batch: ``(channel, message)``."""
        message = change_message(binding=self.binding.name, sets=sets, deletes=deletes)
        return change_channel(self.binding.name), message

    def _supersede_refused(self, batch: Batch) -> None:
        """Drop the refused writes ``batch`` makes obsolete: a newer record of the same key
        replaces the write (or deletes it), and a truncate of its table removes it — retried
        after the truncate, the row would come back."""
        obsolete = [key for key in batch.sets.keys() | batch.deletes if key in self._refused]
        if batch.truncates:
            truncated = set(batch.truncates)
            obsolete += [key for key, index in self._refused_index.items() if index in truncated]
        for key in obsolete:
            value = self._refused.pop(key, None)
            self._refused_index.pop(key, None)
            if value is not None:
                self._refused_bytes -= len(key) + len(value)

    def _keep_refused(
        self, refused: Mapping[bytes, bytes], *, retried: int, index_of: Mapping[bytes, bytes]
    ) -> None:
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
            index = index_of.get(key)
            if index is not None:
                self._refused_index[key] = index
        if self._refused_bytes > REFUSED_KEEP_MAX_BYTES:
            logger.error(
                "binding %s: %d refused writes are more than can be kept for retrying; the "
                "view will be rebuilt once Redis takes writes again",
                self.binding.name,
                len(self._refused),
            )
            self._refused.clear()
            self._refused_index.clear()
            self._refused_bytes = 0
            self.refused_lost = True
        self._retry_at = time.monotonic() + self._retry_backoff
        self._retry_backoff = min(self._retry_backoff * 2, REFUSED_RETRY_MAX_SECONDS)

    def _observe(self) -> None:
        """Freshness and lag from the source's last reports (no I/O)."""
        for tp, position in self._positions.items():
            end = self._source.end(tp)
            if end is None:
                continue
            self._metrics.lag.labels(
                **self._labels, topic=tp.topic, partition=str(tp.partition)
            ).set(max(0, end - position))
            if position >= end and not self.refused_keys:
                # With refused writes outstanding the view is not "fully applied" anywhere:
                # its staleness grows until Redis takes them.
                polled = self._source.reported_at(tp)
                if polled is not None:
                    self._fresh[tp] = polled

    def _check_caught_up(self) -> None:
        if all(self._positions.get(tp, 0) >= end for tp, end in self._snapshot.items()):
            for tp in self._positions:
                self._fresh.setdefault(tp, self._snapshot_ms)
            self._source.go_live()
            self.caught_up.set()
            logger.info("binding %s: caught up", self.binding.name)

    async def _pick_up_new_partitions(self, stop: asyncio.Event) -> None:
        self._next_partition_check = time.monotonic() + self._config.metadata_refresh_ms / 1000
        if recreated(self._identities, await self._source.identities(stop)):
            raise NeedRebuild("topic_recreated", binding=self.binding.name)
        added = await self._source.added_partitions(self._positions.keys(), stop)
        if not added:
            return
        self._source.assign({**self._positions, **added})
        known = min(self._fresh.values(), default=None)
        for tp in added:
            # Everything in a partition that appeared after start-up is news: read it all.
            # Until it is read to its end, the binding is as fresh as it was when the
            # partition appeared, not "unknown".
            if known is not None:
                self._fresh[tp] = known
            self._positions[tp] = added[tp]
            self._handed[tp] = added[tp]
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


def next_live_cap(*, keys: int, written_bytes: int, cap: int, most: int) -> int:
    """How many records the next live batch may take, after one wrote ``keys`` keys of
    ``written_bytes`` bytes (keys and values): as many as fit in :data:`LIVE_BATCH_MAX_BYTES` at
    that size per key, between :data:`LIVE_BATCH_MIN_KEYS` and ``most``."""
    if keys <= 0:
        return cap
    per_key = max(1.0, written_bytes / keys)
    return max(min(LIVE_BATCH_MIN_KEYS, most), min(int(LIVE_BATCH_MAX_BYTES / per_key), most))
