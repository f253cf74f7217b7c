"""The LMDB engine: the view as a memory-mapped file the app reads in its own process.

No store process and no round trip: a look-up is a B-tree walk in shared memory (about two
microseconds from Python), where a Redis ``GET`` pays two process wake-ups.

Layout, under ``lmdb_path`` (the memory-backed volume shared with the app)::

    current -> view-<id>          a symlink: the served environment
    view-<id>/data.mdb, lock.mdb  one LMDB environment, named databases:
        data     the app's keys (``prefix + key``), exactly as Redis would hold them
        meta     the metadata Redis has in ``sidecar-state:meta`` (``hydrated``, ``complete``,
                 ``staleness_ms``, ``generation``, ...) as keys; plus, under ``offsets/`` and
                 ``topic-ids/``, the hydrator's positions, and ``sentinel``
        index    Debezium table indexes (``DUPSORT``: table index key -> member keys)

**Each batch is one write transaction** with its data, offsets and metadata: atomic like
Redis's ``MULTI/EXEC``, and every reader sees a snapshot (a read transaction) of one commit.

**A rebuild never shows a half view: it is written into a second environment**
(``view-<new id>``) in ordinary batch transactions, while readers keep the served one. Publishing
writes the final metadata into it, renames the ``current`` symlink over to it (atomic), then
writes ``superseded`` into the old environment's ``meta``. Readers check that key in each read
transaction (:mod:`sidecar_state_client`) and reopen ``current`` when it is there; the old
files are unlinked and their memory returns once the last reader has unmapped them. The same
switch compacts: an environment whose file is mostly free pages (LMDB files never shrink) is
copied compactly (``mdb_env_copy2``) into a new one, which is published the same way.
A second environment rather than one long write transaction, because LMDB aborts a whole
transaction on ``MDB_MAP_FULL``: a long one would lose the rebuild at the first full page,
and would keep the served view's metadata (freshness) from being written meanwhile.

**Rules** (found by the prototype; the operator renders the Pod accordingly):

- Readers need write access to ``lock.mdb`` (their reader slot): it is made group-writable
  (the Pod's shared group), ``data.mdb`` only group-readable. A read-only mount makes a reader
  lockless, and it then crashes during a commit.
- The reader table is keyed by PID: the Pod needs ``shareProcessNamespace: true``.
- ``max_readers`` is set here: the hydrator creates every environment, and later openers take
  the lock file's size as it is.
- ``map_size`` (one environment) stays below the volume's ``sizeLimit``, which holds two
  during a rebuild. Never ``writemap``: a page beyond a full tmpfs is a ``SIGBUS``.
- ``MDB_MAP_FULL`` is a full Redis: the batch is refused (its transaction aborted), the
  writes are kept and retried by the feed, the metadata loses ``hydrated``, and the binding's
  status says ``StoreFull`` — the same path as Redis's OOM (:class:`ApplyResult.refused`).
- ``reader_check()`` on every heartbeat frees the slots of readers that died.

LMDB binds a write transaction to its thread; every call here runs on one dedicated thread,
so the event loop never blocks on a commit and no transaction changes threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import lmdb

from sidecar_hydrator.batch import TRUNCATE_SCRIPT, Command
from sidecar_hydrator.records import table_index_key
from sidecar_hydrator.store import (
    REBUILD_MARK,
    ApplyResult,
    HeartbeatResult,
    StoreError,
    StoreState,
)

logger = logging.getLogger(__name__)

CURRENT_LINK = "current"
VIEW_PREFIX = "view-"
DATA_DB = b"data"
META_DB = b"meta"
INDEX_DB = b"index"
#: In ``meta``: written into an environment once another one is published in its place.
SUPERSEDED_KEY = b"superseded"
SENTINEL_KEY = b"sentinel"
OFFSETS_PREFIX = b"offsets/"
TOPIC_IDS_PREFIX = b"topic-ids/"
#: Lock file: the app's readers take slots in it. Data file: the hydrator alone writes it.
LOCK_MODE = 0o660
DATA_MODE = 0o640
#: Compact when the file is at least this big and less than this share of it is in use.
COMPACT_MIN_BYTES = 8 * 1024 * 1024
COMPACT_USED_RATIO = 0.25

#: Deletes per transaction on a full map (see :meth:`LmdbStore.apply`).
FULL_DELETE_CHUNK = 64

_T = TypeVar("_T")


class _Env:
    """One open environment (a ``view-<id>`` directory) and its named databases."""

    def __init__(self, path: Path, *, map_size: int, max_readers: int) -> None:
        self.path = path
        self.id = path.name[len(VIEW_PREFIX) :]
        path.mkdir(mode=0o750, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_readers=max_readers,
            max_dbs=4,
            subdir=True,
            writemap=False,  # never: beyond a full tmpfs a written page is a SIGBUS
            metasync=False,  # memory-backed: there is no disk to sync to
            sync=False,
            mode=LOCK_MODE,
        )
        self.data = self.env.open_db(DATA_DB)
        self.meta = self.env.open_db(META_DB)
        self.index = self.env.open_db(INDEX_DB, dupsort=True)
        os.chmod(path / "lock.mdb", LOCK_MODE)
        os.chmod(path / "data.mdb", DATA_MODE)

    def page_bytes(self) -> tuple[int, int]:
        """(bytes the file spans, bytes in use by the databases)."""
        info, stat = self.env.info(), self.env.stat()
        psize = stat["psize"]
        used = 0
        with self.env.begin() as txn:
            for db in (self.data, self.meta, self.index):
                s = txn.stat(db)
                used += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        used += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return (info["last_pgno"] + 1) * psize, used * psize

    def close(self) -> None:
        self.env.close()


class LmdbStore:
    """The :class:`~sidecar_hydrator.store.ViewStore` of an LMDB Pod (see the module doc)."""

    def __init__(self, *, path: str, map_size: int, max_readers: int = 126) -> None:
        self.root = Path(path)
        self.map_size = map_size
        self.max_readers = max_readers
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb")
        self._served: _Env | None = None
        self._spare: _Env | None = None
        self._target: _Env | None = None
        self._run_id: str | None = None
        self._lock = asyncio.Lock()
        self.compactions = 0

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the LMDB thread; LMDB's errors become :class:`StoreError`."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn)
        except (lmdb.Error, OSError) as exc:
            raise StoreError(str(exc), kind=type(exc).__name__) from exc

    def _open(self, path: Path) -> _Env:
        return _Env(path, map_size=self.map_size, max_readers=self.max_readers)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def spare(self) -> str:
        return "a second LMDB environment"

    # -- the ViewStore API ------------------------------------------------------------------------

    async def wait_ready(self, *, stop: asyncio.Event, max_backoff: float = 1.0) -> bool:
        """There is no store process to wait for: the directory is all it takes."""
        await self._run(lambda: self.root.mkdir(parents=True, exist_ok=True))
        return not stop.is_set()

    async def inspect(self) -> StoreState:
        async with self._lock:
            return await self._run(self._inspect)

    def _inspect(self) -> StoreState:
        self._close_spare()
        link = self.root / CURRENT_LINK
        if self._served is None and link.is_symlink():
            target = self.root / os.readlink(link)
            if (target / "data.mdb").exists():
                self._served = self._open(target)
        self._target = self._served
        if self._served is None:
            self._run_id = ""
            return StoreState(run_id="", meta={}, offsets={})
        self._run_id = self._served.id
        with self._served.env.begin() as txn:
            meta, offsets, topic_ids = _read_meta(txn, self._served.meta)
            sentinel = txn.get(SENTINEL_KEY, db=self._served.meta)
        return StoreState(
            run_id=self._served.id,
            meta=meta,
            offsets=offsets,
            sentinel=sentinel.decode() if sentinel is not None else None,
            topic_ids=topic_ids,
        )

    async def record_topic_ids(self, ids: Mapping[str, str]) -> None:
        if not ids:
            return

        def write() -> None:
            env = self._target
            if env is None:
                return
            with env.env.begin(write=True) as txn:
                for name, value in ids.items():
                    txn.put(TOPIC_IDS_PREFIX + name.encode(), value.encode(), db=env.meta)

        async with self._lock:
            await self._run(write)

    async def discard_spare(self) -> int:
        """Remove environments other than the served one (a rebuild a dead hydrator left,
        an old view whose removal was interrupted); returns how many."""

        def discard() -> int:
            keep = self._served.path.name if self._served is not None else None
            removed = 0
            for entry in self.root.glob(VIEW_PREFIX + "*"):
                if entry.name != keep:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            return removed

        async with self._lock:
            return await self._run(discard)

    async def begin_rebuild(self, *, resume: bool = True) -> StoreState | None:
        """Direct every following batch into a new, empty environment. Never resumed after a
        restart: an LMDB bootstrap runs at hundreds of thousands of keys a second."""

        def begin() -> None:
            self._close_spare()
            for entry in self.root.glob(VIEW_PREFIX + "*"):
                if self._served is None or entry != self._served.path:
                    shutil.rmtree(entry, ignore_errors=True)
            self._spare = self._open(self.root / f"{VIEW_PREFIX}{uuid.uuid4().hex}")
            with self._spare.env.begin(write=True) as txn:
                txn.put(REBUILD_MARK.encode(), self._spare.id.encode(), db=self._spare.meta)
            self._target = self._spare

        async with self._lock:
            await self._run(begin)
        return None

    async def carry_over(self, *, prefix: str, binding: str) -> int:
        """Copy one binding's served keys (and table indexes) into the rebuild."""

        def copy() -> int:
            served, spare = self._served, self._spare
            assert spare is not None, "begin_rebuild() first"
            if served is None:
                return 0
            copied = 0
            with served.env.begin() as src, spare.env.begin(write=True) as dst:
                start = prefix.encode()
                cursor = src.cursor(db=served.data)
                if cursor.set_range(start):
                    for key, value in cursor:
                        if not key.startswith(start):
                            break
                        dst.put(key, value, db=spare.data)
                        copied += 1
                indexes = table_index_key(binding=binding, table="")
                cursor = src.cursor(db=served.index)
                if cursor.set_range(indexes):
                    for key, value in cursor:
                        if not key.startswith(indexes):
                            break
                        dst.put(key, value, db=spare.index)
            return copied

        async with self._lock:
            return await self._run(copy)

    async def complete_rebuild(
        self,
        *,
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        generation: str,
        complete: bool = True,
    ) -> None:
        """Publish the rebuilt environment: final metadata in it, then the symlink switch."""

        def publish() -> None:
            spare = self._spare
            assert spare is not None, "begin_rebuild() first"
            fields = {
                **meta,
                "hydrated": 1 if complete else 0,
                "complete": 1 if complete else 0,
                "run_id": spare.id,
                "generation": generation,
                "built_at_ms": int(time.time() * 1000),
            }
            with spare.env.begin(write=True) as txn:
                _put_offsets(txn, spare, offsets)
                _put_meta(txn, spare, fields)
                txn.delete(REBUILD_MARK.encode(), db=spare.meta)
                txn.put(SENTINEL_KEY, generation.encode(), db=spare.meta)
            self._switch_to(spare)
            self._spare = None

        async with self._lock:
            await self._run(publish)

    def _switch_to(self, new: _Env) -> None:
        """Make ``new`` the served environment; readers of the old one move on by themselves."""
        link = self.root / CURRENT_LINK
        staged = self.root / f".{CURRENT_LINK}-{new.id}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(new.path.name)
        staged.replace(link)  # rename(2): readers resolve the old target or the new one
        old = self._served
        self._served = self._target = new
        self._run_id = new.id
        if old is not None and old.path != new.path:
            try:
                with old.env.begin(write=True) as txn:
                    txn.put(SUPERSEDED_KEY, new.path.name.encode(), db=old.meta)
            except lmdb.MapFullError:
                # No room for one more page: readers notice the switch by the missing
                # files instead (the client reopens when a look-up finds no environment).
                logger.warning("could not mark %s superseded (map full)", old.path.name)
            old.close()
            shutil.rmtree(old.path, ignore_errors=True)

    async def apply(
        self,
        *,
        sets: Mapping[bytes, bytes],
        deletes: Iterable[bytes],
        offsets: Mapping[str, int],
        meta: Mapping[str, str | int],
        notify: tuple[str, bytes] | Callable[[], tuple[str, bytes]] | None = None,
        commands: Sequence[Command] = (),
    ) -> ApplyResult:
        """Write one batch, its offsets and metadata in one write transaction.

        ``notify`` has no LMDB counterpart (there is no channel): apps that derive state
        poll ``meta``'s ``last_apply_ms``. On ``MDB_MAP_FULL`` the transaction is aborted
        (nothing of it is visible); then, as on a full Redis, ``hydrated``/``complete`` are
        removed and the deletes and truncates (which free pages) are applied on their own,
        and the sets are returned as refused for the feed to retry. Should not even those
        fit, the error is raised: the cycle ends and resumes from the stored offsets, which
        this batch did not advance, so no delete is lost.
        """
        deletes = list(deletes)

        def write() -> ApplyResult:
            env = self._target
            if env is None:
                raise lmdb.Error("no environment to write to: inspect() first")
            try:
                with env.env.begin(write=True) as txn:
                    _run_commands(txn, env, commands)
                    for key in deletes:
                        txn.delete(key, db=env.data)
                    if sets:
                        cursor = txn.cursor(db=env.data)
                        cursor.putmulti(sets.items())
                    _put_offsets(txn, env, offsets)
                    _put_meta(txn, env, meta)
                return ApplyResult(applied=len(sets) + len(deletes), refused={})
            except lmdb.MapFullError:
                pass
            # LMDB copies pages on write, so even deletes need free pages: small
            # transactions, each freeing pages the next one can reuse once committed.
            with env.env.begin(write=True) as txn:
                txn.delete(b"hydrated", db=env.meta)
                txn.delete(b"complete", db=env.meta)
                _run_commands(txn, env, commands)
            for start in range(0, len(deletes), FULL_DELETE_CHUNK):
                with env.env.begin(write=True) as txn:
                    for key in deletes[start : start + FULL_DELETE_CHUNK]:
                        txn.delete(key, db=env.data)
            return ApplyResult(applied=len(deletes), refused=dict(sets))

        async with self._lock:
            return await self._run(write)

    async def heartbeat(
        self, *, fields: Mapping[str, str | int], generation: str | None
    ) -> HeartbeatResult:
        """Check the served view's sentinel and write the metadata in one transaction; free
        the slots of dead readers; compact a mostly empty file."""

        def beat() -> HeartbeatResult:
            env = self._served
            if env is None:
                return HeartbeatResult(intact=False, full=False)
            env.env.reader_check()
            full = False
            # No one else writes: the check in a read transaction, then the write, is atomic.
            with env.env.begin() as txn:
                sentinel = txn.get(SENTINEL_KEY, db=env.meta)
            intact = generation is not None and sentinel == generation.encode()
            written: dict[str, str | int] = {}
            for name, value in fields.items():
                if not intact and name in ("fresh_as_of_ms", "staleness_ms"):
                    continue
                written[name] = 0 if not intact and name in ("hydrated", "complete") else value
            try:
                with env.env.begin(write=True) as txn:
                    if not intact:
                        txn.delete(b"fresh_as_of_ms", db=env.meta)
                        txn.delete(b"staleness_ms", db=env.meta)
                    _put_meta(txn, env, written)
            except lmdb.MapFullError:
                full = True
            if intact and self._spare is None:
                self._maybe_compact(env)
            return HeartbeatResult(intact=intact, full=full)

        async with self._lock:
            return await self._run(beat)

    def _maybe_compact(self, env: _Env) -> None:
        """Copy a mostly empty environment compactly and publish the copy (see module doc).

        Runs under the store's lock on the LMDB thread, so no batch commits between the copy's
        snapshot and the switch."""
        spanned, used = env.page_bytes()
        if spanned < COMPACT_MIN_BYTES or used > spanned * COMPACT_USED_RATIO:
            return
        copy_path = self.root / f"{VIEW_PREFIX}{uuid.uuid4().hex}"
        copy_path.mkdir(mode=0o750)
        try:
            env.env.copy(str(copy_path), compact=True)
            new = self._open(copy_path)
        except lmdb.Error:
            shutil.rmtree(copy_path, ignore_errors=True)
            raise
        with new.env.begin(write=True) as txn:
            txn.put(b"run_id", new.id.encode(), db=new.meta)
        logger.info(
            "compacted the view: %d of %d bytes in use, copied to %s",
            used,
            spanned,
            new.path.name,
        )
        self._switch_to(new)
        self.compactions += 1

    async def memory_usage(self) -> tuple[int, int]:
        """(bytes the served file spans, its map size): what a full map is measured against."""

        def usage() -> tuple[int, int]:
            if self._served is None:
                return 0, self.map_size
            return self._served.page_bytes()[0], self.map_size

        return await self._run(usage)

    async def close(self) -> None:
        def close() -> None:
            self._close_spare()
            if self._served is not None:
                self._served.close()
                self._served = None

        try:
            await self._run(close)
        finally:
            self._thread.shutdown(wait=False)

    def _close_spare(self) -> None:
        if self._spare is not None:
            self._spare.close()
            shutil.rmtree(self._spare.path, ignore_errors=True)
            self._spare = None


