"""Build the control-plane binaries from Go modules, cached by version outside the repo.

Why from source: these machines have no Docker, no kind and no download site other than the
package registries, but they do have Go and the Go module proxy. Every binary the e2e suite needs
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm) can be compiled
from its published module, so the suite talks to the real components rather than to a fake.

Why wrapper modules: ``k8s.io/kubernetes`` requires its staging modules (``k8s.io/api``, ...) at
``v0.0.0`` and replaces them with local paths, so ``go install`` of its commands fails. A small
module of ours requires it and adds ``replace k8s.io/X => k8s.io/X v0.<minor>.<patch>`` for every
staging module; the list is read from the downloaded go.mod because it changes between minors.
etcd and helm get wrappers too, which keeps their dependency graphs apart from Kubernetes'.

A cold build takes many minutes on two cores; everything is keyed by version, so a warm run only
checks that the binaries and their stamps exist and returns in well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TextIO

from .cache import cache_root
from .errors import BuildError
from .gobuild import Progress, go_env, locked, run_go

#: Kubernetes release built from ``k8s.io/kubernetes`` (latest 1.34 patch on the proxy).
K8S_VERSION = "v1.34.4"
#: etcd release built from ``go.etcd.io/etcd/server/v3`` (kube-apiserver 1.34 wants 3.5.11+/3.6).
ETCD_VERSION = "v3.6.16"
#: helm release built from ``helm.sh/helm/v3``.
HELM_VERSION = "v3.22.0"

#: Kubernetes commands built from the wrapper module (package path under k8s.io/kubernetes).
K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

#: Bump when the way binaries are built changes (flags, ldflags), so caches rebuild themselves.
RECIPE = 2


def version_dir(k8s_version: str = K8S_VERSION) -> Path:
    """Return the per-Kubernetes-version directory that holds ``bin/`` and the wrapper modules."""
    return cache_root() / "k8s" / k8s_version


def bin_dir(k8s_version: str = K8S_VERSION) -> Path:
    """Return the directory of the built binaries for a Kubernetes version."""
    return version_dir(k8s_version) / "bin"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Binaries:
    """Absolute paths of every binary the local control plane and the e2e suite run."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    helm: Path

    @classmethod
    def in_dir(cls, directory: Path) -> Binaries:
        """Name the binaries inside one directory (the layout ``build`` produces)."""
        return cls(
            etcd=directory / "etcd",
            kube_apiserver=directory / "kube-apiserver",
            kube_controller_manager=directory / "kube-controller-manager",
            kube_scheduler=directory / "kube-scheduler",
            kubectl=directory / "kubectl",
            helm=directory / "helm",
        )

    def all(self) -> tuple[Path, ...]:
        """Return every path, for existence checks."""
        return (
            self.etcd,
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kubectl,
            self.helm,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class WrapperModule:
    """One wrapper module: what it requires, which packages it builds, with which ldflags."""

    name: str
    module: str
    version: str
    packages: tuple[str, ...]
    binaries: tuple[str, ...]


def _groups() -> tuple[WrapperModule, ...]:
    return (
        WrapperModule(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=ETCD_VERSION,
            # The module root is ``package main``; its binary would be called "v3", so -o names it.
            packages=("go.etcd.io/etcd/server/v3",),
            binaries=("etcd",),
        ),
        WrapperModule(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=K8S_VERSION,
            packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS),
            binaries=K8S_COMMANDS,
        ),
        WrapperModule(
            name="helm",
            module="helm.sh/helm/v3",
            version=HELM_VERSION,
            packages=("helm.sh/helm/v3/cmd/helm",),
            binaries=("helm",),
        ),
    )


def _module_info(
    module: str, version: str, *, cwd: Path, env: dict[str, str], log: Path, progress: Progress
) -> dict[str, str]:
    """Download a module and return ``go mod download -json`` (Dir, GoMod, Time...)."""
    out = run_go(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=env,
        log=log,
        progress=progress,
        what=f"downloading {module}@{version}",
    )
    info: dict[str, str] = json.loads(out)
    if info.get("Error"):
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    # The .info file carries the tag's commit time, an honest reproducible build date.
    with contextlib.suppress(OSError, ValueError, KeyError):
        info["Time"] = json.loads(Path(info["Info"]).read_text())["Time"]
    return info


