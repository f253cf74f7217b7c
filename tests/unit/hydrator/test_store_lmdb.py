"""The LMDB store on real LMDB files (a library, no service): what an app's reader then sees.

LMDB allows one open of an environment per process, so each test closes the store before
reading with :class:`sidecar_state_client.LmdbReader`, as the app would in its own process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sidecar_hydrator.batch import TRUNCATE_SCRIPT
from sidecar_hydrator.records import table_index_key
from sidecar_hydrator.store import StoreError
from sidecar_hydrator.store_lmdb import LmdbStore
from sidecar_state_client import LmdbReader, NotHydrated

MIB = 2**20


async def published(path: Path, *, map_size: int = 8 * MIB) -> LmdbStore:
    """A store with an empty view published (generation ``g0``), as after a first bootstrap."""
    store = LmdbStore(path=str(path), map_size=map_size)
    assert await store.wait_ready(stop=asyncio.Event())
    assert (await store.inspect()).loss() == "empty"
    await store.begin_rebuild()
    await store.complete_rebuild(offsets={"b/t/0": 0}, meta={}, generation="g0")
    return store


async def test_nothing_is_readable_before_the_first_view_is_published(tmp_path: Path) -> None:
    store = LmdbStore(path=str(tmp_path), map_size=8 * MIB)
    await store.wait_ready(stop=asyncio.Event())
    await store.inspect()
    await store.begin_rebuild()
    await store.apply(sets={b"k": b"v"}, deletes=[], offsets={"b/t/0": 1}, meta={})
    await store.close()

    with pytest.raises(NotHydrated, match="no view published"):
        LmdbReader(tmp_path)


async def test_a_published_view_resumes_with_its_offsets_and_generation(tmp_path: Path) -> None:
    store = await published(tmp_path)
    await store.apply(sets={b"flag:a": b"1"}, deletes=[], offsets={"b/t/0": 7}, meta={"x": 1})
    await store.close()

    again = LmdbStore(path=str(tmp_path), map_size=8 * MIB)
    state = await again.inspect()
    await again.close()
    assert state.loss() is None
    assert state.offsets == {"b/t/0": 7}
    assert state.generation == "g0"
    reader = LmdbReader(tmp_path)
    assert reader.get(b"flag:a") == b"1"
    assert reader.meta()["hydrated"] == "1"
    reader.close()


async def test_files_let_readers_take_a_lock_slot_but_not_change_the_data(tmp_path: Path) -> None:
    store = await published(tmp_path)
    await store.close()

    current = tmp_path / "current"
    assert (current / "lock.mdb").stat().st_mode & 0o777 == 0o660
    assert (current / "data.mdb").stat().st_mode & 0o777 == 0o640


async def test_a_full_map_refuses_the_sets_applies_the_deletes_and_drops_hydrated(
    tmp_path: Path,
) -> None:
    store = await published(tmp_path, map_size=MIB)
    small = {b"flag:k%04d" % i: b"v" for i in range(100)}
    assert (await store.apply(sets=small, deletes=[], offsets={}, meta={})).refused == {}
    big = {b"flag:big%04d" % i: b"x" * 3000 for i in range(400)}

    result = await store.apply(
        sets=big, deletes=[b"flag:k0000", b"flag:k0001"], offsets={"b/t/0": 9}, meta={}
    )

    assert result.refused == big
    assert result.applied == 2
    state = await store.inspect()
    assert state.offsets == {"b/t/0": 0}  # a refused batch does not advance the offsets
    await store.close()
    reader = LmdbReader(tmp_path)
    assert reader.get_many([b"flag:k0000", b"flag:k0001", b"flag:k0002"]) == [None, None, b"v"]
    assert reader.get(b"flag:big0000") is None
    assert "hydrated" not in reader.meta()
    reader.close()


async def test_a_rebuild_is_invisible_until_published_and_then_replaces_the_view(
    tmp_path: Path,
) -> None:
    store = await published(tmp_path)
    await store.apply(sets={b"a:1": b"old", b"b:1": b"kept"}, deletes=[], offsets={}, meta={})
    old_dir = os.readlink(tmp_path / "current")
    await store.inspect()
    await store.begin_rebuild()
    assert await store.carry_over(prefix="b:", binding="b") == 1
    await store.apply(sets={b"a:2": b"new"}, deletes=[], offsets={"a/t/0": 1}, meta={})
    assert os.readlink(tmp_path / "current") == old_dir  # still the old view

    await store.complete_rebuild(offsets={"a/t/0": 1}, meta={}, generation="g1")
    await store.close()

    assert os.readlink(tmp_path / "current") != old_dir
    assert not (tmp_path / old_dir).exists()
    reader = LmdbReader(tmp_path)
    assert reader.get_many([b"a:1", b"a:2", b"b:1"]) == [None, b"new", b"kept"]
    assert reader.meta()["generation"] == "g1"
    reader.close()


async def test_debezium_bookkeeping_runs_in_lmdb_and_a_truncate_empties_the_table(
    tmp_path: Path,
) -> None:
    store = await published(tmp_path)
    index = table_index_key(binding="b", table="public.users")
    rows = {b"u:1": b"{}", b"u:2": b"{}"}
    await store.apply(sets=rows, deletes=[], offsets={}, meta={}, commands=[("SADD", index, *rows)])
    await store.apply(
        sets={b"u:3": b"{}"}, deletes=[], offsets={}, meta={},
        commands=[("EVAL", TRUNCATE_SCRIPT, 1, index), ("SADD", index, b"u:3")],
    )  # fmt: skip
    await store.close()

    reader = LmdbReader(tmp_path)
    assert reader.get_many([b"u:1", b"u:2", b"u:3"]) == [None, None, b"{}"]
    reader.close()


async def test_an_unknown_redis_command_is_a_store_error_not_a_silent_skip(tmp_path: Path) -> None:
    store = await published(tmp_path)
    with pytest.raises(StoreError, match="cannot run the Redis command 'HSET'"):
        await store.apply(sets={}, deletes=[], offsets={}, meta={}, commands=[("HSET", b"k")])
    await store.close()


async def test_the_heartbeat_checks_the_generation_and_claims_nothing_on_a_stranger(
    tmp_path: Path,
) -> None:
    store = await published(tmp_path)
    fields = {"hydrated": 1, "complete": 1, "staleness_ms": 5, "fresh_as_of_ms": 1}
    assert (await store.heartbeat(fields=fields, generation="g0")).intact
    beat = await store.heartbeat(fields=fields, generation="other")
    await store.close()

    assert not beat.intact
    meta = LmdbReader(tmp_path).meta()
    assert meta["hydrated"] == "0" and meta["complete"] == "0"
    assert "staleness_ms" not in meta and "fresh_as_of_ms" not in meta


async def test_a_file_left_mostly_empty_is_compacted_into_a_new_environment(
    tmp_path: Path,
) -> None:
    store = await published(tmp_path, map_size=64 * MIB)
    keys = [b"flag:%05d" % i for i in range(12_000)]
    for start in range(0, len(keys), 2000):
        chunk = {k: b"x" * 1000 for k in keys[start : start + 2000]}
        await store.apply(sets=chunk, deletes=[], offsets={}, meta={})
    before = os.readlink(tmp_path / "current")
    size = (tmp_path / "current" / "data.mdb").stat().st_size
    await store.heartbeat(fields={"hydrated": 1}, generation="g0")
    assert store.compactions == 0  # full: nothing to gain

    await store.apply(sets={}, deletes=keys[:11_000], offsets={"b/t/0": 5}, meta={})
    beat = await store.heartbeat(fields={"hydrated": 1}, generation="g0")
    await store.close()

    assert beat.intact and store.compactions == 1
    assert os.readlink(tmp_path / "current") != before
    assert (tmp_path / "current" / "data.mdb").stat().st_size < size / 4
    reader = LmdbReader(tmp_path)
    assert reader.get_many([keys[0], keys[-1]]) == [None, b"x" * 1000]
    assert reader.meta()["generation"] == "g0"
    reader.close()
    resumed = LmdbStore(path=str(tmp_path), map_size=64 * MIB)
    state = await resumed.inspect()
    await resumed.close()
    assert state.loss() is None and state.offsets == {"b/t/0": 5}
