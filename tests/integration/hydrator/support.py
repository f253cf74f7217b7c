"""Helpers for the hydrator's integration tests (and benchmarks): configs, producing records,
running a hydrator in-process, and reading what the app would read."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    RecordFormat,
)
from sidecar_hydrator.health import HealthServer
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.main import probes_of
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer

MIB = 2**20
Record = tuple[bytes | None, bytes | None]


def make_config(
    *,
    broker: KafkaBroker,
    redis: RedisServer,
    topics: Sequence[str],
    format: RecordFormat = "json",
    prefix: str = "",
    key_field: str | None = None,
    value_field: str | None = None,
    name: str = "b",
    kafka: KafkaConnection | None = None,
    **overrides: Any,
) -> HydratorConfig:
    """One binding ``name`` reading ``topics`` into ``redis``; ``kafka`` replaces the plain
    connection to ``broker`` (TLS, SASL, a wrong address)."""
    return HydratorConfig(
        redis_socket=str(redis.socket_path),
        bindings=(
            BindingSource(
                name=name,
                kafka=kafka or KafkaConnection(bootstrap_servers=(broker.bootstrap_servers,)),
                topics=tuple(topics),
                format=format,
                keys=KeyMapping(prefix=prefix, key_field=key_field, value_field=value_field),
            ),
        ),
        **overrides,
    )


@contextlib.asynccontextmanager
async def running(config: HydratorConfig) -> AsyncIterator[Hydrator]:
    """A hydrator running in this event loop; stopped (as on SIGTERM) when the block ends."""
    hydrator = Hydrator(config)
    stop = asyncio.Event()
    task = asyncio.create_task(hydrator.run(stop))
    try:
        yield hydrator
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


@contextlib.asynccontextmanager
async def serving(config: HydratorConfig) -> AsyncIterator[tuple[Hydrator, int]]:
    """:func:`running`, plus its probes and metrics on a free loopback port, wired as the
    sidecar's process wires them: yields ``(hydrator, port)``."""
    async with running(config) as hydrator:
        server = HealthServer(
            metrics=hydrator.metrics, probes=probes_of(hydrator), port=0, host="127.0.0.1"
        )
        await server.start()
        try:
            yield hydrator, server.port
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def running_hydrated(
    config: HydratorConfig, *, within: float = 30.0
) -> AsyncIterator[Hydrator]:
    """:func:`running`, entered once the view is :func:`hydrated`: most tests act on a Pod
    that has its complete view."""
    async with running(config) as hydrator:
        await hydrated(hydrator, within=within)
        yield hydrator


@contextlib.asynccontextmanager
async def serving_hydrated(
    config: HydratorConfig, *, within: float = 30.0
) -> AsyncIterator[tuple[Hydrator, int]]:
    """:func:`serving`, entered once the view is :func:`hydrated`."""
    async with serving(config) as (hydrator, port):
        await hydrated(hydrator, within=within)
        yield hydrator, port


async def hydrate_once(config: HydratorConfig) -> None:
    """Run a hydrator until its view is complete, then stop it (as at SIGTERM): the store a
    restarted hydrator finds."""
    async with running_hydrated(config):
        pass


async def rebuilt(hydrator: Hydrator, *, reason: str, count: int = 1, within: float = 20.0) -> None:
    """Wait until the hydrator has counted ``count`` rebuilds for ``reason``."""
    await eventually(
        lambda: sample(hydrator, "rebuilds_total", reason=reason) == count,
        within=within,
        what=f"rebuild {count} ({reason})",
    )


async def delete_records_before(broker: KafkaBroker, topic: str, offset: int) -> None:
    """Retention, on demand: the records of partition 0 before ``offset`` are gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, 0): RecordsToDelete(before_offset=offset)}, timeout_ms=10_000
        )
    finally:
        await admin.close()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """``GET path`` on the hydrator's port: ``(status, body)``, ``(0, b"")`` when nothing
    answers. Each connection carries one response and is closed (see ``health.py``)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, b""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=2)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def http_status(port: int, path: str) -> int:
    """The status code of ``GET path`` on the hydrator's port (0 when nothing answers)."""
    return (await http_get(port, path))[0]


