"""Exactly-once producers (Debezium, Kafka Streams, Flink): transaction markers and aborted
transactions take offsets but return no records, and the hydrator must still reach the end."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from sidecar_state_stack.kafka_broker import KafkaBroker
from tests.integration.hydrator.support import (
    KafkaPod,
    Record,
    eventually,
    running_hydrated,
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
    pod: KafkaPod,
) -> None:
    topic = pod.new_topic()
    await transaction(pod.broker, topic, [(b"ghost", b"1")], commit=False)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config, within=15):
        assert await view(pod.app, b"") == {}
        meta = await pod.app.hgetall(config.metadata_key)
        assert meta[b"hydrated"] == b"1"
        # Past the record and the abort marker (the broker writes the marker a moment after
        # the abort returns; until then the partition's stable end is 0).
        field = f"b/{topic}/0".encode()
        await eventually(
            lambda: _hash_is(pod.app, config.offsets_key, {field: b"2"}),
            within=10,
            what="offsets past the abort marker",
        )


async def test_a_committed_transaction_of_one_batch_hydrates(pod: KafkaPod) -> None:
    topic = pod.new_topic()
    await transaction(pod.broker, topic, [(b"a", b"1"), (b"b", b"2")], commit=True)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config, within=15):
        assert await view(pod.app, b"") == {b"a": b"1", b"b": b"2"}
        offsets = await pod.app.hgetall(config.offsets_key)
        assert offsets == {f"b/{topic}/0".encode(): b"3"}


async def test_a_live_topic_whose_last_transaction_aborted_is_fresh_with_no_lag(
    pod: KafkaPod,
) -> None:
    topic = pod.new_topic()
    await transaction(pod.broker, topic, [(b"a", b"1")], commit=True)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config, within=15) as hydrator:
        await transaction(pod.broker, topic, [(b"b", b"2")], commit=True)
        await transaction(pod.broker, topic, [(b"ghost", b"x"), (b"a", b"x")], commit=False)
        await eventually(lambda: value_is(pod.app, b"b", b"2"), what="committed record")
        await asyncio.sleep(2.5)  # two heartbeats
        meta = await pod.app.hgetall(config.metadata_key)
        assert meta[b"lag"] == b"0"
        assert int(meta[b"staleness_ms"]) < 1500
        assert sample(hydrator, "lag_records", binding="b", topic=topic, partition="0") == 0
    assert await view(pod.app, b"") == {b"a": b"1", b"b": b"2"}


async def _hash_is(client: aioredis.Redis, key: str, expected: dict[bytes, bytes]) -> bool:
    return bool(await client.hgetall(key) == expected)
