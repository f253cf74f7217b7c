"""Build what a local node needs beyond the control plane: kubelet, kube-proxy, the pause image.

Why a separate step beside ``build.py``: the control plane alone is enough for most of the e2e
suite, and the node parts cost extra minutes on a cold machine, so only the node scenarios and
``make demo`` pay for them. The Kubernetes commands come from the same ``k8s.io/kubernetes``
release through the same wrapper-module recipe (``build._build_group``) in a sibling folder of
the cache, so ``go mod tidy`` resolves the identical module graph and Go's build cache shares
every package already compiled for kube-apiserver; only kubelet- and kube-proxy-specific
packages and the two links are new work.

The pause (sandbox) image is compiled from ``build/pause/linux/pause.c`` of the same module
(``gcc -Os -static``, as upstream's Makefile does) and written as an OCI archive named exactly
as the containerd config pins it, so no registry is ever asked for it.

Everything the host's package manager provides (containerd, runc, CNI plugins, iptables,
conntrack) is checked, not installed, here: ``scripts/setup.sh node`` installs those.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from images.oci import FileEntry, ImageConfig, write_archive, write_layer_from_entries

from . import build as build_mod

#: The commands built here from the same ``k8s.io/kubernetes`` release as the control plane.
NODE_COMMANDS = ("kubelet", "kube-proxy")
#: Upstream's pause release for Kubernetes 1.34 (build/pause/Makefile ``TAG``); the image name
#: is what containerd's ``sandbox_image`` pins, so it must match ``node.SANDBOX_IMAGE``.
PAUSE_TAG = "3.10.1"
SANDBOX_IMAGE = f"registry.k8s.io/pause:{PAUSE_TAG}"
#: Debian packages a node needs; ``scripts/setup.sh node`` installs them.
DEBIAN_PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "mmdebstrap",
)
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


class NodeBuildError(RuntimeError):
    """A node prerequisite is missing or failed to build; the message says how to fix it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeBinaries:
    """Absolute paths of everything a ``LocalNode`` runs or imports."""

    kubelet: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim: Path
    ctr: Path
    runc: Path
    iptables: Path
    cni_bin_dir: Path
    pause_archive: Path

    def all(self) -> tuple[Path, ...]:
        """Every file path, for existence checks."""
        return (
            self.kubelet,
            self.kube_proxy,
            self.containerd,
            self.containerd_shim,
            self.ctr,
            self.runc,
            self.iptables,
            self.pause_archive,
            *(self.cni_bin_dir / p for p in CNI_PLUGINS),
        )


def node_dir(k8s_version: str = build_mod.K8S_VERSION) -> Path:
    """Folder of the node's built artefacts, beside the control plane's ``bin/``."""
    return build_mod.version_dir(k8s_version) / "node"


def _node_group() -> build_mod._Group:
    # Named "kubernetes" on purpose: ``build._build_group`` keys the staging-module replaces and
    # the version ldflags on that name. Its own src_root and out_dir keep it apart from the
    # control plane's build.
    return build_mod._Group(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=build_mod.K8S_VERSION,
        packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in NODE_COMMANDS),
        binaries=NODE_COMMANDS,
    )


def _pause_archive_path() -> Path:
    return node_dir() / f"pause-{PAUSE_TAG}.oci.tar"


def _host_tool(name: str, *candidates: str) -> Path:
    for candidate in (*candidates, shutil.which(name) or ""):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise NodeBuildError(
        f"{name} not found; install the node's Debian packages: "
        f"apt-get install {' '.join(DEBIAN_PACKAGES)} (or `scripts/setup.sh node`)"
    )


def host_binaries() -> dict[str, Path]:
    """Locate the Debian-provided node tools; raise with the install command if one is missing."""
    tools = {
        "containerd": _host_tool("containerd", "/usr/bin/containerd"),
        "containerd_shim": _host_tool(
            "containerd-shim-runc-v2", "/usr/bin/containerd-shim-runc-v2"
        ),
        "ctr": _host_tool("ctr", "/usr/bin/ctr"),
        "runc": _host_tool("runc", "/usr/sbin/runc", "/usr/bin/runc"),
        "iptables": _host_tool("iptables", "/usr/sbin/iptables"),
    }
    _host_tool("conntrack", "/usr/sbin/conntrack")  # kube-proxy shells out to it
    missing = [p for p in CNI_PLUGINS if not os.access(CNI_BIN_DIR / p, os.X_OK)]
    if missing:
        raise NodeBuildError(
            f"CNI plugins {missing} missing from {CNI_BIN_DIR}: "
            "apt-get install containernetworking-plugins"
        )
    return tools


