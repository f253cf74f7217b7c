"""What a kind cluster here needs: kind itself, kubeadm, and a node image, all cached.

Why assemble the node image ourselves: ``kind build node-image`` always pulls kindnetd and
local-path, and these machines reach no registry. kind's node contract (read from its create
flow) is small: systemd as PID 1, containerd on ``/run/containerd/containerd.sock``, kubeadm,
kubelet and kubectl on PATH, ``/kind/version``, ``/kind/manifests/default-storage.yaml``, and
the images kubeadm will run already in containerd's ``k8s.io`` namespace. No crictl: kubeadm
1.34 talks CRI through its client library (cmd/kubeadm runs no crictl), and kind calls
``crictl inspecti`` only to skip loading an image the node already has (pkg/cluster/nodeutils;
when that fails it loads, as a fresh cluster must anyway) and in ``kind export logs``. So:

1. binaries: kubelet, kube-proxy and kubeadm from the same ``k8s.io/kubernetes`` release as the
   control plane (``build.py``'s wrapper-module recipe, sharing Go's build cache with it, so only
   their own packages and links are new work), kind from its Go module; the control plane and
   etcd are the project's cached builds; the pause image is compiled from the same module's
   ``build/pause/linux/pause.c``;
2. component images: each control-plane binary on ``debian:bookworm-slim``
   (``component.Dockerfile``), tagged as kubeadm expects (``registry.k8s.io/...``);
3. the node: ``node/Dockerfile`` (Debian's systemd, containerd 1.6, runc, CNI plugins, iptables,
   our entrypoint and units), then the component images imported into its containerd
   (``--no-unpack``: the layers are unpacked on the node's /var volume) and ``docker commit``.

The node image is tagged by a hash of everything it is made of (Dockerfiles, files, binaries,
component image IDs): a warm call only inspects one tag.

    python -m localkube.kind.build [layers]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from images import base, docker
from images.docker import DockerError
from images.oci import FileEntry, ImageConfig, write_archive, write_layer_from_entries
from localkube import build as build_mod
from localkube.errors import BuildError, KindBuildError
from localkube.gobuild import Progress, go_env, go_install, locked

KIND_VERSION = "v0.33.0"
HERE = Path(__file__).resolve().parent
NODE_CONTEXT = HERE / "node"
COMPONENT_DOCKERFILE = HERE / "component.Dockerfile"
NODE_REPOSITORY = "sidecar-state/kind-node"
REGISTRY = "registry.k8s.io"
#: kubeadm's addon we leave out: nothing in the scenarios resolves names (Kafka is reached by
#: address, the apiserver by its Service IP), and building CoreDNS would be most of a cold run.
SKIPPED_KUBEADM_PHASES = ("addon/coredns",)
#: The node's own Kubernetes commands, built beside the control plane (see ``node_dir``).
NODE_COMMANDS = ("kubelet", "kube-proxy")
#: What the node image carries on PATH (the rest run as component images).
NODE_BINARIES = ("kubelet", "kubeadm", "kubectl")
#: Upstream's pause release for Kubernetes 1.34 (build/pause/Makefile ``TAG``); the name is what
#: the node's containerd config pins as its sandbox image.
PAUSE_TAG = "3.10.1"
SANDBOX_IMAGE = f"{REGISTRY}/pause:{PAUSE_TAG}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class KindTools:
    kind: Path
    kubectl: Path
    helm: Path
    node_image: str


def tools_dir() -> Path:
    return build_mod.version_dir() / "kind"


def etcd_tag() -> str:
    """etcd's image tag: the version we build, not the one kubeadm would pick (3.6.5-0)."""
    return build_mod.ETCD_VERSION.removeprefix("v")


def component_images() -> dict[str, tuple[str, str]]:
    """binary -> (image name kubeadm runs, Debian packages the image needs)."""
    k8s = build_mod.K8S_VERSION
    return {
        "kube-apiserver": (f"{REGISTRY}/kube-apiserver:{k8s}", ""),
        "kube-controller-manager": (f"{REGISTRY}/kube-controller-manager:{k8s}", ""),
        "kube-scheduler": (f"{REGISTRY}/kube-scheduler:{k8s}", ""),
        "kube-proxy": (f"{REGISTRY}/kube-proxy:{k8s}", "iptables conntrack"),
        "etcd": (f"{REGISTRY}/etcd:{etcd_tag()}", ""),
    }


