"""The hydrator's Redis client: RESP2 over the Pod's Unix socket, replies parsed by hiredis.

Why not redis-py: ``redis.asyncio`` and the ``importlib.metadata`` it loads to read its own
version were ~8.7 MiB of an idle hydrator's 37 MiB RSS (``benchmarks/footprint.py``), for the
dozen commands the store sends. This module is only what :mod:`sidecar_hydrator.store` needs:
one command, a plain pipeline, a ``MULTI/EXEC`` transaction, each sent in one write.

What it keeps of redis-py's behaviour, because the store (and its tests) rely on it:

- an error reply is an exception typed by its code (``OOM`` -> :class:`OutOfMemoryError`,
  ``NOPERM`` -> :class:`NoPermissionError`, ...), with redis-py's class names: the store reports
  failures by class name (``store_failures_total{kind=...}``);
- a transaction Redis aborted (``EXECABORT``: a command was refused while queued, as a full
  Redis refuses writes) raises that command's error;
- no retries: a command on a lost connection raises :class:`ConnectionError`; the next one
  connects again, and every new connection runs ``on_connect`` before any command is sent on it
  (the store checks there that it is still the Redis its view was built in);
- a reply that does not come within ``timeout`` raises :class:`TimeoutError` and drops the
  connection (what was sent may or may not have run; the store inspects Redis again).

One connection per client carries every request: Redis answers in order, so a FIFO of waiters
is the whole bookkeeping, and each request's commands go out in one write, so concurrent
requests (a heartbeat beside a batch) never interleave inside a transaction.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

import hiredis

#: One argument of a command, as hiredis packs it.
Arg = bytes | str | int | float
#: One command: its name, then its arguments.
Command = Sequence[Arg]


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


# The next two shadow the builtins on purpose: their names are redis-py's, which the store's
# failure metrics and logs report (``kind="ConnectionError"``); outside this module they are
# always spelled ``resp.ConnectionError`` and ``resp.TimeoutError``.
class ConnectionError(RedisError):
    """The connection failed or was lost; nothing more is known of the request."""


class TimeoutError(RedisError):
    """Redis did not answer in time (or the socket did not connect in time)."""


class AuthenticationError(ConnectionError):
    """Redis refused the credentials."""


class BusyLoadingError(ConnectionError):
    """Redis is loading its dataset and answers nothing else yet."""


class InvalidResponse(RedisError):
    """The byte stream is not RESP: the connection is out of step and is dropped."""


class ResponseError(RedisError):
    """An error reply (``WRONGTYPE``, ``ERR ...``, and the subclasses below)."""


class OutOfMemoryError(ResponseError):
    """``OOM``: ``maxmemory`` is reached and the policy (``noeviction``) refuses writes."""


class NoPermissionError(ResponseError):
    """``NOPERM``: the ACL user may not run the command or touch the key."""


class ExecAbortError(ResponseError):
    """``EXECABORT``: a transaction discarded because a command was refused while queued."""


class NoScriptError(ResponseError):
    """``NOSCRIPT``: ``EVALSHA`` of a script Redis does not have."""


class ReadOnlyError(ResponseError):
    """``READONLY``: a write sent to a replica."""


#: Error reply codes -> exception classes, as redis-py maps them.
ERROR_CODES: Final[dict[str, type[RedisError]]] = {
    "OOM": OutOfMemoryError,
    "NOPERM": NoPermissionError,
    "EXECABORT": ExecAbortError,
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
}
#: ``ERR`` replies redis-py maps by their whole message.
ERR_MESSAGES: Final[dict[str, type[RedisError]]] = {
    "max number of clients reached": ConnectionError,
    "invalid password": AuthenticationError,
}


def parse_error(reply: str) -> RedisError:
    """The exception for one error reply (hiredis calls this for each, nested ones too).

    The code is dropped from the message, as redis-py does: the class says it.
    """
    code, _, message = reply.partition(" ")
    if code == "ERR":
        return ERR_MESSAGES.get(message, ResponseError)(message)
    if code in ERROR_CODES:
        return ERROR_CODES[code](message)
    return ResponseError(reply)


def pack(commands: Iterable[Command]) -> bytes:
    """``commands`` as one RESP payload (hiredis packs in C: a bootstrap MSET has thousands
    of arguments, and packing them in Python took longer than Redis took to run them)."""
    # cast: hiredis's stub types the argument as a one-element tuple.
    return b"".join(hiredis.pack_command(cast(Any, tuple(command))) for command in commands)


def raise_first(replies: Sequence[Any]) -> list[Any]:
    """``replies`` unchanged, unless one is an error: then the first error is raised."""
    for reply in replies:
        if isinstance(reply, RedisError):
            raise reply
    return list(replies)


def pairs(reply: Sequence[bytes]) -> dict[bytes, bytes]:
    """A flat ``[field, value, ...]`` reply (``HGETALL``) as a dict."""
    it = iter(reply)
    return dict(zip(it, it, strict=True))


def parse_info(reply: bytes) -> dict[str, str]:
    """An ``INFO`` reply's ``name:value`` lines (section headers skipped), values as text."""
    info: dict[str, str] = {}
    for line in reply.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(":")
            info[name] = value.strip()
    return info


