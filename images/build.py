"""Build the project's container images without Docker or a registry, cached by content.

Why not the Dockerfiles through a builder: these machines have no Docker engine, and podman or
buildah would add a daemon-less builder plus a pull of ``python:3.11-slim-bookworm`` from a
registry we cannot reach. The images are simple enough to assemble directly, following what
``operator/Dockerfile`` and ``hydrator/Dockerfile`` intend (same entrypoints, same numeric
non-root users, bytecode precompiled so a read-only root filesystem costs nothing at start):

- layer 1, the **base**: Debian bookworm made by ``mmdebstrap`` (minbase + python3 3.11 +
  redis-server/redis-tools), cached by a hash of its recipe. It takes minutes cold, so it is
  built once per machine and shared by every image.
- layer 2, the **dependencies** of one image (``pip install --target`` of binary wheels into
  ``/usr/local/lib/python3.11/dist-packages``, which Debian's python3 already has on
  ``sys.path``), cached by a hash of the requirement list.
- a small **users** layer: the base's ``/etc/passwd``/``/etc/group`` plus the numeric users
  the images run as (65532, 999:7379), since libraries look the running uid up.
- layer 3, **our code**: the project's wheel installed the same way (or the demo app's files),
  cached by a hash of the source files, plus the console scripts pointing at ``/usr/bin/python3``.

Every layer is a deterministic tar (``images.oci``), so an unchanged input keeps its digest and
an archive is rewritten only when one of its layer digests changed: a warm run takes seconds.
``--import`` then loads the archives into a containerd (the local node's, by default none).

    python -m images.build [--import --containerd-address /path/containerd.sock] [names...]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

from images.oci import (
    Blob,
    DirEntry,
    FileEntry,
    ImageConfig,
    copy_blob,
    hash_file,
    write_archive,
    write_layer_from_entries,
    write_layer_from_tree,
)

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Everything any image runs from Debian; one base keeps containerd's store to one copy.
BASE_PACKAGES = ("python3", "redis-server", "redis-tools")
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
#: Bytecode written by the host's 3.11 is valid for the base's 3.11 (same magic number).
PYTHON_TAG = "3.11"
TAG = "dev"
PREFIX = "docker.io/sidecar-state"
#: Numeric users, as the Dockerfiles and InjectionDefaults use them.
APP_USER = "65532:65532"
REDIS_USER = "999:7379"
#: Entries for the numeric users above (the base knows neither 65532 nor the socket group).
USERS = (
    "nonroot:x:65532:65532:sidecar-state:/nonexistent:/usr/sbin/nologin",
    "sidecar-redis:x:999:7379:sidecar-state redis:/nonexistent:/usr/sbin/nologin",
)
GROUPS = ("nonroot:x:65532:", "sidecar-state:x:7379:")
PYTHON_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
)


class ImageBuildError(RuntimeError):
    """A build step failed; the message carries the failing command's output tail."""


def cache_dir() -> Path:
    """Per-machine cache of base tars, layers and archives (same root as the cluster build)."""
    configured = os.environ.get("SIDECAR_STATE_CACHE")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache/sidecar-state"
    return root / "images"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """One image: its name, which dependency set and code layer it gets, and its config."""

    name: str
    requirements: tuple[str, ...] = ()
    code: str = ""  # "wheel", "demo" or "" (base only)
    config: ImageConfig = dataclasses.field(default_factory=ImageConfig)

    @property
    def ref(self) -> str:
        return f"{PREFIX}/{self.name}:{TAG}"