_STAGING_RE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/", re.MULTILINE)


def staging_replaces(kubernetes_go_mod: str, k8s_version: str) -> list[str]:
    """Return ``replace`` lines pinning every staging module to its published v0 tag.

    ``k8s.io/kubernetes vMAJOR.MINOR.PATCH`` publishes each staging module as
    ``v0.MINOR.PATCH``; the set of staging modules is whatever its go.mod redirects to
    ``./staging/src``, so it is read rather than hard-coded.
    """
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", k8s_version)
    if not match:
        raise ValueError(f"not a Kubernetes release version: {k8s_version!r}")
    staging_version = f"v0.{match.group(1)}.{match.group(2)}"
    modules = sorted(set(_STAGING_RE.findall(kubernetes_go_mod)))
    if not modules:
        raise BuildError("no ./staging/src replace directives found in k8s.io/kubernetes go.mod")
    return [f"replace {m} => {m} {staging_version}" for m in modules]


def _k8s_minor(version: str) -> tuple[str, str]:
    match = re.match(r"v(\d+)\.(\d+)\.", version)
    if not match:
        raise ValueError(f"unparseable version {version!r}")
    return match.group(1), match.group(2)


def _ldflags(group: WrapperModule, info: dict[str, str], wrapper_go_mod: str) -> str:
    """Version stamps so ``kubectl version``, ``etcd --version`` and ``helm version`` are honest."""
    flags = ["-s", "-w"]
    if group.module == "k8s.io/kubernetes":
        major, minor = _k8s_minor(group.version)
        values = {
            "gitVersion": group.version,
            "gitMajor": major,
            "gitMinor": minor,
            # The module zip carries no commit id; empty beats the "$Format:%H$" placeholder.
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": info.get("Time", ""),
        }
        for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
            flags += [f"-X '{package}.{key}={value}'" for key, value in values.items()]
    elif group.name == "helm":
        flags += [
            f"-X helm.sh/helm/v3/internal/version.version={group.version}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        ]
        # helm reports the Kubernetes version its client libraries target; take it from the
        # resolved k8s.io/client-go requirement, as helm's own Makefile does.
        match = re.search(r"k8s\.io/client-go v0\.(\d+)\.", wrapper_go_mod)
        if match:
            for package in ("pkg/lint/rules", "pkg/chartutil"):
                flags += [
                    f"-X helm.sh/helm/v3/{package}.k8sVersionMajor=1",
                    f"-X helm.sh/helm/v3/{package}.k8sVersionMinor={match.group(1)}",
                ]
    return " ".join(flags)


def _stamp(directory: Path, group: WrapperModule) -> Path:
    return directory / f".{group.name}.version"


def _stamp_text(group: WrapperModule) -> str:
    return f"{group.version} recipe={RECIPE}"


def wrapper_built(directory: Path, group: WrapperModule) -> bool:
    stamp = _stamp(directory, group)
    return (
        stamp.is_file()
        and stamp.read_text().strip() == _stamp_text(group)
        and all(os.access(directory / b, os.X_OK) for b in group.binaries)
    )


def is_built(k8s_version: str = K8S_VERSION) -> bool:
    """Tell, without running Go, whether every binary of this version set is in the cache."""
    directory = bin_dir(k8s_version)
    return all(wrapper_built(directory, g) for g in _groups())


def build_wrapper(
    group: WrapperModule,
    *,
    out_dir: Path,
    src_root: Path,
    env: dict[str, str],
    log: Path,
    progress: Progress,
) -> None:
    src = src_root / group.name
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    progress.say(f"{group.name} {group.version}: preparing wrapper module in {src}")
    # A throwaway go.mod so ``go mod download`` has a module context.
    (src / "go.mod").write_text("module sidecarstate.local/wrapper\n\ngo 1.24\n")
    info = _module_info(group.module, group.version, cwd=src, env=env, log=log, progress=progress)
    lines = [
        f"// Generated by tools/localkube/build.py: builds {group.module} {group.version}.",
        f"module sidecarstate.local/build/{group.name}",
        "",
        "go 1.24",
        "",
        f"require {group.module} {group.version}",
        "",
    ]
    if group.module == "k8s.io/kubernetes":
        lines += staging_replaces(Path(info["GoMod"]).read_text(), group.version)
    (src / "go.mod").write_text("\n".join(lines) + "\n")
    # Mains cannot be imported, but a build-tagged file may name them so ``go mod tidy``
    # resolves every dependency they need (the usual tools.go pattern).
    imports = "\n".join(f'\t_ "{p}"' for p in group.packages)
    (src / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    run_go(
        ["go", "mod", "tidy"],
        cwd=src,
        env=env,
        log=log,
        progress=progress,
        what=f"resolving {group.name} dependencies (go mod tidy)",
    )
    ldflags = _ldflags(group, info, (src / "go.mod").read_text())
    staging = Path(tempfile.mkdtemp(prefix=f".{group.name}-", dir=out_dir))
    try:
        if len(group.packages) == 1:
            target = staging / group.binaries[0]
            build_args = ["go", "build", "-ldflags", ldflags, "-o", str(target), *group.packages]
        else:
            build_args = ["go", "build", "-ldflags", ldflags, "-o", f"{staging}/", *group.packages]
        run_go(
            build_args,
            cwd=src,
            env=env,
            log=log,
            progress=progress,
            what=f"compiling {', '.join(group.binaries)}",
        )
        for name in group.binaries:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _stamp(out_dir, group).write_text(_stamp_text(group) + "\n")


#: The names ``build(only=...)`` and ``python -m localkube build --only`` accept.
GROUPS = tuple(group.name for group in _groups())


def build(
    *,
    force: bool = False,
    jobs: int | None = None,
    out: TextIO | None = None,
    only: Collection[str] = GROUPS,
) -> Binaries:
    """Build whatever is missing from the cache and return the binaries' paths.

    ``only`` narrows the build to some of ``GROUPS``: ``make test`` builds helm first, for the
    suites that need nothing else, and the rest while those run. Safe to call from several
    processes: a file lock serialises builds of the same version, and each binary is moved
    into place only once complete.
    """
    unknown = set(only) - set(GROUPS)
    if unknown:
        raise BuildError(f"no such build group {sorted(unknown)}: choose from {list(GROUPS)}")
    stream = out if out is not None else sys.stderr
    directory = bin_dir()
    binaries = Binaries.in_dir(directory)
    groups = [group for group in _groups() if group.name in only]
    if not force and all(wrapper_built(directory, group) for group in groups):
        return binaries
    root = version_dir()
    progress = Progress(stream)
    with locked(root / ".build.lock"):
        directory.mkdir(parents=True, exist_ok=True)
        log = root / "build.log"
        env = go_env(jobs)
        progress.say(
            f"building {', '.join(f'{group.name} {group.version}' for group in groups)} "
            f"into {directory} (log: {log}); a cold build takes many minutes"
        )
        for group in groups:
            if not force and wrapper_built(directory, group):
                progress.say(f"{group.name} {group.version}: cached")
                continue
            build_wrapper(
                group, out_dir=directory, src_root=root / "src", env=env, log=log, progress=progress
            )
        progress.say(f"all binaries ready in {directory}")
    return binaries


def group_names(text: str) -> tuple[str, ...]:
    """Parse ``--only``: comma-separated names of ``GROUPS``."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(GROUPS))
    if unknown:
        raise argparse.ArgumentTypeError(f"no such build group {unknown}: choose from {GROUPS}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m localkube.build [--force] [--jobs N] [--only GROUP,...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--jobs", type=int, default=None, help="go build -p (default: #cores)")
    parser.add_argument(
        "--only", type=group_names, default=GROUPS,
        help=f"comma-separated, of {','.join(GROUPS)} (default: all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        binaries = build(force=args.force, jobs=args.jobs, only=args.only)
    except BuildError as error:
        print(f"cluster build failed: {error}", file=sys.stderr)
        return 1
    print(binaries.kubectl.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
