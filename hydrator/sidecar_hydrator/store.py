"""The Pod's Redis, as the hydrator writes it: one transaction per batch, offsets with the data.

Layout (all in database 0, the one the app reads):

- the app's keys, as the bindings map them;
- ``offsets_key``: a hash ``<binding>/<topic>/<partition>`` -> next offset to read, written in
  the same ``MULTI/EXEC`` as the data it accounts for, so a restarted hydrator resumes exactly;
- ``metadata_key``: a hash the app can read in the same round trip as its data
  (``hydrated``, ``complete``, ``generation``, ``run_id``, ``fresh_as_of_ms``,
  ``staleness_ms``, ``last_event_ms``, ...);
- :data:`SENTINEL_KEY` (the published view's generation) and :data:`TOPIC_IDS_KEY` (the
  topics the positions belong to). Every key under ``sidecar-state:`` is the hydrator's; no
  record can write there (see :func:`sidecar_hydrator.batch.guard_reserved`).

Why the connection hook: redis-py reconnects transparently, so after the Redis container
restarts (empty — it has no persistence) a write could land in the fresh instance and store
offsets that claim data which is not there. Every new connection therefore checks the server's
``run_id`` against the one the view was built in and refuses with :class:`DataLost`; no write
ever reaches a Redis the hydrator has not inspected.

A rebuild is written into ``spare_db`` and published with ``SWAPDB``, so readers see the old
view (or an empty one after a restart) until the new one is complete, never a half-built one.
Each heartbeat checks, atomically with its metadata write, that the served view is still the
published one (:meth:`Store.heartbeat`), so a flushed store never claims to be complete.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, Protocol, TypeVar, cast

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, OutOfMemoryError, RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from sidecar_hydrator.aio import sleep_or_stop
from sidecar_hydrator.config import RESERVED_PREFIX
from sidecar_hydrator.records import table_index_key

if TYPE_CHECKING:
    from sidecar_hydrator.batch import Command

logger = logging.getLogger(__name__)

LossReason = Literal["empty", "run_id_changed", "offsets_missing", "not_hydrated", "damaged"]

#: A hash whose ``generation`` field names the view in database 0 (the metadata has it too):
#: written with every published view, checked by every heartbeat. A view whose sentinel is
#: missing or different was flushed or overwritten by someone else. A hash, like the other
#: bookkeeping keys, so that an app's ``MGET`` over all keys reads it as nil.
SENTINEL_KEY = RESERVED_PREFIX + "sentinel"
_GENERATION = "generation"
#: A hash ``<binding>/<topic>`` -> the Kafka topic ID the view was read from, so a topic that
#: was deleted and created again is not resumed from positions of its predecessor.
TOPIC_IDS_KEY = RESERVED_PREFIX + "topic-ids"
#: Metadata field of the spare database while a rebuild is written into it: the ``run_id`` of
#: the Redis it is built in (see :meth:`Store.begin_rebuild`).
REBUILD_MARK = "rebuilding_in"

#: The heartbeat, atomically: check that the view is the one this hydrator published (its
#: sentinel and both bookkeeping hashes are there), then write the metadata, never claiming
#: ``hydrated``/``complete`` nor freshness on a view that failed the check. Returns
#: ``{intact, error}``: a refused write (a full Redis) does not hide the check's result.
#: KEYS: sentinel, meta, offsets. ARGV: expected generation ("" = none), then field/value pairs.
_HEARTBEAT_LUA = """
local expected = ARGV[1]
local intact = 0
if expected ~= '' then
  local sentinel = redis.pcall('HGET', KEYS[1], 'generation')
  if sentinel == expected and redis.call('TYPE', KEYS[2]).ok == 'hash'
      and redis.call('TYPE', KEYS[3]).ok == 'hash' then
    intact = 1
  end
