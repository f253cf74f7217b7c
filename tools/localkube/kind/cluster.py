"""A kind cluster here, with the chart installed from the Dockerfile-built images.

The steps are those of the workflow's ``e2e-kind`` job, in the same order: images built from the
Dockerfiles, ``kind create cluster``, ``kind load docker-image``, ``helm install`` with the
chart's default image names, then the suite with ``E2E_CLUSTER=existing``. What differs is
only where things come from (our daemon, our node image; on GitHub, Docker Hub and kindest/node).

Pod IPs live inside the node container; ``up`` routes the Pod subnet via the node's address so
the tests (on the host) reach Pods directly. The suite's cluster and the demo's
(``demo/run.py``) have their own names and kubeconfigs; the node image's CNI config hands out
``POD_SUBNET`` in both, so only one of them is up at a time.

    python -m localkube.kind.cluster up|down        (up prints the kubeconfig path)
    python -m localkube.kind.cluster test -- ARGS   (up, pytest ARGS (default tests/e2e), down)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from images import build as images_build
from images import docker
from images.docker import DockerError
from localkube import build as cluster_build
from localkube.cache import cache_root
from localkube.errors import KindBuildError
from localkube.kind import build as kind_build

CLUSTER = "sidecar-state"
POD_SUBNET = "10.245.0.0/16"
RELEASE = "sidecar-state"
NAMESPACE = "sidecar-state-system"
REPO = Path(__file__).resolve().parents[3]
#: What kind runs by default: the whole e2e suite (node, operator and chart scenarios, against
#: the chart's operator); the ``local_cluster`` scenarios skip themselves there.
DEFAULT_SUITE = ("tests/e2e",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KindCluster:
    """One kind cluster of ours: its name and the Pod subnet routed to its node from the host."""

    name: str = CLUSTER
    pod_subnet: str = POD_SUBNET

    @property
    def kubeconfig(self) -> Path:
        folder = cache_root() / "kind"
        return folder / ("kubeconfig" if self.name == CLUSTER else f"{self.name}.kubeconfig")

    @property
    def node_container(self) -> str:
        return f"{self.name}-control-plane"


SUITE = KindCluster()


def kubeconfig() -> Path:
    return SUITE.kubeconfig


def kind_config(*, own_node_image: bool, pod_subnet: str = POD_SUBNET) -> str:
    """kind's cluster config: one node; with our node image, its CNI config, no CoreDNS and
    etcd tagged as built (kindest/node brings kindnetd, CoreDNS and its own etcd)."""
    if not own_node_image:
        return f"""\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  ipFamily: ipv4
  podSubnet: "{pod_subnet}"
nodes:
  - role: control-plane
"""
    phases = "".join(f"\n      - {phase}" for phase in kind_build.SKIPPED_KUBEADM_PHASES)
    return f"""\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  ipFamily: ipv4
  disableDefaultCNI: true
  podSubnet: "{pod_subnet}"
kubeadmConfigPatches:
  - |
    kind: InitConfiguration
    skipPhases:{phases}
  - |
    kind: ClusterConfiguration
    etcd:
      local:
        imageTag: "{kind_build.etcd_tag()}"
nodes:
  - role: control-plane
