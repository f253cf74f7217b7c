"""The demo's feature-flag app: answers from flags read over the Pod's Redis Unix socket.

Why the standard library only: the app stands for any team's service, which needs nothing from
sidecar-state but the socket path (``SIDECAR_STATE_REDIS_URL``, injected by the webhook). A
twenty-line RESP client keeps the image free of dependencies and shows how little that is.

Endpoints (port ``$PORT``, default 8080):

- ``/``: ``Showing New Layout`` when ``flag:new-ui-layout`` is true, else ``Showing Old Layout``.
  While the hydrator's metadata says the view is not complete (a restarted Redis being
  rebuilt), it answers 503 rather than serving a partial view as if it were the truth.
- ``/flags``: every ``flag:*`` key with its value, and the hydrator's metadata hash.
- ``/status``: when this process started and what the metadata said then, so a test can show
  that the app started only after hydration.
- ``/healthz``: the process is up (readiness must not depend on Kafka or on Redis).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FLAG_PREFIX = "flag:"
LAYOUT_FLAG = "new-ui-layout"
META_KEY = "sidecar-state:meta"
TRUE_VALUES = frozenset({"true", "1", '"true"', "yes", "on"})


class RedisError(RuntimeError):
    """Redis answered with an error or the socket failed."""


class Redis:
    """A minimal RESP2 client over a Unix socket; one connection, serialized by a lock."""

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("unix://").split("?", 1)[0]
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buf = b""

    def command(self, *args: str) -> Any:
        """Send one command, return its reply; reconnect once (Redis may have restarted)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._command(args)
                except OSError as error:
                    self._close()
                    if attempt == 2:
                        raise RedisError(f"redis at {self.path}: {error}") from error
        raise AssertionError("unreachable")

    def _command(self, args: tuple[str, ...]) -> Any:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2.0)
            sock.connect(self.path)
            self._sock, self._buf = sock, b""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            assert self._sock is not None
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self._buf) < size + 2:
                assert self._sock is not None
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self._buf += chunk
            data, self._buf = self._buf[:size], self._buf[size + 2 :]
            return data.decode(errors="replace")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply {line[:40]!r}")

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    # helpers ------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        flat = self.command("HGETALL", META_KEY) or []
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def flags(self) -> dict[str, str | None]:
        keys: list[str] = []
        cursor = "0"
        while True:
            cursor, batch = self.command("SCAN", cursor, "MATCH", f"{FLAG_PREFIX}*", "COUNT", "500")
            keys += batch
            if cursor == "0":
                break
        keys.sort()
        values = self.command("MGET", *keys) if keys else []
        return {k.removeprefix(FLAG_PREFIX): v for k, v in zip(keys, values, strict=True)}


def layout_answer(value: str | None) -> str:
    """The page the flag selects; an absent flag means the old layout (the safe default)."""
    enabled = value is not None and value.strip().lower() in TRUE_VALUES
    return "Showing New Layout" if enabled else "Showing Old Layout"


class App:
    """What the handler needs: the Redis client and what was true at start."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.started_at_ms = int(time.time() * 1000)
        try:
            self.meta_at_start: dict[str, str] | str = redis.meta()
        except RedisError as error:
            self.meta_at_start = f"unavailable: {error}"


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sidecar-state-demo/1"

        def do_GET(self) -> None:
            try:
                if self.path == "/healthz":
                    self._send(200, "ok\n")
                elif self.path == "/status":
                    status = {"started_at_ms": app.started_at_ms, "meta": app.meta_at_start}
                    self._send(200, json.dumps(status) + "\n", "application/json")
                elif self.path == "/flags":
                    flags = {"flags": app.redis.flags(), "meta": app.redis.meta()}
                    self._send(200, json.dumps(flags, sort_keys=True) + "\n", "application/json")
                elif self.path == "/":
                    self._layout()
                elif self.path == "/whoami":
                    # Behind the interceptor (demo/session.yaml): who the request is, from the
                    # headers Envoy added; the app reads no store for it.
                    seen = {
                        k.lower(): v
                        for k, v in self.headers.items()
                        if k.lower().startswith(("x-user-", "x-sidecar-state-"))
                        or k.lower() == "authorization"
                    }
                    self._send(200, json.dumps(seen, sort_keys=True) + "\n", "application/json")
                else:
                    self._send(404, "not found\n")
            except RedisError as error:
                self._send(503, f"state unavailable: {error}\n")

        def _layout(self) -> None:
            # One round trip would be nicer (MULTI); two reads are fine for a demo.
            meta = app.redis.meta()
            if meta.get("hydrated") != "1":
                self._send(503, "state not hydrated yet (Redis is being rebuilt)\n")
                return
            value = app.redis.command("GET", f"{FLAG_PREFIX}{LAYOUT_FLAG}")
            self._send(200, layout_answer(value) + "\n")

        def _send(self, code: int, body: str, kind: str = "text/plain; charset=utf-8") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would drown the log

    return Handler


def main() -> int:
    url = os.environ.get("SIDECAR_STATE_REDIS_URL", "unix:///var/run/sidecar-state/redis.sock")
    port = int(os.environ.get("PORT", "8080"))
    app = App(Redis(url))
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(app))
    print(
        f"demo app on :{port}, flags from {url}; meta at start: {app.meta_at_start}",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
