"""Sidecars adjusted to policies: chart defaults < binding spec < Pod annotations (item 8)."""

from __future__ import annotations

import pytest

from sidecar_operator.api.quantity import parse_quantity
from sidecar_operator.injection import InjectionConflict, InjectionDefaults, InvalidPod
from sidecar_operator.injection.names import HYDRATOR_CONTAINER, REDIS_CONTAINER

G = "sidecarstate.dev"


def test_default_limit_request_ratios_pass_a_common_limit_range(seed_injected):
    for name in (REDIS_CONTAINER, HYDRATOR_CONTAINER):
        resources = seed_injected.container(name)["resources"]
        for kind in ("cpu", "memory"):
            ratio = parse_quantity(resources["limits"][kind]) / parse_quantity(
                resources["requests"][kind]
            )
            assert ratio <= 2, (name, kind, ratio)


def test_pod_annotations_win_over_bindings_and_defaults(make_pod, make_binding, injected):
    binding = make_binding(patch={"spec.hydrator": {
        "resources": {"requests": {"cpu": "300m"}}, "hydrationTimeoutSeconds": 120,
        "metricsPort": 9100}, "spec.store.resources": {"limits": {"cpu": "400m"}}})  # fmt: skip
    plain = injected(make_pod(), binding)
    pod = make_pod(annotations={f"{G}/hydrator-cpu-request": "150m", f"{G}/metrics-port": "9200",
                                f"{G}/hydration-timeout-seconds": "900"})  # fmt: skip
    annotated = injected(pod, binding)

    hydrator = plain.container(HYDRATOR_CONTAINER)
    assert hydrator["resources"]["requests"]["cpu"] == "300m"  # the binding over the default
    assert hydrator["startupProbe"]["failureThreshold"] == 120
    assert hydrator["ports"][0]["containerPort"] == 9100
    assert plain.container(REDIS_CONTAINER)["resources"]["limits"]["cpu"] == "400m"
    assert plain.hydrator_config.http_port == 9100

    hydrator = annotated.container(HYDRATOR_CONTAINER)
    assert hydrator["resources"]["requests"]["cpu"] == "150m"  # the Pod over the binding
    assert hydrator["ports"][0]["containerPort"] == 9200
    assert hydrator["startupProbe"]["httpGet"]["port"] == 9200
    assert hydrator["startupProbe"]["failureThreshold"] == 900
    assert annotated.hydrator_config.http_port == 9200


def test_platform_user_ids_set_no_uids_or_groups(make_pod, make_binding, injected):
    for result in (
        injected(make_pod(annotations={f"{G}/user-ids": "platform"}), make_binding()),
        injected(make_pod(), make_binding(), defaults=InjectionDefaults(user_ids="platform")),
    ):
        for name in (REDIS_CONTAINER, HYDRATOR_CONTAINER):
            context = result.container(name)["securityContext"]
            assert "runAsUser" not in context and "runAsGroup" not in context
            assert context["runAsNonRoot"] is True
        assert "supplementalGroups" not in (result.spec.get("securityContext") or {})


@pytest.mark.parametrize(
    ("annotation", "value"),
    [("hydrator-cpu-request", "lots"), ("metrics-port", "0"), ("user-ids", "root"),
     ("hydration-timeout-seconds", "5")],
)  # fmt: skip
def test_a_bad_override_names_the_annotation(make_pod, make_binding, inject, annotation, value):
    with pytest.raises(InvalidPod, match=f"annotation {G}/{annotation}"):
        inject(make_pod(annotations={f"{G}/{annotation}": value}), make_binding())


def test_an_app_already_on_the_metrics_port_conflicts(make_pod, make_container, make_binding,
                                                      inject, injected):  # fmt: skip
    app = {**make_container("app"), "ports": [{"containerPort": 9464}]}

    with pytest.raises(InjectionConflict, match=r"'app' already uses port 9464.*metrics-port"):
        inject(make_pod(containers=[app]), make_binding())
    moved = injected(make_pod(containers=[app], annotations={f"{G}/metrics-port": "9465"}),
                     make_binding())  # fmt: skip
    assert moved.container(HYDRATOR_CONTAINER)["ports"][0]["containerPort"] == 9465
