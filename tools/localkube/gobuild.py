"""Go builds, once: the environment every ``go`` command gets, a logged run with a heartbeat,
a lock that serialises builds sharing one module cache, and ``go install`` of a module.

Why one helper: the control plane's binaries, the kind tools and nats-server are all built
from Go modules on machines whose only download site is the module proxy; the flags that make
those builds static and reproducible, and the never-a-half-built-binary rule, belong in one
place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from .errors import BuildError

#: How often a long go command says it is still running.
HEARTBEAT_SECONDS = 30.0


class Progress:
    """Print each step with the time since the build started, so a slow build is visibly alive."""

    def __init__(self, out: TextIO, *, label: str = "cluster-build") -> None:
        self._out = out
        self._label = label
        self._start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def say(self, message: str) -> None:
        elapsed = self.elapsed()
        print(
            f"[{self._label} {elapsed // 60:02.0f}:{elapsed % 60:04.1f}] {message}",
            file=self._out,
            flush=True,
        )


def go_env(jobs: int | None = None) -> dict[str, str]:
    """Environment for every go command: static, reproducible, never fetching a toolchain."""
    env = dict(os.environ)
    flags = env.get("GOFLAGS", "").split()
    for flag in ("-trimpath", "-buildvcs=false", "-mod=mod"):
        if flag not in flags:
            flags.append(flag)
    if jobs is not None:
        flags.append(f"-p={jobs}")
    env["GOFLAGS"] = " ".join(flags)
    env["CGO_ENABLED"] = "0"
    # The proxy serves toolchains too, but the installed Go (>= every module's go line) suffices.
    env["GOTOOLCHAIN"] = "local"
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def run_go(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    progress: Progress,
    what: str,
) -> str:
    """Run a go command, logging to ``log``; print a heartbeat while it runs; return stdout."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            progress.say(f"  ... still {what} ({time.monotonic() - started:.0f}s)")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        with log.open("a") as log_file:
            log_file.write(f"\n$ (cd {cwd} && {' '.join(args)})\n")
            log_file.flush()
            proc = subprocess.run(
                args,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                check=False,
            )
            log_file.write(proc.stdout)
    finally:
        done.set()
        ticker.join()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(
            f"{what} failed (exit {proc.returncode}); full log: {log}\n--- log tail ---\n{tail}"
        )
    progress.say(f"  {what}: done in {time.monotonic() - started:.0f}s")
    return proc.stdout


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing): concurrent builders of one
    thing (pytest and ``make cluster-up``, two worktrees) take turns instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def binary_name(package: str) -> str:
    """The file ``go install`` writes for ``package`` (``path@version``): its last path
    element, or the one before a major-version suffix (``.../nats-server/v2`` -> nats-server)."""
    parts = package.split("@", 1)[0].rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def go_install(
    package: str,
    *,
    target: Path,
    out: TextIO,
    ldflags: str | None = "-s -w",
    label: str = "go",
) -> Path:
    """``go install package@version`` into the folder ``target`` unless its binary is there;
    return the binary's path.

    The build writes into a scratch folder beside ``target`` and the binary is moved into place
    only once complete, under a lock, so a half-built binary is never taken for a cached one.
    ``ldflags`` ``-s -w`` (the default) leaves out symbol tables and DWARF: a shorter link, for
    tools never debugged here.
    """
    binary = target / binary_name(package)
    if binary.is_file():
        return binary
    if shutil.which("go") is None:
        raise BuildError(
            f"Go is needed to build {package}: install Go 1.26+ from go.dev/dl and put it on PATH"
        )
    target.mkdir(parents=True, exist_ok=True)
    with locked(target / f".{binary.name}.lock"):
        if binary.is_file():
            return binary
        started = time.monotonic()
        print(f"[{label}] go install {package}", file=out, flush=True)
        with tempfile.TemporaryDirectory(prefix=f".{binary.name}-", dir=target) as scratch:
            cmd = ["go", "install", *([f"-ldflags={ldflags}"] if ldflags else []), package]
            proc = subprocess.run(
                cmd, env={**go_env(), "GOBIN": scratch}, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise BuildError(f"go install {package} failed:\n{proc.stderr[-2000:]}")
            os.replace(Path(scratch) / binary.name, binary)
        print(
            f"[{label}] {binary.name} built in {time.monotonic() - started:.0f}s",
            file=out,
            flush=True,
        )
    return binary