def build_pause(out: Path, *, wrapper: Path, progress: build_mod._Progress) -> Path:
    """Compile upstream's pause.c statically and write it as a ``FROM scratch`` OCI archive.

    ``wrapper`` is the kubelet's wrapper module, whose go.mod pins ``k8s.io/kubernetes``; asking
    Go for that module's folder finds pause.c in the module cache without any download.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise NodeBuildError("gcc not found (apt-get install gcc libc6-dev)")
    listed = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        capture_output=True,
        text=True,
        env=build_mod._go_env(None),
        check=False,
        cwd=wrapper,
    )
    source = Path(listed.stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
    if listed.returncode != 0 or not source.is_file():
        raise NodeBuildError(
            f"pause.c not found in the k8s.io/kubernetes module ({source}): {listed.stderr}"
        )
    with tempfile.TemporaryDirectory(prefix="sidecar-state-pause-") as tmp:
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            [gcc, "-Os", "-Wall", "-Werror", "-static",
             f"-DVERSION=v{PAUSE_TAG}-sidecar-state", "-o", str(binary), str(source)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise NodeBuildError(f"compiling pause.c failed:\n{proc.stderr}")
        subprocess.run(["strip", str(binary)], check=False, capture_output=True)
        layer = write_layer_from_entries(
            Path(tmp) / "layer.tar",
            [FileEntry(path="pause", data=binary.read_bytes(), mode=0o755)],
        )
        write_archive(
            out,
            name=SANDBOX_IMAGE,
            layers=[layer],
            # 65535 is upstream's user for pause; it needs no privilege.
            config=ImageConfig(entrypoint=("/pause",), user="65535:65535"),
        )
    progress.say(f"pause image {SANDBOX_IMAGE} written to {out}")
    return out


def is_built() -> bool:
    """Tell, without running anything, whether kubelet, kube-proxy and pause are cached."""
    directory = node_dir()
    return build_mod._is_built(directory, _node_group()) and _pause_archive_path().is_file()


def build(
    *, force: bool = False, jobs: int | None = None, out: TextIO | None = None
) -> NodeBinaries:
    """Build kubelet, kube-proxy and the pause image if missing; locate the Debian tools.

    Serialised with the control plane's build by the same per-version lock, so a concurrent
    ``build.build()`` and this never run two ``go`` commands against one module cache at once.
    """
    stream = out if out is not None else sys.stderr
    tools = host_binaries()
    directory = node_dir()
    group = _node_group()
    if force or not is_built():
        progress = build_mod._Progress(stream)
        root = build_mod.version_dir()
        with build_mod._locked(root / ".build.lock"):
            directory.mkdir(parents=True, exist_ok=True)
            if force or not build_mod._is_built(directory, group):
                log = directory / "build.log"
                progress.say(
                    f"building kubelet and kube-proxy {build_mod.K8S_VERSION} into {directory} "
                    f"(log: {log}); shares Go's build cache with the control plane build"
                )
                build_mod._build_group(
                    group,
                    out_dir=directory,
                    src_root=directory / "src",
                    env=build_mod._go_env(jobs),
                    log=log,
                    progress=progress,
                )
            if force or not _pause_archive_path().is_file():
                build_pause(
                    _pause_archive_path(), wrapper=directory / "src" / "kubernetes",
                    progress=progress,
                )  # fmt: skip
            progress.say(f"node binaries ready in {directory}")
    return NodeBinaries(
        kubelet=directory / "kubelet",
        kube_proxy=directory / "kube-proxy",
        cni_bin_dir=CNI_BIN_DIR,
        pause_archive=_pause_archive_path(),
        **tools,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.e2e.cluster.node_build [--force] [--jobs N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--jobs", type=int, default=None, help="go build -p (default: #cores)")
    args = parser.parse_args(argv)
    try:
        binaries = build(force=args.force, jobs=args.jobs)
    except (NodeBuildError, build_mod.BuildError) as error:
        print(f"node build failed: {error}", file=sys.stderr)
        return 1
    for path in binaries.all():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
