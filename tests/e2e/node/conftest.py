"""Fixtures for the node scenarios: Pods with our sidecars really run (issue 6).

Why a session of its own (``make test-node`` = ``pytest tests/e2e/node``): these scenarios need a
control plane bound for a node, a kubelet with containerd, our images and a broker the Pods can
reach; the control-plane suite needs none of that, and two control planes in one session would
only cost memory. ``E2E_CLUSTER=local`` (default) starts the whole stack (``stack.py``), as root.
``E2E_CLUSTER=existing`` (kind, here and in CI: ``tests/e2e/kind/cluster.py``) uses the cluster
of ``KUBECONFIG`` with the chart already installed from the Dockerfile images; the broker runs
on this host at ``E2E_KAFKA_HOST`` (an address Pods reach), the chart is pointed at it, and a
container is killed through the node container ``E2E_KIND_NODE``'s containerd.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster.access import ClusterAccess
from tests.e2e.node.stack import NodeOperator, Stack, build_everything
from tests.e2e.operator_process import OPERATOR_NAMESPACE, REPO, ChartOperator
from tests.support.kafka_broker import KafkaBroker
from tests.support.nats_server import NatsServer

KAFKA_HOST_ENV = "E2E_KAFKA_HOST"
NODE_CONTAINER_ENV = "E2E_KIND_NODE"
RELEASE = "sidecar-state"

_ARCHIVES: dict[str, Path] = {}


def _mode() -> str:
    return os.environ.get("E2E_CLUSTER", "local") or "local"


def _skip_reason() -> str | None:
    if _mode() == "existing":
        return None
    if os.geteuid() != 0:
        return "a local node needs root (containerd, mounts, iptables)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build binaries and images before the first test, with live progress, outside timeouts."""
    if _skip_reason() is not None or _mode() == "existing":
        return
    if not any("node_cluster" in getattr(item, "fixturenames", ()) for item in items):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        _ARCHIVES.update(build_everything(out=sys.stderr))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeCluster:
    """What the scenarios use: cluster access, the broker the Pods read, the operator.

    ``operator`` is the host process on the local node, None where the chart runs it (kind);
    ``kill_container`` SIGKILLs a container by its CRI id on the node that runs it.
    """

    cluster: ClusterAccess
    broker: KafkaBroker
    operator: NodeOperator | None
    kill_container: Callable[[str], None]


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"E2E_CLUSTER=existing node scenarios need {name} (set by tests/e2e/kind/cluster.py)"
        )
    return value


@pytest.fixture(scope="session")
def node_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[NodeCluster]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    workdir = Path(tmp_path_factory.mktemp("node-stack"))
    if _mode() == "existing":
        yield from _existing_node_cluster(request.getfixturevalue("cluster"), workdir)
        return
    archives = _ARCHIVES or build_everything()
    stack = Stack.start_cluster(workdir, archives, detach=False)
    try:
        # After the node: NODE_IP exists only once the node's bridge is up.
        with KafkaBroker(host=stack.node_ip, workdir=workdir / "kafka") as broker:
            operator = stack.start_operator(workdir / "operator", broker.bootstrap_servers)
            print(f"\n[node] stack up: {stack.timings}", file=sys.stderr)
            yield NodeCluster(
                cluster=stack.cluster,
                broker=broker,
                operator=operator,
                kill_container=lambda cid: stack.node.ctr(
                    "tasks", "kill", "--signal", "SIGKILL", cid
                ),
            )
    finally:
        stack.stop()


def _existing_node_cluster(cluster: ClusterAccess, workdir: Path) -> Iterator[NodeCluster]:
    """The chart-installed operator, pointed at a broker on this host that Pods can reach."""
    host, node = _required_env(KAFKA_HOST_ENV), _required_env(NODE_CONTAINER_ENV)

    def kill_container(container_id: str) -> None:
        subprocess.run(
            ["docker", "exec", node, "ctr", "--namespace=k8s.io", "tasks", "kill",
             "--signal", "SIGKILL", container_id],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    with KafkaBroker(host=host, workdir=workdir / "kafka") as broker:
        # The scenarios' bindings name no servers: the operator's default is this broker. The
        # watchdog and status move every 2 s, as with the host-process operator.
        cluster.helm_run(
            "upgrade", RELEASE, str(REPO / "charts" / "sidecar-state"), "-n", OPERATOR_NAMESPACE,
            "--reuse-values", "--wait", "--timeout", "5m",
            "--set", f"kafka.bootstrapServers={{{broker.bootstrap_servers}}}",
            "--set", "controller.watchdogIntervalSeconds=2",
        )  # fmt: skip
        ChartOperator(cluster=cluster).wait_ready()
        yield NodeCluster(
            cluster=cluster, broker=broker, operator=None, kill_container=kill_container
        )


@pytest.fixture(scope="session")
def node_nats(node_cluster: NodeCluster) -> Iterator[NatsServer]:
    """A nats-server with JetStream where Pods reach it: the address the broker listens on
    (the node's, or the host's that a kind node reaches)."""
    with NatsServer(host=node_cluster.broker.host) as server:
        yield server


@pytest.fixture
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    node_cluster.cluster.kubectl_run("create", "namespace", name)
    try:
        yield name
    finally:
        node_cluster.cluster.kubectl_run("delete", "namespace", name, "--wait=false")
