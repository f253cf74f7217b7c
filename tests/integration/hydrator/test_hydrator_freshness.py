"""Freshness under load: what ``staleness_ms`` tells the app while records keep coming."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.hydrator.support import hydrated, make_config, produce, running

pytestmark = pytest.mark.timeout(60)


async def test_staleness_stays_low_under_sustained_traffic_with_no_lag(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(partitions=2)
    await produce(kafka_broker, topic, [(b"k", b"0")])
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as hydrator:
        await hydrated(hydrator)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, linger_ms=0)
        await producer.start()
        samples: list[float] = []
        try:
            for i in range(1000):  # ~200 records/s for five seconds
                await producer.send(topic, key=f"k{i % 50}".encode(), value=str(i).encode())
                await asyncio.sleep(0.005)
                if i >= 200 and i % 20 == 0:
                    staleness = hydrator.staleness_seconds()
                    assert staleness is not None
                    samples.append(staleness)
            await producer.flush()
        finally:
            await producer.stop()
        meta = await app_redis.hgetall(config.metadata_key)
    assert max(samples) < 1.0, f"staleness up to {max(samples):.2f} s with records applied live"
    assert int(meta[b"staleness_ms"]) < 1500
