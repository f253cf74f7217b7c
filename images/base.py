"""The base images the Dockerfiles name, made here because no registry can be reached.

Why: every Dockerfile of the project starts ``FROM debian:bookworm-slim`` or
``FROM python:3.11-slim-bookworm``, which GitHub pulls from Docker Hub. These machines reach
Debian's mirrors and PyPI but no registry, so ``ensure_bases`` makes images *under those names*
in our daemon, and the Dockerfiles stay the single source of every image:

- ``debian:bookworm-slim``: ``mmdebstrap --variant=minbase`` of bookworm, ``docker import``ed;
- ``python:3.11-slim-bookworm``: ``images/base/python.Dockerfile`` on top (Debian's python3 3.11
  with venv, and ``python``/``python3`` on ``/usr/local/bin`` like the official image).

Each is cached by a hash of its recipe: the rootfs tar under ``<cache>/images/base`` and the image
labelled with the hash, so a warm call only inspects two labels.

    python -m images.base
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from images import docker
from images.docker import DockerError
from localkube.cache import cache_root

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBIAN_IMAGE = "debian:bookworm-slim"
PYTHON_IMAGE = "python:3.11-slim-bookworm"
PYTHON_DOCKERFILE = REPO / "images/base/python.Dockerfile"
KEY_LABEL = "dev.sidecar-state.base-key"
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


SLIM_PATHS = (
    "exclude=/usr/share/doc/*",
    "include=/usr/share/doc/*/copyright",
    "exclude=/usr/share/man/*",
    "exclude=/usr/share/info/*",
    "exclude=/usr/share/locale/*",
    "include=/usr/share/locale/locale.alias",
    "exclude=/usr/share/lintian/*",
)


def debian_recipe() -> list[str]:
    """mmdebstrap's arguments minus target and mirror; their hash names the cached rootfs."""
    return [
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        # No device nodes in an image: the runtime provides /dev.
        "--skip=output/dev",
        # What the official slim image leaves out, also for every later apt-get install:
        # documentation but the licences, manuals, translations.
        *(f"--dpkgopt=path-{rule}" for rule in SLIM_PATHS),
        # What the official slim image leaves out too: apt lists, caches, logs, docs.
        "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/* $1/var/log/*",
        SUITE,
    ]


def _key(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def debian_key() -> str:
    return _key(MIRROR, *debian_recipe())


def extra_cas() -> list[Path]:
    """The machine's own CA certificates (e.g. an egress proxy's), which builds must trust."""
    return sorted(EXTRA_CA_DIR.glob("*.crt"))


def python_key() -> str:
    cas = [f"{ca.name}:{hashlib.sha256(ca.read_bytes()).hexdigest()}" for ca in extra_cas()]
    return _key(debian_key(), PYTHON_DOCKERFILE.read_text(), *cas)


def image_label(name: str) -> str | None:
    proc = docker.run(
        ["image", "inspect", "--format", f'{{{{index .Config.Labels "{KEY_LABEL}"}}}}', name],
        check=False,
        capture=True,
    )
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _say(message: str, out: TextIO) -> None:
    print(f"[base] {message}", file=out, flush=True)


def ensure_debian(*, cache: Path, out: TextIO) -> None:
    key = debian_key()
    if image_label(DEBIAN_IMAGE) == key:
        return
    rootfs = cache / f"debian-{SUITE}-{key}.tar"
    if not rootfs.exists():
        started = time.monotonic()
        _say(f"mmdebstrap {SUITE} minbase -> {rootfs.name} (cold: about a minute)", out)
        partial = rootfs.with_suffix(".partial")
        log = cache / "mmdebstrap.log"
        with log.open("w") as handle:
            proc = subprocess.run(
                ["mmdebstrap", *debian_recipe(), str(partial), MIRROR],
                stdout=handle,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise DockerError(f"mmdebstrap failed ({proc.returncode}):\n{tail}")
        partial.rename(rootfs)
        _say(f"rootfs made in {time.monotonic() - started:.0f}s", out)
    docker.run(
        [
            "import",
            "--change", f"LABEL {KEY_LABEL}={key}",
            "--change", 'CMD ["bash"]',
            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            str(rootfs), DEBIAN_IMAGE,
        ],
        capture=True,
    )  # fmt: skip
    _say(f"imported {DEBIAN_IMAGE}", out)


def ensure_python(*, out: TextIO) -> None:
    key = python_key()
    if image_label(PYTHON_IMAGE) == key:
        return
    started = time.monotonic()
    _say(f"building {PYTHON_IMAGE} from {PYTHON_DOCKERFILE.relative_to(REPO)}", out)
    with tempfile.TemporaryDirectory(prefix="sstate-base-") as tmp:
        context = Path(tmp)
        (context / "extra-ca").mkdir()
        for ca in extra_cas():
            shutil.copy2(ca, context / "extra-ca" / ca.name)
        docker.run(
            [
                "build", "--quiet", "--label", f"{KEY_LABEL}={key}",
                "-f", str(PYTHON_DOCKERFILE), "-t", PYTHON_IMAGE, str(context),
            ],
            capture=True,
        )  # fmt: skip
    _say(f"{PYTHON_IMAGE} built in {time.monotonic() - started:.0f}s", out)


def ensure_bases(*, out: TextIO | None = None) -> None:
    """Both base images in our daemon, under the names the Dockerfiles use (idempotent)."""
    out = out or sys.stderr
    docker.up(out=out)
    if docker.system_docker():
        # A daemon that reaches Docker Hub (GitHub's): the real bases, pulled.
        for name in (DEBIAN_IMAGE, PYTHON_IMAGE):
            docker.run(["pull", "--quiet", name], capture=True)
        return
    cache = cache_root() / "images/base"
    cache.mkdir(parents=True, exist_ok=True)
    ensure_debian(cache=cache, out=out)
    ensure_python(out=out)


def main() -> int:
    started = time.monotonic()
    try:
        ensure_bases()
    except DockerError as error:
        print(f"[base] error: {error}", file=sys.stderr)
        return 1
    print(f"[base] ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
