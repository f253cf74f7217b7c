"""Everything a Pod with our sidecars needs on this machine, started in order, stopped in reverse.

Why one module for the node test suite and ``make demo``: both need the same five things — the
control plane bound for a node, a ``LocalNode``, our images imported into its containerd, a
Kafka broker the Pods can reach, and the operator — and a demo that diverges from what the tests
prove would prove nothing. The tests run it attached (everything stops with the session);
``demo/run.py`` runs it detached and records what ``down`` must stop in a state file.

Addresses: Pods reach the host only at ``NODE_IP`` (the bridge), so Kafka listens there. The
apiserver and the operator run on the host, so the webhook stays a ``url:`` registration on
127.0.0.1 exactly as in the control-plane suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from images import build as images_build
from tests.e2e.cluster import build as cluster_build
from tests.e2e.cluster import node_build
from tests.e2e.cluster.access import ClusterAccess
from tests.e2e.cluster.controlplane import LocalControlPlane, ProcessRecord
from tests.e2e.cluster.node import NODE_IP, LocalNode
from tests.e2e.operator_process import OPERATOR_NAMESPACE, REPO, LocalOperator

IMAGES = images_build.image_refs()


class NodeOperator(LocalOperator):
    """The operator as a host process, injecting the locally built images and this broker."""

    def __init__(self, *, cluster: ClusterAccess, workdir: Path, bootstrap: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(cluster=cluster, workdir=workdir)
        self.bootstrap = bootstrap

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "SIDECAR_STATE_REDIS_IMAGE": IMAGES["redis"],
            "SIDECAR_STATE_HYDRATOR_IMAGE": IMAGES["hydrator"],
            "SIDECAR_STATE_ENVOY_IMAGE": IMAGES["envoy"],
            # Imported into containerd, never on a registry: pulling would only fail.
            "SIDECAR_STATE_IMAGE_PULL_POLICY": "Never",
            "SIDECAR_STATE_BOOTSTRAP_SERVERS": self.bootstrap,
            # The demo and the scenarios watch status move; the default 15 s is for production.
            "SIDECAR_STATE_WATCHDOG_INTERVAL_SECONDS": "2",
        }


def say(message: str, out: TextIO | None = None) -> None:
    print(f"[stack] {message}", file=out or sys.stderr, flush=True)


def build_everything(out: TextIO | None = None) -> dict[str, Path]:
    """Control plane and node binaries, then the images (each step cached; warm: seconds)."""
    started = time.monotonic()
    cluster_build.build(out=out or sys.stderr)
    node_build.build(out=out or sys.stderr)
    archives = images_build.archives(out=out)
    say(f"binaries and images ready in {time.monotonic() - started:.1f}s", out)
    return archives


@dataclasses.dataclass
class Stack:
    """The started parts; ``stop()`` tears them down in reverse order (idempotent)."""

    plane: LocalControlPlane
    node: LocalNode
    cluster: ClusterAccess
    operator: NodeOperator | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    node_ip: str = NODE_IP

    @classmethod
    def start_cluster(
        cls, workdir: Path, archives: dict[str, Path], *, detach: bool, out: TextIO | None = None
    ) -> Stack:
        """Control plane bound for the node, then the node with our images imported."""
        timings: dict[str, float] = {}
        t = time.monotonic()
        plane = LocalControlPlane(
            workdir=workdir / "control-plane",
            detach=detach,
            bind_address="0.0.0.0",
            advertise_address=NODE_IP,
            log=out,
        ).start()
        timings["control plane"] = time.monotonic() - t
        t = time.monotonic()
        node = LocalNode.for_control_plane(
            plane,
            workdir=workdir / "node",
            detach=detach,
            image_archives=list(archives.values()),
            log=out,
        )
        try:
            node.start()
        except BaseException:
            plane.stop()
            raise
        timings["node + image import"] = time.monotonic() - t
        cluster = ClusterAccess(
            kubeconfig=plane.kubeconfig,
            kubectl=plane.binaries.kubectl,
            helm=plane.binaries.helm,
            existing=False,
        )
        return cls(plane=plane, node=node, cluster=cluster, timings=timings)

    def start_operator(self, workdir: Path, bootstrap: str) -> NodeOperator:
        """CRD, the operator's namespace, the operator process and its webhook registration."""
        t = time.monotonic()
        self.cluster.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        self.cluster.kubectl_run(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/statebindings.sidecarstate.dev",
        )  # fmt: skip
        self.cluster.kubectl_run("create", "namespace", OPERATOR_NAMESPACE, check=False)
        operator = NodeOperator(cluster=self.cluster, workdir=workdir, bootstrap=bootstrap)
        operator.start()
        operator.register_webhooks("Fail")
        self.operator = operator
        self.timings["operator"] = time.monotonic() - t
        return operator

    def state(self) -> dict[str, Any]:
        """What ``stop_recorded`` needs in another process (processes by pid, node, PKI)."""
        return {
            "control_plane": [dataclasses.asdict(r) for r in self.plane.records],
            "node": self.node.state(),
            "pki": {k: str(v) for k, v in dataclasses.asdict(self.plane.pki).items()},
            "kubeconfig": str(self.plane.kubeconfig),
            "kubectl": str(self.plane.binaries.kubectl),
        }

    def stop(self) -> None:
        if self.operator is not None:
            # The apiserver goes away next anyway: a failed unregistration does not matter.
            with contextlib.suppress(AssertionError, subprocess.SubprocessError, OSError):
                self.operator.unregister_webhooks()
            self.operator.stop()
            self.operator = None
        self.node.stop()
        self.plane.stop()


def stop_recorded(state_file: Path) -> list[str]:
    """Stop what a detached ``Stack`` recorded (``demo/run.py down``); return what was stopped."""
    from tests.e2e.cluster.controlplane import process_alive, terminate_process_groups
    from tests.e2e.cluster.pki import ControlPlanePKI

    state: dict[str, Any] = json.loads(state_file.read_text())
    stopped = []
    for pid in state.get("pgids", []):
        try:
            os.killpg(pid, signal.SIGTERM)
            stopped.append(str(pid))
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for pid in state.get("pgids", []):
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    if "node" in state:
        pki = ControlPlanePKI(**{k: Path(v) for k, v in state["pki"].items()})
        LocalNode.from_state(state["node"], pki=pki).stop()
        stopped.append("node")
    records = [ProcessRecord(**r) for r in state.get("control_plane", [])]
    terminate_process_groups(list(reversed(records)))
    left = [r.name for r in records if process_alive(r)]
    if left:
        raise RuntimeError(f"could not stop {left}")
    stopped += [r.name for r in records]
    return stopped
