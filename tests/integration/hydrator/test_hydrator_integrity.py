"""The hydrator's own bookkeeping stays its own, and a store that stops working is reported.

What the app reads is the judge: keys, values, ``sidecar-state:meta``, and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.store import Store, StoreError
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config
from tests.integration.hydrator.support import (
    MIB,
    KafkaPod,
    eventually,
    http_status,
    hydrated,
    running_hydrated,
    sample,
    serving_hydrated,
    value_is,
    view,
    view_is,
)

pytestmark = pytest.mark.timeout(60)


async def test_records_keyed_like_the_bookkeeping_are_bad_records_and_change_nothing(
    pod: KafkaPod,
) -> None:
    topic = pod.new_topic()
    await pod.produce(
        topic,
        [
            (b"a", b"1"),
            (b"sidecar-state:offsets", b"overwritten"),
            (b"sidecar-state:meta", b"overwritten"),
            (b"b", b"2"),
        ],
    )
    # The default prefix "" lets record keys reach the hydrator's namespace.
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as hydrator:
        assert await pod.app.type(config.offsets_key) == b"hash"
        assert await pod.app.type(config.metadata_key) == b"hash"
        assert (await pod.app.hgetall(config.metadata_key))[b"hydrated"] == b"1"
        assert sample(hydrator, "bad_records_total", binding="b", kind="reserved_key") == 2
        # A tombstone in the namespace must not delete the bookkeeping either.
        await pod.produce(topic, [(b"sidecar-state:meta", None), (b"c", b"3")])
        await eventually(lambda: value_is(pod.app, b"c", b"3"), what="record after")
        assert await pod.app.exists(config.metadata_key) == 1
        # The batch's bad records are counted once its transaction is answered, which the
        # app's read of "c" can overtake.
        await eventually(
            lambda: _counted(hydrator, kind="reserved_key", count=3), what="the bad tombstone"
        )
        assert hydrator.ready()
    assert await view(pod.app, b"") == {b"a": b"1", b"b": b"2", b"c": b"3"}


async def test_an_apply_loop_that_keeps_failing_turns_readyz_503_logs_once_and_counts(
    pod: KafkaPod, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await pod.topic_with([(b"a", b"1")])
    config = pod.config(topic, format="raw")
    async with serving_hydrated(config) as (hydrator, port):
        assert await http_status(port, "/readyz") == 200
        caplog.set_level(logging.INFO, logger="sidecar_hydrator")
        # Every transaction writes the offsets hash: forbidding HSET makes every apply and
        # every heartbeat fail, persistently, while Redis itself answers.
        await pod.app.execute_command("ACL", "SETUSER", "default", "-hset")
        await pod.produce(topic, [(b"a", b"2")])
        failing_at = asyncio.get_running_loop().time()
        await eventually(lambda: _status_is(port, "/readyz", 503), within=10, what="/readyz 503")
        assert asyncio.get_running_loop().time() - failing_at < 5.0
        await asyncio.sleep(2.0)  # many more failed cycles
        assert sample(hydrator, "store_failures_total", kind="NoPermissionError") >= 3
        said = [r for r in caplog.records if "NoPermissionError" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert await pod.app.get(b"a") == b"1"

        await pod.app.execute_command("ACL", "SETUSER", "default", "+hset")
        await eventually(lambda: value_is(pod.app, b"a", b"2"), within=10, what="recovery")
        await eventually(lambda: _status_is(port, "/readyz", 200), within=10, what="ready")


async def test_a_redis_that_refuses_the_memory_sample_is_a_store_failure_not_an_exit(
    pod: KafkaPod,
) -> None:
    """The heartbeat's INFO memory fails like every other store call: counted, the cycle
    ends and the store is inspected again, and the hydrator recovers once Redis answers
    (it used to escape the store's error translation and end the hydrator)."""
    topic = await pod.topic_with([(b"a", b"1")])
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as hydrator:
        await pod.app.execute_command("ACL", "SETUSER", "default", "-info")
        try:
            await eventually(
                lambda: sample(hydrator, "store_failures_total", kind="NoPermissionError") >= 1,
                within=10,
                what="the refused INFO counted",
            )
        finally:
            await pod.app.execute_command("ACL", "SETUSER", "default", "+info")
        await pod.produce(topic, [(b"a", b"2")])
        await eventually(lambda: value_is(pod.app, b"a", b"2"), within=10, what="recovery")
        await hydrated(hydrator)
        assert (await pod.app.hgetall(b"sidecar-state:meta"))[b"hydrated"] == b"1"


async def _status_is(port: int, path: str, status: int) -> bool:
    return await http_status(port, path) == status


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * MIB)])
async def test_writes_refused_by_a_full_redis_are_retried_once_memory_is_freed(
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with([(b"small", b"1")])
    config = pod.config(topic, format="raw", live_batch_max_keys=5)
    big = [(f"big{i:02d}".encode(), bytes([65 + i]) * 100_000) for i in range(30)]
    async with serving_hydrated(config) as (hydrator, port):
        await pod.produce(topic, big)  # ~3 MB: more than fits next to Redis itself
        await eventually(
            lambda: sample(hydrator, "redis_oom_rejections_total") > 0, what="refusals"
        )
        await eventually(lambda: _status_is(port, "/readyz", 503), within=5, what="unready")
        assert (await pod.app.hgetall(config.metadata_key)).get(b"hydrated") != b"1"
        await asyncio.sleep(2.0)
        # The refused records are not fresh in the view, and not counted as applied.
        assert sample(hydrator, "staleness_seconds") >= 1.5
        assert sample(hydrator, "records_applied_total", binding="b") < sample(
            hydrator, "records_read_total", binding="b"
        )

        # Tombstones free memory; the writes refused before them must get in after all.
        await pod.produce(topic, [(key, None) for key, _ in big[:20]])
        expected = {b"small": b"1"} | dict(big[20:])
        await eventually(
            lambda: view_is(pod.app, expected), within=15, what="refused writes retried"
        )
        await eventually(lambda: _status_is(port, "/readyz", 200), within=5, what="ready")
        await eventually(
            lambda: _meta_says(pod.app, config.metadata_key, hydrated=b"1", complete=b"1"),
            within=5,
            what="metadata complete",
        )
        assert sample(hydrator, "staleness_seconds") < 1.5
        read = sample(hydrator, "records_read_total", binding="b")
        assert sample(hydrator, "records_applied_total", binding="b") == read


async def _meta_says(client: aioredis.Redis, key: str, **fields: bytes) -> bool:
    meta = await client.hgetall(key)
    return all(meta.get(name.encode()) == value for name, value in fields.items())


@pytest.mark.parametrize("damage", ["FLUSHALL", "FLUSHDB", "DEL sidecar-state:offsets"])
async def test_a_view_damaged_under_a_running_hydrator_is_reported_within_a_heartbeat_and_rebuilt(
    damage: str, pod: KafkaPod
) -> None:
    topic = pod.new_topic(partitions=2)
    data = {f"k{i:06d}".encode(): f"v{i}".encode() for i in range(50_000)}
    await pod.produce(topic, list(data.items()))
    config = pod.config(topic, format="raw")
    async with serving_hydrated(config, within=60) as (hydrator, port):
        await asyncio.sleep(1.2)  # a heartbeat of the intact view
        meta = await pod.app.hgetall(config.metadata_key)
        assert (meta[b"hydrated"], meta[b"complete"]) == (b"1", b"1")

        seen: list[tuple[float, bytes | None, int]] = []
        watching = asyncio.Event()

        async def watch() -> None:
            while not watching.is_set():
                meta = await pod.app.hgetall(config.metadata_key)
                seen.append(
                    (time.monotonic(), meta.get(b"hydrated"), await http_status(port, "/readyz"))
                )
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        damaged_at = time.monotonic()
        await pod.app.execute_command(*damage.split())
        await eventually(
            lambda: sample(hydrator, "rebuilds_total", reason="damaged") == 1,
            within=3,
            what="the damage counted",
        )
        await hydrated(hydrator, within=60)
        await eventually(lambda: view_is(pod.app, data), within=30, what="the full view")
        await asyncio.sleep(1.2)  # a heartbeat of the rebuilt view
        watching.set()
        await watcher

        reported = [t - damaged_at for t, flag, status in seen if flag == b"0" and status == 503]
        assert reported, "the damage was never reported as hydrated=0 with /readyz 503"
        assert reported[0] < 1.5, f"reported {reported[0]:.2f} s after the damage"
        if damage.startswith("FLUSH"):
            # The heartbeat never wrote hydrated=1 onto the flushed view (a DEL leaves the
            # old metadata standing until the heartbeat's check).
            first_report = damaged_at + reported[0]
            claimed = [t for t, flag, _ in seen if flag == b"1" and damaged_at < t < first_report]
            assert not claimed
        meta = await pod.app.hgetall(config.metadata_key)
        assert (meta[b"hydrated"], meta[b"complete"]) == (b"1", b"1")
        assert await http_status(port, "/readyz") == 200


async def test_a_redis_restarted_empty_while_kafka_is_down_claims_neither_complete_nor_fresh(
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with([(b"a", b"1"), (b"b", b"2")])
    config = pod.config(topic, format="raw")
    async with serving_hydrated(config) as (hydrator, port):
        pod.broker.kill()
        pod.redis.restart()  # empty, and nothing to rebuild from
        await asyncio.sleep(2.5)
        meta = await pod.app.hgetall(config.metadata_key)
        assert meta.get(b"hydrated") == b"0" and meta.get(b"complete") == b"0", meta
        assert b"fresh_as_of_ms" not in meta and b"staleness_ms" not in meta, meta
        assert await http_status(port, "/readyz") == 503
        pod.broker.start()
        await hydrated(hydrator, within=60)
        assert await view(pod.app, b"") == {b"a": b"1", b"b": b"2"}
        await asyncio.sleep(1.2)
        meta = await pod.app.hgetall(config.metadata_key)
        assert (meta[b"hydrated"], meta[b"complete"]) == (b"1", b"1")


async def _counted(hydrator: Hydrator, *, kind: str, count: int) -> bool:
    return sample(hydrator, "bad_records_total", binding="b", kind=kind) == count


async def test_a_batch_is_all_or_nothing_and_a_failed_one_leaves_the_socket_usable(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    store = Store(
        socket_path=str(redis_server.socket_path),
        offsets_key="sidecar-state:offsets",
        metadata_key="sidecar-state:meta",
        spare_db=1,
    )
    await store.inspect()
    changes = app_redis.pubsub()  # type: ignore[no-untyped-call]
    await changes.subscribe("sidecar-state:changes:b")
    await changes.get_message(timeout=1)  # the subscribe confirmation
    try:
        # Refused while queued (a command Redis does not know): none of the batch lands.
        with pytest.raises(StoreError):
            await store.apply(
                sets={b"k:a": b"1"}, deletes=(), offsets={"b/t/0": 1}, meta={"last_apply_ms": 1},
                notify=("sidecar-state:changes:b", b"a"), commands=[("NO-SUCH-COMMAND",)],
            )  # fmt: skip
        assert await view(app_redis, b"k:") == {}
        assert await app_redis.exists("sidecar-state:offsets", "sidecar-state:meta") == 0
        # Failing while it runs (the offsets hash written over): raised, not swallowed.
        await app_redis.set("sidecar-state:offsets", "not a hash")
        with pytest.raises(StoreError) as failed:
            await store.apply(sets={b"k:b": b"2"}, deletes=(), offsets={"b/t/0": 2}, meta={})
        assert failed.value.kind == "ResponseError"
        await app_redis.delete("sidecar-state:offsets")
        # The next batch goes through on the same socket, all of it with its notification.
        result = await store.apply(
            sets={b"k:c": b"3"}, deletes={b"k:b"}, offsets={"b/t/0": 3},
            meta={"last_apply_ms": 5}, notify=("sidecar-state:changes:b", b"c"),
        )  # fmt: skip
        assert result.applied == 2
        assert await view(app_redis, b"k:") == {b"k:c": b"3"}
        assert await app_redis.hgetall("sidecar-state:offsets") == {b"b/t/0": b"3"}
        assert await app_redis.hget("sidecar-state:meta", "last_apply_ms") == b"5"
        message = await changes.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None and message["data"] == b"c"
    finally:
        await changes.aclose()
        await store.close()
