"""The end-to-end suite: one real cluster per test session.

The ``cluster`` fixture comes from localkube's pytest plugin (``localkube.pytest_plugin``,
registered as a ``pytest11`` entry point by ``tools/pyproject.toml``): ``E2E_CLUSTER=existing``
uses the cluster of the current ``KUBECONFIG`` (kind), otherwise the session starts its own
control plane from binaries built from Go modules (``tools/localkube``).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Say what to install when the plugin that provides ``cluster`` is missing."""
    if not config.pluginmanager.has_plugin("localkube"):
        raise pytest.UsageError(
            "the e2e suite needs localkube's pytest plugin: run `scripts/setup.sh python` "
            "(it installs tools/ editable into .venv), and do not pass -p no:localkube"
        )
