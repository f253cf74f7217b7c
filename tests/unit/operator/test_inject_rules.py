"""When the engine injects, skips or refuses: exclusions, idempotency, purity and conflicts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidecar_operator.injection import Injected, InjectionConflict, InjectionDefaults, Skipped


def assert_skipped(outcome: Any, reason: str) -> None:
    assert isinstance(outcome, Skipped), f"expected a skip ({reason!r}), got {outcome}"
    assert outcome.reason == reason


# --- exclusions ------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
def test_system_namespaces_are_never_injected(make_pod, make_binding, inject, namespace):
    outcome = inject(make_pod(), make_binding(namespace=namespace), namespace=namespace)

    assert_skipped(outcome, f"namespace {namespace} is excluded")


def test_operators_own_namespace_is_excluded_when_configured(make_pod, make_binding, inject):
    defaults = InjectionDefaults(excluded_namespaces=frozenset({"kube-system", "sidecar-state"}))

    outcome = inject(make_pod(), make_binding(), namespace="sidecar-state", defaults=defaults)

    assert_skipped(outcome, "namespace sidecar-state is excluded")


@pytest.mark.parametrize("value", ["false", "False", " FALSE ", "no", "0", "off"])
def test_opt_out_annotation_skips_the_pod(make_pod, make_binding, inject, value):
    pod = make_pod(annotations={"sidecarstate.dev/inject": value})

    assert_skipped(inject(pod, make_binding()), "opted out with sidecarstate.dev/inject: false")


@pytest.mark.parametrize("value", ["true", "yes", ""])
def test_other_inject_annotation_values_do_not_opt_out(make_pod, make_binding, inject, value):
    pod = make_pod(annotations={"sidecarstate.dev/inject": value})

    assert isinstance(inject(pod, make_binding()), Injected)


def test_host_network_pods_are_never_injected(make_pod, make_binding, inject):
    outcome = inject(make_pod(hostNetwork=True), make_binding())

    assert_skipped(outcome, "hostNetwork Pods are never injected")


WINDOWS = (
    "Windows Pods are never injected: the sidecars are Linux containers with Linux-only "
    "security settings"
)
ONLY_WINDOWS = {"nodeSelectorTerms": [{"matchExpressions": [
    {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]}]}  # fmt: skip


@pytest.mark.parametrize(
    "spec",
    [
        {"os": {"name": "windows"}},
        {"nodeSelector": {"kubernetes.io/os": "windows"}},
        {
            "affinity": {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": ONLY_WINDOWS}
            }
        },
    ],
)
def test_windows_pods_are_skipped(make_pod, make_binding, inject, spec):
    assert_skipped(inject(make_pod(**spec), make_binding()), WINDOWS)


def test_linux_pods_and_pods_that_allow_either_os_are_injected(make_pod, make_binding, inject):
    both = {"key": "kubernetes.io/os", "operator": "In", "values": ["linux", "windows"]}
    either = {"nodeSelectorTerms": [{"matchExpressions": [both]}]}
    for spec in ({"os": {"name": "linux"}}, {"nodeSelector": {"kubernetes.io/os": "linux"}},
                 {"affinity": {"nodeAffinity": {
                     "requiredDuringSchedulingIgnoredDuringExecution": either}}}):  # fmt: skip
        assert isinstance(inject(make_pod(**spec), make_binding()), Injected), spec


def test_pod_without_a_matching_binding_is_skipped(make_pod, make_binding, inject):
    outcome = inject(make_pod(labels={"app": "cart"}), make_binding())

    assert_skipped(outcome, "no StateBinding selects this Pod")


def test_pod_is_skipped_when_there_are_no_bindings(make_pod, inject):
    assert_skipped(inject(make_pod()), "no StateBinding selects this Pod")


def test_pod_without_labels_is_skipped(make_pod, make_binding, inject):
    pod = make_pod()
    del pod["metadata"]["labels"]

    assert_skipped(inject(pod, make_binding()), "no StateBinding selects this Pod")


# --- idempotency -----------------------------------------------------------------------------


def test_injecting_an_injected_pod_is_skipped(seed_injected, make_binding, inject):
    outcome = inject(seed_injected.pod, make_binding())

    assert_skipped(outcome, "already injected")


def test_injecting_an_injected_pod_leaves_it_unchanged(seed_injected, make_binding, inject):
    before = copy.deepcopy(seed_injected.pod)

    inject(seed_injected.pod, make_binding())

    assert seed_injected.pod == before


def test_containers_mode_is_idempotent_too(make_pod, make_binding, injected, inject):
    defaults = InjectionDefaults(sidecar_mode="containers")
    first = injected(make_pod(), make_binding(), defaults=defaults)

    assert_skipped(inject(first.pod, make_binding(), defaults=defaults), "already injected")


# --- purity ----------------------------------------------------------------------------------


def rich_pod(make_pod, make_container) -> dict[str, Any]:
    return make_pod(
        annotations={"team": "payments"},
        containers=[
            make_container(env={"MODE": "prod"}, resources={"limits": {"cpu": "1"}},
                           mounts=[{"name": "config", "mountPath": "/etc/checkout"}]),
            make_container("worker"),
        ],
        init_containers=[make_container("migrate")],
        volumes=[{"name": "config", "configMap": {"name": "checkout"}}],
        securityContext={"supplementalGroups": [3000]},
    )  # fmt: skip


def test_input_pod_is_not_mutated(make_pod, make_container, make_binding, injected):
    pod = rich_pod(make_pod, make_container)
    before = copy.deepcopy(pod)

    result = injected(pod, make_binding())

    assert pod == before
    assert result.pod != before


def test_output_shares_no_mutable_object_with_the_input(
    make_pod, make_container, make_binding, injected
):
    pod = rich_pod(make_pod, make_container)

    result = injected(pod, make_binding())

    assert shared_containers(pod, result.pod) == []


def shared_containers(a: Any, b: Any) -> list[str]:
    """Paths in ``b`` of dicts and lists that are the very same objects somewhere in ``a``."""
    ids: set[int] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict | list):
            ids.add(id(node))
            for child in node.values() if isinstance(node, dict) else node:
                collect(child)

    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict | list):
            if id(node) in ids:
                found.append(path or ".")
                return
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                walk(child, f"{path}.{key}")

    collect(a)
    walk(b, "")
    return found


# --- conflicts -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sidecar-state-redis", "sidecar-state-hydrator"])
def test_user_container_with_our_name_conflicts(
    make_pod, make_container, make_binding, inject, name
):
    pod = make_pod(containers=[make_container(), make_container(name, image="redis:7")])

    with pytest.raises(InjectionConflict, match=f"container name '{name}' is reserved"):
        inject(pod, make_binding())


def test_user_init_container_with_our_name_conflicts(
    make_pod, make_container, make_binding, inject
):
    pod = make_pod(init_containers=[make_container("sidecar-state-redis")])

    with pytest.raises(InjectionConflict, match="'sidecar-state-redis' is reserved"):
        inject(pod, make_binding())


def test_container_conflict_message_says_how_to_opt_out(
    make_pod, make_container, make_binding, inject
):
    pod = make_pod(containers=[make_container("sidecar-state-redis")])

    with pytest.raises(InjectionConflict, match=r'sidecarstate\.dev/inject: "false"'):
        inject(pod, make_binding())


def test_opting_out_as_the_conflict_message_advises_is_accepted(
    make_pod, make_container, make_binding, inject
):
    pod = make_pod(containers=[make_container("sidecar-state-redis")],
                   annotations={"sidecarstate.dev/inject": "false"})  # fmt: skip

    assert isinstance(inject(pod, make_binding()), Skipped)


def test_volume_with_our_name_conflicts(make_pod, make_binding, inject):
    pod = make_pod(volumes=[{"name": "sidecar-state-socket", "emptyDir": {}}])

    with pytest.raises(InjectionConflict, match="volume name 'sidecar-state-socket' is reserved"):
        inject(pod, make_binding())


def test_mount_at_our_socket_dir_conflicts(make_pod, make_container, make_binding, inject):
    app = make_container(mounts=[{"name": "run", "mountPath": "/var/run/sidecar-state"}])
    pod = make_pod(containers=[app], volumes=[{"name": "run", "emptyDir": {}}])

    with pytest.raises(InjectionConflict, match="'app' already mounts /var/run/sidecar-state"):
        inject(pod, make_binding())


def test_conflicts_only_matter_for_pods_a_binding_selects(
    make_pod, make_container, make_binding, inject
):
    pod = make_pod(labels={"app": "cart"}, containers=[make_container("sidecar-state-redis")])

    assert isinstance(inject(pod, make_binding()), Skipped)
