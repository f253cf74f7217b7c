"""``spec.intercept`` beyond the Pod: mode istio (no Envoy of ours, an AuthorizationPolicy) and
the opt-in NetworkPolicy, decided purely; the admission refusals when the operator lacks them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sidecar_authz.config import CONFIG_ENV, AuthorizerConfig
from sidecar_operator.api.models import parse_binding
from sidecar_operator.controller.intercept_objects import (
    AUTHORIZATION_POLICY,
    NETWORK_POLICY,
    authorization_policy,
    desired_objects,
    needs_update,
    network_policy,
    object_name,
    owned_by,
)
from sidecar_operator.injection import InjectionConflict, InjectionDefaults
from sidecar_operator.injection.names import AUTHZ_CONTAINER, ENVOY_CONTAINER
from sidecar_operator.injection.policy import intercept_refusal
from tests.unit.operator.test_inject_intercept import SESSION_INTERCEPT, app_container

ISTIO = {**SESSION_INTERCEPT, "mode": "istio", "port": 8080}


def with_uid(binding: Any) -> Any:
    binding.metadata["uid"] = "u-1"
    return binding


def test_istio_mode_injects_the_authorizer_on_loopback_and_no_envoy(
    make_binding: Any, make_pod: Any, make_container: Any, injected: Any
) -> None:
    binding = make_binding(prefix="shop:", patch={"spec.intercept": ISTIO})
    pod = injected(make_pod(containers=[app_container(make_container)]), binding)
    assert AUTHZ_CONTAINER in pod.init_names and ENVOY_CONTAINER not in pod.init_names
    config = AuthorizerConfig.model_validate_json(pod.env(AUTHZ_CONTAINER)[CONFIG_ENV]["value"])
    assert config.loopback_port == InjectionDefaults().authz_loopback_port == 9466
    # Istio's Envoy removes no forged header before the check: the authorizer names them.
    assert config.remove_unset_headers is True


def test_envoy_mode_keeps_the_authorizer_off_loopback(
    make_binding: Any, make_pod: Any, make_container: Any, injected: Any
) -> None:
    binding = make_binding(patch={"spec.intercept": SESSION_INTERCEPT})
    pod = injected(make_pod(containers=[app_container(make_container)]), binding)
    config = AuthorizerConfig.model_validate_json(pod.env(AUTHZ_CONTAINER)[CONFIG_ENV]["value"])
    assert config.loopback_port is None and config.remove_unset_headers is False


def test_istio_mode_refuses_a_pod_whose_port_is_the_authorizers(
    make_binding: Any, make_pod: Any, make_container: Any, inject: Any
) -> None:
    binding = make_binding(patch={"spec.intercept": ISTIO})
    app = make_container(ports=[{"name": "http", "containerPort": 9466}])
    with pytest.raises(InjectionConflict, match=re.escape("loopback port 9466")):
        inject(make_pod(containers=[app]), binding)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"spec.intercept": {**ISTIO, "networkPolicy": True}},
            "mode istio has no such port",
        ),
        (
            {
                "spec.intercept": ISTIO,
                "spec.selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
            },
            "selects Pods by matchLabels only",
        ),
    ],
)
def test_what_istio_cannot_express_is_refused(
    binding_doc: Any, patch: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_binding(binding_doc(patch=patch))


def test_authorization_policy_selects_the_bindings_pods_for_the_provider(
    make_binding: Any,
) -> None:
    binding = with_uid(
        make_binding(
            "shop",
            patch={
                "spec.intercept": {
                    **ISTIO,
                    "bypass": [{"pathPrefix": "/healthz"}, {"path": "/ready"}],
                }
            },
        ),
    )
    policy = authorization_policy(binding, provider="sidecar-state-authz")
    assert policy is not None
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["metadata"]["name"] == "sidecar-state-shop"
    assert policy["metadata"]["ownerReferences"] == [
        {"apiVersion": "sidecarstate.dev/v1alpha1", "kind": "StateBinding", "name": "shop",
         "uid": "u-1", "controller": True}
    ]  # fmt: skip
    assert policy["spec"] == {
        "selector": {"matchLabels": dict(binding.spec.selector.match_labels)},
        "action": "CUSTOM",
        "provider": {"name": "sidecar-state-authz"},
        "rules": [
            {"to": [{"operation": {"ports": ["8080"], "notPaths": ["/healthz*", "/ready"]}}]}
        ],
    }


def test_a_named_port_without_bypass_sends_every_request(make_binding: Any) -> None:
    binding = make_binding(patch={"spec.intercept": {**ISTIO, "port": "http", "bypass": []}})
    policy = authorization_policy(binding, provider="p")
    assert policy is not None and policy["spec"]["rules"] == [{}]


def test_network_policy_admits_envoys_port_and_the_operators_scrape_only(
    make_binding: Any,
) -> None:
    binding = make_binding(
        match_expressions=[{"key": "tier", "operator": "In", "values": ["web"]}],
        match_labels={"app": "shop"},
        patch={"spec.intercept": {**SESSION_INTERCEPT, "networkPolicy": True}},
    )
    policy = network_policy(binding, operator_namespace="ops", metrics_port=9464)
    assert policy is not None
    assert policy["spec"] == {
        "podSelector": {
            "matchLabels": {"app": "shop"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}],
        },
        "policyTypes": ["Ingress"],
        "ingress": [
            {"ports": [{"protocol": "TCP", "port": 15080}]},
            {
                "from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "ops"}}}],
                "ports": [{"protocol": "TCP", "port": 9464}],
            },
        ],
    }  # fmt: skip


def test_desired_objects_say_none_for_what_the_binding_no_longer_asks(
    make_binding: Any,
) -> None:
    binding = make_binding(patch={"spec.intercept": SESSION_INTERCEPT})
    wanted = desired_objects(
        binding, istio_provider="p", network_policies=True, operator_namespace="ops",
        metrics_port=9464,
    )  # fmt: skip
    assert [(d.kind, d.body) for d in wanted] == [
        (AUTHORIZATION_POLICY, None),
        (NETWORK_POLICY, None),
    ]
    # The operator manages only the kinds it is configured (and has the rights) for.
    assert desired_objects(binding, istio_provider="", network_policies=False,
                           operator_namespace="ops", metrics_port=9464) == []  # fmt: skip


def test_only_our_own_objects_are_changed(make_binding: Any) -> None:
    binding = with_uid(make_binding("shop", patch={"spec.intercept": ISTIO}))
    ours = authorization_policy(binding, provider="p")
    assert ours is not None and owned_by(ours, binding)
    assert not owned_by({"metadata": {"name": "sidecar-state-shop"}}, binding)
    served = {**ours, "metadata": {**ours["metadata"], "resourceVersion": "7", "uid": "x"}}
    assert not needs_update(served, ours)
    assert needs_update({**served, "spec": {**ours["spec"], "action": "DENY"}}, ours)


def test_long_binding_names_still_make_valid_object_names() -> None:
    name = object_name("b" * 253)
    assert len(name) == 253 and name.startswith("sidecar-state-b")
    assert object_name("b" * 253) != object_name("b" * 252 + "c")


def test_admission_refuses_what_the_operator_is_not_installed_for(make_binding: Any) -> None:
    istio = make_binding(patch={"spec.intercept": ISTIO})
    guarded = make_binding(patch={"spec.intercept": {**SESSION_INTERCEPT, "networkPolicy": True}})
    refusal = intercept_refusal(istio, istio_provider="", network_policies=True)
    assert refusal is not None and "interceptor.istio.provider" in refusal
    assert intercept_refusal(istio, istio_provider="p", network_policies=False) is None
    refusal = intercept_refusal(guarded, istio_provider="p", network_policies=False)
    assert refusal is not None and "interceptor.networkPolicies=true" in refusal
    assert intercept_refusal(guarded, istio_provider="", network_policies=True) is None
