"""The hydrator's RESP client, its protocol half: encoding commands, typing error replies,
and matching replies to requests as bytes arrive.

The framing tests talk to the other end of a socket pair that plays back bytes written here
(no Redis behind it: what Redis answers is checked in
``tests/integration/hydrator/test_resp_client.py``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import hiredis
import pytest

from sidecar_hydrator import resp


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    packed = resp.pack([("SET", b"k\r\n", 12), ("HSET", "h", "f", 1.5)])
    assert packed == (
        b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"
        b"*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$3\r\n1.5\r\n"
    )
    assert resp.pack([]) == b""


@pytest.mark.parametrize(
    ("reply", "kind", "message"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", resp.OutOfMemoryError,
         "command not allowed when used memory > 'maxmemory'."),
        ("NOPERM User default has no permissions to run the 'hset' command",
         resp.NoPermissionError, "User default has no permissions to run the 'hset' command"),
        ("EXECABORT Transaction discarded because of previous errors.", resp.ExecAbortError,
         "Transaction discarded because of previous errors."),
        ("NOSCRIPT No matching script.", resp.NoScriptError, "No matching script."),
        ("READONLY You can't write against a read only replica.", resp.ReadOnlyError,
         "You can't write against a read only replica."),
        ("LOADING Redis is loading the dataset in memory", resp.BusyLoadingError,
         "Redis is loading the dataset in memory"),
        ("WRONGPASS invalid username-password pair or user is disabled.",
         resp.AuthenticationError, "invalid username-password pair or user is disabled."),
        ("NOAUTH Authentication required.", resp.AuthenticationError, "Authentication required."),
        ("ERR max number of clients reached", resp.ConnectionError,
         "max number of clients reached"),
        ("ERR unknown command 'NOPE'", resp.ResponseError, "unknown command 'NOPE'"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value",
         resp.ResponseError, "WRONGTYPE Operation against a key holding the wrong kind of value"),
    ],
)  # fmt: skip
def test_error_replies_are_typed_by_their_code_as_redis_py_types_them(
    reply: str, kind: type[resp.RedisError], message: str
) -> None:
    error = resp.parse_error(reply)
    # The class name is what the store reports (store_failures_total{kind=...}).
    assert type(error) is kind
    assert str(error) == message


def test_the_error_classes_keep_redis_pys_hierarchy() -> None:
    assert issubclass(resp.OutOfMemoryError, resp.ResponseError)
    assert issubclass(resp.NoPermissionError, resp.ResponseError)
    assert issubclass(resp.AuthenticationError, resp.ConnectionError)
    assert issubclass(resp.BusyLoadingError, resp.ConnectionError)
    assert all(
        issubclass(c, resp.RedisError)
        for c in (resp.ConnectionError, resp.TimeoutError, resp.ResponseError)
    )
    # Not the builtins: a socket's own errors (OSError) are a different thing.
    assert not issubclass(resp.ConnectionError, OSError)
    assert not issubclass(resp.TimeoutError, OSError)


def test_nested_error_replies_come_back_typed_in_their_place() -> None:
    reader = hiredis.Reader(protocolError=resp.InvalidResponse, replyError=resp.parse_error)
    reader.feed(b"*3\r\n+OK\r\n-OOM full\r\n:7\r\n")
    ok, refused, seven = reader.gets()
    assert (ok, seven) == (b"OK", 7)
    assert isinstance(refused, resp.OutOfMemoryError)


def test_raise_first_raises_the_first_error_only() -> None:
    assert resp.raise_first([b"OK", 1, None]) == [b"OK", 1, None]
    first, second = resp.NoPermissionError("a"), resp.OutOfMemoryError("b")
    with pytest.raises(resp.NoPermissionError) as raised:
        resp.raise_first([b"OK", first, second])
    assert raised.value is first


def test_pairs_and_info() -> None:
    assert resp.pairs([b"a", b"1", b"b", b"2"]) == {b"a": b"1", b"b": b"2"}
    assert resp.pairs([]) == {}
    info = b"# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n\r\n# Memory\r\nused_memory:12\r\n"
    parsed = resp.parse_info(info)
    assert parsed == {"redis_version": "7.0.15", "run_id": "abc", "used_memory": "12"}


# -- framing: replies matched to requests, over a socket pair ---------------------------------


class Peer:
    """The far end of the socket: reads what the client sent, writes back chosen bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def received(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < size:
            data += await loop.sock_recv(self.sock, 65536)
        return data

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[resp.Connection, Peer]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_unix_connection(
        lambda: resp.Connection(timeout=5.0), sock=ours
    )
    try:
        yield connection, Peer(theirs)
    finally:
        await connection.close()
        theirs.close()


async def test_replies_split_anywhere_reach_their_requests_in_order(
    pair: tuple[resp.Connection, Peer],
) -> None:
    connection, peer = pair
    first = connection.request(resp.pack([("GET", "a"), ("GET", "b")]), 2)
    second = connection.request(resp.pack([("PING",)]), 1)
    await peer.received(len(resp.pack([("GET", "a"), ("GET", "b"), ("PING",)])))
    answer = b"$1\r\nx\r\n$-1\r\n+PONG\r\n"
    for i in range(len(answer)):  # one byte at a time: every split point
        await peer.send(answer[i : i + 1])
    assert await first == [b"x", None]
    assert await second == [b"PONG"]


async def test_a_cancelled_request_still_takes_its_replies(
    pair: tuple[resp.Connection, Peer],
) -> None:
    """Redis answers what it was sent: a caller that gave up must not shift the replies."""
    connection, peer = pair
    abandoned = connection.request(resp.pack([("GET", "a")]), 1)
    abandoned.cancel()
    wanted = connection.request(resp.pack([("GET", "b")]), 1)
    await peer.send(b"$1\r\na\r\n$1\r\nb\r\n")
    assert await wanted == [b"b"]


async def test_a_lost_connection_fails_every_request_in_flight(
    pair: tuple[resp.Connection, Peer],
) -> None:
    connection, peer = pair
    in_flight = [connection.request(resp.pack([("GET", "a")]), 1) for _ in range(3)]
    await peer.send(b"$1\r\na\r\n")
    peer.sock.close()
    assert await in_flight[0] == [b"a"]
    for request in in_flight[1:]:
        with pytest.raises(resp.ConnectionError):
            await request
    assert not connection.alive
    with pytest.raises(resp.ConnectionError):  # and nothing is sent on it afterwards
        await connection.request(resp.pack([("PING",)]), 1)


async def test_a_reply_nobody_asked_for_drops_the_connection(
    pair: tuple[resp.Connection, Peer],
) -> None:
    connection, peer = pair
    await peer.send(b"+OK\r\n")
    await _until(lambda: not connection.alive)


async def test_bytes_that_are_not_resp_drop_the_connection(
    pair: tuple[resp.Connection, Peer],
) -> None:
    connection, peer = pair
    request = connection.request(resp.pack([("PING",)]), 1)
    await peer.send(b"?garbage\r\n")
    with pytest.raises(resp.InvalidResponse):
        await request
    assert not connection.alive


async def test_no_answer_in_time_is_a_timeout_and_drops_the_connection(
    pair: tuple[resp.Connection, Peer],
) -> None:
    connection, _ = pair
    connection.timeout = 0.05
    with pytest.raises(resp.TimeoutError):
        await connection.call("PING")
    assert not connection.alive


async def test_call_raises_an_error_reply(pair: tuple[resp.Connection, Peer]) -> None:
    connection, peer = pair
    call = asyncio.ensure_future(connection.call("INFO", "server"))
    await peer.send(b"-NOPERM no permissions\r\n")
    with pytest.raises(resp.NoPermissionError):
        await call
    assert connection.alive  # an error reply is an answer: the stream is in step


async def _until(condition: Any, within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
