"""The few Kubernetes API calls the controller makes, with the sync client.

They are blocking calls: handlers run them with ``asyncio.to_thread`` so the event loop (and
the webhook server on it, in the ``all`` role) never stalls.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import kubernetes
from kubernetes.client import ApiClient

from sidecar_operator.api.models import GROUP, PLURAL, VERSION

_WORKLOAD_LISTS = {
    "Deployment": "list_namespaced_deployment",
    "StatefulSet": "list_namespaced_stateful_set",
    "DaemonSet": "list_namespaced_daemon_set",
}
_WORKLOAD_PATCHES = {
    "Deployment": "patch_namespaced_deployment",
    "StatefulSet": "patch_namespaced_stateful_set",
    "DaemonSet": "patch_namespaced_daemon_set",
}


@cache
def client() -> ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return ApiClient()


def _plain(api: ApiClient, obj: Any, kind: str, api_version: str) -> dict[str, Any]:
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    data.setdefault("kind", kind)
    data.setdefault("apiVersion", api_version)
    return data


def create_event(namespace: str, body: dict[str, Any]) -> None:
    kubernetes.client.CoreV1Api(client()).create_namespaced_event(namespace, body)


def list_pods(namespace: str) -> list[dict[str, Any]]:
    api = client()
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace)
    return [_plain(api, pod, "Pod", "v1") for pod in pods.items]


def list_workloads(namespace: str) -> list[dict[str, Any]]:
    api = client()
    apps = kubernetes.client.AppsV1Api(api)
    result = []
    for kind, method in _WORKLOAD_LISTS.items():
        for item in getattr(apps, method)(namespace).items:
            result.append(_plain(api, item, kind, "apps/v1"))
    return result


def set_namespace_label(namespace: str, key: str, value: str | None) -> bool:
    """Set (or remove, with ``None``) one label; return whether anything changed."""
    core = kubernetes.client.CoreV1Api(client())
    metadata = core.read_namespace(namespace).metadata
    labels = (metadata.labels if metadata else None) or {}
    if labels.get(key) == value:
        return False
    core.patch_namespace(namespace, {"metadata": {"labels": {key: value}}})
    return True


def patch_workload(kind: str, name: str, namespace: str, patch: dict[str, Any]) -> None:
    apps = kubernetes.client.AppsV1Api(client())
    getattr(apps, _WORKLOAD_PATCHES[kind])(name, namespace, patch)


def patch_binding_status(name: str, namespace: str, status: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


def get_binding(name: str, namespace: str) -> dict[str, Any] | None:
    api = kubernetes.client.CustomObjectsApi(client())
    try:
        found: dict[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def create_binding(binding: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    namespace = binding["metadata"]["namespace"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, binding)


def replace_binding_spec(name: str, namespace: str, spec: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    # A JSON merge patch cannot remove list items; replacing the spec wholesale can.
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, [{"op": "replace", "path": "/spec", "value": spec}]
    )


def delete_binding(name: str, namespace: str) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            raise
