"""Forced rebuilds (a stored offset gone from the broker): what the app reads before, during
and after, with one binding or several, and with a Redis too small for two copies."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    RecordFormat,
)
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import sidecar_redis_config
from tests.integration.hydrator.support import (
    MIB,
    KafkaPod,
    eventually,
    holds,
    hydrate_once,
    hydrated,
    rebuilt,
    running,
    running_hydrated,
    sample,
    value_is,
    view,
    view_is,
)
from tests.integration.hydrator.test_hydrator_records import row_event, truncate_event

pytestmark = pytest.mark.timeout(90)


def history_and_latest(
    pod: KafkaPod,
    *,
    earliest: str,
    latest: str,
    name: str,
    format: RecordFormat,
    prefix: str,
) -> HydratorConfig:
    """Two bindings on one Pod: ``history`` reads ``earliest`` from its start (``h:``), and
    ``name`` reads ``latest`` from the end: the one a rebuild forced by the other can't re-read."""
    connection = KafkaConnection(bootstrap_servers=(pod.broker.bootstrap_servers,))
    return HydratorConfig(
        redis_socket=str(pod.redis.socket_path),
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
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with([(f"k{i}".encode(), b"old") for i in range(10)], compacted=False)
    config = pod.config(topic, format="raw")
    await hydrate_once(config)
    await pod.produce(topic, [(f"k{i}".encode(), b"new") for i in range(10)])
    await pod.delete_before(topic, 15)
    async with running(config) as second:
        await rebuilt(second, reason="offset_out_of_range")
        await hydrated(second)
        read = sample(second, "records_read_total", binding="b")
        # A blip: for a moment Redis refuses the hydrator's writes (as a stall past the
        # socket timeout would fail them).
        await pod.app.execute_command("ACL", "SETUSER", "default", "-hset")
        await asyncio.sleep(1.5)  # a heartbeat fails at least
        await pod.app.execute_command("ACL", "SETUSER", "default", "+hset")
        failures = sum(
            sample(second, "store_failures_total", kind=kind)
            for kind in ("NoPermissionError", "ResponseError")  # a batch's, a heartbeat's
        )
        assert failures >= 1
        await pod.produce(topic, [(b"after", b"1")])
        await eventually(lambda: value_is(pod.app, b"after", b"1"), what="record after")
        assert sample(second, "rebuilds_total", reason="offset_out_of_range") == 1
        assert sample(second, "records_read_total", binding="b") == read + 1
        assert second.hydrated
    assert await view(pod.app, b"k") == {f"k{i}".encode(): b"new" for i in range(5, 10)}


async def test_retention_overtaking_the_first_bootstrap_starts_the_spare_afresh_once(
    pod: KafkaPod,
) -> None:
    """Nothing served yet, and the records not read yet are deleted: the rebuild in the spare
    database is spent (its stored offsets are gone too). Going on from it met the same gone
    offset again each cycle, thousands of rebuilds a minute and never a view; the next rebuild
    starts the spare afresh from what the topic still holds."""
    count, kept_from = 20_000, 19_890
    topic = await pod.topic_with(
        [(b"k%05d" % i, b"v%05d" % i) for i in range(count)], compacted=False
    )
    config = pod.config(topic, format="raw", catchup_fetch_bytes=1024, bootstrap_batch_max_keys=1)
    async with running(config) as hydrator:
        await eventually(
            lambda: sample(hydrator, "records_read_total", binding="b") > 0,
            within=20,
            what="a first record read",
        )
        assert not hydrator.hydrated, "the first bootstrap must still be under way"
        await pod.delete_before(topic, kept_from)
        await rebuilt(hydrator, reason="offset_out_of_range", within=30)
        await hydrated(hydrator)
        assert await view(pod.app, b"") == {
            b"k%05d" % i: b"v%05d" % i for i in range(kept_from, count)
        }
        assert sample(hydrator, "rebuilds_total", reason="offset_out_of_range") == 1


async def test_one_bindings_forced_rebuild_keeps_the_other_bindings_keys(pod: KafkaPod) -> None:
    earliest = pod.new_topic(compacted=False, suffix="earliest")
    latest = pod.new_topic(suffix="latest")
    await pod.produce(earliest, [(f"e{i}".encode(), b"1") for i in range(10)])
    await pod.produce(latest, [(b"before-start", b"never read")])
    config = history_and_latest(
        pod, earliest=earliest, latest=latest, name="live", format="raw", prefix="l:"
    )
    async with running_hydrated(config):
        await pod.produce(latest, [(b"x", b"1"), (b"y", b"2")])
        await eventually(lambda: value_is(pod.app, b"l:y", b"2"), what="live records")
    await pod.produce(earliest, [(f"e{i}".encode(), b"2") for i in range(10)])
    await pod.delete_before(earliest, 12)
    async with running(config) as second:
        await rebuilt(second, reason="offset_out_of_range")
        await hydrated(second)
        assert await view(pod.app, b"l:") == {b"l:x": b"1", b"l:y": b"2"}
        assert await view(pod.app, b"h:") == {f"h:e{i}".encode(): b"2" for i in range(2, 10)}
        # The latest binding resumed where it was: nothing re-read, and it goes on.
        assert sample(second, "records_read_total", binding="live") == 0
        await pod.produce(latest, [(b"z", b"3")])
        await eventually(lambda: value_is(pod.app, b"l:z", b"3"), what="live after rebuild")


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=7 * MIB)])
async def test_a_rebuild_that_does_not_fit_beside_the_served_view_never_replaces_it(
    pod: KafkaPod,
) -> None:
    topic = pod.new_topic(compacted=False)
    old = {f"k{i:02d}".encode(): bytes([65 + i % 26]) * 100_000 for i in range(40)}
    await pod.produce(topic, list(old.items()))  # ~4 MB: fits once, not twice
    config = pod.config(topic, format="raw", bootstrap_batch_max_keys=5)
    await hydrate_once(config)
    new = {key: b"n" * 100_000 for key in old}
    await pod.produce(topic, list(new.items()))
    await pod.delete_before(topic, 45)
    expected_new = {f"k{i:02d}".encode(): new[f"k{i:02d}".encode()] for i in range(5, 40)}

    async with running(config) as second:
        await eventually(
            lambda: sample(second, "redis_oom_rejections_total") > 0, what="rebuild refused"
        )
        for _ in range(10):  # the old, complete view is served all along
            assert await view(pod.app, b"k") == old
            assert (await pod.app.hgetall(config.metadata_key))[b"hydrated"] == b"1"
            await asyncio.sleep(0.2)
        assert second.hydrated

        # Room for two copies: the rebuild completes and is published whole.
        await pod.app.config_set("maxmemory", str(64 * MIB))
        await eventually(
            lambda: view_is(pod.app, expected_new, prefix=b"k"), within=20, what="new view"
        )
        await hydrated(second)
        meta = await pod.app.hgetall(config.metadata_key)
        assert (meta[b"hydrated"], meta[b"complete"]) == (b"1", b"1")


