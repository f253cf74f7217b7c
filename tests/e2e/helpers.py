"""Small builders and waits shared by the e2e scenarios."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sidecar_hydrator.config import CONFIG_ENV, HydratorConfig
from tests.e2e.cluster.access import ClusterAccess
from tests.support.bindings import binding_doc

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.25, what: str
) -> T:
    """Poll until ``probe`` returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def binding(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    topics: list[str] | None = None,
    max_memory: str = "64Mi",
    prefix: str = "flag:",
) -> dict[str, Any]:
    return binding_doc(
        name, namespace=namespace, match_labels=labels or {"app": name},
        topics=topics or ["feature-flags"], bootstrap_servers=["kafka.data.svc:9092"],
        prefix=prefix, max_memory=max_memory,
    )  # fmt: skip


def pod(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }


def deployment(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str] | None = None,
    replicas: int = 1,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            # Pods never become Ready without a kubelet; Recreate rolls them regardless.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def pods_of(cluster: ClusterAccess, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", selector
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def container_names(pod: dict[str, Any]) -> tuple[list[str], list[str]]:
    spec = pod["spec"]
    inits = [c["name"] for c in spec.get("initContainers") or []]
    return inits, [c["name"] for c in spec["containers"]]


def is_injected(pod: dict[str, Any]) -> bool:
    return "sidecarstate.dev/injected-bindings" in (pod["metadata"].get("annotations") or {})


def hydrator_config(pod: dict[str, Any]) -> HydratorConfig:
    """The configuration the webhook rendered into a Pod's hydrator."""
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    hydrator = next(c for c in containers if c["name"] == "sidecar-state-hydrator")
    raw = next(e["value"] for e in hydrator["env"] if e["name"] == CONFIG_ENV)
    return HydratorConfig.from_json(raw)


def redis_arg(pod: dict[str, Any], flag: str) -> str:
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    redis = next(c for c in containers if c["name"] == "sidecar-state-redis")
    command: list[str] = redis["command"]
    return command[command.index(flag) + 1]


def get_binding(cluster: ClusterAccess, name: str, namespace: str) -> dict[str, Any] | None:
    proc = cluster.kubectl_run(
        "get", "statebinding", name, "-n", namespace, "-o", "json", check=False
    )
    if proc.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def wait_reconciled(cluster: ClusterAccess, name: str, namespace: str) -> dict[str, Any]:
    """Until the controller has written the status for the binding's current generation."""

    def done() -> dict[str, Any] | None:
        found = get_binding(cluster, name, namespace)
        if not found:
            return None
        status = found.get("status") or {}
        if status.get("observedGeneration") == found["metadata"]["generation"]:
            return found
        return None

    return wait_for(done, what=f"StateBinding {namespace}/{name} to be reconciled")
