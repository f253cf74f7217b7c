"""The interceptor's Envoy configuration: a static bootstrap, rendered from the binding.

No xDS server: everything Envoy needs is known when the Pod is admitted, so the webhook renders
it into the container's arguments. The filter order is the security argument:

1. ``header_mutation`` deletes every header the authorizer may set from the *client's* request,
   so a client can never forge ``x-user-profile``. It must run before ``ext_authz``: a
   route-level ``request_headers_to_remove`` runs after it and would delete what the authorizer
   added.
2. ``ext_authz`` (HTTP service) asks the authorizer over the shared socket (a ``pipe``
   cluster); only the headers it may set are accepted upstream (``allowed_upstream_headers``).
   A failure (no answer in ``timeout``, or a 5xx) refuses with ``failure_status`` when closed,
   or passes without identity headers, flagged ``x-envoy-auth-failure-mode-allowed``, when open.
3. ``router`` forwards to the app's port on localhost.

Bypassed routes (probes, ``bypass`` paths) disable ``ext_authz`` only: forged headers are still
removed there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
EXT_AUTHZ_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
    ".DownstreamConnectionsConfig"
)
APP_CLUSTER = "app"
AUTHZ_CLUSTER = "sidecar-state-authz"


def _duration(milliseconds: int) -> str:
    return f"{milliseconds / 1000:.3f}s"


def _exact(names: Sequence[str]) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def _route(match: dict[str, Any], *, bypass: bool) -> dict[str, Any]:
    # No route timeout: the app decides how long a request may take (streams, long polls).
    route: dict[str, Any] = {"match": match, "route": {"cluster": APP_CLUSTER, "timeout": "0s"}}
    if bypass:
        route["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": {"@type": EXT_AUTHZ_PER_ROUTE, "disabled": True}
        }
    return route


def _cluster(name: str, address: dict[str, Any], *, connect_timeout_ms: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": _duration(connect_timeout_ms),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def build_envoy_bootstrap(
    *,
    listen_port: int,
    app_port: int,
    authz_socket: str,
    timeout_ms: int,
    failure_open: bool,
    failure_status: int,
    stripped_headers: Sequence[str],
    check_headers: Sequence[str],
    bypass_prefixes: Sequence[str] = (),
    bypass_paths: Sequence[str] = (),
    listen_address: str = "0.0.0.0",
    max_connections: int = 10_000,
) -> dict[str, Any]:
    """The whole bootstrap, as a JSON-able dict (``envoy --config-yaml`` takes it as JSON).

    ``stripped_headers`` are the headers the authorizer may set (removed from the client's
    request, accepted from the authorizer); ``check_headers`` are the client's headers the
    authorizer reads besides those Envoy always sends (method, path, host, authorization).
    """
    routes = [_route({"path": path}, bypass=True) for path in sorted(set(bypass_paths))]
    routes += [_route({"prefix": prefix}, bypass=True) for prefix in sorted(set(bypass_prefixes))]
    routes.append(_route({"prefix": "/"}, bypass=False))
    ext_authz: dict[str, Any] = {
        "@type": EXT_AUTHZ,
        "transport_api_version": "V3",
        "http_service": {
            "server_uri": {
                "uri": f"http://{AUTHZ_CLUSTER}",
                "cluster": AUTHZ_CLUSTER,
                "timeout": _duration(timeout_ms),
            },
            "authorization_response": {"allowed_upstream_headers": _exact(stripped_headers)},
        },
        "failure_mode_allow": failure_open,
        "failure_mode_allow_header_add": failure_open,
        "status_on_error": {"code": failure_status},
    }
    if check_headers:
        ext_authz["allowed_headers"] = _exact(check_headers)
    connection_manager = {
        "@type": HCM,
        "stat_prefix": "intercept",
        "codec_type": "AUTO",
        # The client is outside the Pod: Envoy then also drops x-envoy-* headers it sent.
        "use_remote_address": True,
        "route_config": {
            "name": "app",
            "virtual_hosts": [{"name": "app", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": HEADER_MUTATION,
                    "mutations": {
                        "request_mutations": [{"remove": name} for name in stripped_headers]
                    },
                },
            },
            {"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    return {
        # A bound on open client connections: without one a flood exhausts the Pod's memory.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": max_connections,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "intercept",
                    "address": {
                        "socket_address": {"address": listen_address, "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster(
                    APP_CLUSTER,
                    {"socket_address": {"address": "127.0.0.1", "port_value": app_port}},
                    connect_timeout_ms=1000,
                ),
                _cluster(
                    AUTHZ_CLUSTER, {"pipe": {"path": authz_socket}}, connect_timeout_ms=timeout_ms
                ),
            ],
        },
    }