def _project_requirements(*extras: str) -> tuple[str, ...]:
    """The wheel's runtime requirements for ``extras``, read from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return tuple(sorted(reqs))


def image_specs() -> dict[str, ImageSpec]:
    """The four images of the local cluster and the demo, by short name."""
    return {
        "redis": ImageSpec(
            name="redis",
            config=ImageConfig(
                entrypoint=("redis-server",),
                user=REDIS_USER,
                labels={"org.opencontainers.image.title": "sidecar-state-redis"},
            ),
        ),
        "hydrator": ImageSpec(
            name="hydrator",
            requirements=_project_requirements("hydrator"),
            code="wheel",
            config=ImageConfig(
                entrypoint=("sidecar-state-hydrator",),
                env=PYTHON_ENV,
                user=APP_USER,
                labels={"org.opencontainers.image.title": "sidecar-state-hydrator"},
            ),
        ),
        "operator": ImageSpec(
            name="operator",
            requirements=_project_requirements("operator"),
            code="wheel",
            config=ImageConfig(
                entrypoint=("sidecar-state-operator",),
                cmd=("run",),
                env=PYTHON_ENV,
                user=APP_USER,
                exposed_ports=("8443/tcp", "8080/tcp"),
                labels={"org.opencontainers.image.title": "sidecar-state-operator"},
            ),
        ),
        "demo-app": ImageSpec(
            name="demo-app",
            code="demo",
            config=ImageConfig(
                entrypoint=("python3", "/opt/demo/app.py"),
                env=PYTHON_ENV,
                user=APP_USER,
                exposed_ports=("8080/tcp",),
                labels={"org.opencontainers.image.title": "sidecar-state-demo-app"},
            ),
        ),
    }


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _run(cmd: Sequence[str], *, out: TextIO, what: str) -> None:
    """Run a step; on failure raise with its output tail (the full log would drown the cause)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ImageBuildError(f"{what} failed ({proc.returncode}):\n{tail}")


class _Progress:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def say(self, message: str) -> None:
        print(f"[images] {message}", file=self.out, flush=True)


