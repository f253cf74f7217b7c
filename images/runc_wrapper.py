#!/usr/bin/python3
"""A runc that drops the capabilities this machine's bounding set does not have.

Why: Docker builds a privileged container's spec from every capability it knows, not from the
ones the daemon holds. On a host whose bounding set lacks one (CAP_SYS_RESOURCE on some VMs),
runc then fails with "unable to apply caps", so ``docker run --privileged`` (and with it every
kind node) cannot start. The daemon registers this script as its default runtime only when a
capability is missing (``images.docker``); it removes exactly those from the bundle's
``config.json`` and then becomes the real runc, so nothing else about a container changes.

Standard library only: the daemon runs it with Debian's ``/usr/bin/python3``, outside any venv.
The capabilities to drop and the real runc come from the environment of ``dockerd``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DROP_ENV = "SIDECAR_STATE_RUNC_DROP_CAPS"
RUNC_ENV = "SIDECAR_STATE_RUNC"
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def strip_capabilities(spec: dict[str, Any], drop: Sequence[str]) -> bool:
    """Remove ``drop`` from every capability set of an OCI spec; True when something changed."""
    return strip_process_capabilities(spec.get("process", {}), drop)


def strip_process_capabilities(process: dict[str, Any], drop: Sequence[str]) -> bool:
    """The same for one OCI process (``runc exec --process``: ``docker exec`` in a container)."""
    capabilities = process.get("capabilities")
    if not capabilities:
        return False
    changed = False
    for name in CAPABILITY_SETS:
        current = capabilities.get(name)
        if current:
            kept = [cap for cap in current if cap not in drop]
            if len(kept) != len(current):
                capabilities[name] = kept
                changed = True
    return changed


def bundle_of(args: Sequence[str]) -> Path | None:
    """The bundle of a ``create``/``run`` call (``--bundle``/``-b``, else the working dir)."""
    if "create" not in args and "run" not in args:
        return None
    for index, arg in enumerate(args):
        if arg in ("--bundle", "-b") and index + 1 < len(args):
            return Path(args[index + 1])
        if arg.startswith("--bundle="):
            return Path(arg.split("=", 1)[1])
    return Path.cwd()


def process_of(args: Sequence[str]) -> Path | None:
    """The process file of an ``exec`` call (``--process``/``-p``), if any."""
    if "exec" not in args:
        return None
    for index, arg in enumerate(args):
        if arg in ("--process", "-p") and index + 1 < len(args):
            return Path(args[index + 1])
        if arg.startswith("--process="):
            return Path(arg.split("=", 1)[1])
    return None


def main(argv: Sequence[str]) -> None:
    drop = [cap for cap in os.environ.get(DROP_ENV, "").split(",") if cap]
    bundle = bundle_of(argv)
    if drop and bundle is not None and (bundle / "config.json").is_file():
        config = bundle / "config.json"
        spec = json.loads(config.read_text())
        if strip_capabilities(spec, drop):
            config.write_text(json.dumps(spec))
    process_file = process_of(argv)
    if drop and process_file is not None and process_file.is_file():
        process = json.loads(process_file.read_text())
        if strip_process_capabilities(process, drop):
            process_file.write_text(json.dumps(process))
    runc = os.environ.get(RUNC_ENV, "/usr/bin/runc")
    os.execv(runc, [runc, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
