"""Where the pod template lives in each workload kind.

The CLI injects manifests offline and the controller rolls workloads when a binding changes;
both need to reach the Pod (template) inside a Deployment, a CronJob, and so on.
"""

from __future__ import annotations

from typing import Any

# kind -> path from the object to its pod template ("" for a bare Pod).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (the object itself for a Pod); ``None`` if it has none."""
    path = TEMPLATE_PATHS.get(str(obj.get("kind")))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def replace_pod_template(obj: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with its pod template replaced (``template`` itself for a Pod)."""
    path = TEMPLATE_PATHS[str(obj["kind"])]
    if not path:
        return template
    result = dict(obj)
    node = result
    for key in path[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    node[path[-1]] = template
    return result