class Builder:
    """Builds and caches layers and archives; one instance per run."""

    def __init__(self, *, cache: Path | None = None, out: TextIO | None = None) -> None:
        self.cache = cache or cache_dir()
        self.layers = self.cache / "layers"
        self.archives = self.cache / "archives"
        self.progress = _Progress(out or sys.stderr)

    # layer 1 ------------------------------------------------------------------------------

    def base_recipe(self) -> list[str]:
        """mmdebstrap's arguments minus the output; its hash names the cached base."""
        return [
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            f"--include={','.join(BASE_PACKAGES)}",
            # No device nodes in a layer: the runtime provides /dev.
            "--skip=output/dev",
            "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/* $1/var/log/*",
            # Debian's redis-server package makes /etc/redis and /var/lib/redis for its own
            # user; the injected container runs as 999:7379 with its state on a volume.
            SUITE,
        ]

    def base_layer(self) -> Blob:
        key = _digest(MIRROR, *self.base_recipe())
        return self._cached_layer(f"base-{key}", self._build_base)

    def _build_base(self, target: Path) -> None:
        if shutil.which("mmdebstrap") is None:
            raise ImageBuildError("mmdebstrap is missing: run `scripts/setup.sh node`")
        self.progress.say(
            f"building the Debian {SUITE} base with mmdebstrap ({', '.join(BASE_PACKAGES)}); "
            "a cold build takes about 6 minutes"
        )
        log = self.cache / "mmdebstrap.log"
        started = time.monotonic()
        with log.open("w") as handle:
            proc = subprocess.Popen(
                ["mmdebstrap", *self.base_recipe(), str(target), MIRROR],
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )
            last = ""
            while proc.poll() is None:
                time.sleep(5)
                lines = log.read_text(errors="replace").splitlines()
                if lines and lines[-1] != last:
                    last = lines[-1]
                    self.progress.say(f"  {time.monotonic() - started:4.0f}s {last[:100]}")
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise ImageBuildError(f"mmdebstrap failed ({proc.returncode}):\n{tail}")
        self.progress.say(f"base built in {time.monotonic() - started:.0f}s")

    # layer 2 ------------------------------------------------------------------------------

    def deps_layer(self, requirements: Sequence[str]) -> Blob:
        key = _digest(PYTHON_TAG, *requirements)
        return self._cached_layer(f"deps-{key}", lambda t: self._build_deps(t, requirements))

    def _build_deps(self, target: Path, requirements: Sequence[str]) -> None:
        self.progress.say(f"pip install {len(requirements)} requirements (binary wheels only)")
        with tempfile.TemporaryDirectory(prefix="sstate-deps-") as tmp:
            site = Path(tmp) / "site"
            self._pip_target(site, requirements)
            write_layer_from_tree(target, site, prefix=SITE_PACKAGES)

    def _pip_target(self, site: Path, args: Sequence[str], *, wheels_only: bool = True) -> None:
        # Third-party code: binary wheels for CPython 3.11 on x86_64 glibc, whatever the host.
        only_wheels = [
            "--only-binary=:all:", "--python-version", PYTHON_TAG, "--implementation", "cp",
            "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
        ]  # fmt: skip
        _run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "--no-warn-script-location", *(only_wheels if wheels_only else []),
                "--target", str(site), *args,
            ],
            out=self.progress.out,
            what="pip install",
        )  # fmt: skip
        # Console scripts written by pip name the host's interpreter: useless in the image.
        shutil.rmtree(site / "bin", ignore_errors=True)
        _compile(site)

    # layer 3 ------------------------------------------------------------------------------

    def code_layer(self, kind: str) -> Blob:
        if kind == "wheel":
            files = _source_files(
                [REPO / "pyproject.toml", REPO / "README.md"], ["operator", "hydrator"]
            )
            key = _digest("wheel", *(_file_key(f) for f in files))
            return self._cached_layer(f"code-{key}", self._build_wheel_layer)
        if kind == "demo":
            files = [REPO / "demo" / "app.py"]
            key = _digest("demo", *(_file_key(f) for f in files))
            return self._cached_layer(f"demo-{key}", self._build_demo_layer)
        raise ValueError(kind)

    def _build_wheel_layer(self, target: Path) -> None:
        self.progress.say("installing the sidecar-state wheel (our code)")
        with tempfile.TemporaryDirectory(prefix="sstate-code-") as tmp:
            # A copy, so the in-tree build never leaves build/ or egg-info in the checkout.
            src = Path(tmp) / "src"
            src.mkdir()
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(REPO / name, src / name)
            for package in ("operator/sidecar_operator", "hydrator/sidecar_hydrator"):
                shutil.copytree(
                    REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
                )
            site = Path(tmp) / "site"
            # Our wheel is pure Python, built by its own backend (setuptools>=77, isolated).
            self._pip_target(site, ["--no-deps", str(src)], wheels_only=False)
            root = Path(tmp) / "root"
            shutil.copytree(site, root / SITE_PACKAGES, symlinks=True)
            bin_dir = root / "usr/local/bin"
            bin_dir.mkdir(parents=True)
            project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
            for script, target_ref in project["scripts"].items():
                module, func = target_ref.split(":")
                (bin_dir / script).write_text(
                    "#!/usr/bin/python3\nimport sys\n"
                    f"from {module} import {func}\nsys.exit({func}())\n"
                )
                (bin_dir / script).chmod(0o755)
            write_layer_from_tree(target, root, prefix="")

    def _build_demo_layer(self, target: Path) -> None:
        self.progress.say("packing the demo app")
        entries: list[FileEntry | DirEntry] = [
            DirEntry(path="opt"),
            DirEntry(path="opt/demo"),
        ]
        # Only the app: the publisher and the runner are host tools.
        app = REPO / "demo" / "app.py"
        entries.append(FileEntry(path="opt/demo/app.py", data=app.read_bytes()))
        write_layer_from_entries(target, entries)

    # caching ------------------------------------------------------------------------------

    def _cached_layer(self, key: str, build: Callable[[Path], None]) -> Blob:
        """Return the layer stored under ``key``, building it on a miss (atomically)."""
        meta = self.layers / f"{key}.json"
        if meta.exists():
            info = json.loads(meta.read_text())
            path = self.layers / f"{info['digest'].split(':')[1]}.tar"
            if path.exists():
                return Blob(path=path, digest=info["digest"], size=info["size"])
        self.layers.mkdir(parents=True, exist_ok=True)
        partial = self.layers / f"{key}.partial.tar"
        partial.unlink(missing_ok=True)
        build(partial)
        blob = copy_blob(hash_file(partial), self.layers)
        partial.unlink()
        meta.write_text(json.dumps({"digest": blob.digest, "size": blob.size}) + "\n")
        return blob

    # images -------------------------------------------------------------------------------

    def users_layer(self, base: Blob) -> Blob:
        """``/etc/passwd`` and ``/etc/group`` of the base plus the numeric users we run as.

        Why: kopf (via ``getpass.getuser()``) and other libraries look the running uid up and
        crash when it has no entry (``getpwuid(): uid not found: 65532``).
        """
        key = _digest("users", base.digest, *USERS, *GROUPS)
        return self._cached_layer(f"users-{key}", lambda t: self._build_users(t, base))

    def _build_users(self, target: Path, base: Blob) -> None:
        import tarfile

        found: dict[str, bytes] = {}
        with tarfile.open(base.path) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in ("etc/passwd", "etc/group"):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[name] = handle.read()
                if len(found) == 2:
                    break
        passwd = found["etc/passwd"].decode() + "".join(f"{u}\n" for u in USERS)
        group = found["etc/group"].decode() + "".join(f"{g}\n" for g in GROUPS)
        write_layer_from_entries(
            target,
            [
                DirEntry(path="etc"),
                FileEntry(path="etc/passwd", data=passwd.encode()),
                FileEntry(path="etc/group", data=group.encode()),
            ],
        )

    def build(self, spec: ImageSpec) -> Path:
        """Write (or reuse) the OCI archive for ``spec``; return its path."""
        started = time.monotonic()
        base = self.base_layer()
        layers = [base, self.users_layer(base)]
        if spec.requirements:
            layers.append(self.deps_layer(spec.requirements))
        if spec.code:
            layers.append(self.code_layer(spec.code))
        key = _digest(
            spec.ref, json.dumps(spec.config.as_json(), sort_keys=True), *(b.digest for b in layers)
        )
        archive = self.archives / f"{spec.name}.oci.tar"
        stamp = self.archives / f"{spec.name}.key"
        if archive.exists() and stamp.exists() and stamp.read_text() == key:
            self.progress.say(f"{spec.ref}: up to date")
            return archive
        self.archives.mkdir(parents=True, exist_ok=True)
        digest = write_archive(archive, name=spec.ref, layers=layers, config=spec.config)
        stamp.write_text(key)
        self.progress.say(
            f"{spec.ref}: {digest[:19]} ({sum(b.size for b in layers) / 1e6:.0f} MB) "
            f"in {time.monotonic() - started:.1f}s"
        )
        return archive


