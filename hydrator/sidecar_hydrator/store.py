"""The Pod's Redis, as the hydrator writes it: one transaction per batch, offsets with the data.

Layout (all in database 0, the one the app reads):

- the app's keys, as the bindings map them;
- ``offsets_key``: a hash ``<binding>/<topic>/<partition>`` -> next offset to read, written in
  the same ``MULTI/EXEC`` as the data it accounts for, so a restarted hydrator resumes exactly;
- ``metadata_key``: a hash the app can read in the same round trip as its data
  (``hydrated``, ``run_id``, ``fresh_as_of_ms``, ``staleness_ms``, ``last_event_ms``, ...).

Why the connection hook: redis-py reconnects transparently, so after the Redis container
restarts (empty — it has no persistence) a write could land in the fresh instance and store
offsets that claim data which is not there. Every new connection therefore checks the server's
``run_id`` against the one the view was built in and refuses with :class:`DataLost`; no write
ever reaches a Redis the hydrator has not inspected.

A rebuild is written into ``spare_db`` and published with ``SWAPDB``, so readers see the old
view (or an empty one after a restart) until the new one is complete, never a half-built one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.typing import EncodableT, FieldT

from sidecar_hydrator.aio import sleep_or_stop

logger = logging.getLogger(__name__)

LossReason = Literal["empty", "run_id_changed", "offsets_missing", "not_hydrated"]


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

    def loss(self) -> LossReason | None:
        """Why the served view cannot be resumed, or ``None`` when it can.

        A Redis restart shows as an empty meta hash (no persistence) and, should persistence
        ever restore one, as a ``run_id`` other than the one the view was built in.
        """
        if not self.meta:
            return "empty"
        if self.meta.get("hydrated") != "1":
            return "not_hydrated"
        if self.meta.get("run_id") != self.run_id:
            return "run_id_changed"
        if not self.offsets:
            return "offsets_missing"
        return None


#: Keys per MSET while writing the spare database: small enough that a reader of the served
#: view waits at most a fraction of a millisecond behind one.
UNSEEN_CHUNK_KEYS = 500


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    #: Keys whose write Redis refused because ``maxmemory`` was reached (``noeviction``).
    oom_rejected: int


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
        self._target = self._served
        #: Serialises batch writes with the swap: a batch meant for the spare database must
        #: not land after ``SWAPDB`` (it would be flushed with the old view).
        self._lock = asyncio.Lock()

    @property
    def run_id(self) -> str | None:
        return self._run_id

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

    async def inspect(self) -> StoreState:
        """Read what database 0 holds, and adopt the current server as the one to write to."""
        self._run_id = None
        await self._served.connection_pool.disconnect()
        await self._spare.connection_pool.disconnect()
        info = await self._served.info("server")
        run_id = str(info["run_id"])
        self._run_id = run_id
        async with self._served.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.metadata_key)
            pipe.hgetall(self.offsets_key)
            meta_raw, offsets_raw = await pipe.execute()
        return StoreState(
            run_id=run_id,
            meta={k.decode(): v.decode() for k, v in meta_raw.items()},
            offsets={k.decode(): int(v) for k, v in offsets_raw.items()},
        )

    async def begin_rebuild(self) -> None:
        """Empty the spare database and direct every following batch into it."""
        async with self._lock:
            await self._spare.flushdb(asynchronous=True)
            self._target = self._spare

    async def complete_rebuild(
        self, *, offsets: Mapping[str, int], meta: Mapping[str, str | int], complete: bool = True
    ) -> None:
        """Publish the rebuilt view: metadata and the swap in one transaction.

        An incomplete view (Redis refused writes) is published with ``hydrated`` 0, so that a
        restarted hydrator rebuilds it rather than resuming a view with holes.
        """
        assert self._run_id is not None, "inspect() first"
        async with self._lock:
            async with self._spare.pipeline(transaction=True) as pipe:
                if offsets:
                    pipe.hset(self.offsets_key, mapping=_fields(offsets))
                pipe.hset(
                    self.metadata_key,
                    mapping=_fields(
                        {
                            **meta,
                            "hydrated": 1 if complete else 0,
                            "run_id": self._run_id,
                            "built_at_ms": int(time.time() * 1000),
                        }
                    ),
                )
                pipe.swapdb(0, self.spare_db)
                await pipe.execute()
            self._target = self._served
            # The old view now sits in the spare database; free it off the main thread.
            await self._spare.flushdb(asynchronous=True)

    async def apply(
        self,
        *,
        sets: Mapping[bytes, bytes],
        deletes: Iterable[bytes],
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        notify: tuple[str, bytes] | None = None,
    ) -> ApplyResult:
        """Write one batch, its offsets and metadata atomically (one ``MULTI/EXEC``).

        ``notify`` is a ``(channel, message)`` published in the same transaction, on the
        served view only (see :mod:`sidecar_hydrator.changes`).

        Under ``noeviction`` a full Redis refuses the whole transaction (writes are checked
        when queued). Deletes are still allowed then and only free memory, so they are applied
        on their own; the refused keys are reported, the stored offsets stay where they were
        (a restarted hydrator reads those records again).
        """
        deletes = list(deletes)
        async with self._lock:
            if self._target is not self._served:
                return await self._apply_unseen(
                    sets=sets, deletes=deletes, offsets=offsets, meta=meta
                )
            async with self._target.pipeline(transaction=True) as pipe:
                if deletes:
                    pipe.unlink(*deletes)
                if sets:
                    pipe.mset(dict(sets))
                if offsets:
                    pipe.hset(self.offsets_key, mapping=_fields(offsets))
                if meta:
                    pipe.hset(self.metadata_key, mapping=_fields(meta))
                if notify is not None:
                    pipe.publish(*notify)
                try:
                    await pipe.execute()
                except OutOfMemoryError:
                    pass
                else:
                    return ApplyResult(applied=len(sets) + len(deletes), oom_rejected=0)
            if deletes:
                await self._target.unlink(*deletes)
        return ApplyResult(applied=len(deletes), oom_rejected=len(sets))

    async def _apply_unseen(
        self,
        *,
        sets: Mapping[bytes, bytes],
        deletes: list[bytes],
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
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
            for start in range(0, len(deletes), UNSEEN_CHUNK_KEYS):
                pipe.unlink(*deletes[start : start + UNSEEN_CHUNK_KEYS])
            chunks = [
                dict(items[start : start + UNSEEN_CHUNK_KEYS])
                for start in range(0, len(items), UNSEEN_CHUNK_KEYS)
            ]
            for chunk in chunks:
                pipe.mset(chunk)
            results = await pipe.execute(raise_on_error=False)
        failures = [r for r in results if isinstance(r, Exception)]
        rejected = sum(
            len(chunk)
            for chunk, result in zip(chunks, results[len(results) - len(chunks) :], strict=True)
            if isinstance(result, OutOfMemoryError)
        )
        if any(not isinstance(f, OutOfMemoryError) for f in failures):
            raise next(f for f in failures if not isinstance(f, OutOfMemoryError))
        if rejected:
            return ApplyResult(applied=len(deletes) + len(items) - rejected, oom_rejected=rejected)
        async with self._target.pipeline(transaction=True) as pipe:
            if offsets:
                pipe.hset(self.offsets_key, mapping=_fields(offsets))
            if meta:
                pipe.hset(self.metadata_key, mapping=_fields(meta))
            await pipe.execute()
        return ApplyResult(applied=len(deletes) + len(items), oom_rejected=0)

    async def write_meta(self, fields: Mapping[str, str | int]) -> None:
        """Update metadata the app reads (freshness) outside of any batch."""
        await self._served.hset(self.metadata_key, mapping=_fields(fields))

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


def _fields(mapping: Mapping[str, str | int]) -> dict[FieldT, EncodableT]:
    return {k: v for k, v in mapping.items()}