async def produce(
    broker: KafkaBroker,
    topic: str,
    records: Iterable[Record],
    *,
    partition: int | None = None,
    compression: str | None = None,
    max_request_size: int = MIB,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers,
        compression_type=compression,
        acks="all",
        linger_ms=5,
        max_request_size=max_request_size,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=k, value=v, partition=partition) for k, v in records
        ]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await asyncio.sleep(interval)


async def hydrated(hydrator: Hydrator, *, within: float = 30.0) -> None:
    """Wait until the served view is complete and every feed reached its snapshot."""
    await eventually(
        lambda: hydrator.hydrated and all(f.caught_up.is_set() for f in hydrator.feeds),
        within=within,
        what="hydration",
    )


async def view(client: aioredis.Redis, prefix: bytes) -> dict[bytes, bytes]:
    """Every string key under ``prefix`` with its value, as the app would read them (MGET
    returns nil for the offsets and metadata hashes, so they drop out)."""
    keys = [k async for k in client.scan_iter(match=prefix + b"*", count=10_000)]
    if not keys:
        return {}
    values = await client.mget(keys)
    return {k: bytes(v) for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}


async def value_is(client: aioredis.Redis, key: bytes, value: bytes) -> bool:
    """Whether the app reads ``value`` at ``key`` (a predicate for :func:`eventually`)."""
    return bool(await client.get(key) == value)


async def view_is(
    client: aioredis.Redis, expected: dict[bytes, bytes], *, prefix: bytes = b""
) -> bool:
    """Whether the app's view under ``prefix`` is exactly ``expected``."""
    return await view(client, prefix) == expected


async def holds(client: aioredis.Redis, prefix: bytes, count: int) -> bool:
    """Whether the view under ``prefix`` has ``count`` keys."""
    return len(await view(client, prefix)) == count


def sample(hydrator: Hydrator, name: str, **labels: str) -> float:
    """A metric's current value from the hydrator's own registry (0 when never set), summed
    over the series that carry ``labels`` (others, such as ``source``, may be left out)."""
    full = f"sidecar_state_hydrator_{name}"
    return sum(
        s.value
        for metric in hydrator.metrics.registry.collect()
        for s in metric.samples
        if s.name == full and all(s.labels.get(k) == v for k, v in labels.items())
    )


@dataclasses.dataclass(frozen=True)
class KafkaPod:
    """What most hydrator tests arrange: the session's broker, topics of their own on it, this
    test's Redis (run as the operator runs it) and the app's client on its socket."""

    broker: KafkaBroker
    redis: RedisServer
    app: aioredis.Redis
    new_topic: Callable[..., str]

    async def topic_with(
        self, records: Iterable[Record], *, max_request_size: int = MIB, **topic: Any
    ) -> str:
        """A new topic (``make_topic``'s options: partitions, compacted, config, suffix)
        already holding ``records``."""
        name = self.new_topic(**topic)
        await produce(self.broker, name, records, max_request_size=max_request_size)
        return name

    async def produce(self, topic: str, records: Iterable[Record], **options: Any) -> None:
        """:func:`produce` to this Pod's broker."""
        await produce(self.broker, topic, records, **options)

    async def delete_before(self, topic: str, offset: int) -> None:
        """:func:`delete_records_before` on this Pod's broker (partition 0)."""
        await delete_records_before(self.broker, topic, offset)

    def config(self, *topics: str, **options: Any) -> HydratorConfig:
        """:func:`make_config` of one binding ``b`` reading ``topics`` into this Pod's Redis."""
        return make_config(broker=self.broker, redis=self.redis, topics=topics, **options)
