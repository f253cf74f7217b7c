"""The end-to-end suite: one real cluster per test session.

The ``cluster`` fixture comes from localkube's pytest plugin (``localkube.pytest_plugin``,
registered as a ``pytest11`` entry point by ``tools/pyproject.toml``): ``E2E_CLUSTER=existing``
uses the cluster of the current ``KUBECONFIG`` (kind), otherwise the session starts its own
control plane from binaries built from Go modules (``tools/localkube``).
"""

from __future__ import annotations

import pytest

from localkube.pytest_plugin import cluster_mode


def pytest_configure(config: pytest.Config) -> None:
    """Say what to install when the plugin that provides ``cluster`` is missing."""
    if not config.pluginmanager.has_plugin("localkube"):
        raise pytest.UsageError(
            "the e2e suite needs localkube's pytest plugin: run `scripts/setup.sh python` "
            "(it installs tools/ editable into .venv), and do not pass -p no:localkube"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an existing cluster, skip the ``local_cluster`` scenarios: they need the operator as
    a process on this machine, or install what only the suite's own cluster may get."""
    if cluster_mode() != "existing":
        return
    skip = pytest.mark.skip(reason="local_cluster: needs the suite's own control plane")
    for item in items:
        if item.get_closest_marker("local_cluster"):
            item.add_marker(skip)
