"""Fixtures for the operator scenarios: the CRD, the running operator, a fresh namespace."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localkube.access import ClusterAccess
from sidecar_state_stack.operator_process import (
    OPERATOR_NAMESPACE,
    REPO,
    ChartOperator,
    LocalOperator,
    OperatorHandle,
)


@pytest.fixture(scope="session")
def crd_installed(cluster: ClusterAccess) -> None:
    if cluster.existing:
        return  # the chart installed it
    cluster.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
    # Right after the apply the CRD may have no conditions yet, and kubectl wait then fails at
    # once instead of waiting (seen on a loaded machine): try again until it is Established.
    for _ in range(60):
        waited = cluster.kubectl_run(
            "wait", "--for=condition=Established", "--timeout=30s",
            "crd/statebindings.sidecarstate.dev", check=False,
        )  # fmt: skip
        if waited.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the StateBinding CRD is not Established: {waited.stderr}")


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterAccess, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorHandle]:
    if cluster.existing:
        chart = ChartOperator(cluster=cluster)
        chart.wait_ready()
        yield chart
        return
    cluster.kubectl_run("create", "namespace", OPERATOR_NAMESPACE, check=False)
    handle = LocalOperator(cluster=cluster, workdir=Path(tmp_path_factory.mktemp("operator")))
    handle.start()
    handle.register_webhooks("Fail")
    try:
        yield handle
    finally:
        handle.unregister_webhooks()
        handle.stop()


@pytest.fixture
def namespace(cluster: ClusterAccess, operator: OperatorHandle) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl_run("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl_run("delete", "namespace", name, "--wait=false")
