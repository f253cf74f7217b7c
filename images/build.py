"""Build the project's images from their Dockerfiles, the one source of every image.

Why one path: the node suite, the demo, kind and the release workflow all run what the
Dockerfiles say, so a Dockerfile that does not build or does not run fails here first. Locally
the builds use our own daemon (``images.docker``, the classic builder) on base images made under
the names the Dockerfiles use (``images.base``); GitHub builds the same files with buildx.

- ``build_all`` builds every image (Docker's layer cache makes a warm run seconds) and tags it
  ``<registry>/<name>:<tag>``, by default exactly what the chart's values name;
- ``push`` (``make images REGISTRY=...``) re-tags and pushes them to another registry.

    python -m images.build [--registry R] [--push] [names...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from images import base, docker
from images.docker import DockerError
from sidecar_operator.injection.defaults import ENVOY_VERSION

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = "ghcr.io/sidecar-state"
#: The Debian redis-server line the store image ships; also its tag (not the chart's version).
REDIS_TAG = "7.0-bookworm"


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageRecipe:
    """One image: its short name, its Dockerfile and the tag it gets."""

    name: str
    dockerfile: str
    tag: str

    def ref(self, registry: str = DEFAULT_REGISTRY) -> str:
        return f"{registry.rstrip('/')}/{self.name}:{self.tag}"


def recipes() -> dict[str, ImageRecipe]:
    """Every image, by short name: the four the chart names, and the demo's app."""
    version = project_version()
    return {
        "operator": ImageRecipe(name="operator", dockerfile="operator/Dockerfile", tag=version),
        "hydrator": ImageRecipe(name="hydrator", dockerfile="hydrator/Dockerfile", tag=version),
        "redis": ImageRecipe(name="redis", dockerfile="images/redis/Dockerfile", tag=REDIS_TAG),
        "demo-app": ImageRecipe(name="demo-app", dockerfile="demo/Dockerfile", tag=version),
        # The interceptor's Envoy, tagged with Envoy's version (the chart's images.envoy.tag).
        "envoy": ImageRecipe(name="envoy", dockerfile="envoy/Dockerfile", tag=ENVOY_VERSION),
    }


def image_refs(registry: str = DEFAULT_REGISTRY) -> dict[str, str]:
    return {name: recipe.ref(registry) for name, recipe in recipes().items()}


def _select(names: Sequence[str]) -> list[ImageRecipe]:
    known = recipes()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DockerError(f"unknown images {unknown}; known: {sorted(known)}")
    return [known[name] for name in (names or list(known))]


def _say(message: str, out: TextIO) -> None:
    print(f"[images] {message}", file=out, flush=True)


def image_id(ref: str) -> str:
    proc = docker.run(["image", "inspect", "--format", "{{.Id}}", ref], capture=True)
    return proc.stdout.decode().strip()


def image_size(ref: str) -> int:
    proc = docker.run(["image", "inspect", "--format", "{{.Size}}", ref], capture=True)
    return int(proc.stdout.decode().strip())


def build_all(
    names: Sequence[str] = (), *, registry: str = DEFAULT_REGISTRY, out: TextIO | None = None
) -> dict[str, str]:
    """Build the named images (all by default) with Docker; return short name -> reference."""
    out = out or sys.stderr
    base.ensure_bases(out=out)
    built = {}
    for recipe in _select(names):
        started = time.monotonic()
        ref = recipe.ref(registry)
        version_arg = [] if recipe.name == "redis" else ["--build-arg", f"VERSION={recipe.tag}"]
        proc = docker.run(
            ["build", "--quiet", "-f", str(REPO / recipe.dockerfile), "-t", ref, *version_arg,
             str(REPO)],
            capture=True,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            log = (proc.stdout + proc.stderr).decode(errors="replace")
            raise DockerError(f"building {ref} failed:\n{log[-3000:]}")
        _say(f"{ref}: {image_size(ref) / 1e6:.0f} MB in {time.monotonic() - started:.1f}s", out)
        built[recipe.name] = ref
    return built


def push(names: Sequence[str] = (), *, registry: str, out: TextIO | None = None) -> list[str]:
    """Build, tag for ``registry`` and push (air-gapped clusters: your own registry)."""
    out = out or sys.stderr
    pushed = []
    for name, ref in build_all(names, registry=registry, out=out).items():
        docker.run(["push", ref])
        _say(f"pushed {name} as {ref}", out)
        pushed.append(ref)
    return pushed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__)
    parser.add_argument("names", nargs="*", help="images to build (default: all)")
    parser.add_argument("--registry", default=DEFAULT_REGISTRY)
    parser.add_argument("--push", action="store_true", help="push to --registry after building")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.push:
            push(args.names, registry=args.registry)
        else:
            for ref in build_all(args.names, registry=args.registry).values():
                print(ref)
    except DockerError as error:
        print(f"[images] error: {error}", file=sys.stderr)
        return 1
    print(f"[images] done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
