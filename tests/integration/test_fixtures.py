"""Smoke tests of the real-services fixtures: if these fail, no integration test can pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sidecar_state_stack.kafka_broker import FAST_COMPACTION_CONFIG, KafkaBroker
from sidecar_state_stack.redis_server import RedisServer

RECORDS = [(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", None)]  # the last one is a tombstone


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]], codec: str | None
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, compression_type=codec, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Everything in partition 0 up to the end offset seen at start, the hydrator's way."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[bytes | None, bytes | None]] = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                out.extend((m.key, m.value) for m in batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compacted_topic_round_trip_per_codec(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], codec: str
) -> None:
    topic = make_topic()
    await produce(kafka_broker.bootstrap_servers, topic, RECORDS, codec)

    assert await read_all(kafka_broker.bootstrap_servers, topic) == RECORDS
    # compression.type=producer: the broker keeps the producer's batches as they came.
    stored = kafka_broker.stored_batches(topic)
    assert stored and {c for _, c in stored} == {codec}


async def test_broker_kill_and_start_keeps_data(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    await produce(kafka_broker.bootstrap_servers, topic, RECORDS, None)
    bootstrap, pid = kafka_broker.bootstrap_servers, kafka_broker.pid

    kafka_broker.kill()
    assert not kafka_broker.running
    kafka_broker.start()

    assert kafka_broker.pid != pid
    assert kafka_broker.bootstrap_servers == bootstrap  # same ports, same data dir
    assert await read_all(bootstrap, topic) == RECORDS


async def test_fast_compaction_config_compacts(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str]
) -> None:
    """FAST_COMPACTION_CONFIG really gets the cleaner to drop superseded values quickly."""
    topic = make_topic(config=FAST_COMPACTION_CONFIG)
    bootstrap = kafka_broker.bootstrap_servers
    for value in (b"1", b"2", b"3"):
        await produce(bootstrap, topic, [(b"k", value)], None)
        await asyncio.sleep(0.2)  # > segment.ms, so the next append rolls a new segment
    await produce(bootstrap, topic, [(b"other", b"x")], None)  # rolls the segment holding k=3

    deadline = time.monotonic() + 30
    while (records := await read_all(bootstrap, topic)) != [(b"k", b"3"), (b"other", b"x")]:
        assert time.monotonic() < deadline, f"not compacted after 30 s: {records}"
        await asyncio.sleep(0.5)


async def test_redis_set_get_over_unix_socket(redis_server: RedisServer) -> None:
    client = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        assert await client.set("greeting", "hello")
        assert await client.get("greeting") == b"hello"
        assert await client.config_get("port") == {"port": "0"}  # no TCP listener
    finally:
        await client.aclose()


async def test_redis_restart_comes_back_empty(redis_server: RedisServer) -> None:
    client = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        await client.set("k", "v")
        assert await client.dbsize() == 1
        pid = redis_server.pid

        redis_server.restart()

        assert redis_server.pid != pid
        assert await client.dbsize() == 0  # the client reconnects to the same socket path
    finally:
        await client.aclose()


@pytest.mark.parametrize("redis_config", [["maxmemory 1mb", "maxmemory-policy noeviction"]])
async def test_redis_config_directives_apply(redis_server: RedisServer) -> None:
    client = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        assert await client.config_get("maxmemory") == {"maxmemory": str(2**20)}
        assert await client.config_get("save") == {"save": ""}
    finally:
        await client.aclose()