end
local fields = {}
for i = 2, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  if intact == 1 or (name ~= 'fresh_as_of_ms' and name ~= 'staleness_ms') then
    if intact == 0 and (name == 'hydrated' or name == 'complete') then value = '0' end
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
if redis.call('TYPE', KEYS[2]).ok ~= 'hash' then redis.call('DEL', KEYS[2]) end
if intact == 0 then redis.pcall('HDEL', KEYS[2], 'fresh_as_of_ms', 'staleness_ms') end
local written = redis.pcall('HSET', KEYS[2], unpack(fields))
if type(written) == 'table' and written.err then return {intact, written.err} end
return {intact, ''}
"""


class StoreError(Exception):
    """The store failed; what the hydrator handles, whatever the engine behind it.

    ``kind`` names the engine's own error (``NoPermissionError``, ``ConnectionError``, ...) for
    logs and metrics; the original is the ``__cause__``.
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_errors(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Translate redis-py's errors (and socket errors) into :class:`StoreError` at the
    store's edge, so that its callers stay store-neutral."""

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreError(str(exc), kind=type(exc).__name__) from exc

    return translated


class DataLost(RedisConnectionError):
    """The Redis behind the socket is not the one the served view was built in."""


def offset_field(binding: str, topic: str, partition: int) -> str:
    """The offsets-hash field of one partition as read by one binding.

    The binding is part of it because two bindings may read the same topic with different
    mappings, each at its own position. Kubernetes names and Kafka topic names contain no ``/``.
    """
    return f"{binding}/{topic}/{partition}"


def is_binding_field(field: str, binding: str) -> bool:
    """Whether an offsets-hash field (see :func:`offset_field`) belongs to ``binding``."""
    return field.startswith(f"{binding}/")


@dataclass(frozen=True, slots=True)
class StoreState:
    """What a hydrator finds in database 0 when it (re)starts."""

    run_id: str
    meta: Mapping[str, str]
    offsets: Mapping[str, int]
    #: The sentinel's value (:data:`SENTINEL_KEY`); ``None`` when missing.
    sentinel: str | None = None
    #: A bookkeeping key holds the wrong type (someone wrote over it).
    wrong_type: bool = False
    #: ``<binding>/<topic>`` -> topic ID, as recorded when the positions were taken.
    topic_ids: Mapping[str, str] = field(default_factory=dict)

    def loss(self) -> LossReason | None:
        """Why the served view cannot be resumed, or ``None`` when it can.

        A Redis restart shows as an empty meta hash (no persistence) and, should persistence
        ever restore one, as a ``run_id`` other than the one the view was built in. A view
        whose sentinel disagrees with its metadata was flushed or written over by someone
        else since it was published.
        """
        if self.wrong_type:
            return "damaged"
        if not self.meta:
            return "empty"
        if self.meta.get("hydrated") != "1":
            return "not_hydrated"
        if self.meta.get("run_id") != self.run_id:
            return "run_id_changed"
        if not self.offsets:
            return "offsets_missing"
        if self.sentinel is None or self.sentinel != self.meta.get("generation"):
            return "damaged"
        return None

    @property
    def generation(self) -> str | None:
        """The generation of the view, when it can be resumed."""
        return self.meta.get("generation") if self.loss() is None else None


#: Keys per MSET while writing the spare database: small enough that a reader of the served
#: view waits at most a fraction of a millisecond behind one.
UNSEEN_CHUNK_KEYS = 500


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    #: Key writes Redis refused because ``maxmemory`` was reached (``noeviction``), with
    #: their values: the caller keeps them and retries once memory allows.
    refused: Mapping[bytes, bytes]

    @property
    def oom_rejected(self) -> int:
        return len(self.refused)


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    #: Database 0 still holds the view of the expected generation.
    intact: bool
    #: Redis refused the metadata write: it is full (the check above still holds).
    full: bool


class ViewStore(Protocol):
    """What the hydrator needs of a store engine: :class:`Store` (Redis, the default) or
    :class:`~sidecar_hydrator.store_lmdb.LmdbStore`. Every failure is a :class:`StoreError`."""

    @property
    def run_id(self) -> str | None: ...

    @property
    def spare(self) -> str:
        """Where a rebuild is written, for logs."""
        ...

    def wait_ready(self, *, stop: asyncio.Event, max_backoff: float = 1.0) -> Awaitable[bool]: ...

    def inspect(self) -> Awaitable[StoreState]: ...

    def record_topic_ids(self, ids: Mapping[str, str]) -> Awaitable[None]: ...

    def discard_spare(self) -> Awaitable[int]: ...

    def begin_rebuild(self, *, resume: bool = True) -> Awaitable[StoreState | None]: ...

    def carry_over(self, *, prefix: str, binding: str) -> Awaitable[int]: ...

    def complete_rebuild(
        self,
        *,
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        generation: str,
        complete: bool = True,
    ) -> Awaitable[None]: ...

    def apply(
        self,
        *,
        sets: Mapping[bytes, bytes],
        deletes: Iterable[bytes],
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        notify: tuple[str, bytes] | Callable[[], tuple[str, bytes]] | None = None,
        commands: Sequence[Command] = (),
    ) -> Awaitable[ApplyResult]: ...

    def heartbeat(
        self, *, fields: Mapping[str, str | int], generation: str | None
    ) -> Awaitable[HeartbeatResult]: ...

    def memory_usage(self) -> Awaitable[tuple[int, int]]: ...

    def close(self) -> Awaitable[None]: ...


class Store:
    """Writes batches into the served database (or the spare one while rebuilding)."""

    def __init__(
        self,
        *,
        socket_path: str,
        offsets_key: str,
        metadata_key: str,
        spare_db: int,
        socket_timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        #: The hydrator's ACL user: the ``default`` one an app gets may only read.
        self._username, self._password = username, password
        self.offsets_key = offsets_key
        self.metadata_key = metadata_key
        self.spare_db = spare_db
        self._socket_timeout = socket_timeout
        #: The ``run_id`` the view belongs to; ``None`` while inspecting (accept any server).
        self._run_id: str | None = None
        self._served = self._client(db=0)
        self._spare = self._client(db=spare_db)
        self._heartbeat_script = self._served.register_script(_HEARTBEAT_LUA)
        self._target = self._served
        #: Serialises batch writes with the swap: a batch meant for the spare database must
        #: not land after ``SWAPDB`` (it would be flushed with the old view).
        self._lock = asyncio.Lock()

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def spare(self) -> str:
        return f"db {self.spare_db}"

    def _client(self, *, db: int) -> Redis:
        pool = ConnectionPool(
            connection_class=PackedConnection,
            path=self.socket_path,
            db=db,
            username=self._username,
            password=self._password,
            # No automatic retries: a failed command must surface, so the hydrator
            # re-inspects the store before writing again (see the module docstring).
            retry=Retry(NoBackoff(), 0),
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=2.0,
            redis_connect_func=self._on_connect,
        )
        return Redis(connection_pool=pool)

    async def _on_connect(self, connection: AbstractConnection) -> None:
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        run_id = parse_run_id(await connection.read_response())
        if self._run_id is not None and run_id != self._run_id:
            raise DataLost(f"Redis restarted: run_id {self._run_id} -> {run_id}")

    async def wait_ready(self, *, stop: asyncio.Event, max_backoff: float = 1.0) -> bool:
        """Wait until Redis answers on the socket (it may start after us); False if stopped."""
        backoff = 0.02
        reported = False
        while not stop.is_set():
            try:
                await self._served.ping()
                return True
            except DataLost:
                return True  # it answers; that it is a new instance is for inspect() to handle
            except (RedisError, OSError) as exc:
                if not reported:
                    logger.info("waiting for Redis at %s: %s", self.socket_path, exc)
                    reported = True
            await sleep_or_stop(stop, backoff)
            backoff = min(backoff * 2, max_backoff)
        return False

    @_store_errors
    async def inspect(self) -> StoreState:
        """Read what database 0 holds, and adopt the current server as the one to write to."""
        self._run_id = None
        self._target = self._served  # a rebuild that failed half-way is abandoned
        await self._served.connection_pool.disconnect()
        await self._spare.connection_pool.disconnect()
        info = await self._served.info("server")
        run_id = str(info["run_id"])
        self._run_id = run_id
        async with self._served.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.metadata_key)
            pipe.hgetall(self.offsets_key)
            pipe.hget(SENTINEL_KEY, _GENERATION)
            pipe.hgetall(TOPIC_IDS_KEY)
            replies = await pipe.execute(raise_on_error=False)
        meta_raw, offsets_raw, sentinel, topic_ids_raw = replies
        wrong = [r for r in replies if isinstance(r, Exception)]
        if any(not isinstance(r, ResponseError) for r in wrong):
            raise next(r for r in wrong if not isinstance(r, ResponseError))
        if wrong:  # WRONGTYPE: a bookkeeping key was written over; rebuild, do not loop
            return StoreState(run_id=run_id, meta={}, offsets={}, wrong_type=True)
        return StoreState(
            run_id=run_id,
            meta={k.decode(): v.decode() for k, v in meta_raw.items()},
            offsets={k.decode(): int(v) for k, v in offsets_raw.items()},
            sentinel=sentinel.decode() if sentinel is not None else None,
            topic_ids={k.decode(): v.decode() for k, v in topic_ids_raw.items()},
        )

    @_store_errors
    async def record_topic_ids(self, ids: Mapping[str, str]) -> None:
        """Remember the topic IDs of the view being written (served or being rebuilt)."""
        if ids:
            async with self._lock:
                await self._target.hset(TOPIC_IDS_KEY, mapping=_fields(ids))

    @_store_errors
    async def discard_spare(self) -> int:
        """Free whatever the spare database holds; returns how many keys it had.

        When the served view is resumed, the spare can only hold leftovers: the old view of a
        hydrator that died between ``SWAPDB`` and its ``FLUSHDB``, or a rebuild it never
        finished. Either would keep a whole copy's worth of ``maxmemory`` for nothing.
        """
        async with self._lock:
            keys = int(await self._spare.dbsize())
            if keys:
                await self._spare.flushdb(asynchronous=True)
            return keys

    @_store_errors
    async def begin_rebuild(self, *, resume: bool = True) -> StoreState | None:
        """Direct every following batch into the spare database, which starts empty — or,
        with ``resume``, holds a rebuild this same Redis process has not finished.

        A bootstrap longer than the startup probe allows gets the hydrator restarted; it must
        not start over each time. The spare database carries a mark naming the Redis
        ``run_id`` it is built in, and its batches store their offsets last, so a hydrator
        that died mid-rebuild left a consistent prefix of each partition: the state returned
        here, to continue from. A rebuild that had writes refused is not resumable (the
        refused writes lived in the dead process), and neither is a Redis that restarted.
        """
        assert self._run_id is not None, "inspect() first"
        async with self._lock:
            self._target = self._spare
            if resume:
                async with self._spare.pipeline(transaction=True) as pipe:
                    pipe.hgetall(self.metadata_key)
                    pipe.hgetall(self.offsets_key)
                    pipe.hgetall(TOPIC_IDS_KEY)
                    replies = await pipe.execute(raise_on_error=False)
                if not any(isinstance(r, Exception) for r in replies):
                    meta_raw, offsets_raw, topic_ids_raw = replies
                    mark = meta_raw.get(REBUILD_MARK.encode(), b"").decode()
                    if mark == self._run_id and offsets_raw:
                        return StoreState(
                            run_id=self._run_id,
                            meta={k.decode(): v.decode() for k, v in meta_raw.items()},
                            offsets={k.decode(): int(v) for k, v in offsets_raw.items()},
                            topic_ids={k.decode(): v.decode() for k, v in topic_ids_raw.items()},
                        )
            await self._spare.flushdb(asynchronous=True)
            await self._spare.hset(self.metadata_key, REBUILD_MARK, self._run_id)
            return None

    @_store_errors
    async def carry_over(self, *, prefix: str, binding: str) -> int:
        """Copy the served keys of one binding into the spare database; returns how many.

        Its keys are those under ``prefix``, and its table indexes (Debezium truncates need
        them to find the table's rows), which live in the hydrator's namespace.

        A rebuild forced by one binding (say, its stored offset fell out of the topic's
        retention) must not drop the other bindings' keys: a ``startFrom: latest`` binding
        could never read them again. Prefixes of one Pod never overlap (the config refuses
        it), so a prefix names exactly one binding's keys. ``COPY`` runs inside Redis; only
        key names cross the socket, a page of ``SCAN`` at a time.
        """
        assert self._target is self._spare, "begin_rebuild() first"
        copied = 0
        reserved = RESERVED_PREFIX.encode()
        data = _glob_escape(prefix.encode()) + b"*"
        indexes = _glob_escape(table_index_key(binding=binding, table="")) + b"*"
        async with self._lock:
            for pattern, is_data in ((data, True), (indexes, False)):
                async for keys in _scan_pages(self._served, pattern=pattern):
                    own = [k for k in keys if not (is_data and k.startswith(reserved))]
                    if not own:
                        continue
                    async with self._served.pipeline(transaction=False) as pipe:
                        for key in own:
                            pipe.execute_command("COPY", key, key, "DB", self.spare_db, "REPLACE")
                        copied += sum(1 for done in await pipe.execute() if done)
        return copied

    @_store_errors
    async def complete_rebuild(
        self,
        *,
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        generation: str,
        complete: bool = True,
    ) -> None:
        """Publish the rebuilt view: metadata and the swap in one transaction.

        An incomplete view (Redis refused writes) is published with ``hydrated`` 0, so that a
        restarted hydrator rebuilds it rather than resuming a view with holes.
        """
        assert self._run_id is not None, "inspect() first"
        fields = _fields(
            {
                **meta,
                "hydrated": 1 if complete else 0,
                "complete": 1 if complete else 0,
                "run_id": self._run_id,
                "generation": generation,
                "built_at_ms": int(time.time() * 1000),
            }
        )
        async with self._lock:
            try:
                async with self._spare.pipeline(transaction=True) as pipe:
                    if offsets:
                        pipe.hset(self.offsets_key, mapping=_fields(offsets))
                    pipe.hset(self.metadata_key, mapping=fields)
                    pipe.hdel(self.metadata_key, REBUILD_MARK)
                    pipe.hset(SENTINEL_KEY, _GENERATION, generation)
                    pipe.swapdb(0, self.spare_db)
                    await pipe.execute()
            except OutOfMemoryError:
                # Full (only an incomplete view gets here): swap first, free the old view,
                # then write the bookkeeping. Until it is written, database 0 has no
                # ``hydrated=1``, so a crash in between means a rebuild, never a resume.
                await self._spare.swapdb(0, self.spare_db)
                await self._spare.flushdb()
                async with self._served.pipeline(transaction=True) as pipe:
                    if offsets:
                        pipe.hset(self.offsets_key, mapping=_fields(offsets))
                    pipe.hset(self.metadata_key, mapping=fields)
                    pipe.hdel(self.metadata_key, REBUILD_MARK)
                    pipe.hset(SENTINEL_KEY, _GENERATION, generation)
                    await pipe.execute()
            self._target = self._served
            # The old view now sits in the spare database; free it off the main thread.
            await self._spare.flushdb(asynchronous=True)

    @_store_errors
    async def apply(
        self,
        *,
        sets: Mapping[bytes, bytes],
        deletes: Iterable[bytes],
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        notify: tuple[str, bytes] | Callable[[], tuple[str, bytes]] | None = None,
        commands: Sequence[Sequence[EncodableT]] = (),
    ) -> ApplyResult:
        """Write one batch, its offsets and metadata atomically (one ``MULTI/EXEC``).

        ``notify`` is a ``(channel, message)`` published in the same transaction, on the
        served view only (see :mod:`sidecar_hydrator.changes`); a callable returning one is
        called only then (a message of a rebuild's batch is never built). ``commands`` (the batch's
        bookkeeping, see :attr:`Batch.commands`) run first.

        Under ``noeviction`` a full Redis refuses the whole transaction (writes are checked
        when queued). Deletes are still allowed then and only free memory, so they are applied
        on their own, after removing ``hydrated`` from the metadata (``HDEL`` is allowed
        too): from then on neither the app nor a restarted hydrator takes the view
        for complete, even though the offsets a later batch stores go past the refused keys.
        The refused writes are returned for the caller to retry.
        """
        deletes = list(deletes)
        async with self._lock:
            if self._target is not self._served:
                return await self._apply_unseen(
                    sets=sets, deletes=deletes, offsets=offsets, meta=meta, commands=commands
                )
            queued: list[Sequence[EncodableT]] = list(commands)
            if deletes:
                queued.append(("UNLINK", *deletes))
            if sets:
                queued.append(("MSET", *itertools.chain.from_iterable(sets.items())))
            if offsets:
                queued.append(("HSET", self.offsets_key, *_pairs(offsets)))
            if meta:
                queued.append(("HSET", self.metadata_key, *_pairs(meta)))
            if notify is not None:
                queued.append(("PUBLISH", *(notify() if callable(notify) else notify)))
            try:
                await _transaction(self._target, queued)
            except OutOfMemoryError:
                pass
            else:
                return ApplyResult(applied=len(sets) + len(deletes), refused={})
            # Not a transaction: a full Redis refuses every command queued in MULTI, even
            # the ones that only free memory.
            async with self._target.pipeline(transaction=False) as pipe:
                pipe.hdel(self.metadata_key, "hydrated", "complete")
                if deletes:
                    pipe.unlink(*deletes)
                await pipe.execute()
            if commands:
                # A truncate only frees memory, so it runs on a full Redis too. Index entries
                # of refused keys may get in: a member whose key is missing costs nothing.
                await _run_allowing_oom(self._target, commands)
        return ApplyResult(applied=len(deletes), refused=dict(sets))

    async def _apply_unseen(
        self,
        *,
        sets: Mapping[bytes, bytes],
        deletes: list[bytes],
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        commands: Sequence[Sequence[EncodableT]],
    ) -> ApplyResult:
        """Write a batch into the spare database, which no reader sees until the swap.

        No transaction is needed there, and none is wanted: Redis runs a ``MULTI/EXEC`` as one
        step, so a 5000-key bootstrap batch would hold the app's reads of the served view for
        milliseconds. Small ``MSET`` chunks in a plain pipeline let those reads in between.
        The offsets go last, so a crash mid-batch only means re-reading records (every write
        is idempotent: last write per key wins).
        """
        items = list(sets.items())
        async with self._target.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            for start in range(0, len(deletes), UNSEEN_CHUNK_KEYS):
                pipe.unlink(*deletes[start : start + UNSEEN_CHUNK_KEYS])
            chunks = [
                items[start : start + UNSEEN_CHUNK_KEYS]
                for start in range(0, len(items), UNSEEN_CHUNK_KEYS)
            ]
            for chunk in chunks:
                # MSET's arguments straight from the pairs: redis-py's mset() copies them
                # through a dict and a Python loop first.
                pipe.execute_command("MSET", *itertools.chain.from_iterable(chunk))
            results = await pipe.execute(raise_on_error=False)
        failures = [r for r in results if isinstance(r, Exception)]
        refused: dict[bytes, bytes] = {}
        for chunk, result in zip(chunks, results[len(results) - len(chunks) :], strict=True):
            if isinstance(result, OutOfMemoryError):
                refused.update(chunk)
        if any(not isinstance(f, OutOfMemoryError) for f in failures):
            raise next(f for f in failures if not isinstance(f, OutOfMemoryError))
        if refused:
            # The refused writes live only in this process: a rebuild with holes must start
            # over rather than be resumed after a restart (HDEL works on a full Redis).
            await self._target.hdel(self.metadata_key, REBUILD_MARK)
            return ApplyResult(applied=len(deletes) + len(items) - len(refused), refused=refused)
        async with self._target.pipeline(transaction=True) as pipe:
            if offsets:
                pipe.hset(self.offsets_key, mapping=_fields(offsets))
            if meta:
                pipe.hset(self.metadata_key, mapping=_fields(meta))
            await pipe.execute()
        return ApplyResult(applied=len(deletes) + len(items), refused={})

    @_store_errors
    async def heartbeat(
        self, *, fields: Mapping[str, str | int], generation: str | None
    ) -> HeartbeatResult:
        """Check the served view and update the metadata the app reads, in one step.

        The check is cheap (three key look-ups, no scan) and atomic with the write, so
        ``hydrated=1`` never lands on a view that was flushed a moment before. With
        ``generation`` ``None`` (no view of ours is served) the metadata says ``hydrated=0``
        and claims no freshness.
        """
        args: list[EncodableT] = [generation or ""]
        for name, value in fields.items():
            args += [name, value]
        intact, error = await self._heartbeat_script(
            keys=[SENTINEL_KEY, self.metadata_key, self.offsets_key], args=args
        )
        message = error.decode() if isinstance(error, bytes) else str(error)
        if message and not message.startswith("OOM"):
            raise ResponseError(message)
        return HeartbeatResult(
            intact=generation is not None and bool(intact), full=message.startswith("OOM")
        )

    @_store_errors
    async def used_memory(self) -> int:
        info = await self._served.info("memory")
        return int(info["used_memory"])

    async def memory_usage(self) -> tuple[int, int]:
        """(used_memory, maxmemory) from one INFO: dashboards plot one against the other."""
        info = await self._served.info("memory")
        return int(info["used_memory"]), int(info["maxmemory"])

    async def close(self) -> None:
        await self._served.aclose()
        await self._spare.aclose()


_MULTI: Final = hiredis.pack_command(("MULTI",))
_EXEC: Final = hiredis.pack_command(("EXEC",))


async def _transaction(client: Redis, commands: Sequence[Sequence[EncodableT]]) -> list[Any]:
    """``MULTI``, ``commands``, ``EXEC`` on one connection, sent in one write; the replies of
    ``EXEC``. Raises as redis-py's transaction pipeline does: the first command Redis refused
    to queue (``OutOfMemoryError`` when full: nothing ran), else the first that failed.

    Every live batch is one of these, and the batch is visible only once it ran: redis-py's
    pipeline (its command stack, per-reply callbacks, several event-loop passes) spent twice
    the CPU of this on a three-key batch, on the path of every record to the app.
    """
    pool = client.connection_pool
    # A pooled connection: a new one passes the run_id check of ``Store._on_connect``.
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        packed = [_MULTI, *(hiredis.pack_command(cast(Any, tuple(c))) for c in commands), _EXEC]
        await connection.send_packed_command(packed, check_health=False)
        refused: ResponseError | None = None
        for _ in range(len(commands) + 1):  # +OK for MULTI, then +QUEUED or an error each
            try:
                await connection.read_response(disable_decoding=True)
            except ResponseError as exc:
                refused = refused or exc
        try:
            replies = await connection.read_response(disable_decoding=True)
        except ExecAbortError as exc:
            raise (refused or exc) from exc
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return list(replies)
    except BaseException:
        # Replies may be left unread: the connection must not serve another command.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


def _pairs(mapping: Mapping[str, str | int]) -> Iterable[str | int]:
    """A mapping as ``HSET``'s field/value arguments."""
    return itertools.chain.from_iterable(mapping.items())


async def _run_allowing_oom(client: Redis, commands: Sequence[Sequence[EncodableT]]) -> None:
    """Run ``commands`` one by one, skipping those a full Redis refuses; raise other errors."""
    async with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        results = await pipe.execute(raise_on_error=False)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, OutOfMemoryError):
            raise result


class PackedConnection(UnixDomainSocketConnection):
    """Packs commands in C (hiredis) instead of redis-py's Python loop: a bootstrap batch is
    one MSET of 10,000 arguments, and packing them in Python took longer than Redis took to
    execute them."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])  # "CLIENT SETINFO" -> "CLIENT", "SETINFO"
        return [hiredis.pack_command(cast(Any, args))]


def parse_run_id(info: bytes | str) -> str:
    """The ``run_id`` line of an ``INFO server`` reply."""
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:") :].strip()
    raise RedisError("INFO server has no run_id")


async def _scan_pages(client: Redis, *, pattern: bytes) -> AsyncIterator[list[bytes]]:
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor=cursor, match=pattern, count=UNSEEN_CHUNK_KEYS)
        if keys:
            yield [k if isinstance(k, bytes) else k.encode() for k in keys]
        if cursor == 0:
            return


def _glob_escape(text: bytes) -> bytes:
    """``text`` matched literally by a Redis glob (``SCAN MATCH``)."""
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _fields(mapping: Mapping[str, str | int]) -> dict[FieldT, EncodableT]:
    return {k: v for k, v in mapping.items()}
