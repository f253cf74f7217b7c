"""Restarts and outages of every part: the hydrator, Redis, the broker; and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from localkube.ports import free_port
from sidecar_hydrator.config import CONFIG_ENV
from sidecar_state_stack.console_scripts import console_script
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config
from tests.integration.hydrator.support import (
    eventually,
    hydrated,
    make_config,
    produce,
    running,
    sample,
    value_is,
    view,
)

pytestmark = pytest.mark.timeout(90)


def records(n: int, *, tag: str = "v", start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"k{i:06d}".encode(), f"{tag}{i}".encode()) for i in range(start, start + n)]


async def test_restarted_hydrator_resumes_from_stored_offsets_without_rereading(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(partitions=2)
    await produce(kafka_broker, topic, records(3000))
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as first:
        await hydrated(first)
        assert sample(first, "records_read_total", binding="b") == 3000

    await produce(kafka_broker, topic, [(b"k000001", b"changed"), (b"new", b"1")])
    async with running(config) as second:
        await hydrated(second)
        await eventually(lambda: value_is(app_redis, b"new", b"1"), what="record after restart")
        # Only the two records produced while it was down were read: no re-read of the topic.
        assert sample(second, "records_read_total", binding="b") == 2
        assert sample(second, "rebuilds_total", reason="empty") == 0
        assert second.started and second.hydrated
    expected = dict(records(3000)) | {b"k000001": b"changed", b"new": b"1"}
    assert await view(app_redis, b"") == expected


async def test_redis_restarted_empty_is_rebuilt_and_readers_never_see_a_partial_table(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
) -> None:
    n = 30_000
    topic = make_topic(partitions=2)
    data = records(n)
    await produce(kafka_broker, topic, data)
    # Small bootstrap batches stretch the rebuild over many transactions: many chances for a
    # reader to catch a half-built table if the rebuild wrote into the served database.
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[topic],
        format="raw",
        bootstrap_batch_max_keys=500,
    )
    keys = [k for k, _ in data]
    seen: list[int] = []
    stop_reading = asyncio.Event()

    async def reader() -> None:
        client = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
        try:
            while not stop_reading.is_set():
                try:
                    values = await client.mget(keys)
                except (aioredis.ConnectionError, OSError):
                    await asyncio.sleep(0.005)  # Redis is restarting
                    continue
                present = [v for v in values if v is not None]
                seen.append(len(present))
                if len(present) == n:
                    assert values == [v for _, v in data]
                await asyncio.sleep(0)
        finally:
            await client.aclose()

    async with running(config) as hydrator:
        await hydrated(hydrator)
        reading = asyncio.create_task(reader())
        await eventually(lambda: len(seen) > 3, what="reader running")
        redis_server.restart()  # comes back empty, same socket
        await eventually(lambda: not hydrator.hydrated, within=10, what="loss noticed")
        await hydrated(hydrator)
        await eventually(lambda: seen[-1] == n, what="reader sees the rebuilt table")
        stop_reading.set()
        await reading
        assert sample(hydrator, "rebuilds_total", reason="empty") == 2  # first start + restart
    partial = sorted({c for c in seen if c not in (0, n)})
    assert not partial, f"a reader saw a partial table: {partial[:10]}"
    assert 0 in seen, "the reader never observed the restarted (empty) Redis"


async def test_broker_outage_keeps_serving_staleness_grows_and_nothing_is_lost(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(partitions=2)
    await produce(kafka_broker, topic, records(1000))
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as hydrator:
        await hydrated(hydrator)
        await produce(kafka_broker, topic, [(b"before-kill", b"1")])
        await eventually(lambda: value_is(app_redis, b"before-kill", b"1"), what="last record")
        assert (hydrator.staleness_seconds() or 99) < 1.0

        kafka_broker.kill()
        await asyncio.sleep(2.5)
        # Fail static: the app still reads everything, and can see how old it is.
        assert await app_redis.get(b"k000999") == b"v999"
        assert hydrator.hydrated
        staleness = hydrator.staleness_seconds()
        assert staleness is not None and staleness >= 2.0
        assert sample(hydrator, "staleness_seconds") >= 2.0
        meta = await app_redis.hgetall(config.metadata_key)
        assert int(meta[b"staleness_ms"]) >= 1000

        kafka_broker.start()  # same ports, same data
        await produce(kafka_broker, topic, [(b"after-restart", b"1"), (b"k000000", b"new")])
        await eventually(lambda: value_is(app_redis, b"after-restart", b"1"), what="catch-up")
        await eventually(
            lambda: (hydrator.staleness_seconds() or 99) < 1.0, what="staleness back to ~0"
        )
    expected = dict(records(1000)) | {
        b"before-kill": b"1",
        b"after-restart": b"1",
        b"k000000": b"new",
    }
    assert await view(app_redis, b"") == expected


async def test_stored_offset_gone_from_the_broker_triggers_a_rebuild(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic(compacted=False)
    await produce(kafka_broker, topic, records(100))
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with running(config) as first:
        await hydrated(first)
    # While the hydrator is away, new records arrive and retention deletes the old ones,
    # including some it never read.
    await produce(kafka_broker, topic, records(50, tag="w", start=100))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(topic, 0): RecordsToDelete(before_offset=120)}, timeout_ms=10_000
        )
    finally:
        await admin.close()
    async with running(config) as second:
        await eventually(
            lambda: sample(second, "rebuilds_total", reason="offset_out_of_range") == 1,
            what="rebuild",
        )
        await hydrated(second)
        # The rebuilt view is what the topic holds now: records 120..149 only.
        assert await view(app_redis, b"k") == dict(records(30, tag="w", start=120))


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * 2**20)])
async def test_full_redis_refuses_writes_counted_and_hydrator_carries_on(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    big = [(f"big{i}".encode(), b"x" * 100_000) for i in range(60)]  # ~6 MB > 3 MB maxmemory
    await produce(kafka_broker, topic, big)
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[topic],
        format="raw",
        bootstrap_batch_max_keys=5,
        live_batch_max_keys=5,
    )
    async with running(config) as hydrator:
        await eventually(
            lambda: sample(hydrator, "redis_oom_rejections_total") > 0, what="OOM counted"
        )
        # Deletes still work under OOM; they free memory and later writes get in again.
        await produce(kafka_broker, topic, [(k, None) for k, _ in big])
        await eventually(lambda: _gone(app_redis, b"big*"), what="deletes applied")
        await produce(kafka_broker, topic, [(b"small", b"fits")])
        await eventually(lambda: value_is(app_redis, b"small", b"fits"), what="write after OOM")


@pytest.mark.timeout(60)
async def test_sigterm_of_the_real_process_exits_promptly(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, records(200))
    port = free_port()
    config = make_config(
        broker=kafka_broker, redis=redis_server, topics=[topic], format="raw", http_port=port
    )
    env = {**os.environ, CONFIG_ENV: config.to_env_value()}
    command = [str(console_script("sidecar-state-hydrator"))]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        await eventually(lambda: _http(port, "/startupz") == 200, what="startupz", within=30)
        assert _http(port, "/readyz") == 200
        assert _http(port, "/livez") == 200
        assert await app_redis.get(b"k000199") == b"v199"
        # Keep it busy so SIGTERM lands while batches are flowing.
        writer = asyncio.create_task(produce(kafka_broker, topic, records(2000, tag="z")))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 5)
        elapsed = time.monotonic() - started
        await writer
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate()[1]
    assert code == 0, stderr[-2000:]
    print(f"exit after SIGTERM: {elapsed:.3f} s")
    assert elapsed < 2.0, f"took {elapsed:.2f} s to exit"
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line["msg"] == "stopped" for line in lines), stderr[-2000:]


def _http(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def _gone(client: aioredis.Redis, pattern: bytes) -> bool:
    return not [k async for k in client.scan_iter(match=pattern)]
