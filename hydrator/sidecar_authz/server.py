"""The authorizer's HTTP/1.1 edge: Envoy's ext_authz HTTP service contract, on asyncio.

The contract (Envoy's ``ExtAuthz.http_service``): Envoy sends each client request's method,
path and allowed headers, without a body; ``200`` allows it, and the headers Envoy is told to
accept (``allowed_upstream_headers``) are set on the upstream request, while
``x-envoy-auth-headers-to-remove`` lists headers to delete from it. Any other status is a
refusal that Envoy sends to the client as it is (status, headers, body); a ``5xx`` or no
answer is a failure, handled by Envoy's ``failure_mode_allow``.

Plain ``asyncio.Protocol`` callbacks rather than streams or a framework: the path from a parsed
request to the Redis pipeline and back is callbacks only, no task per request. Envoy keeps its
connections open (keep-alive) and sends one request at a time on each; a client that pipelines
anyway is answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import hiredis

from sidecar_authz.config import AuthorizerConfig
from sidecar_authz.resp import RedisPipe, StoreUnavailable
from sidecar_authz.rules import Allow, Lookup, Meta, Refuse, Request, decide, plan

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
STORE_DOWN = Refuse(status=503, body="sidecar-state: the Pod's store is unreachable\n")

Respond = Callable[[bytes], None]


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


def render_allow(allow: Allow) -> bytes:
    lines = [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"]
    lines += [name.encode() + b": " + value + b"\r\n" for name, value in allow.headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def render_refuse(refuse: Refuse) -> bytes:
    body = refuse.body.encode()
    lines = [_status_line(refuse.status)]
    names = {name.lower() for name, _ in refuse.headers}
    if "content-type" not in names:
        lines.append(b"content-type: text/plain; charset=utf-8\r\n")
    lines += [f"{name}: {value}\r\n".encode() for name, value in refuse.headers]
    lines.append(b"content-length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


class Authorizer:
    """The service behind every connection: plan, one Redis round trip, decide."""

    def __init__(self, config: AuthorizerConfig) -> None:
        self.config = config
        self.redis = RedisPipe(
            socket_path=config.redis_socket, timeout_s=config.redis_timeout_ms / 1000
        )
        self._probes: set[asyncio.Future[bool]] = set()
        meta_key = config.metadata_key.encode()
        self._meta_command = [b"HMGET", meta_key, b"hydrated", b"fresh_as_of_ms"]

    def check(self, request: Request, respond: Respond) -> None:
        planned = plan(self.config, request)
        if isinstance(planned, Refuse):
            respond(render_refuse(planned))
            return
        commands = [[b"GET", key.encode()] for key in planned.keys]
        commands.append(self._meta_command)
        self.redis.execute(commands, lambda result: respond(self._answer(planned, result)))

    def _answer(self, lookup: Lookup, replies: list[Any] | StoreUnavailable) -> bytes:
        if isinstance(replies, StoreUnavailable):
            logger.warning("store unavailable: %s", replies)
            return render_refuse(STORE_DOWN)
        if any(isinstance(r, hiredis.ReplyError) for r in replies):
            logger.warning("Redis answered with an error: %s", replies)
            return render_refuse(STORE_DOWN)
        hydrated, fresh = replies[-1]
        meta = Meta(
            hydrated=hydrated == b"1",
            fresh_as_of_ms=int(fresh) if fresh is not None and fresh.isdigit() else None,
        )
        verdict = decide(
            self.config,
            lookup,
            values=replies[:-1],
            meta=meta,
            now_ms=int(time.time() * 1000),
        )
        return render_allow(verdict) if isinstance(verdict, Allow) else render_refuse(verdict)

    def health(self, request: Request, respond: Respond) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/livez":
            respond(render_refuse(Refuse(status=200, body="ok\n")))
        elif path == "/readyz":
            # Held until done: the loop keeps only weak references to tasks.
            future = asyncio.ensure_future(self.redis.ping())
            self._probes.add(future)
            future.add_done_callback(self._probes.discard)
            future.add_done_callback(
                lambda done: respond(
                    render_refuse(
                        Refuse(status=200, body="ok\n")
                        if done.result()
                        else Refuse(status=503, body="Redis does not answer\n")
                    )
                )
            )
        else:
            respond(render_refuse(Refuse(status=404, body="not found\n")))


class HttpConnection(asyncio.Protocol):
    """One client connection: parse requests, hand them on one at a time, write answers."""

    def __init__(self, handler: Callable[[Request, Respond], None]) -> None:
        self._handler = handler
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._close_after = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next()

    def eof_received(self) -> bool:
        """The client is done sending: answer what it sent, then close (a half-close)."""
        self._eof = True
        self._next()
        if not self._busy and self._transport is not None:
            self._transport.close()
        return True

    def _next(self) -> None:
        while not self._busy and self._transport is not None:
            parsed = self._parse()
            if parsed is None:
                return
            self._busy = True
            self._handler(parsed, self._respond)

    def _respond(self, payload: bytes) -> None:
        self._busy = False
        if self._transport is None:
            return
        self._transport.write(payload)
        if self._close_after:
            self._transport.close()
            return
        self._next()
        if self._eof and not self._busy and self._transport is not None:
            self._transport.close()

    def _fail(self, status: int, message: str) -> None:
        assert self._transport is not None
        self._transport.write(render_refuse(Refuse(status=status, body=message)))
        self._transport.close()
        self._transport = None

    def _parse(self) -> Request | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._fail(431, "request head too large\n")
            return None
        head = bytes(self._buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            self._fail(400, "bad request line\n")
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._fail(400, "bad header line\n")
                return None
            name = name.strip().lower()
            value = value.strip()
            if name in headers:
                headers[name] += ("; " if name == "cookie" else ", ") + value
            else:
                headers[name] = value
        if "transfer-encoding" in headers:
            self._fail(400, "chunked check requests are not supported\n")
            return None
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._fail(400, "bad content-length\n")
            return None
        if int(length_text) > MAX_HEAD_BYTES:
            self._fail(413, "check requests carry no body\n")
            return None
        total = end + 4 + int(length_text)
        if len(self._buffer) < total:
            return None
        del self._buffer[:total]
        if version != "HTTP/1.1" or headers.get("connection", "").lower() == "close":
            self._close_after = True
        return Request(method=method, path=target, headers=headers)