"""


def _say(message: str, out: TextIO) -> None:
    print(f"[kind] {message}", file=out, flush=True)


def _run(
    cmd: Sequence[str | Path], *, what: str, kind: KindCluster = SUITE, timeout: float = 600
) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        env={**docker.client_env(), "KUBECONFIG": str(kind.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-3000:]
        raise DockerError(f"{what} failed ({proc.returncode}):\n{output}")
    return proc.stdout


def node_address(kind: KindCluster = SUITE) -> str:
    """The node container's address on kind's network (Pods' traffic to the host leaves there)."""
    out = docker.run(
        ["inspect", "--format", "{{json .NetworkSettings.Networks}}", kind.node_container],
        capture=True,
    ).stdout
    networks = json.loads(out)
    return str(networks["kind"]["IPAddress"])


def gateway_address() -> str:
    """The host's address on kind's network: where Pods reach a broker started on the host."""
    out = docker.run(
        ["network", "inspect", "kind", "--format", "{{json .IPAM.Config}}"], capture=True
    ).stdout
    for entry in json.loads(out):
        if ":" not in entry.get("Gateway", ":"):
            return str(entry["Gateway"])
    raise DockerError("kind's network has no IPv4 gateway")


def _route_pods(kind: KindCluster) -> None:
    # sudo where the runner is not root (GitHub); here the suite runs as root anyway.
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(
        [*sudo, "ip", "route", "replace", kind.pod_subnet, "via", node_address(kind)], check=True
    )


def up(*, kind_cluster: KindCluster = SUITE, out: TextIO | None = None) -> Path:
    """Fresh cluster, images loaded, chart installed; return the kubeconfig."""
    out = out or sys.stderr
    k = kind_cluster
    timings: dict[str, float] = {}
    t = time.monotonic()
    tools = kind_build.build(out=out)
    timings["kind tools + node image"] = time.monotonic() - t
    t = time.monotonic()
    refs = images_build.build_all(out=out)
    timings["Dockerfile images"] = time.monotonic() - t
    kind = str(tools.kind)
    k.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    if k.name in _run([kind, "get", "clusters"], what="kind get clusters", kind=k).split():
        _say(f"deleting the previous cluster {k.name}", out)
        _run([kind, "delete", "cluster", "--name", k.name], what="kind delete cluster", kind=k)
    t = time.monotonic()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as config:
        own = kind_build.external_node_image() is None
        config.write(kind_config(own_node_image=own, pod_subnet=k.pod_subnet))
        config.flush()
        _say(f"kind create cluster --name {k.name} --image {tools.node_image}", out)
        _run(
            [kind, "create", "cluster", "--name", k.name, "--image", tools.node_image,
             "--config", config.name, "--kubeconfig", k.kubeconfig, "--wait", "180s"],
            what="kind create cluster", kind=k,
        )  # fmt: skip
    _route_pods(k)
    timings["kind create cluster"] = time.monotonic() - t
    t = time.monotonic()
    _say(f"kind load docker-image {' '.join(refs.values())}", out)
    _run(
        [kind, "load", "docker-image", "--name", k.name, *refs.values()],
        what="kind load docker-image", kind=k,
    )  # fmt: skip
    timings["kind load docker-image"] = time.monotonic() - t
    t = time.monotonic()
    # The chart's defaults name exactly the images just loaded: nothing to override.
    _say(f"helm install {RELEASE} charts/sidecar-state (the chart's default image names)", out)
    _run(
        [tools.helm, "install", RELEASE, REPO / "charts/sidecar-state", "--namespace", NAMESPACE,
         "--create-namespace", "--wait", "--timeout", "5m", "--kubeconfig", k.kubeconfig],
        what="helm install", kind=k,
    )  # fmt: skip
    timings["helm install"] = time.monotonic() - t
    _say("ready: " + ", ".join(f"{step} {seconds:.0f}s" for step, seconds in timings.items()), out)
    return k.kubeconfig


def down(*, kind_cluster: KindCluster = SUITE, out: TextIO | None = None) -> None:
    out = out or sys.stderr
    k = kind_cluster
    kind = kind_build.tools_dir() / "kind"
    if kind_build.external_node_image() is not None:
        kind = kind_build.on_path("kind")
    if kind.exists():
        _run([kind, "delete", "cluster", "--name", k.name], what="kind delete cluster", kind=k)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "ip", "route", "del", k.pod_subnet], check=False, capture_output=True)
    _say(f"cluster {k.name} deleted", out)


def suite_env(kind: KindCluster = SUITE) -> dict[str, str]:
    """What the suite needs against this cluster: kubeconfig, kubectl and helm, the address
    Pods reach this host at (``E2E_KAFKA_HOST``, for the broker), and the node's container."""
    path = os.environ.get("PATH", "")
    if kind_build.external_node_image() is None:
        path = f"{cluster_build.bin_dir()}{os.pathsep}{path}"
    return {
        **docker.client_env(),
        "E2E_CLUSTER": "existing",
        "KUBECONFIG": str(kind.kubeconfig),
        "PATH": path,
        "E2E_KAFKA_HOST": gateway_address(),
        "E2E_KIND_NODE": kind.node_container,
    }


def test(pytest_args: Sequence[str], *, keep: bool) -> int:
    """``up``, the suite against the cluster, then ``down`` (unless ``keep``).

    ``pytest_args`` that name no path run ``DEFAULT_SUITE``.
    """
    up()
    started = time.monotonic()
    named = any((REPO / a.split("::")[0]).exists() for a in pytest_args if not a.startswith("-"))
    paths = [] if named else list(DEFAULT_SUITE)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *paths, *pytest_args],
            cwd=REPO,
            env=suite_env(),
            check=False,
        )
    finally:
        _say(f"suite finished in {time.monotonic() - started:.0f}s", sys.stderr)
        if not keep:
            down()
    return proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localkube.kind.cluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "test"])
    parser.add_argument("--keep", action="store_true", help="test: leave the cluster running")
    parser.add_argument("pytest_args", nargs="*", help="test: arguments for pytest (after --)")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            print(up())
        elif args.action == "down":
            down()
        else:
            return test(args.pytest_args, keep=args.keep)
    except (DockerError, KindBuildError) as error:
        print(f"[kind] error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
