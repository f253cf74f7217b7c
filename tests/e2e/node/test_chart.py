"""Issue 6: the chart's operator runs on the node and injects through its webhook Service.

Why here and not in the control-plane suite: only with a kubelet do the operator's Pods run, and
only with kube-proxy and Pod IPs can the apiserver reach the webhook through its Service. The
kind cluster (``tools/localkube/kind/cluster.py``) installed the chart from the Dockerfile images
under the chart's default names; the session's fixture pointed it at the broker.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar_state_stack.objects import get_binding, wait_for
from sidecar_state_stack.operator_process import OPERATOR_NAMESPACE, REPO, ChartOperator
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import (
    bind,
    flag_binding,
    flag_topic,
    start_app_pod,
    wait_answer,
)

RELEASE = "sidecar-state"


@pytest.fixture
def chart_operator(node_cluster: NodeCluster) -> None:
    ChartOperator(cluster=node_cluster.cluster).wait_ready()


def test_chart_operator_runs_and_injects_through_its_service(
    node_cluster: NodeCluster, namespace: str, chart_operator: None
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    pods = cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE)["items"]
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 3, [p["metadata"]["name"] for p in running]
    webhook = cluster.kubectl_json("get", "mutatingwebhookconfiguration", RELEASE)
    assert "service" in webhook["webhooks"][0]["clientConfig"]
    rendered = cluster.kubectl_json(
        "get", "deployment", f"{RELEASE}-webhook", "-n", OPERATOR_NAMESPACE
    )["spec"]["template"]["spec"]
    # Service links would put SIDECAR_STATE_WEBHOOK_PORT=tcp://... into the operator's env.
    assert rendered["enableServiceLinks"] is False

    bind(cluster, flag_binding("shop", namespace, topic=flag_topic(broker, namespace)))
    pod = start_app_pod(cluster, "shop-1", namespace, app="shop", timeout=180)
    inits = [c["name"] for c in pod["spec"]["initContainers"]]
    assert inits == ["sidecar-state-credentials", "sidecar-state-redis", "sidecar-state-hydrator"]
    assert wait_answer(pod["status"]["podIP"], "Showing New Layout", timeout=10)

    # `sidecar-state check` on the chart's installation: service webhooks (caBundle against the
    # TLS Secret, an answer through the service proxy), the controller Deployment, and a Pod
    # whose hydrator the controller scraped.
    wait_for(
        lambda: (
            ((get_binding(cluster, "shop", namespace) or {}).get("status") or {}).get(
                "hydratedPods"
            )
            == 1
        ),
        timeout=60,
        what="the controller to count the hydrated Pod",
    )
    check = subprocess.run(
        [sys.executable, "-m", "sidecar_operator.cli", "check", "--namespace", namespace],
        env=cluster.env(), capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    for line in (
        "✓ inject-pods.sidecarstate.dev: caBundle verifies the serving certificate",
        "✓ inject-pods.sidecarstate.dev: the endpoint answers",
        f"✓ Deployment {OPERATOR_NAMESPACE}/{RELEASE}-controller is up",
        f"✓ Pods selected by {namespace}/shop carry the sidecars (1 of 1)",
        f"✓ hydrators of {namespace}/shop are hydrated (1 of 1 hydrated)",
        f"✓ views of {namespace}/shop are fresh",
    ):
        assert line in check.stdout, check.stdout
