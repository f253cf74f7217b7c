"""localkube: a real Kubernetes on this machine, for the tests, the benchmarks and the demo.

Two ways to a cluster, one handle to reach it (:class:`ClusterAccess`: a kubeconfig, kubectl
and helm):

- :class:`LocalControlPlane`: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
  as host processes (no kubelet), built from their Go modules (:mod:`localkube.build`);
  ``python -m localkube up|down|status|build``;
- :mod:`localkube.kind`: a kind cluster with a node image assembled here, the repo's images
  loaded and the chart installed; ``python -m localkube.kind.cluster up|down|test``. It uses
  the repo's image tooling (``images/``), so it runs from the repository root.

The rest is what both need once: Go builds (:mod:`localkube.gobuild`), the cache root
(:mod:`localkube.cache`), free ports, child processes (:mod:`localkube.processes`) and the
errors (:mod:`localkube.errors`). The ``cluster`` pytest fixture is
:mod:`localkube.pytest_plugin`. Nothing here knows sidecar-state's API: the product's test
stacks are ``sidecar_state_stack``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localkube.access import ClusterAccess
    from localkube.build import Binaries, bin_dir, is_built
    from localkube.cache import cache_root
    from localkube.controlplane import LocalControlPlane
    from localkube.errors import BuildError, ControlPlaneError, KindBuildError, LocalkubeError
    from localkube.gobuild import Progress, go_env, go_install
    from localkube.pki import ControlPlanePKI
    from localkube.ports import free_port, free_ports

#: Public name -> the module that defines it. Loaded on first use: ``localkube.ports`` or
#: ``localkube.cache`` alone (a bare interpreter installing Kafka's jars, the pytest plugin at
#: every start) must not pay for the control plane's certificates (cryptography, the operator).
_EXPORTS = {
    "Binaries": "localkube.build",
    "BuildError": "localkube.errors",
    "ClusterAccess": "localkube.access",
    "ControlPlaneError": "localkube.errors",
    "ControlPlanePKI": "localkube.pki",
    "KindBuildError": "localkube.errors",
    "LocalControlPlane": "localkube.controlplane",
    "LocalkubeError": "localkube.errors",
    "Progress": "localkube.gobuild",
    "bin_dir": "localkube.build",
    "cache_root": "localkube.cache",
    "free_port": "localkube.ports",
    "free_ports": "localkube.ports",
    "go_env": "localkube.gobuild",
    "go_install": "localkube.gobuild",
    "is_built": "localkube.build",
}

__all__ = [
    "Binaries",
    "BuildError",
    "ClusterAccess",
    "ControlPlaneError",
    "ControlPlanePKI",
    "KindBuildError",
    "LocalControlPlane",
    "LocalkubeError",
    "Progress",
    "bin_dir",
    "cache_root",
    "free_port",
    "free_ports",
    "go_env",
    "go_install",
    "is_built",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'localkube' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
