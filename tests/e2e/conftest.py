"""Fixtures for the end-to-end suite: one real cluster per test session.

``E2E_CLUSTER=existing`` uses the cluster of the current ``KUBECONFIG`` (kind on GitHub Actions)
with kubectl and helm from PATH. Otherwise the suite starts its own control plane from binaries
built from Go modules (see ``tests/e2e/cluster``) and stops it at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import build as cluster_build
from tests.e2e.cluster.access import ClusterAccess
from tests.e2e.cluster.controlplane import LocalControlPlane


def _mode() -> str:
    mode = os.environ.get("E2E_CLUSTER", "local") or "local"
    if mode not in ("local", "existing"):
        raise pytest.UsageError(f"E2E_CLUSTER must be 'local' or 'existing', not {mode!r}")
    return mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the binaries before any test runs when a selected test needs the local cluster.

    A cold build takes many minutes; doing it here rather than in the fixture keeps it out of
    the per-test timeout, and shows its progress live instead of in captured output.

    On an existing cluster, the ``local_cluster`` scenarios are skipped (they need the operator
    as a process on this machine, or install what only the suite's own cluster may get).
    """
    if _mode() == "existing":
        skip = pytest.mark.skip(reason="local_cluster: needs the suite's own control plane")
        for item in items:
            if item.get_closest_marker("local_cluster"):
                item.add_marker(skip)
        return
    if cluster_build.is_built():
        return
    if not any("cluster" in getattr(item, "fixturenames", ()) for item in items):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        try:
            cluster_build.build(out=sys.stderr)
        except cluster_build.BuildError as error:
            raise pytest.UsageError(f"building the local control plane failed: {error}") from None


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterAccess]:
    """The session's cluster; see the module docstring for how it is chosen."""
    if _mode() == "existing":
        kubeconfig = Path(
            os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube/config"
        )
        kubectl, helm = shutil.which("kubectl"), shutil.which("helm")
        if not kubeconfig.is_file() or kubectl is None or helm is None:
            pytest.fail(
                "E2E_CLUSTER=existing needs KUBECONFIG (or ~/.kube/config) and kubectl and helm "
                f"on PATH; found kubeconfig={kubeconfig if kubeconfig.is_file() else None}, "
                f"kubectl={kubectl}, helm={helm}"
            )
        yield ClusterAccess(
            kubeconfig=kubeconfig, kubectl=Path(kubectl), helm=Path(helm), existing=True
        )
        return
    with LocalControlPlane() as plane:
        yield ClusterAccess(
            kubeconfig=plane.kubeconfig,
            kubectl=plane.binaries.kubectl,
            helm=plane.binaries.helm,
            existing=False,
        )
