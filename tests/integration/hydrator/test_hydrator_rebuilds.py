"""Forced rebuilds (a stored offset gone from the broker): what the app reads before, during
and after, with one binding or several, and with a Redis too small for two copies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    RecordFormat,
)
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config
from tests.integration.hydrator.support import (
    MIB,
    eventually,
    holds,
    hydrated,
    make_config,
    produce,
    running,
    sample,
    value_is,
    view,
    view_is,
)
from tests.integration.hydrator.test_hydrator_records import row_event, truncate_event

pytestmark = pytest.mark.timeout(90)


async def delete_before(broker: KafkaBroker, topic: str, offset: int) -> None:
    """Retention, on demand: the records of partition 0 before ``offset`` are gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, 0): RecordsToDelete(before_offset=offset)}, timeout_ms=10_000
        )
    finally:
        await admin.close()


def history_and_latest(
    *,
    broker: KafkaBroker,
    redis: RedisServer,
    earliest: str,
    latest: str,
    name: str,
    format: RecordFormat,
    prefix: str,
) -> HydratorConfig:
    """Two bindings on one Pod: ``history`` reads ``earliest`` from its start (``h:``), and
    ``name`` reads ``latest`` from the end: the one a rebuild forced by the other can't re-read."""
    connection = KafkaConnection(bootstrap_servers=(broker.bootstrap_servers,))
    return HydratorConfig(
        redis_socket=str(redis.socket_path),
        bindings=(
            BindingSource(
                name="history",
                kafka=connection,
                topics=(earliest,),
                format="raw",
                keys=KeyMapping(prefix="h:"),
            ),
            BindingSource(
                name=name,
                kafka=connection,
                topics=(latest,),
                start_from="latest",
                format=format,
                keys=KeyMapping(prefix=prefix),
            ),
        ),
    )


async def test_a_transient_redis_error_after_a_forced_rebuild_does_not_rebuild_again(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(compacted=False)
    await produce(kafka_broker, topic, [(f"k{i}".encode(), b"old") for i in range(10)])
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as first:
        await hydrated(first)
    await produce(kafka_broker, topic, [(f"k{i}".encode(), b"new") for i in range(10)])
    await delete_before(kafka_broker, topic, 15)
    async with running(config) as second:
        await eventually(
            lambda: sample(second, "rebuilds_total", reason="offset_out_of_range") == 1,
            what="the forced rebuild",
        )
        await hydrated(second)
        read = sample(second, "records_read_total", binding="b")
        # A blip: for a moment Redis refuses the hydrator's writes (as a stall past the
        # socket timeout would fail them).
        await app_redis.execute_command("ACL", "SETUSER", "default", "-hset")
        await asyncio.sleep(1.5)  # a heartbeat fails at least
        await app_redis.execute_command("ACL", "SETUSER", "default", "+hset")
        failures = sum(
            sample(second, "store_failures_total", kind=kind)
            for kind in ("NoPermissionError", "ResponseError")  # a batch's, a heartbeat's
        )
        assert failures >= 1
        await produce(kafka_broker, topic, [(b"after", b"1")])
        await eventually(lambda: value_is(app_redis, b"after", b"1"), what="record after")
        assert sample(second, "rebuilds_total", reason="offset_out_of_range") == 1
        assert sample(second, "records_read_total", binding="b") == read + 1
        assert second.hydrated
    assert await view(app_redis, b"k") == {f"k{i}".encode(): b"new" for i in range(5, 10)}


async def test_one_bindings_forced_rebuild_keeps_the_other_bindings_keys(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    earliest = make_topic(compacted=False, suffix="earliest")
    latest = make_topic(suffix="latest")
    await produce(kafka_broker, earliest, [(f"e{i}".encode(), b"1") for i in range(10)])
    await produce(kafka_broker, latest, [(b"before-start", b"never read")])
    config = history_and_latest(
        broker=kafka_broker, redis=redis_server, earliest=earliest, latest=latest,
        name="live", format="raw", prefix="l:",
    )  # fmt: skip
    async with running(config) as first:
        await hydrated(first)
        await produce(kafka_broker, latest, [(b"x", b"1"), (b"y", b"2")])
        await eventually(lambda: value_is(app_redis, b"l:y", b"2"), what="live records")
    await produce(kafka_broker, earliest, [(f"e{i}".encode(), b"2") for i in range(10)])
    await delete_before(kafka_broker, earliest, 12)
    async with running(config) as second:
        await eventually(
            lambda: sample(second, "rebuilds_total", reason="offset_out_of_range") == 1,
            what="the forced rebuild",
        )
        await hydrated(second)
        assert await view(app_redis, b"l:") == {b"l:x": b"1", b"l:y": b"2"}
        assert await view(app_redis, b"h:") == {f"h:e{i}".encode(): b"2" for i in range(2, 10)}
        # The latest binding resumed where it was: nothing re-read, and it goes on.
        assert sample(second, "records_read_total", binding="live") == 0
        await produce(kafka_broker, latest, [(b"z", b"3")])
        await eventually(lambda: value_is(app_redis, b"l:z", b"3"), what="live after rebuild")


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=7 * MIB)])
async def test_a_rebuild_that_does_not_fit_beside_the_served_view_never_replaces_it(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(compacted=False)
    old = {f"k{i:02d}".encode(): bytes([65 + i % 26]) * 100_000 for i in range(40)}
    await produce(kafka_broker, topic, list(old.items()))  # ~4 MB: fits once, not twice
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[topic],
        format="raw",
        bootstrap_batch_max_keys=5,
    )
    async with running(config) as first:
        await hydrated(first)
    new = {key: b"n" * 100_000 for key in old}
    await produce(kafka_broker, topic, list(new.items()))
    await delete_before(kafka_broker, topic, 45)
    expected_new = {f"k{i:02d}".encode(): new[f"k{i:02d}".encode()] for i in range(5, 40)}

    async with running(config) as second:
        await eventually(
            lambda: sample(second, "redis_oom_rejections_total") > 0, what="rebuild refused"
        )
        for _ in range(10):  # the old, complete view is served all along
            assert await view(app_redis, b"k") == old
            assert (await app_redis.hgetall(config.metadata_key))[b"hydrated"] == b"1"
            await asyncio.sleep(0.2)
        assert second.hydrated

        # Room for two copies: the rebuild completes and is published whole.
        await app_redis.config_set("maxmemory", str(64 * MIB))
        await eventually(
            lambda: view_is(app_redis, expected_new, prefix=b"k"), within=20, what="new view"
        )
        await hydrated(second)
        meta = await app_redis.hgetall(config.metadata_key)
        assert (meta[b"hydrated"], meta[b"complete"]) == (b"1", b"1")


