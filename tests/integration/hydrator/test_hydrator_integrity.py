"""The hydrator's own bookkeeping stays its own, and a store that stops working is reported.

What the app reads is the judge: keys, values, ``sidecar-state:meta``, and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from tests.integration.hydrator.support import (
    eventually,
    http_status,
    hydrated,
    make_config,
    produce,
    running,
    sample,
    serving,
    view,
)
from tests.support.kafka_broker import KafkaBroker
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


async def test_records_keyed_like_the_bookkeeping_are_bad_records_and_change_nothing(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(
        kafka_broker,
        topic,
        [
            (b"a", b"1"),
            (b"sidecar-state:offsets", b"overwritten"),
            (b"sidecar-state:meta", b"overwritten"),
            (b"b", b"2"),
        ],
    )
    # The default prefix "" lets record keys reach the hydrator's namespace.
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as hydrator:
        await hydrated(hydrator)
        assert await app_redis.type(config.offsets_key) == b"hash"
        assert await app_redis.type(config.metadata_key) == b"hash"
        assert (await app_redis.hgetall(config.metadata_key))[b"hydrated"] == b"1"
        assert sample(hydrator, "bad_records_total", binding="b", kind="reserved_key") == 2
        # A tombstone in the namespace must not delete the bookkeeping either.
        await produce(kafka_broker, topic, [(b"sidecar-state:meta", None), (b"c", b"3")])
        await eventually(lambda: _equals(app_redis, b"c", b"3"), what="record after")
        assert await app_redis.exists(config.metadata_key) == 1
        assert sample(hydrator, "bad_records_total", binding="b", kind="reserved_key") == 3
        assert hydrator.ready()
    assert await view(app_redis, b"") == {b"a": b"1", b"b": b"2", b"c": b"3"}


async def test_an_apply_loop_that_keeps_failing_turns_readyz_503_logs_once_and_counts(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, [(b"a", b"1")])
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with serving(config) as (hydrator, port):
        await hydrated(hydrator)
        assert await http_status(port, "/readyz") == 200
        caplog.set_level(logging.INFO, logger="sidecar_hydrator")
        # Every transaction writes the offsets hash: forbidding HSET makes every apply and
        # every heartbeat fail, persistently, while Redis itself answers.
        await app_redis.execute_command("ACL", "SETUSER", "default", "-hset")
        await produce(kafka_broker, topic, [(b"a", b"2")])
        failing_at = asyncio.get_running_loop().time()
        await eventually(lambda: _status_is(port, "/readyz", 503), within=10, what="/readyz 503")
        assert asyncio.get_running_loop().time() - failing_at < 5.0
        await asyncio.sleep(2.0)  # many more failed cycles
        assert sample(hydrator, "store_failures_total", kind="NoPermissionError") >= 3
        said = [r for r in caplog.records if "NoPermissionError" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert await app_redis.get(b"a") == b"1"

        await app_redis.execute_command("ACL", "SETUSER", "default", "+hset")
        await eventually(lambda: _equals(app_redis, b"a", b"2"), within=10, what="recovery")
        await eventually(lambda: _status_is(port, "/readyz", 200), within=10, what="ready")


async def _equals(client: aioredis.Redis, key: bytes, value: bytes) -> bool:
    return bool(await client.get(key) == value)


async def _status_is(port: int, path: str, status: int) -> bool:
    return await http_status(port, path) == status
