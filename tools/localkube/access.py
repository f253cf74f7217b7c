"""How a test reaches a cluster: a kubeconfig plus the kubectl and helm to use with it.

Why a separate small type: the same e2e tests run against the local control plane here and
against kind on GitHub Actions; tests only ever see this handle, never how the cluster was made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterAccess:
    """A reachable cluster: ``kubeconfig``, ``kubectl`` and ``helm`` are absolute paths."""

    kubeconfig: Path
    kubectl: Path
    helm: Path
    #: True when the suite uses a cluster it did not start (``E2E_CLUSTER=existing``, e.g. kind).
    existing: bool

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, the operator) aimed at this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def kubectl_run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; with ``check`` a failure raises and shows kubectl's stderr."""
        proc = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def kubectl_json(self, *args: str) -> Any:
        """Run ``kubectl ... -o json`` and decode the output."""
        return json.loads(self.kubectl_run(*args, "-o", "json").stdout)

    def apply(self, *objects: dict[str, Any]) -> None:
        """``kubectl apply`` the given objects (as a List, in one call)."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl_run("apply", "-f", "-", input=json.dumps(document))

    def helm_run(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster."""
        proc = subprocess.run(
            [str(self.helm), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc
