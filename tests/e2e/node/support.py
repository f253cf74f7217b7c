"""Builders and reads for the node scenarios: real Pods, real HTTP and Redis reads."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from localkube.access import ClusterAccess
from sidecar_state_stack.bindings import binding_doc
from sidecar_state_stack.objects import wait_for
from tests.e2e.node.stack import IMAGES

APP_PORT = 8080
HYDRATOR_PORT = 9464
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def flag_binding(
    name: str, namespace: str, *, topic: str = "feature-flags", max_memory: str = "16Mi"
) -> dict[str, Any]:
    """The demo's binding: JSON records ``{"id", "enabled"}`` -> ``flag:<id>``, from the
    operator's default brokers."""
    return binding_doc(
        name, namespace=namespace, topics=[topic], record_format="json", max_memory=max_memory
    )


def app_container(command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": IMAGES["demo-app"],
        "imagePullPolicy": "Never",
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
    }
    if command is None:
        container["ports"] = [{"containerPort": APP_PORT}]
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": APP_PORT},
            "periodSeconds": 1,
        }
    else:
        container["command"] = command
    return container


def app_pod(name: str, namespace: str, *, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "containers": [app_container()],
            "terminationGracePeriodSeconds": 2,
            "dnsPolicy": "Default",
        },
    }


def get_pod(cluster: ClusterAccess, name: str, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    return result


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_ready(
    cluster: ClusterAccess, name: str, namespace: str, timeout: float = 120.0
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod = get_pod(cluster, name, namespace)
        return pod if is_ready(pod) else None

    try:
        return wait_for(ready, timeout=timeout, interval=0.5, what=f"Pod {name} Ready")
    except AssertionError as error:
        described = cluster.kubectl_run("describe", "pod", name, "-n", namespace, check=False)
        raise AssertionError(f"{error}\n{described.stdout[-4000:]}") from None


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses = [
        *(pod["status"].get("initContainerStatuses") or []),
        *(pod["status"].get("containerStatuses") or []),
    ]
    return next(s for s in statuses if s["name"] == name)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def app_json(pod_ip: str, path: str) -> Any:
    status, body = http_get(f"http://{pod_ip}:{APP_PORT}{path}")
    assert status == 200, (path, status, body)
    return json.loads(body)


def metric(pod_ip: str, name: str) -> float:
    """Sum of every sample of one hydrator metric (all label sets), 0 if absent."""
    status, body = http_get(f"http://{pod_ip}:{HYDRATOR_PORT}/metrics")
    assert status == 200, body
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_answer(pod_ip: str, want: str, *, timeout: float = 10.0) -> float:
    """Poll the app's ``/`` every 5 ms until it answers ``want``; return the wall-clock time."""
    deadline = time.monotonic() + timeout
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        try:
            last = http_get(f"http://{pod_ip}:{APP_PORT}/", timeout=1.0)
        except OSError as error:
            last = (0, str(error))
        if last == (200, want + "\n"):
            return time.time()
        time.sleep(0.005)
    raise AssertionError(f"the app never answered {want!r} (last: {last!r})")
