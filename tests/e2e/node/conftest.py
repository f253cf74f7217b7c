"""Fixtures for the node scenarios: Pods with our sidecars really run (issue 6), on kind.

Why kind and ``E2E_CLUSTER=existing`` only: these scenarios need a kubelet with containerd, our
images on the node and the chart's operator; ``tools/localkube/kind/cluster.py``
(``make test-kind``, ``make test-node``, and the ``e2e-kind`` job on GitHub) creates that
cluster, installs the chart from the Dockerfile-built images and runs the suite against it. The
broker runs on this host at ``E2E_KAFKA_HOST`` (an address Pods reach), the chart is pointed at
it, and a container is killed through the node container ``E2E_KIND_NODE``'s containerd.
Against the suite's own control plane (no kubelet) the scenarios are skipped with the command
that runs them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localkube.access import ClusterAccess
from localkube.pytest_plugin import cluster_mode
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.nats_server import NatsServer
from sidecar_state_stack.operator_process import OPERATOR_NAMESPACE, REPO, ChartOperator

KAFKA_HOST_ENV = "E2E_KAFKA_HOST"
NODE_CONTAINER_ENV = "E2E_KIND_NODE"
RELEASE = "sidecar-state"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeCluster:
    """What the scenarios use: cluster access, the broker the Pods read, and
    ``kill_container``, which SIGKILLs a container by its CRI id on the node that runs it."""

    cluster: ClusterAccess
    broker: KafkaBroker
    kill_container: Callable[[str], None]


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"E2E_CLUSTER=existing node scenarios need {name} "
            "(set by tools/localkube/kind/cluster.py)"
        )
    return value


@pytest.fixture(scope="session")
def node_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[NodeCluster]:
    if cluster_mode() != "existing":
        pytest.skip(
            "the node scenarios run on kind: `make test-node` "
            "(python -m localkube.kind.cluster test -- tests/e2e/node)"
        )
    # Asked for only here: against the suite's own control plane the skip above starts nothing.
    cluster: ClusterAccess = request.getfixturevalue("cluster")
    yield from _existing_node_cluster(cluster, Path(tmp_path_factory.mktemp("node-stack")))


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
        # watchdog runs every 2 s (15 s is for production) so status moves within a scenario.
        cluster.helm_run(
            "upgrade", RELEASE, str(REPO / "charts" / "sidecar-state"), "-n", OPERATOR_NAMESPACE,
            "--reuse-values", "--wait", "--timeout", "5m",
            "--set", f"kafka.bootstrapServers={{{broker.bootstrap_servers}}}",
            "--set", "controller.watchdogIntervalSeconds=2",
        )  # fmt: skip
        ChartOperator(cluster=cluster).wait_ready()
        yield NodeCluster(cluster=cluster, broker=broker, kill_container=kill_container)


@pytest.fixture(scope="session")
def node_nats(node_cluster: NodeCluster) -> Iterator[NatsServer]:
    """A nats-server with JetStream where Pods reach it: the host's address on kind's network,
    where the broker listens too."""
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