def _read_meta(
    txn: lmdb.Transaction, db: lmdb._Database
) -> tuple[dict[str, str], dict[str, int], dict[str, str]]:
    meta: dict[str, str] = {}
    offsets: dict[str, int] = {}
    topic_ids: dict[str, str] = {}
    for raw_key, raw_value in txn.cursor(db=db):
        key, value = bytes(raw_key), bytes(raw_value)
        if key.startswith(OFFSETS_PREFIX):
            offsets[key[len(OFFSETS_PREFIX) :].decode()] = int(value)
        elif key.startswith(TOPIC_IDS_PREFIX):
            topic_ids[key[len(TOPIC_IDS_PREFIX) :].decode()] = value.decode()
        elif key not in (SENTINEL_KEY, SUPERSEDED_KEY):
            meta[key.decode()] = value.decode()
    return meta, offsets, topic_ids


def _put_meta(txn: lmdb.Transaction, env: _Env, fields: Mapping[str, str | int]) -> None:
    for name, value in fields.items():
        txn.put(name.encode(), str(value).encode(), db=env.meta)


def _put_offsets(txn: lmdb.Transaction, env: _Env, offsets: Mapping[str, int]) -> None:
    for name, position in offsets.items():
        txn.put(OFFSETS_PREFIX + name.encode(), str(position).encode(), db=env.meta)


def _as_bytes(value: bytes | str | int) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _run_commands(txn: lmdb.Transaction, env: _Env, commands: Sequence[Command]) -> None:
    """The batch's bookkeeping (:attr:`Batch.commands`, written for Redis) done in LMDB:
    a truncate deletes every key of a table index, ``SADD``/``SREM`` maintain the index."""
    for command in commands:
        name, *args = command
        if name == "EVAL" and args[0] == TRUNCATE_SCRIPT:
            index = _as_bytes(args[2])
            cursor = txn.cursor(db=env.index)
            if cursor.set_key(index):
                for member in cursor.iternext_dup():
                    txn.delete(bytes(member), db=env.data)
                txn.delete(index, db=env.index)
        elif name in ("SADD", "SREM"):
            index_key = _as_bytes(args[0])
            for arg in args[1:]:
                if name == "SADD":
                    txn.put(index_key, _as_bytes(arg), db=env.index, dupdata=True)
                else:
                    txn.delete(index_key, _as_bytes(arg), db=env.index)
        else:
            raise lmdb.Error(f"the LMDB store cannot run the Redis command {name!r}")