async def test_a_topic_deleted_and_created_again_is_rebuilt_not_resumed_mid_log(
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with([(f"old{i}".encode(), b"1") for i in range(5)])
    config = pod.config(topic, format="raw")
    await hydrate_once(config)
    pod.broker.delete_topic(topic)
    await eventually(lambda: _recreate(pod.broker, topic), within=30, what="topic re-created")
    # The stored position (5) lies inside the new topic's range (0..8).
    fresh = {f"new{i}".encode(): b"2" for i in range(8)}
    await pod.produce(topic, list(fresh.items()))
    async with running(config) as second:
        await rebuilt(second, reason="topic_recreated")
        await hydrated(second)
        assert await view(pod.app, b"") == fresh


async def test_a_topic_re_created_under_a_running_hydrator_is_rebuilt(pod: KafkaPod) -> None:
    topic = await pod.topic_with([(f"old{i}".encode(), b"1") for i in range(5)])
    config = pod.config(topic, format="raw", metadata_refresh_ms=300)
    async with running_hydrated(config) as hydrator:
        pod.broker.delete_topic(topic)
        await eventually(lambda: _recreate(pod.broker, topic), within=30, what="re-created")
        fresh = {f"new{i}".encode(): b"2" for i in range(8)}
        await pod.produce(topic, list(fresh.items()))
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
        await eventually(lambda: view_is(pod.app, fresh), within=20, what="new view")
        await hydrated(hydrator)


def _recreate(broker: KafkaBroker, topic: str) -> bool:
    try:
        broker.create_topic(topic, partitions=1, compacted=True)
    except Exception:  # still being deleted
        return False
    return True


async def test_a_copy_left_in_the_spare_database_is_freed_when_the_view_is_resumed(
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with([(b"a", b"1")])
    config = pod.config(topic, format="raw")
    await hydrate_once(config)
    # What a hydrator killed between SWAPDB and its FLUSHDB leaves: the old view, in full.
    spare = aioredis.Redis(unix_socket_path=str(pod.redis.socket_path), db=config.spare_db)
    try:
        await spare.mset({f"old{i}".encode(): b"x" * 1000 for i in range(500)})
        async with running_hydrated(config) as second:
            await eventually(lambda: _empty(spare), within=5, what="the spare freed")
            assert sample(second, "rebuilds_total", reason="empty") == 0  # resumed
    finally:
        await spare.aclose()
    assert await view(pod.app, b"") == {b"a": b"1"}


async def test_a_partition_added_later_keeps_the_freshness_known(pod: KafkaPod) -> None:
    from aiokafka.admin import NewPartitions

    topic = await pod.topic_with([(b"p0", b"0")], partitions=1)
    config = pod.config(topic, format="raw", metadata_refresh_ms=200)
    async with running_hydrated(config) as hydrator:
        admin = AIOKafkaAdminClient(bootstrap_servers=pod.broker.bootstrap_servers)
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
        meta = await pod.app.hgetall(config.metadata_key)
        assert int(meta[b"staleness_ms"]) < 2000


async def _empty(client: aioredis.Redis) -> bool:
    return int(await client.dbsize()) == 0


async def test_a_hydrator_stopped_mid_bootstrap_continues_where_it_was(pod: KafkaPod) -> None:
    topic = pod.new_topic(partitions=2)
    data = {f"k{i:06d}".encode(): f"v{i}".encode() for i in range(60_000)}
    await pod.produce(topic, list(data.items()))
    # Small batches and small fetches stretch the bootstrap over many seconds' worth of steps.
    config = pod.config(
        topic, format="raw", bootstrap_batch_max_keys=200, catchup_fetch_bytes=16 * 1024
    )
    async with running(config) as first:
        await eventually(
            lambda: sample(first, "records_read_total", binding="b") >= 10_000,
            what="bootstrap under way",
        )
        assert not first.hydrated
    # As the kubelet would after the startup probe gave up: a new process, the same Redis.
    async with running_hydrated(config, within=60) as second:
        read_again = sample(second, "records_read_total", binding="b")
        assert read_again <= len(data) - 10_000, f"read {read_again:.0f} of {len(data)} again"
        assert await view(pod.app, b"k") == data
        meta = await pod.app.hgetall(config.metadata_key)
        assert meta[b"hydrated"] == b"1" and b"rebuilding_in" not in meta


async def test_a_rebuild_forced_by_one_binding_keeps_the_others_table_index_for_truncates(
    pod: KafkaPod,
) -> None:
    """The carried-over Debezium binding must still find its rows when a truncate comes."""
    earliest = pod.new_topic(compacted=False, suffix="earliest")
    changes = pod.new_topic(compacted=False, suffix="cdc")
    await pod.produce(earliest, [(f"e{i}".encode(), b"1") for i in range(10)])
    config = history_and_latest(
        pod, earliest=earliest, latest=changes, name="orders", format="debezium", prefix="o:"
    )
    async with running_hydrated(config):
        await pod.produce(
            changes,
            [row_event("c", "orders", key={"id": i}, row={"id": i}) for i in range(3)],
        )
        await eventually(lambda: holds(pod.app, b"o:", 3), what="the rows")
    await pod.produce(earliest, [(f"e{i}".encode(), b"2") for i in range(10)])
    await pod.delete_before(earliest, 12)
    async with running(config) as second:
        await rebuilt(second, reason="offset_out_of_range")
        await hydrated(second)
        assert await holds(pod.app, b"o:", 3)
        await pod.produce(changes, [truncate_event("orders")])
        await eventually(lambda: holds(pod.app, b"o:", 0), what="the truncate")
        assert await view(pod.app, b"h:") == {f"h:e{i}".encode(): b"2" for i in range(2, 10)}