async def test_a_topic_deleted_and_created_again_is_rebuilt_not_resumed_mid_log(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, [(f"old{i}".encode(), b"1") for i in range(5)])
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as first:
        await hydrated(first)
    kafka_broker.delete_topic(topic)
    await eventually(lambda: _recreate(kafka_broker, topic), within=30, what="topic re-created")
    # The stored position (5) lies inside the new topic's range (0..8).
    fresh = {f"new{i}".encode(): b"2" for i in range(8)}
    await produce(kafka_broker, topic, list(fresh.items()))
    async with running(config) as second:
        await eventually(
            lambda: sample(second, "rebuilds_total", reason="topic_recreated") == 1,
            what="the re-created topic noticed",
        )
        await hydrated(second)
        assert await view(app_redis, b"") == fresh


async def test_a_topic_re_created_under_a_running_hydrator_is_rebuilt(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, [(f"old{i}".encode(), b"1") for i in range(5)])
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[topic],
        format="raw",
        metadata_refresh_ms=300,
    )
    async with running(config) as hydrator:
        await hydrated(hydrator)
        kafka_broker.delete_topic(topic)
        await eventually(lambda: _recreate(kafka_broker, topic), within=30, what="re-created")
        fresh = {f"new{i}".encode(): b"2" for i in range(8)}
        await produce(kafka_broker, topic, list(fresh.items()))
        # Whichever the hydrator sees first: its position beyond the new, empty topic's end,
        # or (records already there) the topic's new ID at the next metadata refresh.
        await eventually(
            lambda: (
                sum(
                    sample(hydrator, "rebuilds_total", reason=reason)
                    for reason in ("topic_recreated", "offset_out_of_range")
                )
                >= 1
            ),
            what="the re-created topic noticed",
        )
        await eventually(lambda: view_is(app_redis, fresh), within=20, what="new view")
        await hydrated(hydrator)


def _recreate(broker: KafkaBroker, topic: str) -> bool:
    try:
        broker.create_topic(topic, partitions=1, compacted=True)
    except Exception:  # still being deleted
        return False
    return True


