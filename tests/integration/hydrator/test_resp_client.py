"""The hydrator's RESP client (:mod:`sidecar_hydrator.resp`) against a real redis-server.

What the store relies on: replies and error replies as Redis sends them (typed by code, in
their place in a pipeline or transaction), a transaction refused while queued raising the
refusal, ACL users and databases, and connections that fail loudly, time out, and come back
through ``on_connect``. The app's side is read with redis-py, as an app would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from sidecar_hydrator import resp
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config

pytestmark = pytest.mark.timeout(60)

MIB = 2**20


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[resp.Client]:
    client = resp.Client(path=str(redis_server.socket_path))
    try:
        yield client
    finally:
        await client.disconnect()


async def test_replies_come_back_as_redis_sends_them(
    client: resp.Client, app_redis: aioredis.Redis
) -> None:
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("SET", b"k", b"v") == b"OK"
    assert await client.execute("GET", "missing") is None
    assert await client.execute("HSET", "h", "a", 1, "b", 2.5) == 2
    assert resp.pairs(await client.execute("HGETALL", "h")) == {b"a": b"1", b"b": b"2.5"}
    info = resp.parse_info(await client.execute("INFO", "server"))
    assert info["run_id"] == (await app_redis.info("server"))["run_id"]
    # Binary-safe both ways.
    value = bytes(range(256)) * 4
    await client.execute("SET", b"\r\n\x00", value)
    assert await app_redis.get(b"\r\n\x00") == value


async def test_a_pipeline_returns_an_error_in_its_place_and_runs_the_rest(
    client: resp.Client, app_redis: aioredis.Redis
) -> None:
    replies = await client.pipeline(
        [("SET", "s", "1"), ("HGET", "s", "f"), ("SET", "t", "2"), ("NOSUCHCOMMAND",)]
    )
    assert replies[0] == replies[2] == b"OK"
    assert type(replies[1]) is resp.ResponseError and "WRONGTYPE" in str(replies[1])
    assert type(replies[3]) is resp.ResponseError and "unknown command" in str(replies[3])
    assert await app_redis.mget([b"s", b"t"]) == [b"1", b"2"]
    with pytest.raises(resp.ResponseError, match="WRONGTYPE"):
        resp.raise_first(replies)
    assert await client.pipeline([]) == []


async def test_a_transaction_runs_as_one_and_keeps_runtime_errors_in_place(
    client: resp.Client, app_redis: aioredis.Redis
) -> None:
    replies = await client.transaction([("SET", "a", "1"), ("HGET", "a", "f"), ("INCR", "n")])
    assert replies[0] == b"OK" and replies[2] == 1
    assert isinstance(replies[1], resp.ResponseError)
    assert await app_redis.get(b"a") == b"1"
    assert await client.transaction([]) == []


async def test_a_command_refused_while_queued_discards_the_transaction_and_is_raised(
    client: resp.Client, app_redis: aioredis.Redis
) -> None:
    with pytest.raises(resp.ResponseError, match="wrong number of arguments"):
        await client.transaction([("SET", "x", "1"), ("GET",)])
    assert await app_redis.exists(b"x") == 0


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=2 * MIB)])
async def test_a_full_redis_refuses_writes_as_out_of_memory_and_allows_deletes(
    client: resp.Client, app_redis: aioredis.Redis
) -> None:
    for i in range(1000):
        try:
            await client.execute("SET", f"big{i}", b"x" * 65536)
        except resp.OutOfMemoryError:
            break
    else:
        pytest.fail("Redis never refused a write")
    with pytest.raises(resp.OutOfMemoryError):
        await client.transaction([("DEL", "big0"), ("MSET", "a", "1", "b", "2")])
    assert await app_redis.exists(b"big0") == 1  # the whole transaction was discarded
    replies = await client.pipeline([("SET", "a", "1"), ("UNLINK", "big0")])
    assert isinstance(replies[0], resp.OutOfMemoryError)
    assert replies[1] == 1


async def test_acl_users_databases_and_refusals(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    await app_redis.execute_command("ACL", "SETUSER", "writer", "on", ">secret", "~*", "+@all")
    await app_redis.execute_command("ACL", "SETUSER", "reader", "on", ">r", "~*", "+@read")
    path = str(redis_server.socket_path)
    writer = resp.Client(path=path, db=1, username="writer", password="secret")
    reader = resp.Client(path=path, username="reader", password="r")
    wrong = resp.Client(path=path, username="writer", password="guessed")
    try:
        await writer.execute("SET", "k", "in db 1")
        async with aioredis.Redis(unix_socket_path=path, db=1) as db1:
            assert await db1.get(b"k") == b"in db 1"
        assert await app_redis.exists(b"k") == 0
        with pytest.raises(resp.NoPermissionError):
            await reader.execute("SET", "k", "x")
        with pytest.raises(resp.NoPermissionError):  # refused while queued
            await reader.transaction([("GET", "k"), ("SET", "k", "x")])
        with pytest.raises(resp.AuthenticationError):
            await wrong.execute("PING")
    finally:
        for client in (writer, reader, wrong):
            await client.disconnect()


async def test_concurrent_requests_on_one_client_get_their_own_replies(
    client: resp.Client,
) -> None:
    async def incr_then_get() -> tuple[Any, Any]:
        n, seen = await client.transaction([("INCR", "n"), ("GET", "n")])
        return n, seen

    results = await asyncio.gather(*(incr_then_get() for _ in range(200)))
    assert sorted(n for n, _ in results) == list(range(1, 201))
    assert all(seen == str(n).encode() for n, seen in results)


async def test_no_server_is_a_connection_error(redis_server: RedisServer) -> None:
    client = resp.Client(path=str(redis_server.socket_path) + ".absent")
    with pytest.raises(resp.ConnectionError) as raised:
        await client.execute("PING")
    assert type(raised.value).__name__ == "ConnectionError"  # the kind the store reports


async def test_a_lost_connection_fails_what_was_in_flight_and_the_next_command_reconnects(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    connections: list[resp.Connection] = []

    async def on_connect(connection: resp.Connection) -> None:
        connections.append(connection)
        assert await connection.call("PING") == b"PONG"

    client = resp.Client(path=str(redis_server.socket_path), timeout=30, on_connect=on_connect)
    try:
        assert await client.execute("PING") == b"PONG"
        blocked = asyncio.ensure_future(client.execute("BLPOP", "never", 0))
        await _eventually(lambda: _blocked_clients(app_redis, 1))
        redis_server.restart()  # the sidecar restarts: empty, same socket
        with pytest.raises(resp.ConnectionError):
            await blocked
        assert len(connections) == 1
        assert await client.execute("SET", "after", "1") == b"OK"
        assert len(connections) == 2  # on_connect ran before the SET went out
    finally:
        await client.disconnect()


async def test_on_connect_refusing_a_server_stops_every_command_reaching_it(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    class Refused(resp.ConnectionError):
        pass

    async def refuse(connection: resp.Connection) -> None:
        raise Refused("not the Redis the view was built in")

    client = resp.Client(path=str(redis_server.socket_path), on_connect=refuse)
    try:
        for _ in range(2):  # every attempt connects again, and is refused again
            with pytest.raises(Refused):
                await client.transaction([("SET", "k", "v")])
        assert await app_redis.exists(b"k") == 0
    finally:
        await client.disconnect()


async def test_no_reply_in_time_is_a_timeout_and_the_next_command_uses_a_new_connection(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    connections: list[resp.Connection] = []

    async def on_connect(connection: resp.Connection) -> None:
        connections.append(connection)

    client = resp.Client(path=str(redis_server.socket_path), timeout=0.3, on_connect=on_connect)
    try:
        with pytest.raises(resp.TimeoutError) as raised:
            await client.execute("BLPOP", "never", 0)
        assert type(raised.value).__name__ == "TimeoutError"
        assert await client.execute("PING") == b"PONG"
        assert len(connections) == 2
        await _eventually(lambda: _blocked_clients(app_redis, 0))  # the old one was closed
    finally:
        await client.disconnect()


async def test_disconnect_closes_and_the_client_connects_again_on_use(
    client: resp.Client, app_redis: aioredis.Redis
) -> None:
    await client.execute("CLIENT", "SETNAME", "hydrator-test")
    assert "hydrator-test" in await _client_names(app_redis)
    await client.disconnect()
    await _eventually(lambda: _lacks_name(app_redis, "hydrator-test"))
    assert await client.execute("PING") == b"PONG"


async def _blocked_clients(app: aioredis.Redis, count: int) -> bool:
    return int((await app.info("clients"))["blocked_clients"]) == count


async def _client_names(app: aioredis.Redis) -> set[str]:
    return {c.get("name", "") for c in await app.client_list()}


async def _lacks_name(app: aioredis.Redis, name: str) -> bool:
    return name not in await _client_names(app)


async def _eventually(check: Callable[[], Any], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)
