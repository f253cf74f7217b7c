"""Read a sidecar-state Pod's view from the app: one API over both store engines.

    from sidecar_state_client import open_reader

    reader = open_reader()              # from the env the operator injects
    reader.get(b"flag:checkout")        # -> bytes | None
    reader.get_many([b"flag:a", b"flag:b"])
    reader.meta()["hydrated"]           # "1" when the view is complete

With ``spec.store.engine: lmdb`` (``SIDECAR_STATE_LMDB_PATH`` is set) it maps the LMDB
environment the hydrator writes and reads it in this process (about two microseconds a
look-up); otherwise it talks to the Pod's Redis over ``SIDECAR_STATE_SOCKET``. An app switches
engines with the binding's setting, not with code.

LMDB rules this reader keeps for you (see the README, "The LMDB engine"):

- every look-up is one short read transaction: a long one would pin old pages and make the
  file grow while the hydrator writes;
- the environment is opened read-only with locking on (the reader takes a slot in
  ``lock.mdb``, which must be writable for it; the volume's mount must not be read-only);
- when the hydrator publishes a rebuilt or compacted view (a new environment behind the
  ``current`` symlink) the old one says ``superseded``: the reader reopens and reads again.
- open a reader after ``fork()``, never before: LMDB handles do not survive a fork.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

LMDB_PATH_ENV = "SIDECAR_STATE_LMDB_PATH"
SOCKET_ENV = "SIDECAR_STATE_SOCKET"
DEFAULT_SOCKET = "/var/run/sidecar-state/redis.sock"
METADATA_KEY = "sidecar-state:meta"

CURRENT_LINK = "current"
_SUPERSEDED = b"superseded"
#: ``meta`` keys that are the hydrator's bookkeeping, not metadata (Redis has them elsewhere).
_BOOKKEEPING = (b"offsets/", b"topic-ids/", b"sentinel", _SUPERSEDED)

__all__ = ["LmdbReader", "NotHydrated", "Reader", "RedisReader", "open_reader"]


class NotHydrated(RuntimeError):
    """No view has been published yet (the hydrator is still bootstrapping)."""


class Reader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Iterable[bytes]) -> list[bytes | None]: ...

    def meta(self) -> dict[str, str]: ...

    def close(self) -> None: ...


class LmdbReader:
    """The LMDB engine's reader: look-ups in this process, on a shared memory map."""

    def __init__(self, path: str | os.PathLike[str], *, wait_seconds: float = 0.0) -> None:
        """``path``: ``SIDECAR_STATE_LMDB_PATH``. ``wait_seconds``: how long to wait for a
        first view to be published (0: raise :class:`NotHydrated` at once)."""
        import lmdb

        self._lmdb = lmdb
        self._root = Path(path)
        self._env: lmdb.Environment | None = None
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                self._open()
                return
            except NotHydrated:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _open(self) -> None:
        lmdb = self._lmdb
        if self._env is not None:
            self._env.close()
            self._env = None
        link = self._root / CURRENT_LINK
        failure: Exception | None = None
        for _ in range(20):
            try:
                target = self._root / os.readlink(link)
            except FileNotFoundError:
                raise NotHydrated(
                    f"no view published under {self._root} yet: the hydrator is still "
                    "bootstrapping (with native sidecars the app starts only after it)"
                ) from None
            try:
                # readonly + lock: a slot in lock.mdb; max_readers and map size come from
                # the environment the hydrator created.
                env = lmdb.open(
                    str(target), readonly=True, lock=True, create=False, max_dbs=4, subdir=True
                )
            except lmdb.Error as exc:
                failure = exc  # switched and removed between readlink and open: again
                time.sleep(0.005)
                continue
            # The map as the hydrator sized it: a smaller one (py-lmdb's default is 10 MiB)
            # fails every read with MDB_MAP_RESIZED once the data grows past it.
            env.set_mapsize(0)
            self._env = env
            self._data = env.open_db(b"data", create=False)
            self._meta = env.open_db(b"meta", create=False)
            return
        raise NotHydrated(f"could not open the view under {self._root}: {failure}") from failure

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` (``prefix + key``, as the binding maps it), or ``None``."""
        for _ in range(3):
            assert self._env is not None
            with self._env.begin() as txn:
                if txn.get(_SUPERSEDED, db=self._meta) is None:
                    return txn.get(key, db=self._data)
            self._open()
        raise NotHydrated("the view keeps being replaced; try again")

    def get_many(self, keys: Iterable[bytes]) -> list[bytes | None]:
        """Several values from one snapshot (one read transaction): a consistent set."""
        wanted = list(keys)
        for _ in range(3):
            assert self._env is not None
            with self._env.begin() as txn:
                if txn.get(_SUPERSEDED, db=self._meta) is None:
                    return [txn.get(key, db=self._data) for key in wanted]
            self._open()
        raise NotHydrated("the view keeps being replaced; try again")

    def meta(self) -> dict[str, str]:
        """``hydrated``, ``complete``, ``staleness_ms``, ``fresh_as_of_ms``, ``generation``,
        ... as the Redis engine's ``sidecar-state:meta`` hash has them."""
        for _ in range(3):
            assert self._env is not None
            with self._env.begin() as txn:
                if txn.get(_SUPERSEDED, db=self._meta) is None:
                    return {
                        bytes(k).decode(): bytes(v).decode()
                        for k, v in txn.cursor(db=self._meta)
                        if not bytes(k).startswith(_BOOKKEEPING)
                    }
            self._open()
        raise NotHydrated("the view keeps being replaced; try again")

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class RedisReader:
    """The Redis engine's reader (the default engine): the same API over the Unix socket."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET) -> None:
        import redis

        self._redis = redis.Redis(unix_socket_path=socket_path)

    def get(self, key: bytes) -> bytes | None:
        value = self._redis.get(key)
        return value if isinstance(value, bytes) else None

    def get_many(self, keys: Iterable[bytes]) -> list[bytes | None]:
        wanted = list(keys)
        if not wanted:
            return []
        values = self._redis.mget(wanted)
        return [v if isinstance(v, bytes) else None for v in values]

    def meta(self) -> dict[str, str]:
        raw = self._redis.hgetall(METADATA_KEY)
        assert isinstance(raw, Mapping)
        return {_text(k): _text(v) for k, v in raw.items()}

    def close(self) -> None:
        self._redis.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_reader(
    environ: Mapping[str, str] | None = None, *, wait_seconds: float = 0.0
) -> LmdbReader | RedisReader:
    """The reader for this Pod's engine, from the env the operator injects."""
    env = os.environ if environ is None else environ
    path = env.get(LMDB_PATH_ENV)
    if path:
        return LmdbReader(path, wait_seconds=wait_seconds)
    return RedisReader(env.get(SOCKET_ENV, DEFAULT_SOCKET))
