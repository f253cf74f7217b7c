"""Scenarios 3, 4 and 8: Deployment annotations, roll-outs on change, deletion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localkube.access import ClusterAccess
from sidecar_state_stack.objects import (
    binding,
    deployment,
    get_binding,
    hydrator_config,
    is_injected,
    pod,
    pods_of,
    redis_arg,
    wait_for,
    wait_reconciled,
)

Pod = dict[str, Any]


def wait_all_pods(
    cluster: ClusterAccess,
    namespace: str,
    selector: str,
    check: Callable[[Pod], bool],
    what: str,
    *,
    count: int | None = None,
) -> list[Pod]:
    """Until the workload's Pods (``count`` of them, when given) all satisfy ``check``."""

    def probe() -> list[Pod] | None:
        pods = pods_of(cluster, namespace, selector)
        enough = len(pods) == count if count is not None else bool(pods)
        return pods if enough and all(check(p) for p in pods) else None

    return wait_for(probe, timeout=90, what=f"every Pod {selector}: {what}")


def test_annotated_deployment_gets_an_owned_binding_and_rolls(
    cluster: ClusterAccess, namespace: str
) -> None:
    annotations = {"sidecarstate.dev/topics": "feature-flags", "sidecarstate.dev/memory": "32Mi",
                   "sidecarstate.dev/key-prefix": "flag:"}  # fmt: skip
    cluster.apply(deployment("shop", namespace, annotations=annotations))

    owned = wait_for(lambda: get_binding(cluster, "shop", namespace), what="the owned binding")
    owner = owned["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Deployment", "shop", True)
    assert owned["spec"]["source"]["kafka"]["topics"] == ["feature-flags"]
    assert owned["spec"]["store"]["maxMemory"] == "32Mi"

    pods = wait_all_pods(cluster, namespace, "app=shop", is_injected, "injected after roll-out")
    assert hydrator_config(pods[0]).bindings[0].keys.prefix == "flag:"
    assert redis_arg(pods[0], "--maxmemory") == str(32 * 2**20)

    # Removing the annotation removes the binding, and the Pods lose the sidecars.
    cluster.kubectl_run(
        "annotate", "deployment", "shop", "-n", namespace, "sidecarstate.dev/topics-"
    )
    wait_for(lambda: get_binding(cluster, "shop", namespace) is None, what="binding deleted")
    wait_all_pods(cluster, namespace, "app=shop", lambda p: not is_injected(p), "no sidecars")


def test_changing_a_binding_rolls_its_workloads_with_the_new_configuration(
    cluster: ClusterAccess, namespace: str
) -> None:
    sb = binding("pricing", namespace, max_memory="64Mi")
    cluster.apply(sb)
    wait_reconciled(cluster, "pricing", namespace)
    cluster.apply(deployment("pricing", namespace, replicas=2))
    before = wait_all_pods(cluster, namespace, "app=pricing", is_injected, "injected", count=2)
    assert redis_arg(before[0], "--maxmemory") == str(64 * 2**20)

    sb["spec"]["source"]["kafka"]["topics"] = ["feature-flags", "prices"]
    sb["spec"]["store"]["maxMemory"] = "128Mi"
    cluster.apply(sb)

    def new_config(p: Pod) -> bool:
        return is_injected(p) and redis_arg(p, "--maxmemory") == str(128 * 2**20)

    after = wait_all_pods(
        cluster, namespace, "app=pricing", new_config, "the new configuration", count=2
    )
    for p in after:
        assert hydrator_config(p).bindings[0].topics == ("feature-flags", "prices")
        assert p["metadata"]["name"] not in {b["metadata"]["name"] for b in before}


def test_deleting_a_binding_stops_injection_and_owned_bindings_are_collected(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("gone", namespace))
    wait_reconciled(cluster, "gone", namespace)
    cluster.apply(deployment("gone", namespace))
    wait_all_pods(cluster, namespace, "app=gone", is_injected, "injected")

    cluster.kubectl_run("delete", "sb", "gone", "-n", namespace)
    wait_all_pods(cluster, namespace, "app=gone", lambda p: not is_injected(p), "no sidecars")
    cluster.apply(pod("late", namespace, labels={"app": "gone"}))
    assert not is_injected(cluster.kubectl_json("get", "pod", "late", "-n", namespace))

    # A binding owned by a Deployment goes with it (the garbage collector, not us).
    cluster.apply(deployment("owner", namespace,
                             annotations={"sidecarstate.dev/topics": "feature-flags"}))  # fmt: skip
    wait_for(lambda: get_binding(cluster, "owner", namespace), what="the owned binding")
    cluster.kubectl_run("delete", "deployment", "owner", "-n", namespace)
    wait_for(lambda: get_binding(cluster, "owner", namespace) is None, timeout=60,
             what="the owned binding to be garbage-collected")  # fmt: skip
