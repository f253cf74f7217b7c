"""The bootstrap fetcher (``kafka_internals.BootstrapFetcher``): until the view is live, the
next fetch is sent from the end of the last response's batches while that response is still
decoded and written. Small fetches and small batches make one bootstrap many of its rounds,
each response served in parts; what the app reads must be what the stream committed."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from tests.integration.hydrator.support import (
    KafkaPod,
    eventually,
    hydrate_once,
    rebuilt,
    running,
    running_hydrated,
    sample,
    view,
    view_is,
)

pytestmark = pytest.mark.timeout(90)

#: The smallest fetch the config allows: a response holds a few batches at most.
SMALL_FETCH = 1024


async def test_aborted_batches_spread_over_many_fetches_never_reach_the_view(
    pod: KafkaPod, caplog: pytest.LogCaptureFixture
) -> None:
    """An aborted transaction's batches interleaved with a committed transaction's and with
    plain records, each record its own batch: read_committed drops exactly the aborted ones,
    in whichever response they arrive, and the offsets reach the end past both markers."""
    topic = pod.new_topic()
    servers = pod.broker.bootstrap_servers
    plain = AIOKafkaProducer(bootstrap_servers=servers)
    aborted = AIOKafkaProducer(bootstrap_servers=servers, transactional_id=f"a-{uuid.uuid4()}")
    committed = AIOKafkaProducer(bootstrap_servers=servers, transactional_id=f"c-{uuid.uuid4()}")
    for producer in (plain, aborted, committed):
        await producer.start()
    try:
        await aborted.begin_transaction()
        await committed.begin_transaction()
        for i in range(30):
            await aborted.send_and_wait(topic, key=b"k%d" % (i % 7), value=b"a%d" % i, partition=0)
            await aborted.send_and_wait(topic, key=b"ghost%d" % i, value=b"x", partition=0)
            await committed.send_and_wait(
                topic, key=b"k%d" % (i % 5), value=b"c%d" % i, partition=0
            )
            await plain.send_and_wait(topic, key=b"p%d" % i, value=b"p%d" % i, partition=0)
        await committed.commit_transaction()
        await aborted.abort_transaction()
        # A tail that is an aborted transaction: only its marker ends the partition.
        await aborted.begin_transaction()
        await aborted.send_and_wait(topic, key=b"k0", value=b"late", partition=0)
        await aborted.abort_transaction()
    finally:
        for producer in (plain, aborted, committed):
            await producer.stop()
    expected = {b"k%d" % j: b"c%d" % (25 + j) for j in range(5)}
    expected |= {b"p%d" % i: b"p%d" % i for i in range(30)}
    # 120 records, a commit and an abort marker, then one record and its abort marker.
    end = f"{120 + 2 + 2}".encode()
    config = pod.config(
        topic, format="raw", catchup_fetch_bytes=SMALL_FETCH, bootstrap_batch_max_keys=7
    )

    async def offsets_at_end() -> bool:
        return bool(await pod.app.hgetall(config.offsets_key) == {f"b/{topic}/0".encode(): end})

    caplog.set_level(logging.INFO, logger="sidecar_hydrator.kafka_source")
    async with running_hydrated(config, within=30):
        assert await view(pod.app, b"") == expected
        await eventually(offsets_at_end, within=10, what="offsets past the last abort marker")
    assert await view(pod.app, b"") == expected
    # All of it through the bootstrap fetcher: nothing made it hand over to the consumer.
    assert not [r for r in caplog.records if "the consumer reads on" in r.getMessage()]


async def test_a_partition_error_while_catching_up_is_the_consumers_to_handle(
    pod: KafkaPod,
) -> None:
    """Retention removes records a resumed view has not caught up with yet: the fetcher hands
    its positions to the consumer, whose fetch fails as it always did, and the view is rebuilt
    from what the topic still holds."""
    count, kept_from = 20_000, 19_890
    topic = await pod.topic_with([(b"k%05d" % i, b"old") for i in range(10)], compacted=False)
    config = pod.config(
        topic, format="raw", catchup_fetch_bytes=SMALL_FETCH, bootstrap_batch_max_keys=1
    )
    await hydrate_once(config)
    await pod.produce(topic, [(b"k%05d" % i, b"v%05d" % i) for i in range(10, count)])
    async with running(config) as hydrator:
        (feed,) = hydrator.feeds
        await eventually(
            lambda: sample(hydrator, "records_read_total", binding="b") > 0,
            within=20,
            what="a first record read",
        )
        assert not feed.caught_up.is_set(), "the view must still be catching up"
        await pod.delete_before(topic, kept_from)
        await rebuilt(hydrator, reason="offset_out_of_range", within=30)
        await eventually(feed.caught_up.is_set, within=30, what="the rebuild caught up")
        expected = {b"k%05d" % i: b"v%05d" % i for i in range(kept_from, count)}
        await eventually(lambda: view_is(pod.app, expected), within=10, what="the rebuilt view")
        assert sample(hydrator, "rebuilds_total", reason="offset_out_of_range") == 1


async def test_a_bootstrap_going_on_from_inside_a_batch_reads_nothing_twice(
    pod: KafkaPod,
) -> None:
    """A hydrator stopped half-way through a bootstrap leaves positions inside the
    producer's batches (one key per write here); the next one goes on from them: a fetch
    answers with the whole batch holding the position, and only the records from it on are
    read (counted), not the batch's earlier ones again."""
    count = 3000
    records = {b"k%05d" % i: b"v%05d" % i for i in range(count)}
    topic = await pod.topic_with(records.items())
    slow = pod.config(topic, format="raw", bootstrap_batch_max_keys=1)
    async with running(slow) as first:
        await eventually(
            lambda: sample(first, "records_read_total", binding="b") >= 10,
            within=20,
            what="some records read",
        )
    spare = aioredis.Redis(unix_socket_path=str(pod.redis.socket_path), db=slow.spare_db)
    try:
        stored = await spare.hgetall(slow.offsets_key)
    finally:
        await spare.aclose()
    position = int(stored[f"b/{topic}/0".encode()])
    assert 10 <= position < count, "the first hydrator must stop half-way"
    async with running_hydrated(pod.config(topic, format="raw")) as second:
        assert await view(pod.app, b"") == records
        assert sample(second, "records_read_total", binding="b") == count - position
