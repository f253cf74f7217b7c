"""The Envoy bootstrap builder: the filter order and the routes that make the interceptor safe.

Envoy itself runs this configuration in tests/integration/interceptor; these tests pin the
properties a refactoring could silently lose.
"""

from __future__ import annotations

from typing import Any

from sidecar_operator.injection.envoy_bootstrap import APP_CLUSTER, build_envoy_bootstrap


def bootstrap(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "listen_port": 15080,
        "app_port": 8080,
        "authz_socket": "/var/run/sidecar-state/authz.sock",
        "timeout_ms": 100,
        "failure_open": False,
        "failure_status": 503,
        "stripped_headers": ("x-user-plan", "x-user-profile"),
        "check_headers": ("cookie",),
        "bypass_prefixes": ("/healthz",),
        "bypass_paths": ("/ready",),
    }
    return build_envoy_bootstrap(**{**arguments, **overrides})


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def test_forged_headers_are_removed_before_ext_authz_and_only_they_are_accepted_after() -> None:
    filters = connection_manager(bootstrap())["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.router",
    ]
    removed = [m["remove"] for m in filters[0]["typed_config"]["mutations"]["request_mutations"]]
    assert removed == ["x-user-plan", "x-user-profile"]
    ext_authz = filters[1]["typed_config"]
    accepted = ext_authz["http_service"]["authorization_response"]["allowed_upstream_headers"]
    assert accepted == {"patterns": [{"exact": "x-user-plan"}, {"exact": "x-user-profile"}]}
    assert ext_authz["allowed_headers"] == {"patterns": [{"exact": "cookie"}]}


def test_failure_mode_and_timeout() -> None:
    closed = connection_manager(bootstrap())["http_filters"][1]["typed_config"]
    assert closed["failure_mode_allow"] is False
    assert closed["status_on_error"] == {"code": 503}
    assert closed["http_service"]["server_uri"]["timeout"] == "0.100s"
    opened = connection_manager(bootstrap(failure_open=True))["http_filters"][1]["typed_config"]
    assert opened["failure_mode_allow"] is True
    assert opened["failure_mode_allow_header_add"] is True


def test_bypass_routes_come_first_and_disable_only_ext_authz() -> None:
    routes = connection_manager(bootstrap())["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"] for r in routes] == [
        {"path": "/ready"},
        {"prefix": "/healthz"},
        {"prefix": "/"},
    ]
    for route in routes[:2]:
        assert list(route["typed_per_filter_config"]) == ["envoy.filters.http.ext_authz"]
        assert route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"]
    assert "typed_per_filter_config" not in routes[2]
    assert {r["route"]["cluster"] for r in routes} == {APP_CLUSTER}


def test_clusters_point_at_the_app_on_localhost_and_the_authorizer_socket() -> None:
    clusters = {c["name"]: c for c in bootstrap()["static_resources"]["clusters"]}
    endpoint = clusters[APP_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 8080,
    }
    authz = clusters["sidecar-state-authz"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert authz["endpoint"]["address"] == {"pipe": {"path": "/var/run/sidecar-state/authz.sock"}}
