"""Freshness under load: what ``staleness_ms`` tells the app while records keep coming."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.hydrator.support import (
    KafkaPod,
    running_hydrated,
)

pytestmark = pytest.mark.timeout(60)


async def test_staleness_stays_low_under_sustained_traffic_with_no_lag(pod: KafkaPod) -> None:
    topic = await pod.topic_with([(b"k", b"0")], partitions=2)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as hydrator:
        producer = AIOKafkaProducer(bootstrap_servers=pod.broker.bootstrap_servers, linger_ms=0)
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
        meta = await pod.app.hgetall(config.metadata_key)
    assert max(samples) < 1.0, f"staleness up to {max(samples):.2f} s with records applied live"
    assert int(meta[b"staleness_ms"]) < 1500
