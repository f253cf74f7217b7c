"""Istio's published CRDs for AuthorizationPolicy and ServiceEntry, for the e2e control plane.

Why real: the operator's AuthorizationPolicy (``mode: istio``) and the README's mesh recipe
must pass Istio's own schema, which the apiserver enforces once the CRD is installed. The
schema comes from Istio's API module ``istio.io/api`` (Apache-2.0), whose
``kubernetes/customresourcedefinitions.gen.yaml`` is the file Istio's charts ship as
``crd-all.gen.yaml``. It is fetched from the Go module proxy, the way the rest of the test
toolchain is, checked against a pinned SHA-256 of the module's zip, and the two CRDs are kept
in ``${SIDECAR_STATE_CACHE:-~/.cache/sidecar-state}/istio/<version>/crds.yaml``; nothing of
Istio's is committed here.

Command line (run from the repository root)::

    python3 -m sidecar_state_stack.istio_crds install   # prints the CRD file (no-op when cached)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Final

import yaml

from localkube.cache import cache_root

ISTIO_API_VERSION: Final = "v1.32.0"
#: SHA-256 of https://proxy.golang.org/istio.io/api/@v/v1.32.0.zip (Go's h1: sum is
#: h1:37mJvg9I0biYZAEQF+MATs4FNeCpXEIVO3LFpVb6iNM=).
ISTIO_API_ZIP_SHA256: Final = "127b4bd504fd0ab365d31dd97a2ad81ea8c5cc4093ff2a90d0d947744d3504c8"
_MODULE: Final = "istio.io/api"
_FILE: Final = "kubernetes/customresourcedefinitions.gen.yaml"
CRD_NAMES: Final = (
    "authorizationpolicies.security.istio.io",
    "serviceentries.networking.istio.io",
)


class IstioCrdError(RuntimeError):
    """The CRDs could not be fetched or are not what was pinned."""


def crd_file(version: str = ISTIO_API_VERSION) -> Path:
    return cache_root() / "istio" / version / "crds.yaml"


def _proxy() -> str:
    for entry in os.environ.get("GOPROXY", "https://proxy.golang.org").split(","):
        if entry.startswith("http"):
            return entry.rstrip("/")
    return "https://proxy.golang.org"


def install_istio_crds(version: str = ISTIO_API_VERSION) -> Path:
    """Fetch and extract the two CRDs unless cached; return the file (written atomically)."""
    target = crd_file(version)
    if target.is_file():
        return target
    if version != ISTIO_API_VERSION:
        raise IstioCrdError(f"only {ISTIO_API_VERSION} is pinned (its checksum is known)")
    url = f"{_proxy()}/{_MODULE}/@v/{version}.zip"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except OSError as error:
        raise IstioCrdError(
            f"cannot fetch {url}: {error}; is the Go module proxy reachable?"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != ISTIO_API_ZIP_SHA256:
        raise IstioCrdError(f"{url}: SHA-256 {digest}, expected {ISTIO_API_ZIP_SHA256}")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        text = archive.read(f"{_MODULE}@{version}/{_FILE}").decode()
    wanted = [
        doc
        for doc in yaml.safe_load_all(text)
        if doc and doc.get("metadata", {}).get("name") in CRD_NAMES
    ]
    if len(wanted) != len(CRD_NAMES):
        raise IstioCrdError(f"{_MODULE}@{version}/{_FILE} lacks one of {', '.join(CRD_NAMES)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {', '.join(CRD_NAMES)}: from {_MODULE}@{version} {_FILE} (Apache-2.0)\n"
    with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False) as scratch:
        scratch.write(header + yaml.safe_dump_all(wanted, sort_keys=False))
    os.chmod(scratch.name, 0o644)
    os.replace(scratch.name, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar_state_stack.istio_crds",
        description="Istio's AuthorizationPolicy and ServiceEntry CRDs for the e2e tests.",
    )
    parser.add_argument("command", choices=["install", "path"])
    args = parser.parse_args(argv)
    if args.command == "path":
        print(crd_file())
        return 0
    try:
        print(install_istio_crds())
    except IstioCrdError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
