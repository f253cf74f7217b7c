"""The hydrator against a real broker and a real Redis: what the app reads with GET."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import redis.asyncio as aioredis

from sidecar_state_stack.kafka_broker import FAST_COMPACTION_CONFIG
from tests.integration.hydrator.support import (
    MIB,
    KafkaPod,
    eventually,
    running_hydrated,
    sample,
    value_is,
    view,
)

pytestmark = pytest.mark.timeout(60)


def flag(key: str, enabled: object) -> bytes:
    return json.dumps({"id": key, "enabled": enabled}).encode()


async def test_bootstrap_equals_the_compacted_state(pod: KafkaPod) -> None:
    topic = pod.new_topic(partitions=3, config=FAST_COMPACTION_CONFIG)
    rng = random.Random(7)
    expected: dict[bytes, bytes] = {}
    records: list[tuple[bytes | None, bytes | None]] = []
    for round_ in range(3):  # every key written three times, some deleted on the way
        for i in range(2000):
            key = f"f{i}"
            if round_ == 2 and rng.random() < 0.1:
                records.append((key.encode(), None))
                expected.pop(f"flag:{key}".encode(), None)
            else:
                value = rng.choice([True, False, "beta", 3])
                records.append((key.encode(), flag(key, value)))
                expected[f"flag:{key}".encode()] = json.dumps(value).encode()
                if isinstance(value, str):
                    expected[f"flag:{key}".encode()] = value.encode()
    await pod.produce(topic, records)
    config = pod.config(topic, prefix="flag:", key_field="id", value_field="enabled")
    async with running_hydrated(config) as hydrator:
        assert await view(pod.app, b"flag:") == expected
        meta = await pod.app.hgetall(config.metadata_key)
        assert meta[b"hydrated"] == b"1"
        offsets = await pod.app.hgetall(config.offsets_key)
        assert sum(int(v) for v in offsets.values()) == len(records)
        # The cleaner may have compacted some of the history away: fewer reads, same view.
        assert 2000 <= sample(hydrator, "records_read_total", binding="b") <= len(records)
        assert sample(hydrator, "rebuilds_total", reason="empty") == 1


async def test_live_update_tombstone_and_empty_value(pod: KafkaPod) -> None:
    topic = await pod.topic_with([(b"a", b"1"), (b"b", b"2")])
    config = pod.config(topic, format="raw")
    async with running_hydrated(config):
        assert await pod.app.get(b"a") == b"1"

        await pod.produce(topic, [(b"a", b"10")])
        await eventually(lambda: value_is(pod.app, b"a", b"10"), what="live update")

        await pod.produce(topic, [(b"b", None), (b"c", b"")])
        await eventually(lambda: value_is(pod.app, b"c", b""), what="empty value")
        assert await pod.app.get(b"b") is None
        assert await pod.app.exists(b"b") == 0
        meta = await pod.app.hgetall(config.metadata_key)
        assert int(meta[b"last_event_ms"]) > 0


async def test_debezium_create_update_delete_snapshot(pod: KafkaPod) -> None:
    topic = pod.new_topic()

    def event(op: str, pk: int, before: object, after: object) -> tuple[bytes, bytes]:
        key = json.dumps({"schema": {"type": "struct"}, "payload": {"id": pk}}).encode()
        payload = {"op": op, "before": before, "after": after, "source": {}, "ts_ms": 1}
        value = {"schema": {"type": "struct"}, "payload": payload}
        return key, json.dumps(value).encode()

    await pod.produce(
        topic,
        [
            event("r", 1, None, {"id": 1, "name": "lamp"}),  # snapshot read
            event("r", 2, None, {"id": 2, "name": "desk"}),
            event("c", 3, None, {"id": 3, "name": "chair"}),
            event("u", 1, {"id": 1, "name": "lamp"}, {"id": 1, "name": "LAMP"}),
            event("d", 2, {"id": 2, "name": "desk"}, None),
            (json.dumps({"id": 2}).encode(), None),  # Debezium's tombstone after a delete
        ],
    )
    config = pod.config(topic, format="debezium", prefix="product:")
    async with running_hydrated(config) as hydrator:
        assert await view(pod.app, b"product:") == {
            b"product:1": b'{"id":1,"name":"LAMP"}',
            b"product:3": b'{"id":3,"name":"chair"}',
        }
        await pod.produce(topic, [event("d", 3, {"id": 3}, None)])
        await eventually(lambda: _missing(pod.app, b"product:3"), what="live delete")
        assert sample(hydrator, "bad_records_total", binding="b", kind="bad_envelope") == 0


async def test_malformed_records_are_skipped_counted_and_later_records_apply(pod: KafkaPod) -> None:
    topic = pod.new_topic(config={"max.message.bytes": str(8 * MIB)})
    await pod.produce(
        topic,
        [
            # Compacted topics only take keyed records; the key field inside the value wins.
            (b"1", flag("good-1", True)),
            (b"2", b"this is not json"),
            (b"3", json.dumps({"name": "no id field"}).encode()),
            (b"4", b'{"id": "bad-utf8", "enabled": "\xff\xfe"}'),
            # Valid JSON whose key no UTF-8 can hold: once, this exception stopped the feed.
            (b"4s", b'{"id": "\\ud800", "enabled": true}'),
            (b"5", flag("huge", "x" * (5 * MIB))),
            (b"6", flag("good-2", False)),
        ],
        max_request_size=8 * MIB,
    )
    config = pod.config(topic, prefix="flag:", key_field="id")
    async with running_hydrated(config) as hydrator:
        assert set(await view(pod.app, b"flag:")) == {b"flag:good-1", b"flag:good-2"}
        counts = {"not_json": 1, "missing_key": 1, "invalid_utf8": 2, "too_large": 1}
        for kind, count in counts.items():
            assert sample(hydrator, "bad_records_total", binding="b", kind=kind) == count, kind
        # Consumed past the bad ones: a live record after them still applies.
        await pod.produce(topic, [(b"7", flag("good-3", True))])
        await eventually(lambda: _exists(pod.app, b"flag:good-3"), what="record after bad")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_batches(codec: str, pod: KafkaPod) -> None:
    topic = pod.new_topic(suffix=codec)
    records = [(f"k{i}".encode(), f"value {i} ".encode() * 20) for i in range(500)]
    await pod.produce(topic, records, compression=codec)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as hydrator:
        assert await view(pod.app, b"k") == dict(records)
        assert sample(hydrator, "bad_records_total", binding="b", kind="not_json") == 0


async def test_partitions_added_later_are_picked_up(pod: KafkaPod) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    topic = await pod.topic_with([(b"p0", b"0")], partitions=1)
    config = pod.config(topic, format="raw", metadata_refresh_ms=300)
    async with running_hydrated(config):
        admin = AIOKafkaAdminClient(bootstrap_servers=pod.broker.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=3)})
        finally:
            await admin.close()
        await asyncio.sleep(0.5)  # let the partition leaders settle before producing to them
        await pod.produce(topic, [(b"p2", b"2")], partition=2)
        await eventually(lambda: value_is(pod.app, b"p2", b"2"), what="new partition's record")
        offsets = await pod.app.hgetall(config.offsets_key)
        assert offsets[f"b/{topic}/2".encode()] == b"1"


async def _exists(client: aioredis.Redis, key: bytes) -> bool:
    return bool(await client.exists(key))


async def _missing(client: aioredis.Redis, key: bytes) -> bool:
    return not await client.exists(key)


async def test_applied_batches_are_announced_on_the_bindings_channel(pod: KafkaPod) -> None:
    topic = await pod.topic_with([(b"old", flag("old", True))])
    config = pod.config(topic, prefix="flag:", key_field="id")
    async with running_hydrated(config):
        subscriber = pod.app.pubsub()
        await subscriber.subscribe("sidecar-state:changes:b")
        assert (await subscriber.get_message(timeout=5))["type"] == "subscribe"
        await pod.produce(topic, [(b"new", flag("new", False)), (b"old", None)])
        announced: dict[str, set[str]] = {"set": set(), "deleted": set()}
        for _ in range(100):
            message = await subscriber.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is None:
                if announced == {"set": {"flag:new"}, "deleted": {"flag:old"}}:
                    break
                continue
            body = json.loads(message["data"])
            assert body["binding"] == "b"
            # Published with its batch: when it arrives, the app already reads that view.
            for key in body["set"]:
                assert await pod.app.get(key) is not None, key
            for key in body["deleted"]:
                assert await pod.app.get(key) is None, key
            announced["set"].update(body["set"])
            announced["deleted"].update(body["deleted"])
        assert announced == {"set": {"flag:new"}, "deleted": {"flag:old"}}
        await subscriber.aclose()
