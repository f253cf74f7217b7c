"""engine: lmdb on a real node: no Redis in the Pod, and the app (another container, another
UID, the Pod's process namespace) reads the flags with the Python client in its own process."""

from __future__ import annotations

import json
import sys
from typing import Any

from demo.publish import publish
from sidecar_state_stack.objects import wait_for
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.stack import IMAGES
from tests.e2e.node.support import (
    bind,
    container_status,
    flag_binding,
    flag_topic,
    get_pod,
    wait_ready,
)

#: A UID of its own (not the hydrator's 65532): it may write lock.mdb (the Pod's group), not
#: data.mdb.
APP_UID = 1000

#: The app: the hydrator image has Python, lmdb and sidecar_state_client.
READER = """
import json, os, time
from sidecar_state_client import open_reader
reader = open_reader(wait_seconds=60)
last = None
while True:
    value = reader.get(b'flag:new-ui-layout')
    meta = reader.meta()
    seen = (value, meta.get('hydrated'))
    if seen != last:
        data = os.path.join(os.environ['SIDECAR_STATE_LMDB_PATH'], 'current', 'data.mdb')
        print('READ ' + json.dumps({
            'value': value.decode() if value is not None else None,
            'hydrated': meta.get('hydrated'),
            'uid': os.getuid(),
            'data_writable': os.access(data, os.W_OK),
        }), flush=True)
        last = seen
    time.sleep(0.05)
"""
READY = (
    "from sidecar_state_client import open_reader; "
    "assert open_reader().meta().get('hydrated') == '1'"
)


def lmdb_pod(name: str, namespace: str, *, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": IMAGES["hydrator"],
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", READER],
                    "readinessProbe": {
                        "exec": {"command": ["python", "-c", READY]},
                        "periodSeconds": 1,
                        "timeoutSeconds": 5,
                    },
                    "securityContext": {
                        "runAsUser": APP_UID,
                        "runAsGroup": APP_UID,
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                    },
                }
            ],
            "terminationGracePeriodSeconds": 2,
            "dnsPolicy": "Default",
        },
    }


def _reads(cluster: Any, name: str, namespace: str) -> list[dict[str, Any]]:
    logs = cluster.kubectl_run("logs", name, "-n", namespace, "-c", "app", check=False).stdout
    return [json.loads(x.removeprefix("READ ")) for x in logs.splitlines() if x.startswith("READ ")]


def test_an_lmdb_pod_is_ready_and_its_app_reads_the_flags_in_process(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    topic = flag_topic(broker, namespace)
    binding = flag_binding("lmdb", namespace, topic=topic)
    binding["spec"]["store"]["engine"] = "lmdb"
    bind(cluster, binding)
    cluster.apply(lmdb_pod("lmdb-1", namespace, app="lmdb"))

    pod = wait_ready(cluster, "lmdb-1", namespace, timeout=180)
    names = [
        c["name"] for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    ]
    assert "sidecar-state-redis" not in names and "sidecar-state-hydrator" in names
    assert pod["spec"]["shareProcessNamespace"] is True
    assert container_status(pod, "sidecar-state-hydrator")["ready"] is True
    first = _reads(cluster, "lmdb-1", namespace)
    print(f"\n[node] lmdb app reads: {first}", file=sys.stderr)
    assert first[0]["value"] == "true" and first[0]["hydrated"] == "1", first
    assert first[0]["uid"] == APP_UID
    assert first[0]["data_writable"] is False  # the lock file only

    publish(broker.bootstrap_servers, "new-ui-layout", False, topic=topic)
    changed = wait_for(
        lambda: [r for r in _reads(cluster, "lmdb-1", namespace) if r["value"] == "false"],
        timeout=30,
        what="the app reading the update",
    )
    assert changed[0]["hydrated"] == "1"
    assert get_pod(cluster, "lmdb-1", namespace)["status"]["phase"] == "Running"
