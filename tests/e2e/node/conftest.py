"""Fixtures for the node scenarios: Pods with our sidecars really run (issue 6).

Why a session of its own (``make test-node`` = ``pytest tests/e2e/node``): these scenarios need a
control plane bound for a node, a kubelet with containerd, our images and a broker the Pods can
reach; the control-plane suite needs none of that, and two control planes in one session would
only cost memory. ``E2E_CLUSTER=local`` (default) starts the whole stack (``stack.py``), as root.
``E2E_CLUSTER=existing`` (kind in CI) is skipped with its reason: there the chart-installed
operator and the workflow's images would be used, which is not wired yet.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster.access import ClusterAccess
from tests.e2e.node.stack import NodeOperator, Stack, build_everything
from tests.support.kafka_broker import KafkaBroker

_ARCHIVES: dict[str, Path] = {}


def _mode() -> str:
    return os.environ.get("E2E_CLUSTER", "local") or "local"


def _skip_reason() -> str | None:
    if _mode() == "existing":
        return (
            "node scenarios on an existing cluster (kind) are not wired yet: they need the "
            "chart-installed operator, the workflow's images and a broker reachable from Pods"
        )
    if os.geteuid() != 0:
        return "a local node needs root (containerd, mounts, iptables)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build binaries and images before the first test, with live progress, outside timeouts."""
    if _skip_reason() is not None:
        return
    if not any("node_cluster" in getattr(item, "fixturenames", ()) for item in items):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        _ARCHIVES.update(build_everything(out=sys.stderr))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeCluster:
    """What the scenarios use: cluster access, the broker the Pods read, the operator."""

    cluster: ClusterAccess
    broker: KafkaBroker
    operator: NodeOperator
    stack: Stack


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    workdir = Path(tmp_path_factory.mktemp("node-stack"))
    archives = _ARCHIVES or build_everything()
    stack = Stack.start_cluster(workdir, archives, detach=False)
    try:
        # After the node: NODE_IP exists only once the node's bridge is up.
        with KafkaBroker(host=stack.node_ip, workdir=workdir / "kafka") as broker:
            operator = stack.start_operator(workdir / "operator", broker.bootstrap_servers)
            print(f"\n[node] stack up: {stack.timings}", file=sys.stderr)
            yield NodeCluster(cluster=stack.cluster, broker=broker, operator=operator, stack=stack)
    finally:
        stack.stop()


@pytest.fixture
def namespace(node_cluster: NodeCluster) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    node_cluster.cluster.kubectl_run("create", "namespace", name)
    try:
        yield name
    finally:
        node_cluster.cluster.kubectl_run("delete", "namespace", name, "--wait=false")