class _Pending:
    """One request's future and the replies it still expects."""

    __slots__ = ("count", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []


class Connection(asyncio.Protocol):
    """One socket to Redis: requests go out in order, replies are matched to them in order."""

    def __init__(self, *, timeout: float) -> None:
        #: Seconds a request waits for its replies (see :func:`_answered`).
        self.timeout = timeout
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=parse_error)
        self._pending: collections.deque[_Pending] = collections.deque()
        self._transport: asyncio.Transport | None = None
        #: Set (to why) when the connection is lost or closed; no request is sent after that.
        self._lost: RedisError | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def alive(self) -> bool:
        return self._transport is not None and self._lost is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def request(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Send ``payload`` (``count`` commands); the future gets their ``count`` replies."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self._lost is not None or self._transport is None:
            future.set_exception(_fresh(self._lost or ConnectionError("Connection closed.")))
            return future
        self._pending.append(_Pending(future, count))
        self._transport.write(payload)
        return future

    async def call(self, *args: Arg) -> Any:
        """One command, its error reply raised (for ``on_connect`` hooks)."""
        reply = (await _answered(self, self.request(pack([args]), 1)))[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self.fail(InvalidResponse(f"Protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self._pending:  # a reply nobody asked for: the stream is out of step
                self.fail(InvalidResponse("Redis sent a reply no command asked for"))
                return
            pending = self._pending[0]
            pending.replies.append(reply)
            if len(pending.replies) == pending.count:
                self._pending.popleft()
                if not pending.future.done():  # a timed-out or cancelled one still takes its
                    pending.future.set_result(pending.replies)  # replies: in step

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            reason = (
                f"Error while reading from socket: {exc}" if exc else "Connection closed by server."
            )
            self._lost = ConnectionError(reason)
        self._fail_pending()
        if not self._closed.done():
            self._closed.set_result(None)

    def fail(self, reason: RedisError) -> None:
        """Fail every request in flight with ``reason`` and close the socket."""
        if self._lost is None:
            self._lost = reason
        self._fail_pending()
        if self._transport is not None:
            self._transport.close()

    def _fail_pending(self) -> None:
        assert self._lost is not None
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(_fresh(self._lost))

    async def close(self) -> None:
        """Close the socket and wait (briefly) until the loop has let go of it."""
        self.fail(ConnectionError("Connection closed by the client."))
        if self._transport is not None:
            await asyncio.wait([self._closed], timeout=1.0)


def _fresh(error: RedisError) -> RedisError:
    """A copy of ``error`` for one more request: one instance raised in several places would
    collect all their tracebacks."""
    return type(error)(*error.args)


async def _answered(connection: Connection, future: asyncio.Future[list[Any]]) -> list[Any]:
    """The replies of one request; past the connection's timeout it is dropped (Redis may
    still run what it was sent, so nothing more can be known of the connection)."""

    def expire() -> None:
        if not future.done():
            future.set_exception(TimeoutError("Timeout reading from socket"))
            connection.fail(ConnectionError("Connection dropped after a timeout."))

    timer = asyncio.get_running_loop().call_later(connection.timeout, expire)
    try:
        return await future
    finally:
        timer.cancel()


class Client:
    """Commands to one database of the Redis behind ``path``, over one connection at a time.

    ``on_connect`` runs on every new connection (after ``AUTH`` and ``SELECT``) before any
    command is sent on it; what it raises, the request that was connecting raises.
    """

    def __init__(
        self,
        *,
        path: str,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        on_connect: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self.db = db
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._username, self._password = username, password
        self._on_connect = on_connect
        self._connection: Connection | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *args: Arg) -> Any:
        """One command's reply; an error reply is raised."""
        reply = (await self._request(pack([args]), 1))[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Every command's reply, in order, from one round trip; an error reply is returned in
        its place (a :class:`ResponseError`), not raised: the others ran."""
        if not commands:
            return []
        return await self._request(pack(commands), len(commands))

    async def transaction(self, commands: Sequence[Command]) -> list[Any]:
        """``MULTI``, ``commands``, ``EXEC`` in one round trip: the replies, with errors of
        commands that failed while running in their place (Redis runs the others).

        A command refused while queued (``OOM``, ``NOPERM``, a wrong number of arguments)
        makes Redis discard the whole transaction: that command's error is raised.
        """
        if not commands:
            return []
        replies = await self._request(pack([("MULTI",), *commands, ("EXEC",)]), len(commands) + 2)
        opened, queued, executed = replies[0], replies[1:-1], replies[-1]
        if isinstance(opened, RedisError):
            raise opened
        if isinstance(executed, ExecAbortError):
            raise next((r for r in queued if isinstance(r, RedisError)), executed)
        if isinstance(executed, RedisError):
            raise executed
        if not isinstance(executed, list) or len(executed) != len(commands):
            raise ResponseError(f"EXEC answered {executed!r} for {len(commands)} commands")
        return executed

    async def disconnect(self) -> None:
        """Close the connection; the next command opens a new one (and runs ``on_connect``)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _request(self, payload: bytes, count: int) -> list[Any]:
        connection = self._connection
        if connection is None or not connection.alive:
            connection = await self._connected()
        return await _answered(connection, connection.request(payload, count))

    async def _connected(self) -> Connection:
        async with self._connecting:
            if self._connection is not None and self._connection.alive:
                return self._connection
            self._connection = None
            connection = await self._connect()
            try:
                await self._handshake(connection)
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
            return connection

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_unix_connection(
                    lambda: Connection(timeout=self.timeout), self.path
                )
        except builtins.TimeoutError:
            raise TimeoutError(f"Timeout connecting to unix socket {self.path}") from None
        except OSError as exc:
            raise ConnectionError(
                f"Error {exc.errno} connecting to unix socket: {self.path}. {exc.strerror}."
            ) from exc
        return connection

    async def _handshake(self, connection: Connection) -> None:
        setup: list[Command] = []
        if self._password is not None:
            user = () if self._username is None else (self._username,)
            setup.append(("AUTH", *user, self._password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            future = connection.request(pack(setup), len(setup))
            raise_first(await _answered(connection, future))
        if self._on_connect is not None:
            await self._on_connect(connection)