async def test_a_copy_left_in_the_spare_database_is_freed_when_the_view_is_resumed(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, [(b"a", b"1")])
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as first:
        await hydrated(first)
    # What a hydrator killed between SWAPDB and its FLUSHDB leaves: the old view, in full.
    spare = aioredis.Redis(unix_socket_path=str(redis_server.socket_path), db=config.spare_db)
    try:
        await spare.mset({f"old{i}".encode(): b"x" * 1000 for i in range(500)})
        async with running(config) as second:
            await hydrated(second)
            await eventually(lambda: _empty(spare), within=5, what="the spare freed")
            assert sample(second, "rebuilds_total", reason="empty") == 0  # resumed
    finally:
        await spare.aclose()
    assert await view(app_redis, b"") == {b"a": b"1"}


async def test_a_partition_added_later_keeps_the_freshness_known(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    from aiokafka.admin import NewPartitions

    topic = make_topic(partitions=1)
    await produce(kafka_broker, topic, [(b"p0", b"0")])
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[topic],
        format="raw",
        metadata_refresh_ms=200,
    )
    async with running(config) as hydrator:
        await hydrated(hydrator)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=4)})
        finally:
            await admin.close()
        unknown = 0
        for _ in range(60):  # three seconds: the partitions are picked up and read
            if hydrator.staleness_seconds() is None:
                unknown += 1
            await asyncio.sleep(0.05)
        assert unknown == 0
        meta = await app_redis.hgetall(config.metadata_key)
        assert int(meta[b"staleness_ms"]) < 2000


async def _empty(client: aioredis.Redis) -> bool:
    return int(await client.dbsize()) == 0


async def test_a_hydrator_stopped_mid_bootstrap_continues_where_it_was(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(partitions=2)
    data = {f"k{i:06d}".encode(): f"v{i}".encode() for i in range(60_000)}
    await produce(kafka_broker, topic, list(data.items()))
    # Small batches and small fetches stretch the bootstrap over many seconds' worth of steps.
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[topic],
        format="raw",
        bootstrap_batch_max_keys=200,
        catchup_fetch_bytes=16 * 1024,
    )
    async with running(config) as first:
        await eventually(
            lambda: sample(first, "records_read_total", binding="b") >= 10_000,
            what="bootstrap under way",
        )
        assert not first.hydrated
    # As the kubelet would after the startup probe gave up: a new process, the same Redis.
    async with running(config) as second:
        await hydrated(second, within=60)
        read_again = sample(second, "records_read_total", binding="b")
        assert read_again <= len(data) - 10_000, f"read {read_again:.0f} of {len(data)} again"
        assert await view(app_redis, b"k") == data
        meta = await app_redis.hgetall(config.metadata_key)
        assert meta[b"hydrated"] == b"1" and b"rebuilding_in" not in meta


async def test_a_rebuild_forced_by_one_binding_keeps_the_others_table_index_for_truncates(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    """The carried-over Debezium binding must still find its rows when a truncate comes."""
    earliest = make_topic(compacted=False, suffix="earliest")
    changes = make_topic(compacted=False, suffix="cdc")
    await produce(kafka_broker, earliest, [(f"e{i}".encode(), b"1") for i in range(10)])
    config = history_and_latest(
        broker=kafka_broker, redis=redis_server, earliest=earliest, latest=changes,
        name="orders", format="debezium", prefix="o:",
    )  # fmt: skip
    async with running(config) as first:
        await hydrated(first)
        await produce(
            kafka_broker,
            changes,
            [row_event("c", "orders", key={"id": i}, row={"id": i}) for i in range(3)],
        )
        await eventually(lambda: holds(app_redis, b"o:", 3), what="the rows")
    await produce(kafka_broker, earliest, [(f"e{i}".encode(), b"2") for i in range(10)])
    await delete_before(kafka_broker, earliest, 12)
    async with running(config) as second:
        await eventually(
            lambda: sample(second, "rebuilds_total", reason="offset_out_of_range") == 1,
            what="the forced rebuild",
        )
        await hydrated(second)
        assert await holds(app_redis, b"o:", 3)
        await produce(kafka_broker, changes, [truncate_event("orders")])
        await eventually(lambda: holds(app_redis, b"o:", 0), what="the truncate")
        assert await view(app_redis, b"h:") == {f"h:e{i}".encode(): b"2" for i in range(2, 10)}
