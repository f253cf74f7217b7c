"""Exactly-once producers (Debezium, Kafka Streams, Flink): transaction markers and aborted
transactions take offsets but return no records, and the hydrator must still reach the end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.hydrator.support import (
    Record,
    eventually,
    hydrated,
    make_config,
    running,
    sample,
    value_is,
    view,
)

pytestmark = pytest.mark.timeout(60)


async def transaction(
    broker: KafkaBroker, topic: str, records: list[Record], *, commit: bool
) -> None:
    """One transaction holding ``records``, committed or aborted."""
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, transactional_id=f"tx-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value, partition=0)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_a_partition_holding_only_an_aborted_transaction_hydrates_empty(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await transaction(kafka_broker, topic, [(b"ghost", b"1")], commit=False)
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as hydrator:
        await hydrated(hydrator, within=15)
        assert await view(app_redis, b"") == {}
        meta = await app_redis.hgetall(config.metadata_key)
        assert meta[b"hydrated"] == b"1"
        # Past the record and the abort marker (the broker writes the marker a moment after
        # the abort returns; until then the partition's stable end is 0).
        field = f"b/{topic}/0".encode()
        await eventually(
            lambda: _hash_is(app_redis, config.offsets_key, {field: b"2"}),
            within=10,
            what="offsets past the abort marker",
        )


async def test_a_committed_transaction_of_one_batch_hydrates(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await transaction(kafka_broker, topic, [(b"a", b"1"), (b"b", b"2")], commit=True)
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as hydrator:
        await hydrated(hydrator, within=15)
        assert await view(app_redis, b"") == {b"a": b"1", b"b": b"2"}
        offsets = await app_redis.hgetall(config.offsets_key)
        assert offsets == {f"b/{topic}/0".encode(): b"3"}


async def test_a_live_topic_whose_last_transaction_aborted_is_fresh_with_no_lag(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await transaction(kafka_broker, topic, [(b"a", b"1")], commit=True)
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as hydrator:
        await hydrated(hydrator, within=15)
        await transaction(kafka_broker, topic, [(b"b", b"2")], commit=True)
        await transaction(kafka_broker, topic, [(b"ghost", b"x"), (b"a", b"x")], commit=False)
        await eventually(lambda: value_is(app_redis, b"b", b"2"), what="committed record")
        await asyncio.sleep(2.5)  # two heartbeats
        meta = await app_redis.hgetall(config.metadata_key)
        assert meta[b"lag"] == b"0"
        assert int(meta[b"staleness_ms"]) < 1500
        assert sample(hydrator, "lag_records", binding="b", topic=topic, partition="0") == 0
    assert await view(app_redis, b"") == {b"a": b"1", b"b": b"2"}


async def _hash_is(client: aioredis.Redis, key: str, expected: dict[bytes, bytes]) -> bool:
    return bool(await client.hgetall(key) == expected)
