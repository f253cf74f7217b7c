"""A minimal Redis client for the request path: pipelined commands over the Unix socket.

Why not redis-py: every check costs one round trip, and redis-py's per-command machinery
(connection pool, retries, response callbacks, a coroutine per call) costs more than the round
trip itself on this path. One connection carries every request: Redis answers in order, so a
FIFO of waiters is all the bookkeeping needed, and ``hiredis`` (already the hydrator's parser)
does the parsing in C.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis


class StoreUnavailable(ConnectionError):
    """Redis did not answer (not running, socket gone, too slow, or an error reply)."""


def encode_command(args: Sequence[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Waiter:
    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []


class _RespProtocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self._reader = hiredis.Reader()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        self.alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.alive = True

    def send(self, payload: bytes, waiter: _Waiter) -> None:
        assert self._transport is not None
        self._waiters.append(waiter)
        self._transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not self._waiters:  # a reply nobody asked for: the stream is out of step
                self.close()
                return
            waiter = self._waiters[0]
            waiter.replies.append(reply)
            waiter.remaining -= 1
            if waiter.remaining == 0:
                self._waiters.popleft()
                if not waiter.future.done():  # a timed-out waiter still takes its replies
                    waiter.future.set_result(waiter.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(StoreUnavailable("Redis closed the connection"))
        self._on_lost(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RedisPipe:
    """``execute([[b"GET", key], ...])`` -> a future of the replies, in one round trip."""

    def __init__(self, *, socket_path: str, timeout_s: float) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queued: list[tuple[bytes, _Waiter]] = []

    def execute(self, commands: Sequence[Sequence[bytes]]) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        waiter = _Waiter(future, len(commands))
        payload = b"".join(encode_command(c) for c in commands)
        timer = loop.call_later(self.timeout_s, self._expire, future)
        future.add_done_callback(lambda _: timer.cancel())
        if self._protocol is not None and self._protocol.alive:
            self._protocol.send(payload, waiter)
        else:
            self._queued.append((payload, waiter))
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())
        return future

    @staticmethod
    def _expire(future: asyncio.Future[list[Any]]) -> None:
        if not future.done():
            future.set_exception(StoreUnavailable("Redis did not answer in time"))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: _RespProtocol(self._lost), self.socket_path
            )
        except OSError as exc:
            queued, self._queued = self._queued, []
            for _, waiter in queued:
                if not waiter.future.done():
                    waiter.future.set_exception(StoreUnavailable(f"Redis unreachable: {exc}"))
            return
        finally:
            self._connecting = None
        self._protocol = protocol
        queued, self._queued = self._queued, []
        for payload, waiter in queued:
            if not waiter.future.done():
                protocol.send(payload, waiter)

    def _lost(self, protocol: _RespProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def ping(self) -> bool:
        try:
            replies = await self.execute([[b"PING"]])
        except StoreUnavailable:
            return False
        return bool(replies and replies[0] == b"PONG")

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
