"""Restarts and outages of every part: the hydrator, Redis, the broker; and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import redis.asyncio as aioredis

from localkube.ports import free_port
from sidecar_hydrator.config import CONFIG_ENV
from sidecar_state_stack.console_scripts import console_script
from sidecar_state_stack.redis_server import sidecar_redis_config
from tests.integration.hydrator.support import (
    KafkaPod,
    eventually,
    hydrate_once,
    hydrated,
    rebuilt,
    running,
    running_hydrated,
    sample,
    value_is,
    view,
)

pytestmark = pytest.mark.timeout(90)


def records(n: int, *, tag: str = "v", start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"k{i:06d}".encode(), f"{tag}{i}".encode()) for i in range(start, start + n)]


async def test_restarted_hydrator_resumes_from_stored_offsets_without_rereading(
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with(records(3000), partitions=2)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as first:
        assert sample(first, "records_read_total", binding="b") == 3000

    await pod.produce(topic, [(b"k000001", b"changed"), (b"new", b"1")])
    async with running_hydrated(config) as second:
        await eventually(lambda: value_is(pod.app, b"new", b"1"), what="record after restart")
        # Only the two records produced while it was down were read: no re-read of the topic.
        assert sample(second, "records_read_total", binding="b") == 2
        assert sample(second, "rebuilds_total", reason="empty") == 0
        assert second.started and second.hydrated
    expected = dict(records(3000)) | {b"k000001": b"changed", b"new": b"1"}
    assert await view(pod.app, b"") == expected


async def test_redis_restarted_empty_is_rebuilt_and_readers_never_see_a_partial_table(
    pod: KafkaPod,
) -> None:
    n = 30_000
    data = records(n)
    topic = await pod.topic_with(data, partitions=2)
    # Small bootstrap batches stretch the rebuild over many transactions: many chances for a
    # reader to catch a half-built table if the rebuild wrote into the served database.
    config = pod.config(topic, format="raw", bootstrap_batch_max_keys=500)
    keys = [k for k, _ in data]
    seen: list[int] = []
    stop_reading = asyncio.Event()

    async def reader() -> None:
        client = aioredis.Redis(unix_socket_path=str(pod.redis.socket_path))
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

    async with running_hydrated(config) as hydrator:
        reading = asyncio.create_task(reader())
        await eventually(lambda: len(seen) > 3, what="reader running")
        pod.redis.restart()  # comes back empty, same socket
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
    pod: KafkaPod,
) -> None:
    topic = await pod.topic_with(records(1000), partitions=2)
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as hydrator:
        await pod.produce(topic, [(b"before-kill", b"1")])
        await eventually(lambda: value_is(pod.app, b"before-kill", b"1"), what="last record")
        assert (hydrator.staleness_seconds() or 99) < 1.0

        pod.broker.kill()
        await asyncio.sleep(2.5)
        # Fail static: the app still reads everything, and can see how old it is.
        assert await pod.app.get(b"k000999") == b"v999"
        assert hydrator.hydrated
        staleness = hydrator.staleness_seconds()
        assert staleness is not None and staleness >= 2.0
        assert sample(hydrator, "staleness_seconds") >= 2.0
        meta = await pod.app.hgetall(config.metadata_key)
        assert int(meta[b"staleness_ms"]) >= 1000

        pod.broker.start()  # same ports, same data
        await pod.produce(topic, [(b"after-restart", b"1"), (b"k000000", b"new")])
        await eventually(lambda: value_is(pod.app, b"after-restart", b"1"), what="catch-up")
        await eventually(
            lambda: (hydrator.staleness_seconds() or 99) < 1.0, what="staleness back to ~0"
        )
    expected = dict(records(1000)) | {
        b"before-kill": b"1",
        b"after-restart": b"1",
        b"k000000": b"new",
    }
    assert await view(pod.app, b"") == expected


async def test_stored_offset_gone_from_the_broker_triggers_a_rebuild(pod: KafkaPod) -> None:
    topic = await pod.topic_with(records(100), compacted=False)
    config = pod.config(topic, format="raw")
    await hydrate_once(config)
    # While the hydrator is away, new records arrive and retention deletes the old ones,
    # including some it never read.
    await pod.produce(topic, records(50, tag="w", start=100))
    await pod.delete_before(topic, 120)
    async with running(config) as second:
        await rebuilt(second, reason="offset_out_of_range")
        await hydrated(second)
        # The rebuilt view is what the topic holds now: records 120..149 only.
        assert await view(pod.app, b"k") == dict(records(30, tag="w", start=120))


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * 2**20)])
async def test_full_redis_refuses_writes_counted_and_hydrator_carries_on(pod: KafkaPod) -> None:
    topic = pod.new_topic()
    big = [(f"big{i}".encode(), b"x" * 100_000) for i in range(60)]  # ~6 MB > 3 MB maxmemory
    await pod.produce(topic, big)
    config = pod.config(topic, format="raw", bootstrap_batch_max_keys=5, live_batch_max_keys=5)
    async with running(config) as hydrator:
        await eventually(
            lambda: sample(hydrator, "redis_oom_rejections_total") > 0, what="OOM counted"
        )
        # Deletes still work under OOM; they free memory and later writes get in again.
        await pod.produce(topic, [(k, None) for k, _ in big])
        await eventually(lambda: _gone(pod.app, b"big*"), what="deletes applied")
        await pod.produce(topic, [(b"small", b"fits")])
        await eventually(lambda: value_is(pod.app, b"small", b"fits"), what="write after OOM")


@pytest.mark.timeout(60)
async def test_sigterm_of_the_real_process_exits_promptly(pod: KafkaPod) -> None:
    topic = await pod.topic_with(records(200))
    port = free_port()
    config = pod.config(topic, format="raw", http_port=port)
    env = {**os.environ, CONFIG_ENV: config.to_env_value()}
    command = [str(console_script("sidecar-state-hydrator"))]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        await eventually(lambda: _http(port, "/startupz") == 200, what="startupz", within=30)
        assert _http(port, "/readyz") == 200
        assert _http(port, "/livez") == 200
        assert await pod.app.get(b"k000199") == b"v199"
        # Keep it busy so SIGTERM lands while batches are flowing.
        writer = asyncio.create_task(pod.produce(topic, records(2000, tag="z")))
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
