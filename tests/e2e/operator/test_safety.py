"""Safe on a real cluster: the outage-class defects, each against the real control plane.

Every scenario here failed before its fix: the update of an annotated Deployment's binding,
a deleted binding that Pods name, restarts by an operator upgrade, mesh ordering, Windows
Pods, and Secrets or brokers a binding may not use.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.e2e.cluster.access import ClusterAccess
from tests.e2e.helpers import (
    binding,
    deployment,
    get_binding,
    is_injected,
    pods_of,
    redis_arg,
    wait_for,
    wait_reconciled,
)

Pod = dict[str, Any]


def events_on(cluster: ClusterAccess, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind={kind},involvedObject.name={name}",
    )["items"]
    return items


def all_pods(cluster: ClusterAccess, namespace: str, selector: str, check: Any, count: int) -> Any:
    def probe() -> list[Pod] | None:
        pods = pods_of(cluster, namespace, selector)
        return pods if len(pods) == count and all(check(p) for p in pods) else None

    return wait_for(probe, timeout=90, what=f"{count} Pod(s) {selector} to satisfy the check")


# --- item 1: Deployment annotations ---------------------------------------------------------


def test_changing_a_deployment_annotation_updates_its_binding_and_rolls(
    cluster: ClusterAccess, namespace: str
) -> None:
    annotations = {
        "sidecarstate.dev/topics": "feature-flags",
        "sidecarstate.dev/memory": "32Mi",
        "sidecarstate.dev/key-prefix": "flag:",
    }
    cluster.apply(deployment("annotated", namespace, annotations=annotations))
    all_pods(
        cluster,
        namespace,
        "app=annotated",
        lambda p: is_injected(p) and redis_arg(p, "--maxmemory") == str(32 * 2**20),
        1,
    )

    cluster.kubectl_run(
        "annotate",
        "deployment",
        "annotated",
        "-n",
        namespace,
        "--overwrite",
        "sidecarstate.dev/memory=48Mi",
        "sidecarstate.dev/key-prefix-",
    )

    def updated() -> dict[str, Any] | None:
        found = get_binding(cluster, "annotated", namespace) or {}
        spec = found.get("spec") or {}
        return found if (spec.get("store") or {}).get("maxMemory") == "48Mi" else None

    found = wait_for(updated, timeout=30, what="the owned binding to get maxMemory 48Mi")
    assert "keys" not in found["spec"] or found["spec"]["keys"].get("prefix", "") == ""
    all_pods(
        cluster,
        namespace,
        "app=annotated",
        lambda p: is_injected(p) and redis_arg(p, "--maxmemory") == str(48 * 2**20),
        1,
    )


def test_a_clashing_binding_is_reported_once_not_on_every_deployment_event(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("taken", namespace))
    wait_reconciled(cluster, "taken", namespace)
    cluster.apply(
        deployment(
            "taken",
            namespace,
            labels={"app": "other"},
            annotations={"sidecarstate.dev/topics": "prices"},
        )
    )
    wait_for(
        lambda: [
            e
            for e in events_on(cluster, namespace, "Deployment", "taken")
            if e["reason"] == "BindingExists"
        ],
        timeout=30,
        what="a BindingExists Event",
    )
    for step in range(4):  # each is a Deployment event (and a ReplicaSet roll-out or scale)
        cluster.kubectl_run(
            "annotate",
            "deployment",
            "taken",
            "-n",
            namespace,
            "--overwrite",
            f"example.com/touch={step}",
        )
        cluster.kubectl_run(
            "scale", "deployment", "taken", "-n", namespace, f"--replicas={step % 2 + 1}"
        )
    time.sleep(4)  # Events are posted asynchronously

    clashes = [
        e
        for e in events_on(cluster, namespace, "Deployment", "taken")
        if e["reason"] == "BindingExists"
    ]
    assert len(clashes) == 1 and clashes[0].get("count", 1) == 1, clashes
    assert (get_binding(cluster, "taken", namespace) or {})["spec"]["source"]["kafka"][
        "topics"
    ] == ["feature-flags"]  # never taken over


# --- item 2: a deleted binding that Pods name --------------------------------------------------


def test_deleting_a_named_binding_never_stops_the_workload_having_pods(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("named", namespace))
    wait_reconciled(cluster, "named", namespace)
    dep = deployment("uses-named", namespace)  # Recreate: the strategy that lost every Pod
    dep["spec"]["template"]["metadata"]["annotations"] = {"sidecarstate.dev/bindings": "named"}
    cluster.apply(dep)
    (before,) = all_pods(cluster, namespace, "app=uses-named", is_injected, 1)

    cluster.kubectl_run("delete", "sb", "named", "-n", namespace)
    time.sleep(5)  # the controller's passes: it must not roll the workload away from the binding
    (still,) = pods_of(cluster, namespace, "app=uses-named")
    assert still["metadata"]["name"] == before["metadata"]["name"]

    # An evicted Pod is replaced: the new one is admitted, without the sidecars, with a warning.
    cluster.kubectl_run("delete", "pod", before["metadata"]["name"], "-n", namespace)
    (after,) = all_pods(cluster, namespace, "app=uses-named", lambda p: not is_injected(p), 1)
    assert after["metadata"]["name"] != before["metadata"]["name"]
    replica_set = after["metadata"]["ownerReferences"][0]["name"]
    (warning, *_) = wait_for(
        lambda: [
            e
            for e in events_on(cluster, namespace, "ReplicaSet", replica_set)
            if e["reason"] == "BindingMissing"
        ],
        timeout=30,
        what="a BindingMissing Event on the ReplicaSet",
    )
    assert warning["type"] == "Warning" and "named" in warning["message"]

    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bare",
            "namespace": namespace,
            "annotations": {"sidecarstate.dev/bindings": "named"},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }
    created = cluster.kubectl_run("create", "-f", "-", input=json.dumps(bare))
    assert "StateBinding(s) named" in created.stderr and "do not exist" in created.stderr