def _compile(site: Path) -> None:
    """Precompile bytecode that is never re-checked, so a read-only root never needs to write.

    ``unchecked-hash`` pycs do not depend on source mtimes, which the layer writer zeroes.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0",
         "--invalidation-mode", "unchecked-hash", str(site)],
        capture_output=True, check=False,
    )  # fmt: skip


def _source_files(files: Iterable[Path], dirs: Iterable[str]) -> list[Path]:
    found = [f for f in files if f.exists()]
    for d in dirs:
        found += sorted(
            p for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    return found


def _file_key(path: Path) -> str:
    return f"{path.relative_to(REPO)}:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def build_all(names: Sequence[str] = (), *, out: TextIO | None = None) -> dict[str, Path]:
    """Build the named images (all by default); return short name -> archive path."""
    specs = image_specs()
    unknown = set(names) - set(specs)
    if unknown:
        raise ImageBuildError(f"unknown images {sorted(unknown)}; known: {sorted(specs)}")
    builder = Builder(out=out)
    return {name: builder.build(specs[name]) for name in (names or list(specs))}


def import_archives(
    archives: Iterable[Path], *, address: str, ctr: str = "ctr", out: TextIO | None = None
) -> None:
    """``ctr images import`` each archive into the CRI namespace of containerd at ``address``."""
    progress = _Progress(out or sys.stderr)
    for archive in archives:
        started = time.monotonic()
        _run(
            [ctr, f"--address={address}", "--namespace=k8s.io", "images", "import",
             "--snapshotter=overlayfs", str(archive)],
            out=progress.out,
            what=f"ctr import {archive.name}",
        )  # fmt: skip
        progress.say(f"imported {archive.name} in {time.monotonic() - started:.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__)
    parser.add_argument("names", nargs="*", help="images to build (default: all)")
    parser.add_argument("--import", dest="do_import", action="store_true")
    parser.add_argument("--containerd-address", default="/run/containerd/containerd.sock")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        archives = build_all(args.names)
        if args.do_import:
            import_archives(archives.values(), address=args.containerd_address)
    except ImageBuildError as error:
        print(f"[images] error: {error}", file=sys.stderr)
        return 1
    print(f"[images] done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    for archive in archives.values():
        print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
