"""The applier is source-neutral: a source that is not Kafka (an in-memory list, standing in
for the next one, NATS) hydrates a real Redis through the same Hydrator, with the same
bookkeeping. Kafka itself is tested everywhere else, against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from sidecar_hydrator.config import BindingSource, HydratorConfig, KafkaConnection, KeyMapping
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.records import RecordLike
from sidecar_hydrator.source import Partition, Snapshot
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.hydrator.support import eventually, view

pytestmark = pytest.mark.timeout(30)


@dataclass(frozen=True)
class Shard:
    topic: str
    partition: int


@dataclass(frozen=True)
class Entry:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


class ListSource:
    """Ordered runs from memory. Offsets have gaps (positions past "markers"), as Kafka's do."""

    #: Nothing ever goes wrong reading a list.
    problem = None

    def __init__(self, entries: Sequence[Entry], *, end: int) -> None:
        self.shard = Shard("orders", 0)
        self._entries = list(entries)
        self._end = end
        self._position = 0

    async def snapshot(self, stop: asyncio.Event) -> Snapshot:
        return Snapshot(
            beginnings={self.shard: 0},
            ends={self.shard: self._end},
            identities={"orders": "stream-1"},
            taken_ms=time.time() * 1000,
        )

    def assign(self, starts: Mapping[Partition, int]) -> None:
        self._position = starts[self.shard]

    async def fetch(
        self, *, max_records: int, timeout_ms: int, stop: asyncio.Event
    ) -> Mapping[Partition, Sequence[RecordLike]]:
        run = [e for e in self._entries if e.offset >= self._position][:max_records]
        if not run:
            self._position = self._end  # the tail carries no records
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self._position = run[-1].offset + 1
        return {self.shard: run}

    async def position(self, partition: Partition) -> int:
        return self._position

    def end(self, partition: Partition) -> int | None:
        return self._end

    def reported_at(self, partition: Partition) -> float | None:
        return time.time() * 1000

    def go_live(self) -> None:
        pass

    async def identities(self, stop: asyncio.Event) -> Mapping[str, str]:
        return {"orders": "stream-1"}

    async def added_partitions(
        self, known: Iterable[Partition], stop: asyncio.Event
    ) -> dict[Partition, int]:
        return {}

    async def close(self) -> None:
        pass


async def test_a_source_that_is_not_kafka_hydrates_through_the_same_applier(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    entries = [
        Entry("orders", 0, 0, b"a", b"1"),
        Entry("orders", 0, 1, b"b", b"2"),
        Entry("orders", 0, 5, b"a", None),  # offsets 2-4 carry no records
        Entry("orders", 0, 6, b"c", b"3"),
    ]
    source = ListSource(entries, end=9)
    config = HydratorConfig(
        redis_socket=str(redis_server.socket_path),
        bindings=(
            BindingSource(
                name="orders",
                kafka=KafkaConnection(bootstrap_servers=("unused:9092",)),
                topics=("orders",),
                format="raw",
                keys=KeyMapping(prefix="o:"),
            ),
        ),
    )
    hydrator = Hydrator(config, sources={"orders": source})
    stop = asyncio.Event()
    task = asyncio.create_task(hydrator.run(stop))
    try:
        await eventually(lambda: hydrator.hydrated, within=10, what="hydration")
        assert await view(app_redis, b"o:") == {b"o:b": b"2", b"o:c": b"3"}
        await eventually(
            lambda: _offset_is(app_redis, config.offsets_key, b"9"), within=5, what="the tail"
        )
        await asyncio.sleep(1.2)
        meta = await app_redis.hgetall(config.metadata_key)
        assert (meta[b"hydrated"], meta[b"lag"]) == (b"1", b"0")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def _offset_is(client: aioredis.Redis, key: str, value: bytes) -> bool:
    return (await client.hgetall(key)).get(b"orders/orders/0") == value
