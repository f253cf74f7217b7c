"""``python -m localkube up|down|build|status [--workdir DIR]``.

Why a CLI next to the pytest fixture: a developer wants one long-lived cluster to poke at with
kubectl, helm or a locally running operator, without paying the start-up on every pytest run.
``up`` starts the components detached (each in its own session) and records their pids and
binaries in ``<workdir>/state.json``; ``down`` reads that file and stops exactly those processes,
checking /proc so a recycled pid is never signalled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import build as build_mod
from .cache import cache_root
from .controlplane import (
    LocalControlPlane,
    ProcessRecord,
    process_alive,
    terminate_process_groups,
)
from .errors import BuildError, ControlPlaneError


def default_workdir() -> Path:
    """Where ``up`` keeps its certificates, etcd data, logs, kubeconfig and state."""
    return cache_root() / "cluster"


def _state_path(workdir: Path) -> Path:
    return workdir / "state.json"


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path(workdir).read_text())
    except (OSError, ValueError):
        return None
    return state


def _records(state: dict[str, Any]) -> list[ProcessRecord]:
    return [ProcessRecord(**r) for r in state.get("processes", [])]


def _print_access(state: dict[str, Any]) -> None:
    """Shell-evaluable lines: ``eval "$(python -m localkube up)"`` sets KUBECONFIG."""
    print(f"export KUBECONFIG={state['kubeconfig']}")
    print(f"# server: {state['server']}")
    print(f"# kubectl: {state['bin_dir']}/kubectl   helm: {state['bin_dir']}/helm")
    print(f"# logs: {state['workdir']}/logs   stop: python -m localkube down")


def cmd_up(workdir: Path, *, timeout: float) -> int:
    state = _read_state(workdir)
    if state is not None:
        records = _records(state)
        if records and all(process_alive(r) for r in records):
            print(f"cluster already running (workdir {workdir})", file=sys.stderr)
            _print_access(state)
            return 0
        print("cleaning up a previous cluster that is no longer complete", file=sys.stderr)
        terminate_process_groups(list(reversed(records)))
        _state_path(workdir).unlink(missing_ok=True)
    try:
        binaries = build_mod.build()
    except BuildError as error:
        print(f"cluster build failed: {error}", file=sys.stderr)
        return 1
    plane = LocalControlPlane(
        workdir=workdir, binaries=binaries, start_timeout=timeout, detach=True
    )
    try:
        plane.start()
    except ControlPlaneError as error:
        print(f"cluster up failed: {error}", file=sys.stderr)
        return 1
    state = {
        "workdir": str(workdir),
        "kubeconfig": str(plane.kubeconfig),
        "server": plane.server,
        "bin_dir": str(binaries.kubectl.parent),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "processes": [dataclasses.asdict(r) for r in plane.records],
    }
    tmp = _state_path(workdir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, _state_path(workdir))
    _print_access(state)
    return 0


def cmd_down(workdir: Path) -> int:
    state = _read_state(workdir)
    if state is None:
        print(f"no cluster recorded in {workdir}", file=sys.stderr)
        return 0
    records = _records(state)
    terminate_process_groups(list(reversed(records)))
    left = [r for r in records if process_alive(r)]
    if left:
        print(f"could not stop: {[(r.name, r.pid) for r in left]}", file=sys.stderr)
        return 1
    _state_path(workdir).unlink(missing_ok=True)
    print(f"cluster stopped ({', '.join(r.name for r in records)})", file=sys.stderr)
    return 0


def cmd_status(workdir: Path) -> int:
    state = _read_state(workdir)
    if state is None:
        print(f"not running (no state in {workdir})")
        return 1
    ok = True
    for record in _records(state):
        alive = process_alive(record)
        ok = ok and alive
        print(f"{record.name:<24} pid {record.pid:<8} {'running' if alive else 'NOT RUNNING'}")
    _print_access(state)
    return 0 if ok else 1


def cmd_build(*, force: bool, jobs: int | None, only: Sequence[str]) -> int:
    try:
        binaries = build_mod.build(force=force, jobs=jobs, only=only)
    except BuildError as error:
        print(f"cluster build failed: {error}", file=sys.stderr)
        return 1
    for path in binaries.all():
        if path.exists():
            print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localkube",
        description="Build and run a local Kubernetes control plane for the e2e tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("up", "build if needed, start, print `export KUBECONFIG=...`"),
        ("down", "stop everything `up` started"),
        ("status", "show whether the components `up` started are running"),
        ("build", "build the binaries into the cache (no-op when cached)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--workdir",
            type=Path,
            default=default_workdir(),
            help="state, certs, logs and kubeconfig (default: %(default)s)",
        )
        if name == "up":
            cmd.add_argument(
                "--timeout", type=float, default=180.0, help="seconds to wait for readiness"
            )
        if name == "build":
            cmd.add_argument("--force", action="store_true", help="rebuild even if cached")
            cmd.add_argument("--jobs", type=int, default=None, help="go build -p")
            cmd.add_argument(
                "--only", type=build_mod.group_names, default=build_mod.GROUPS,
                help=f"comma-separated, of {','.join(build_mod.GROUPS)} (default: all)",
            )  # fmt: skip
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.expanduser().resolve()
    if args.command == "up":
        return cmd_up(workdir, timeout=args.timeout)
    if args.command == "down":
        return cmd_down(workdir)
    if args.command == "status":
        return cmd_status(workdir)
    return cmd_build(force=args.force, jobs=args.jobs, only=args.only)


if __name__ == "__main__":
    raise SystemExit(main())
