"""The interceptor end to end on one machine: real Envoy (the wheel's release build), the real
authorizer process, a real redis-server on a Unix socket, and an app that echoes what it got.

Every assertion is about what the client sees (status, body, headers) or what the app reads
(the headers Envoy forwarded), never about internals. The Envoy configuration is the one the
webhook renders (``build_envoy_bootstrap``), the authorizer's the one it renders from rules.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import redis

from localkube.ports import free_port
from sidecar_authz.config import (
    FAILURE_OPEN_HEADER,
    OMITTED_HEADER,
    STALENESS_HEADER,
    AuthorizerConfig,
    Credential,
    Injection,
    Response,
    Rule,
)
from sidecar_operator.injection.envoy_bootstrap import build_envoy_bootstrap
from sidecar_state_stack.interceptor import AuthorizerProcess, EchoApp, EnvoyProxy
from sidecar_state_stack.redis_server import RedisServer

SESSION_RULE = Rule(
    name="session",
    path_prefix="/",
    methods=("GET", "POST"),
    credential=Credential(source="header", name="authorization", prefix="Bearer "),
    key="shop:session:{credential}",
    on_missing_credential=Response(status=401, headers={"www-authenticate": "Bearer"}),
    missing_key_response=Response(
        status=403, headers={"x-denied-by": "sidecar-state"}, body="unknown session\n"
    ),
    inject=(
        Injection(header="x-user-profile"),
        Injection(header="x-user-plan", source="json:/plan"),
        Injection(header="x-user-limits", source="json:/limits"),
        Injection(header="x-flag-new-ui-layout", key="shop:flag:new-ui-layout"),
    ),
    strip_upstream=("authorization",),
)
PROFILE = {"name": "Ada", "plan": "pro", "limits": {"rps": 5}}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def app_saw(self) -> dict[str, str]:
        """The headers the app received (the echo app's answer)."""
        assert self.status == 200, (self.status, self.body)
        headers: dict[str, str] = json.loads(self.body)["headers"]
        return headers


def call(url: str, path: str = "/orders", *, method: str = "GET", **headers: str) -> Reply:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return Reply(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=response.read(),
        )
    finally:
        conn.close()


@dataclass
class Stack:
    redis_server: RedisServer
    store: redis.Redis
    authorizer: AuthorizerProcess
    envoy: EnvoyProxy

    def get(self, path: str = "/orders", **headers: str) -> Reply:
        return call(self.envoy.url, path, **headers)


def hydrate(store: redis.Redis) -> None:
    """What the hydrator leaves in the Pod's Redis once the view is complete."""
    store.hset(
        "sidecar-state:meta",
        mapping={"hydrated": "1", "fresh_as_of_ms": str(int(time.time() * 1000) - 1500)},
    )


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    with ExitStack() as cleanup:

        def make(
            *,
            rules: tuple[Rule, ...] = (SESSION_RULE,),
            failure_open: bool = False,
            timeout_ms: int = 250,
            max_header_bytes: int = 8192,
            bypass_prefixes: tuple[str, ...] = ("/healthz",),
        ) -> Stack:
            server = cleanup.enter_context(RedisServer())
            store = redis.Redis(unix_socket_path=str(server.socket_path))
            cleanup.callback(store.close)
            hydrate(store)
            config = AuthorizerConfig(
                redis_socket=str(server.socket_path),
                listen_socket=str(server.workdir / "authz.sock"),
                health_port=None,
                rules=rules,
                max_header_bytes=max_header_bytes,
            )
            authorizer = cleanup.enter_context(AuthorizerProcess(config=config))
            app = cleanup.enter_context(EchoApp())
            port = free_port()
            bootstrap = build_envoy_bootstrap(
                listen_port=port,
                listen_address="127.0.0.1",
                app_port=app.port,
                authz_socket=config.listen_socket,
                timeout_ms=timeout_ms,
                failure_open=failure_open,
                failure_status=503,
                stripped_headers=config.injected_headers(),
                check_headers=config.credential_headers(),
                bypass_prefixes=bypass_prefixes,
            )
            envoy = cleanup.enter_context(EnvoyProxy(bootstrap=bootstrap, listen_port=port))
            return Stack(redis_server=server, store=store, authorizer=authorizer, envoy=envoy)

        yield make


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    built = make_stack()
    built.store.set("shop:session:tok-ada", json.dumps(PROFILE))
    built.store.set("shop:flag:new-ui-layout", "true")
    return built


def test_allowed_request_reaches_the_app_enriched_from_the_store(stack: Stack) -> None:
    saw = stack.get(authorization="Bearer tok-ada").app_saw
    assert json.loads(saw["x-user-profile"]) == PROFILE
    assert saw["x-user-plan"] == "pro"
    assert json.loads(saw["x-user-limits"]) == {"rps": 5}  # a JSON field that is an object
    assert saw["x-flag-new-ui-layout"] == "true"  # a fixed key, no credential involved
    assert "authorization" not in saw  # stripUpstream: the app never sees the token
    assert 1500 <= int(saw[STALENESS_HEADER]) < 60_000


def test_the_next_request_reads_the_store_as_it_is_now(stack: Stack) -> None:
    assert stack.get(authorization="Bearer tok-ada").app_saw["x-user-plan"] == "pro"
    stack.store.set("shop:session:tok-ada", json.dumps({**PROFILE, "plan": "free"}))
    assert stack.get(authorization="Bearer tok-ada").app_saw["x-user-plan"] == "free"
    stack.store.delete("shop:session:tok-ada")
    assert stack.get(authorization="Bearer tok-ada").status == 403


def test_unknown_session_is_refused_with_the_rules_status_body_and_headers(stack: Stack) -> None:
    reply = stack.get(authorization="Bearer tok-nobody")
    assert reply.status == 403
    assert reply.body == b"unknown session\n"
    assert reply.headers["x-denied-by"] == "sidecar-state"


def test_missing_credential_is_refused_before_any_look_up(stack: Stack) -> None:
    for headers in ({}, {"authorization": "Basic YWRhOng="}):
        reply = stack.get(**headers)
        assert reply.status == 401
        assert reply.headers["www-authenticate"] == "Bearer"


def test_forged_identity_headers_never_reach_the_app(stack: Stack) -> None:
    stack.store.set("shop:session:tok-plain", json.dumps({"name": "Bob"}))  # no plan, no limits
    forged = {
        "x_user_plan": "enterprise",
        "x_user_limits": "unlimited",
        "X-Sidecar-State-Staleness-Ms": "0",
        "x-envoy-auth-failure-mode-allowed": "true",
    }
    saw = stack.get(authorization="Bearer tok-plain", **forged).app_saw
    assert "x-user-plan" not in saw and "x-user-limits" not in saw
    assert FAILURE_OPEN_HEADER not in saw
    assert int(saw[STALENESS_HEADER]) >= 1500  # the real one, not the client's "0"
    # A bypassed path skips the authorizer, yet the forged headers are still removed.
    saw = stack.get("/healthz", **forged).app_saw
    assert "x-user-plan" not in saw and STALENESS_HEADER not in saw


def test_bypass_paths_pass_without_credential_or_look_up(stack: Stack) -> None:
    stack.authorizer.kill()  # proves no check happens at all
    assert stack.get("/healthz").status == 200
    assert stack.get("/healthz/deep").status == 200
    assert stack.get("/orders", authorization="Bearer tok-ada").status == 503


def test_missing_key_with_allow_enriches_only(make_stack: Callable[..., Stack]) -> None:
    lenient = SESSION_RULE.model_copy(update={"on_missing_key": "allow"})
    built = make_stack(rules=(lenient,))
    built.store.set("shop:flag:new-ui-layout", "false")
    saw = built.get(authorization="Bearer tok-unknown").app_saw
    assert "x-user-profile" not in saw
    assert saw["x-flag-new-ui-layout"] == "false"


def test_control_characters_in_a_stored_value_cannot_split_headers(stack: Stack) -> None:
    evil = {"plan": "pro\r\nx-admin: yes", "name": "Eve\nx-injected: 1"}
    stack.store.set("shop:session:tok-eve", json.dumps(evil))
    stack.store.set("shop:flag:new-ui-layout", "on\r\n\r\nGET /admin HTTP/1.1")
    saw = stack.get(authorization="Bearer tok-eve").app_saw
    assert saw["x-user-plan"] == "prox-admin: yes"
    assert saw["x-flag-new-ui-layout"] == "onGET /admin HTTP/1.1"
    assert "x-admin" not in saw and "x-injected" not in saw


def test_an_oversized_value_is_left_out_and_named(make_stack: Callable[..., Stack]) -> None:
    built = make_stack(max_header_bytes=1024)
    built.store.set("shop:session:tok-big", json.dumps({"plan": "pro", "bio": "x" * 5000}))
    saw = built.get(authorization="Bearer tok-big").app_saw
    assert "x-user-profile" not in saw
    assert saw[OMITTED_HEADER] == "x-user-profile"
    assert saw["x-user-plan"] == "pro"  # the small field of the same value still arrives


def test_authorizer_down_fails_closed(stack: Stack) -> None:
    stack.authorizer.kill()
    reply = stack.get(authorization="Bearer tok-ada")
    assert reply.status == 503
    assert b"x-user-profile" not in reply.body


def test_authorizer_down_fails_open_without_identity_and_flagged(
    make_stack: Callable[..., Stack],
) -> None:
    built = make_stack(failure_open=True)
    built.store.set("shop:session:tok-ada", json.dumps(PROFILE))
    built.authorizer.kill()
    saw = built.get(authorization="Bearer tok-ada", x_user_plan="forged").app_saw
    assert saw[FAILURE_OPEN_HEADER] == "true"
    assert "x-user-plan" not in saw and "x-user-profile" not in saw


def test_redis_down_fails_closed(stack: Stack) -> None:
    stack.redis_server.kill()
    reply = stack.get(authorization="Bearer tok-ada")
    assert reply.status == 503


def test_redis_hanging_fails_within_the_timeout(make_stack: Callable[..., Stack]) -> None:
    built = make_stack(timeout_ms=200)
    pid = built.redis_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = built.get(authorization="Bearer tok-ada")
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert reply.status == 503
    assert elapsed < 2.0  # bounded by the 200 ms timeout, with room for a loaded machine


def test_a_view_that_is_not_hydrated_fails_instead_of_denying(stack: Stack) -> None:
    stack.store.delete("sidecar-state:meta")  # as after a Redis restart
    assert stack.get(authorization="Bearer tok-ada").status == 503
    hydrate(stack.store)
    assert stack.get(authorization="Bearer tok-ada").status == 200


def test_keep_alive_connection_serves_many_checks(stack: Stack) -> None:
    host, port = stack.envoy.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    statuses: list[Any] = []
    try:
        for token in ("tok-ada", "tok-nobody") * 25:
            conn.request("GET", "/orders", headers={"authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    assert statuses == [200, 403] * 25


@contextlib.contextmanager
def authorizer_on_a_port(
    which: Literal["health", "loopback"],
) -> Iterator[tuple[RedisServer, str]]:
    """The authorizer alone on a hydrated store holding Ada's session, with one TCP port: its
    health port or its loopback listener (``which``; the other is off). Yields the store's
    server and ``http://127.0.0.1:<port>``."""
    port = free_port()
    with RedisServer() as server:
        store = redis.Redis(unix_socket_path=str(server.socket_path))
        hydrate(store)
        store.set("shop:session:tok-ada", json.dumps(PROFILE))
        config = AuthorizerConfig(
            redis_socket=str(server.socket_path),
            listen_socket=str(server.workdir / "authz.sock"),
            health_port=port if which == "health" else None,
            loopback_port=port if which == "loopback" else None,
            rules=(SESSION_RULE,),
        )
        try:
            with AuthorizerProcess(config=config):
                yield server, f"http://127.0.0.1:{port}"
        finally:
            store.close()


def test_health_port_answers_probes_and_never_a_check() -> None:
    with authorizer_on_a_port("health") as (server, url):
        assert call(url, "/livez").status == 200
        assert call(url, "/readyz").status == 200
        # The Pod's data is never served on a port the network can reach.
        leaked = call(url, "/orders", authorization="Bearer tok-ada")
        assert leaked.status == 404 and b"Ada" not in leaked.body
        server.kill()
        assert call(url, "/readyz").status == 503
        assert call(url, "/livez").status == 200


def test_loopback_listener_answers_checks_for_a_mesh_sidecar() -> None:
    """``loopback_port``: where a mesh's own Envoy calls it (``mode: istio``, Istio's CUSTOM
    action; test_istio_mode.py runs it behind an Envoy configured as Istio's)."""
    with authorizer_on_a_port("loopback") as (_, url):
        allowed = call(url, "/orders", authorization="Bearer tok-ada")
        assert allowed.status == 200
        assert allowed.headers["x-user-plan"] == "pro"
        assert allowed.headers["x-envoy-auth-headers-to-remove"] == "authorization"
        assert call(url, "/orders", authorization="Bearer tok-x").status == 403


def test_authorizer_answers_pipelined_checks_in_order_and_refuses_bad_requests(
    stack: Stack,
) -> None:
    """What reaches the socket is not always Envoy: order is kept, nonsense is refused."""
    socket_path = stack.authorizer.config.listen_socket

    def exchange(payload: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(socket_path)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    def check(token: str) -> bytes:
        return f"GET /orders HTTP/1.1\r\nauthorization: Bearer {token}\r\n\r\n".encode()

    answers = exchange(check("tok-nobody") + check("tok-ada") + check("tok-nobody"))
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"403", b"200", b"403"]
    assert exchange(b"GET / HTTP/1.1\r\nx-pad: " + b"a" * 70_000).startswith(b"HTTP/1.1 431")
    chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    assert exchange(chunked).startswith(b"HTTP/1.1 400")
    assert exchange(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
