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
from collections.abc import Callable, Sequence
from typing import Any

import hiredis


class StoreUnavailable(ConnectionError):
    """Redis did not answer (not running, socket gone, too slow, or an error reply)."""


def encode_command(args: Sequence[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


#: Called once per ``execute``: the replies in order, or why there are none.
Callback = Callable[["list[Any] | StoreUnavailable"], None]


class _Waiter:
    """One ``execute``: its replies so far, and the callback that gets them exactly once.

    A callback, not a future: a future's callbacks run on the next loop iteration, and on
    this path that iteration is a measurable part of the answer's latency.
    """

    __slots__ = ("callback", "done", "remaining", "replies", "timer")

    def __init__(self, callback: Callback, count: int) -> None:
        self.callback = callback
        self.remaining = count
        self.replies: list[Any] = []
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def finish(self, result: list[Any] | StoreUnavailable) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.callback(result)


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
                waiter.finish(waiter.replies)  # a timed-out waiter still takes its replies

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        while self._waiters:
            self._waiters.popleft().finish(StoreUnavailable("Redis closed the connection"))
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

    def execute(self, commands: Sequence[Sequence[bytes]], callback: Callback) -> None:
        """Send ``commands`` in one write; ``callback`` gets every reply, or the failure."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(callback, len(commands))
        payload = b"".join(encode_command(c) for c in commands)
        waiter.timer = loop.call_later(
            self.timeout_s, waiter.finish, StoreUnavailable("Redis did not answer in time")
        )
        if self._protocol is not None and self._protocol.alive:
            self._protocol.send(payload, waiter)
        else:
            self._queued.append((payload, waiter))
            if self._connecting is None:
                self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: _RespProtocol(self._lost), self.socket_path
            )
        except OSError as exc:
            queued, self._queued = self._queued, []
            for _, waiter in queued:
                waiter.finish(StoreUnavailable(f"Redis unreachable: {exc}"))
            return
        finally:
            self._connecting = None
        self._protocol = protocol
        queued, self._queued = self._queued, []
        for payload, waiter in queued:
            if not waiter.done:
                protocol.send(payload, waiter)

    def _lost(self, protocol: _RespProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def ping(self) -> bool:
        answered: asyncio.Future[list[Any] | StoreUnavailable] = (
            asyncio.get_running_loop().create_future()
        )
        self.execute([[b"PING"]], answered.set_result)
        result = await answered
        return not isinstance(result, StoreUnavailable) and result == [b"PONG"]

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
