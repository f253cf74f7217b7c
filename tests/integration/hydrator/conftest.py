"""Hydrator integration fixtures: the broker and Redis come from
``tests/integration/conftest.py`` (real processes); this file only makes the test Redis run
with the operator's own command line, and gives tests the app's view of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import redis.asyncio as aioredis

from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config
from tests.integration.hydrator.support import KafkaPod


@pytest.fixture
def redis_config() -> Sequence[str]:
    return sidecar_redis_config()


@pytest.fixture
async def app_redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """The app's view: a client on the socket, database 0."""
    client = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def pod(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> KafkaPod:
    """A Pod fed from the session's Kafka: its Redis, the app's client, and new topics."""
    return KafkaPod(broker=kafka_broker, redis=redis_server, app=app_redis, new_topic=make_topic)
