"""``mode: istio`` on one machine: the real authorizer, configured as the webhook configures it
for Istio (loopback listener, ``remove_unset_headers``), called by a real Envoy configured the
way Istio configures its sidecar from the README's ``envoyExtAuthzHttp`` provider: ext_authz
over TCP to ``127.0.0.1:<port>``, prefix patterns for ``headersToUpstreamOnAllow``, and no
header-mutation filter of ours in front of it.

What it proves: with only Istio's filter chain, a client's forged identity headers still never
reach the app, because the authorizer lists every injectable header it did not set in
``x-envoy-auth-headers-to-remove``, which Envoy honours without being told to accept it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from localkube.ports import free_port
from sidecar_authz.config import STALENESS_HEADER, AuthorizerConfig
from sidecar_operator.api.models import parse_binding
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.envoy_bootstrap import AUTHZ_CLUSTER, build_envoy_bootstrap
from sidecar_operator.injection.intercept_plan import plan_intercept
from sidecar_state_stack.interceptor import AuthorizerProcess, EchoApp, EnvoyProxy
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.interceptor.test_envoy_interceptor import PROFILE, call, hydrate

#: The README's extension provider: what Istio turns into its sidecar's ext_authz filter.
HEADERS_TO_UPSTREAM_ON_ALLOW = ("x-user-*", "x-flag-*", "x-sidecar-state-*")
INCLUDE_REQUEST_HEADERS_IN_CHECK = ("authorization", "cookie")
HEADERS_TO_DOWNSTREAM_ON_DENY = ("www-authenticate", "content-type")

BINDING = {
    "apiVersion": "sidecarstate.dev/v1alpha1",
    "kind": "StateBinding",
    "metadata": {"name": "shop", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "shop"}},
        "source": {"kafka": {"topics": ["sessions"]}},
        "keys": {"prefix": "shop:"},
        "intercept": {
            "mode": "istio",
            "port": 8080,
            "rules": [
                {
                    "name": "session",
                    "credential": {"header": "authorization", "prefix": "Bearer "},
                    "key": "session:{credential}",
                    "onMissingCredential": {
                        "status": 401,
                        "headers": {"www-authenticate": "Bearer"},
                    },
                    "onMissingKey": {"action": "allow"},
                    "inject": [
                        {"header": "x-user-profile"},
                        {"header": "x-user-plan", "from": "json:/plan"},
                    ],
                    "stripUpstream": ["authorization"],
                }
            ],
        },
    },
}


def _istio_pattern(name: str) -> dict[str, Any]:
    # Istio's translation of its header match syntax (exact, "prefix*", "*suffix").
    if name.endswith("*"):
        return {"prefix": name[:-1], "ignore_case": True}
    return {"exact": name, "ignore_case": True}


def istio_like_bootstrap(*, listen_port: int, app_port: int, authz_port: int) -> dict[str, Any]:
    """Envoy as Istio's sidecar runs it for a CUSTOM policy with our provider."""
    bootstrap = build_envoy_bootstrap(
        listen_port=listen_port, listen_address="127.0.0.1", app_port=app_port,
        authz_socket="/unused", timeout_ms=500, failure_open=False, failure_status=503,
        stripped_headers=(), check_headers=INCLUDE_REQUEST_HEADERS_IN_CHECK,
    )  # fmt: skip
    resources = bootstrap["static_resources"]
    manager = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = manager["http_filters"]
    filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.header_mutation"]
    ext_authz = next(f for f in filters if f["name"] == "envoy.filters.http.ext_authz")
    ext_authz["typed_config"]["http_service"]["authorization_response"] = {
        "allowed_upstream_headers": {
            "patterns": [_istio_pattern(h) for h in HEADERS_TO_UPSTREAM_ON_ALLOW]
        },
        "allowed_client_headers": {
            "patterns": [_istio_pattern(h) for h in HEADERS_TO_DOWNSTREAM_ON_DENY]
        },
    }
    (authz,) = [c for c in resources["clusters"] if c["name"] == AUTHZ_CLUSTER]
    endpoint = authz["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": authz_port}}
    return bootstrap


@dataclass
class MeshStack:
    store: redis.Redis
    envoy: EnvoyProxy


@pytest.fixture
def mesh() -> Iterator[MeshStack]:
    with ExitStack() as cleanup:
        server = cleanup.enter_context(RedisServer())
        store = redis.Redis(unix_socket_path=str(server.socket_path))
        cleanup.callback(store.close)
        hydrate(store)
        authz_port = free_port()
        spec = {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}
        defaults = InjectionDefaults(authz_loopback_port=authz_port)
        plan = plan_intercept([parse_binding(BINDING)], spec=spec, defaults=defaults)
        assert plan is not None and plan.istio
        # The webhook's authorizer config, with this machine's sockets and no health port.
        config = AuthorizerConfig.model_validate(
            {
                **plan.authorizer.model_dump(),
                "redis_socket": str(server.socket_path),
                "listen_socket": str(server.workdir / "authz.sock"),
                "health_port": None,
            }
        )
        assert config.loopback_port == authz_port and config.remove_unset_headers
        cleanup.enter_context(AuthorizerProcess(config=config))
        app = cleanup.enter_context(EchoApp())
        port = free_port()
        bootstrap = istio_like_bootstrap(listen_port=port, app_port=app.port, authz_port=authz_port)
        envoy = cleanup.enter_context(EnvoyProxy(bootstrap=bootstrap, listen_port=port))
        yield MeshStack(store=store, envoy=envoy)


def test_mesh_envoy_gets_the_enriched_request_from_the_loopback_authorizer(
    mesh: MeshStack,
) -> None:
    mesh.store.set("shop:session:tok-ada", json.dumps(PROFILE))
    reply = call(mesh.envoy.url, authorization="Bearer tok-ada")
    saw = reply.app_saw
    assert json.loads(saw["x-user-profile"]) == PROFILE
    assert saw["x-user-plan"] == "pro"
    assert "authorization" not in saw  # stripUpstream, through x-envoy-auth-headers-to-remove
    assert int(saw[STALENESS_HEADER]) >= 1500
    refused = call(mesh.envoy.url)
    assert (refused.status, refused.headers["www-authenticate"]) == (401, "Bearer")


def test_forged_headers_are_removed_without_a_filter_of_ours(mesh: MeshStack) -> None:
    mesh.store.set("shop:session:tok-bob", json.dumps({"name": "Bob"}))  # no plan field
    forged = {"x-user-plan": "enterprise", "x-sidecar-state-omitted": "none"}
    saw = call(mesh.envoy.url, authorization="Bearer tok-bob", **forged).app_saw
    assert "x-user-plan" not in saw and "x-sidecar-state-omitted" not in saw
    assert json.loads(saw["x-user-profile"]) == {"name": "Bob"}
    # onMissingKey allow: an unknown session passes, with none of the client's identity.
    saw = call(mesh.envoy.url, authorization="Bearer tok-x", x_user_profile='{"admin":1}').app_saw
    assert "x-user-profile" not in saw and "x-user-plan" not in saw
