"""``spec.intercept``: the Pod gets the authorizer and Envoy, configured from the binding."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sidecar_authz.config import CONFIG_ENV, AuthorizerConfig
from sidecar_operator.api.models import parse_binding
from sidecar_operator.injection import InjectionConflict, InjectionDefaults
from sidecar_operator.injection.names import (
    AUTHZ_CONTAINER,
    CREDENTIALS_CONTAINER,
    ENVOY_CONTAINER,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
)

SESSION_INTERCEPT: dict[str, Any] = {
    "port": "http",
    "listenPort": 15080,
    "timeout": "150ms",
    "failure": {"mode": "closed", "status": 503},
    "bypass": [{"pathPrefix": "/healthz"}],
    "rules": [
        {
            "name": "session",
            "match": {"pathPrefix": "/", "methods": ["GET", "POST"]},
            "credential": {"header": "authorization", "prefix": "Bearer "},
            "key": "session:{credential}",
            "onMissingCredential": {"status": 401, "headers": {"www-authenticate": "Bearer"}},
            "onMissingKey": {"action": "deny", "status": 401},
            "inject": [
                {"header": "x-user-profile", "from": "value"},
                {"header": "x-user-plan", "from": "json:/plan"},
                {"header": "x-flag-new-ui-layout", "key": "flag:new-ui-layout"},
            ],
            "stripUpstream": ["authorization"],
        }
    ],
}


def app_container(make_container: Any, **fields: Any) -> dict[str, Any]:
    return make_container(ports=[{"name": "http", "containerPort": 8080}], **fields)


@pytest.fixture
def intercepted(make_binding: Any, make_pod: Any, make_container: Any, injected: Any) -> Any:
    binding = make_binding(prefix="shop:", patch={"spec.intercept": SESSION_INTERCEPT})
    return injected(make_pod(containers=[app_container(make_container)]), binding)


def envoy_bootstrap(pod: Any) -> dict[str, Any]:
    args = pod.container(ENVOY_CONTAINER)["args"]
    parsed: dict[str, Any] = json.loads(args[args.index("--config-yaml") + 1])
    return parsed


def http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    listener = bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    return filters


def test_without_intercept_nothing_changes(seed_injected: Any) -> None:
    assert seed_injected.init_names == [CREDENTIALS_CONTAINER, REDIS_CONTAINER, HYDRATOR_CONTAINER]


def test_intercept_adds_authorizer_then_envoy_as_native_sidecars_after_the_hydrator(
    intercepted: Any,
) -> None:
    assert intercepted.init_names == [
        CREDENTIALS_CONTAINER,
        REDIS_CONTAINER,
        HYDRATOR_CONTAINER,
        AUTHZ_CONTAINER,
        ENVOY_CONTAINER,
    ]
    for name in (AUTHZ_CONTAINER, ENVOY_CONTAINER):
        assert intercepted.container(name)["restartPolicy"] == "Always"
    assert intercepted.container_names == ["app"]


def test_authorizer_runs_from_the_hydrator_image_with_prefixed_rules(intercepted: Any) -> None:
    authz = intercepted.container(AUTHZ_CONTAINER)
    assert authz["image"] == InjectionDefaults().hydrator_image
    assert authz["command"] == ["sidecar-state-authz"]
    config = AuthorizerConfig.model_validate_json(
        intercepted.env(AUTHZ_CONTAINER)[CONFIG_ENV]["value"]
    )
    assert config.listen_socket == "/var/run/sidecar-state/authz.sock"
    assert config.redis_socket == "/var/run/sidecar-state/redis.sock"
    (rule,) = config.rules
    assert rule.key == "shop:session:{credential}"  # the binding's keys.prefix applies
    assert [(i.header, i.source, i.key) for i in rule.inject] == [
        ("x-user-profile", "value", None),
        ("x-user-plan", "json:/plan", None),
        ("x-flag-new-ui-layout", "value", "shop:flag:new-ui-layout"),
    ]
    assert rule.credential is not None and rule.credential.prefix == "Bearer "
    assert rule.on_missing_credential.headers == {"www-authenticate": "Bearer"}
    assert rule.strip_upstream == ("authorization",)
    assert authz["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9465}


def test_envoy_fronts_the_named_app_port_on_its_own_port(intercepted: Any) -> None:
    envoy = intercepted.container(ENVOY_CONTAINER)
    assert envoy["image"] == InjectionDefaults().envoy_image
    assert envoy["ports"] == [
        {"name": "state-intercept", "containerPort": 15080, "protocol": "TCP"}
    ]
    bootstrap = envoy_bootstrap(intercepted)
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 15080
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    app = clusters["app"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert app["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    ext_authz = http_filters(bootstrap)[1]["typed_config"]
    assert ext_authz["http_service"]["server_uri"]["timeout"] == "0.150s"
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["status_on_error"] == {"code": 503}


def test_envoy_strips_every_header_the_rules_inject_before_the_check(intercepted: Any) -> None:
    mutation = http_filters(envoy_bootstrap(intercepted))[0]
    assert mutation["name"] == "envoy.filters.http.header_mutation"
    removed = {m["remove"] for m in mutation["typed_config"]["mutations"]["request_mutations"]}
    assert {"x-user-profile", "x-user-plan", "x-flag-new-ui-layout"} <= removed
    assert "x-sidecar-state-staleness-ms" in removed


def test_bypass_paths_and_probes_sent_through_envoy_skip_the_check(
    make_binding: Any, make_pod: Any, make_container: Any, injected: Any
) -> None:
    probe = {"httpGet": {"path": "/ready", "port": "state-intercept"}}
    direct = {"httpGet": {"path": "/live", "port": 8080}}
    container = app_container(make_container, readinessProbe=probe, livenessProbe=direct)
    binding = make_binding(patch={"spec.intercept": SESSION_INTERCEPT})
    pod = injected(make_pod(containers=[container]), binding)
    listener = envoy_bootstrap(pod)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    bypassed = [r["match"] for r in routes if "typed_per_filter_config" in r]
    assert bypassed == [{"path": "/ready"}, {"prefix": "/healthz"}]  # not /live: not via Envoy


def test_sidecars_are_hardened(intercepted: Any) -> None:
    for name in (AUTHZ_CONTAINER, ENVOY_CONTAINER):
        container = intercepted.container(name)
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["runAsGroup"] == InjectionDefaults().socket_group
        assert set(container["resources"]) == {"requests", "limits"}


def test_envoy_image_comes_from_the_operator_settings(
    make_binding: Any, make_pod: Any, make_container: Any, injected: Any
) -> None:
    defaults = InjectionDefaults(envoy_image="registry.example/envoy:1.40.0")
    binding = make_binding(patch={"spec.intercept": SESSION_INTERCEPT})
    pod = injected(make_pod(containers=[app_container(make_container)]), binding, defaults=defaults)
    assert pod.container(ENVOY_CONTAINER)["image"] == "registry.example/envoy:1.40.0"


def test_changing_the_rules_changes_the_config_hash(
    make_binding: Any, make_pod: Any, make_container: Any, injected: Any
) -> None:
    pod = make_pod(containers=[app_container(make_container)])
    first = injected(pod, make_binding(patch={"spec.intercept": SESSION_INTERCEPT}))
    changed = {**SESSION_INTERCEPT, "timeout": "200ms"}
    second = injected(pod, make_binding(patch={"spec.intercept": changed}))
    assert first.outcome.config_hash != second.outcome.config_hash


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"port": "grpc"}, "spec.intercept.port 'grpc' is not a named containerPort"),
        ({"listenPort": 8080}, "spec.intercept.listenPort 8080 is already a containerPort"),
    ],
)
def test_an_intercept_that_does_not_fit_the_pod_is_refused_by_field(
    make_binding: Any,
    make_pod: Any,
    make_container: Any,
    inject: Any,
    patch: dict[str, Any],
    message: str,
) -> None:
    binding = make_binding(patch={"spec.intercept": {**SESSION_INTERCEPT, **patch}})
    with pytest.raises(InjectionConflict, match=message):
        inject(make_pod(containers=[app_container(make_container)]), binding)


def test_two_intercepting_bindings_on_one_pod_are_refused(
    make_binding: Any, make_pod: Any, make_container: Any, inject: Any
) -> None:
    first = make_binding("a", patch={"spec.intercept": SESSION_INTERCEPT})
    second = make_binding("b", topics=["other"], patch={"spec.intercept": SESSION_INTERCEPT})
    expected = re.escape("StateBindings a, b all set spec.intercept")
    with pytest.raises(InjectionConflict, match=expected):
        inject(make_pod(containers=[app_container(make_container)]), first, second)


@pytest.mark.parametrize(
    ("rule_patch", "message"),
    [
        ({"key": "session:fixed"}, "key must contain {credential}"),
        ({"credential": {"header": "authorization", "cookie": "sid"}}, "exactly one of"),
        ({"inject": [{"header": "X-Upper"}]}, "String should match pattern"),
        ({"inject": [{"header": "x-a", "from": "plan"}]}, "String should match pattern"),
        ({"onMissingCredential": {"headers": {"x-a": "a\r\nb"}}}, "String should match pattern"),
    ],
)
def test_bad_rules_are_rejected_naming_the_field(
    binding_doc: Any, rule_patch: dict[str, Any], message: str
) -> None:
    rule = {**SESSION_INTERCEPT["rules"][0], **rule_patch}
    doc = binding_doc(patch={"spec.intercept": {**SESSION_INTERCEPT, "rules": [rule]}})
    with pytest.raises(ValueError, match=re.escape("spec.intercept.rules[0]")) as raised:
        parse_binding(doc)
    assert message in str(raised.value)
