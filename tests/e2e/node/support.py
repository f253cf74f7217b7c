"""Builders and reads for the node scenarios: real Pods, real HTTP and Redis reads."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from demo.publish import publish
from localkube.access import ClusterAccess
from sidecar_state_stack.bindings import binding_doc
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.objects import wait_for, wait_reconciled
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


def flag_topic(
    broker: KafkaBroker, namespace: str, *, enabled: bool = True, prefix: str = "flags"
) -> str:
    """A topic of this namespace's own (``<prefix>-<namespace>``) holding the demo's one flag,
    ``new-ui-layout``, so the app answers "Showing New Layout" (or Old, not ``enabled``)."""
    topic = f"{prefix}-{namespace}"
    broker.create_topic(topic)
    publish(broker.bootstrap_servers, "new-ui-layout", enabled, topic=topic)
    return topic


def big_flags(count: int = 6000) -> list[tuple[str, bytes]]:
    """``count`` flags of 1 KiB each (6 MB by default: more than a 4Mi store holds)."""
    filler = "x" * 1024
    return [
        (f"k{i}", json.dumps({"id": f"k{i}", "enabled": filler}).encode()) for i in range(count)
    ]


def bind(cluster: ClusterAccess, binding: dict[str, Any]) -> None:
    """Apply a StateBinding and wait until the operator has reconciled it, so Pods created
    after this are injected with it."""
    cluster.apply(binding)
    wait_reconciled(cluster, binding["metadata"]["name"], binding["metadata"]["namespace"])


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


def start_app_pod(
    cluster: ClusterAccess, name: str, namespace: str, *, app: str, timeout: float = 120.0
) -> dict[str, Any]:
    """The demo app's Pod ``name`` (label ``app``), once Ready: its view is complete."""
    cluster.apply(app_pod(name, namespace, app=app))
    return wait_ready(cluster, name, namespace, timeout=timeout)


def app_job(name: str, namespace: str, script: str) -> dict[str, Any]:
    """A Job (label ``app: <name>``) running ``python3 -c script`` in the demo app's image."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "dnsPolicy": "Default",
                    "containers": [app_container(["python3", "-c", script])],
                },
            },
        },
    }


def run_job(cluster: ClusterAccess, name: str, namespace: str, script: str) -> str:
    """Run :func:`app_job` to completion; the app container's log."""
    cluster.apply(app_job(name, namespace, script))
    cluster.kubectl_run(
        "wait", "--for=condition=Complete", f"job/{name}", "-n", namespace, "--timeout=120s",
        timeout=130,
    )  # fmt: skip
    logs: str = cluster.kubectl_run("logs", f"job/{name}", "-n", namespace, "-c", "app").stdout
    return logs


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


def wait_oom_rejections(cluster: ClusterAccess, name: str, namespace: str) -> str:
    """Until the hydrator of Pod ``name`` reports Redis refusing writes; the Pod's IP."""

    def refusing() -> str | None:
        ip = get_pod(cluster, name, namespace)["status"].get("podIP")
        if not ip:
            return None
        try:
            return ip if metric(ip, "sidecar_state_hydrator_redis_oom_rejections_total") else None
        except OSError:
            return None

    ip: str = wait_for(refusing, timeout=90, interval=1, what="OOM rejections in the metrics")
    return ip
