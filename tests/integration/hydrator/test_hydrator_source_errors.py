"""A source that fails is the source's trouble: reported as a source error (log, metrics),
never a rebuild, and the served view stays served — for Kafka and NATS alike.

The faults are raised by the client library's own objects (aiokafka's consumer, nats-py's
JetStream context) inside a running hydrator on a real broker and a real redis-server, where
a dropped connection would raise them: how the source and the hydrator take them is real.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import pytest
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError

from sidecar_hydrator.config import NatsKv
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.kafka_source import KafkaSource
from sidecar_hydrator.nats_source import NatsSource
from sidecar_state_stack.nats_server import NatsServer
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.hydrator.support import (
    KafkaPod,
    eventually,
    http_status,
    sample,
    serving_hydrated,
    view_is,
)
from tests.integration.hydrator.test_hydrator_nats import nats_config

pytestmark = pytest.mark.timeout(60)


def _fail_once(
    call: Callable[..., Any], error: BaseException
) -> tuple[Callable[..., Any], list[Any]]:
    """``call``, raising ``error`` the first time; the list records that it did."""
    raised: list[Any] = []

    async def failing(*args: Any, **kwargs: Any) -> Any:
        if not raised:
            raised.append(args)
            raise error
        return await call(*args, **kwargs)

    return failing, raised


def _rebuilds(hydrator: Hydrator) -> float:
    return sum(
        sample.value
        for metric in hydrator.metrics.registry.collect()
        if metric.name == "sidecar_state_hydrator_rebuilds"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def test_a_kafka_error_out_of_the_source_is_a_source_error_never_a_rebuild(
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with([(b"a", b"1"), (b"b", b"2")])
    config = pod.config(topic, format="raw")
    async with serving_hydrated(config) as (hydrator, port):
        rebuilds = _rebuilds(hydrator)
        assert rebuilds == 1  # the first start's, into the empty store
        source = hydrator.feeds[0]._source
        assert isinstance(source, KafkaSource)
        consumer = source._consumer
        assert consumer is not None
        # A position asked for on a connection that just went: nothing in the source retries
        # it, so it leaves the source (and ends the hydrator's cycle).
        consumer.position, raised = _fail_once(
            consumer.position, KafkaConnectionError("connection to the leader lost")
        )
        await eventually(lambda: bool(raised), what="the fault")
        await eventually(
            lambda: (
                sample(
                    hydrator,
                    "source_errors_total",
                    binding="b",
                    source="kafka",
                    kind="KafkaConnectionError",
                )
                == 1
            ),
            what="a source error counted",
        )
        await pod.produce(topic, [(b"c", b"3")])
        await eventually(
            lambda: view_is(pod.app, {b"a": b"1", b"b": b"2", b"c": b"3"}),
            what="the binding positioned again and reading",
        )
        assert _rebuilds(hydrator) == rebuilds
        assert hydrator.hydrated
        assert await http_status(port, "/readyz") == 200


async def test_a_nats_error_is_a_source_error_never_a_rebuild(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        bucket = await nc.jetstream().create_key_value(bucket="flags")
        await bucket.put("a", b"1")
        config = nats_config(server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"))
        async with serving_hydrated(config) as (hydrator, port):
            rebuilds = _rebuilds(hydrator)
            assert rebuilds == 1
            source = hydrator.feeds[0]._source
            assert isinstance(source, NatsSource)
            js = source._js
            assert js is not None
            errors = sample(hydrator, "nats_errors_total", binding="flags", kind="unreachable")
            # The idle fetch's pending check, answered by nobody (a server gone for a moment).
            js.consumer_info, raised = _fail_once(js.consumer_info, nats.errors.NoRespondersError())
            await eventually(lambda: bool(raised), what="the fault")
            await eventually(
                lambda: (
                    sample(hydrator, "nats_errors_total", binding="flags", kind="unreachable")
                    > errors
                ),
                what="a NATS error counted",
            )
            await bucket.put("b", b"2")
            await eventually(
                lambda: view_is(app_redis, {b"a": b"1", b"b": b"2"}), what="reading again"
            )
            assert _rebuilds(hydrator) == rebuilds
            assert hydrator.hydrated
            assert await http_status(port, "/readyz") == 200
    finally:
        await nc.close()