def _say(message: str, out: TextIO) -> None:
    print(f"[kind-build] {message}", file=out, flush=True)


def node_dir() -> Path:
    """kubelet, kube-proxy and the pause archive (``k8s/<version>/node`` in the cache)."""
    return build_mod.version_dir() / "node"


def _node_group() -> build_mod.WrapperModule:
    # Named "kubernetes" on purpose: ``build._build_group`` keys the staging-module replaces and
    # the version ldflags on that name; its own src_root and out_dir keep it apart.
    return build_mod.WrapperModule(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=build_mod.K8S_VERSION,
        packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in NODE_COMMANDS),
        binaries=NODE_COMMANDS,
    )


def pause_archive() -> Path:
    return node_dir() / f"pause-{PAUSE_TAG}.oci.tar"


def _build_pause(target: Path, *, wrapper: Path, progress: Progress) -> None:
    """Compile upstream's pause.c statically (``gcc -Os -static``, as upstream's Makefile does)
    and write it as a ``FROM scratch`` OCI archive named as containerd pins it.

    ``wrapper`` is the node commands' wrapper module, whose go.mod pins ``k8s.io/kubernetes``;
    asking Go for that module's folder finds pause.c in the module cache without a download.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise KindBuildError("gcc not found (apt-get install gcc libc6-dev)")
    listed = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        capture_output=True, text=True, env=go_env(None), check=False, cwd=wrapper,
    )  # fmt: skip
    source = Path(listed.stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
    if listed.returncode != 0 or not source.is_file():
        raise KindBuildError(f"pause.c not found in k8s.io/kubernetes ({source}): {listed.stderr}")
    with tempfile.TemporaryDirectory(prefix="sidecar-state-pause-") as tmp:
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            [gcc, "-Os", "-Wall", "-Werror", "-static",
             f"-DVERSION=v{PAUSE_TAG}-sidecar-state", "-o", str(binary), str(source)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise KindBuildError(f"compiling pause.c failed:\n{proc.stderr}")
        subprocess.run(["strip", str(binary)], check=False, capture_output=True)
        layer = write_layer_from_entries(
            Path(tmp) / "layer.tar", [FileEntry(path="pause", data=binary.read_bytes(), mode=0o755)]
        )
        # 65535 is upstream's user for pause; it needs no privilege.
        config = ImageConfig(entrypoint=("/pause",), user="65535:65535")
        write_archive(target, name=SANDBOX_IMAGE, layers=[layer], config=config)
    progress.say(f"pause image {SANDBOX_IMAGE} written to {target}")


def build_node_binaries(*, out: TextIO) -> Path:
    """kubelet, kube-proxy and the pause image into ``node_dir()``, unless cached.

    Serialised with the control plane's build by the same per-version lock, so two ``go``
    commands never run against one module cache at once.
    """
    directory, group = node_dir(), _node_group()
    if build_mod.wrapper_built(directory, group) and pause_archive().is_file():
        return directory
    progress = Progress(out)
    with locked(build_mod.version_dir() / ".build.lock"):
        directory.mkdir(parents=True, exist_ok=True)
        if not build_mod.wrapper_built(directory, group):
            log = directory / "build.log"
            progress.say(f"building kubelet and kube-proxy {build_mod.K8S_VERSION} (log: {log})")
            build_mod.build_wrapper(
                group,
                out_dir=directory,
                src_root=directory / "src",
                env=go_env(None),
                log=log,
                progress=progress,
            )
        if not pause_archive().is_file():
            _build_pause(
                pause_archive(), wrapper=directory / "src" / "kubernetes", progress=progress
            )
    return directory


def build_binaries(*, out: TextIO) -> Path:
    """kubeadm and kind into ``tools_dir()`` (serialised with the other Go builds)."""
    directory = tools_dir()
    group = build_mod.WrapperModule(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=build_mod.K8S_VERSION,
        packages=("k8s.io/kubernetes/cmd/kubeadm",),
        binaries=("kubeadm",),
    )
    with locked(build_mod.version_dir() / ".build.lock"):
        directory.mkdir(parents=True, exist_ok=True)
        if not build_mod.wrapper_built(directory, group):
            log = directory / "build.log"
            _say(f"building kubeadm {build_mod.K8S_VERSION} (log: {log})", out)
            build_mod.build_wrapper(
                group,
                out_dir=directory,
                src_root=directory / "src",
                env=go_env(None),
                log=log,
                progress=Progress(out),
            )
        go_install(
            f"sigs.k8s.io/kind@{KIND_VERSION}", target=directory, out=out, label="kind-build"
        )
    return directory


def _hash_tree(digest: hashlib._Hash, root: Path) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o111).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def build_layers(*, out: TextIO | None = None) -> None:
    """The Debian-package layers of the node and component images, which need no binary: built
    while a cold setup's Go builds still run (``setup.sh all``), so that assembling the node
    after them is only the binaries' layers, the import and the commit (Docker's cache)."""
    out = out or sys.stderr
    if external_node_image() is not None:
        return
    started = time.monotonic()
    base.ensure_bases(out=out)
    with tempfile.TemporaryDirectory(prefix="sstate-node-layers-") as tmp:
        docker.run(
            ["build", "--quiet", "--target", "packages", "-f", str(NODE_CONTEXT / "Dockerfile"),
             str(NODE_CONTEXT)],
            capture=True,
        )  # fmt: skip
        for packages in sorted({p for _, p in component_images().values() if p}):
            docker.run(
                ["build", "--quiet", "--target", "packages", "--build-arg",
                 f"PACKAGES={packages}", "-f", str(COMPONENT_DOCKERFILE), tmp],
                capture=True,
            )  # fmt: skip
    _say(f"node and component package layers ready in {time.monotonic() - started:.0f}s", out)


def _build_components(*, binaries: dict[str, Path], out: TextIO) -> dict[str, str]:
    """Each component image (Docker's cache makes a warm build instant); name -> image ID."""
    ids = {}
    for binary, (name, packages) in component_images().items():
        with tempfile.TemporaryDirectory(prefix="sstate-component-") as tmp:
            (Path(tmp) / "bin").mkdir()
            shutil.copy2(binaries[binary], Path(tmp) / "bin" / binary)
            docker.run(
                ["build", "--quiet", "--build-arg", f"PACKAGES={packages}",
                 "-f", str(COMPONENT_DOCKERFILE), "-t", name, tmp],
                capture=True,
            )  # fmt: skip
        ids[name] = (
            docker.run(["image", "inspect", "--format", "{{.Id}}", name], capture=True)
            .stdout.decode()
            .strip()
        )
    _say(f"{len(ids)} component images ready", out)
    return ids


def _node_binaries() -> dict[str, Path]:
    control = build_mod.Binaries.in_dir(build_mod.bin_dir())
    node = node_dir()
    tools = tools_dir()
    return {
        "kube-apiserver": control.kube_apiserver,
        "kube-controller-manager": control.kube_controller_manager,
        "kube-scheduler": control.kube_scheduler,
        "etcd": control.etcd,
        "kubectl": control.kubectl,
        "kubelet": node / "kubelet",
        "kube-proxy": node / "kube-proxy",
        "kubeadm": tools / "kubeadm",
    }


def node_image_key(*, binaries: dict[str, Path], component_ids: dict[str, str]) -> str:
    digest = hashlib.sha256()
    _hash_tree(digest, NODE_CONTEXT)
    digest.update(COMPONENT_DOCKERFILE.read_bytes())
    for name in NODE_BINARIES:
        digest.update(name.encode() + _file_digest(binaries[name]))
    for name, image_id in sorted(component_ids.items()):
        digest.update(f"{name}={image_id}".encode())
    digest.update(pause_archive().read_bytes())
    return digest.hexdigest()[:12]


def _image_exists(ref: str) -> bool:
    return docker.run(["image", "inspect", ref], check=False, capture=True).returncode == 0


def _assemble_node(*, ref: str, binaries: dict[str, Path], images: list[str], out: TextIO) -> None:
    started = time.monotonic()
    _say(f"assembling {ref}", out)
    with tempfile.TemporaryDirectory(prefix="sstate-node-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(NODE_CONTEXT, context, symlinks=True)
        (context / "bin").mkdir()
        for name in NODE_BINARIES:
            shutil.copy2(binaries[name], context / "bin" / name)
        docker.run(["build", "--quiet", "-t", f"{ref}-base", str(context)], capture=True)
    container = f"sstate-node-build-{os.getpid()}"
    # containerd alone (no systemd): only its content store is needed to import images.
    docker.run(
        ["run", "-d", "--privileged", "--name", container, "--entrypoint", "containerd",
         f"{ref}-base"],
        capture=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            ready = docker.run(["exec", container, "ctr", "version"], check=False, capture=True)
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        archives = [pause_archive()]
        with tempfile.TemporaryDirectory(prefix="sstate-node-images-") as tmp:
            saved = Path(tmp) / "components.tar"
            docker.run(["save", "-o", str(saved), *images], capture=True)
            archives.append(saved)
            for archive in archives:
                docker.run(
                    ["exec", "-i", container, "ctr", "--namespace=k8s.io", "images", "import",
                     "--all-platforms", "--no-unpack", "-"],
                    input=archive.read_bytes(),
                    capture=True,
                )  # fmt: skip
        listed = docker.run(
            ["exec", container, "ctr", "--namespace=k8s.io", "images", "ls", "-q"], capture=True
        ).stdout.decode()
        missing = [name for name in [*images, SANDBOX_IMAGE] if name not in listed]
        if missing:
            raise KindBuildError(f"not imported into the node: {missing}")
        docker.run(["stop", "-t", "5", container], capture=True)
        docker.run(
            ["commit",
             "--change", 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]',
             "--change", "CMD []",
             container, ref],
            capture=True,
        )  # fmt: skip
    finally:
        docker.run(["rm", "-f", container], check=False, capture=True)
        docker.run(["rmi", f"{ref}-base"], check=False, capture=True)
    _say(f"{ref} assembled in {time.monotonic() - started:.0f}s", out)


NODE_IMAGE_ENV = "SIDECAR_STATE_KIND_NODE_IMAGE"


def external_node_image() -> str | None:
    """A node image given from outside (kindest/node on GitHub), with kind, kubectl and helm
    from PATH; None here, where everything is built."""
    return os.environ.get(NODE_IMAGE_ENV) or None


def on_path(name: str) -> Path:
    """A tool from PATH: with a node image from elsewhere, kind, kubectl and helm are too."""
    found = shutil.which(name)
    if found is None:
        raise KindBuildError(f"{NODE_IMAGE_ENV} is set, so {name} must be on PATH")
    return Path(found)


def build_go_binaries(*, out: TextIO) -> Path:
    """Every Go build the node image needs (no Docker): the control plane's, kubelet,
    kube-proxy, pause, kubeadm and kind. ``make test`` runs this while the suites that need
    none of them run; it returns kind's directory."""
    build_mod.build(out=out)
    build_node_binaries(out=out)
    return build_binaries(out=out)


def build(*, out: TextIO | None = None) -> KindTools:
    """Everything ``kind create cluster`` needs here; cached, so a warm call takes seconds."""
    out = out or sys.stderr
    started = time.monotonic()
    given = external_node_image()
    if given is not None:
        return KindTools(
            kind=on_path("kind"), kubectl=on_path("kubectl"), helm=on_path("helm"),
            node_image=given,
        )  # fmt: skip
    directory = build_go_binaries(out=out)
    base.ensure_bases(out=out)
    binaries = _node_binaries()
    component_ids = _build_components(binaries=binaries, out=out)
    ref = (
        f"{NODE_REPOSITORY}:{build_mod.K8S_VERSION}-"
        f"{node_image_key(binaries=binaries, component_ids=component_ids)}"
    )
    if not _image_exists(ref):
        _assemble_node(ref=ref, binaries=binaries, images=list(component_ids), out=out)
    _say(f"node image {ref} ready in {time.monotonic() - started:.1f}s", out)
    control = build_mod.Binaries.in_dir(build_mod.bin_dir())
    return KindTools(
        kind=directory / "kind", kubectl=control.kubectl, helm=control.helm, node_image=ref
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localkube.kind.build", description=__doc__)
    parser.add_argument(
        "what", nargs="?", choices=["all", "layers", "binaries"], default="all",
        help="all: everything, print the node image; layers: only the package layers (Docker); "
        "binaries: only the Go builds (no Docker)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.what == "layers":
            build_layers()
            return 0
        if args.what == "binaries":
            build_go_binaries(out=sys.stderr)
            return 0
        tools = build()
    except (DockerError, KindBuildError, BuildError) as error:
        print(f"[kind-build] error: {error}", file=sys.stderr)
        return 1
    print(tools.node_image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
