"""localkube's pytest plugin: the ``cluster`` fixture, one real cluster per test session.

Registered as a ``pytest11`` entry point of the devtools distribution, so any suite of this
repo gets the fixture by asking for it, as dask-kubernetes' suites get theirs from pytest-kind.
The plugin does nothing in a run that requests no ``cluster``.

``E2E_CLUSTER=existing`` uses the cluster of the current ``KUBECONFIG`` (kind here and on GitHub
Actions) with kubectl and helm from PATH. Otherwise (``local``, the default) the session starts
its own control plane from binaries built from Go modules (:mod:`localkube.build`) and stops it
at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import build as cluster_build
from .access import ClusterAccess
from .errors import BuildError

#: Chooses the cluster: ``local`` (default) or ``existing``.
MODE_ENV = "E2E_CLUSTER"
#: The fixture this plugin provides.
FIXTURE = "cluster"


def cluster_mode() -> str:
    """``local`` or ``existing``, from ``$E2E_CLUSTER``; anything else is a usage error."""
    mode = os.environ.get(MODE_ENV, "local") or "local"
    if mode not in ("local", "existing"):
        raise pytest.UsageError(f"{MODE_ENV} must be 'local' or 'existing', not {mode!r}")
    return mode


def existing_access() -> ClusterAccess:
    """The cluster of ``$KUBECONFIG`` (or ``~/.kube/config``) with kubectl and helm from PATH."""
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
    return ClusterAccess(
        kubeconfig=kubeconfig, kubectl=Path(kubectl), helm=Path(helm), existing=True
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the binaries before any test runs when a selected test needs the local cluster.

    A cold build takes many minutes; doing it here rather than in the fixture keeps it out of
    the per-test timeout, and shows its progress live instead of in captured output.
    """
    if not any(FIXTURE in getattr(item, "fixturenames", ()) for item in items):
        return
    if cluster_mode() != "local" or cluster_build.is_built():
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        try:
            cluster_build.build(out=sys.stderr)
        except BuildError as error:
            raise pytest.UsageError(f"building the local control plane failed: {error}") from None


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterAccess]:
    """The session's cluster; see the module docstring for how it is chosen."""
    if cluster_mode() == "existing":
        yield existing_access()
        return
    # Imported here: the plugin loads in every pytest run, the control plane only when used.
    from .controlplane import LocalControlPlane

    with LocalControlPlane() as plane:
        yield ClusterAccess(
            kubeconfig=plane.kubeconfig,
            kubectl=plane.binaries.kubectl,
            helm=plane.binaries.helm,
            existing=False,
        )
