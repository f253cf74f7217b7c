"""The project's own Docker daemon: started on demand, with its own data-root and socket.

Why our own daemon rather than the machine's: these machines have no systemd and no running
Docker, and a daemon shared with other tools would mix their images and networks with ours. So
``up`` starts Debian's ``dockerd`` once per machine with everything under the cache root
(``<cache>/docker``: data-root, exec-root, socket, pid file, log, daemon.json) and leaves it
running; a second ``up`` only checks that it answers. Every docker call of the project (image
builds, kind) goes through ``DOCKER_HOST`` = that socket.

When the capability bounding set lacks a capability Docker grants privileged containers, the
daemon's default runtime is ``runc_wrapper.py``, which drops exactly those (see there).

    python -m images.docker up|down|env
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from localkube.cache import cache_root

#: Linux capability numbers (include/uapi/linux/capability.h), as OCI specs name them.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
WRAPPED_RUNTIME = "sidecar-state-runc"
START_TIMEOUT_S = 60.0


class DockerError(RuntimeError):
    """The daemon could not be started or does not answer; the message says why."""


SYSTEM_DOCKER_ENV = "SIDECAR_STATE_SYSTEM_DOCKER"


def system_docker() -> bool:
    """True where a Docker daemon is provided (GitHub's runners): use it, start nothing."""
    return os.environ.get(SYSTEM_DOCKER_ENV) == "1"


def missing_capabilities(bounding_set_hex: str) -> list[str]:
    """The capabilities Docker knows that the bounding set ``CapBnd`` (hex) lacks."""
    mask = int(bounding_set_hex, 16)
    return [name for bit, name in enumerate(CAPABILITIES) if not mask >> bit & 1]


def own_bounding_set() -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return line.split()[1]
    raise DockerError("no CapBnd in /proc/self/status")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DaemonLayout:
    """Where the daemon keeps everything; exec-root stays short (unix socket path limit)."""

    root: Path

    @classmethod
    def default(cls) -> DaemonLayout:
        return cls(root=cache_root() / "docker")

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.root / "dockerd.pid"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def config(self) -> Path:
        return self.root / "daemon.json"

    @property
    def runtime(self) -> Path:
        return self.root / "runc"


def daemon_config(*, layout: DaemonLayout, drop: Sequence[str]) -> dict[str, object]:
    """daemon.json: our own paths, no host config, and the runc wrapper when caps are missing."""
    config: dict[str, object] = {
        "data-root": str(layout.root / "data"),
        "exec-root": str(layout.root / "exec"),
        "pidfile": str(layout.pidfile),
        "hosts": [layout.host],
        "storage-driver": "overlay2",
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "2"},
    }
    if drop:
        config["runtimes"] = {WRAPPED_RUNTIME: {"path": str(layout.runtime)}}
        config["default-runtime"] = WRAPPED_RUNTIME
    return config


def docker_cli() -> str:
    """Debian's client (same version as the daemon), else whatever ``docker`` is on PATH."""
    debian = Path("/usr/bin/docker")
    found = str(debian) if debian.exists() else shutil.which("docker")
    if found is None:
        raise DockerError("no docker client: run `scripts/setup.sh docker`")
    return found


def client_env(layout: DaemonLayout | None = None) -> dict[str, str]:
    """The environment for docker and kind: our socket, the classic builder (no BuildKit)."""
    if system_docker():
        return {**os.environ, "DOCKER_BUILDKIT": "0"}
    layout = layout or DaemonLayout.default()
    return {**os.environ, "DOCKER_HOST": layout.host, "DOCKER_BUILDKIT": "0"}


def answers(layout: DaemonLayout) -> bool:
    if not layout.socket.exists():
        return False
    proc = subprocess.run(
        [docker_cli(), "version", "--format", "{{.Server.Version}}"],
        env=client_env(layout),
        capture_output=True,
        timeout=20,
        check=False,
    )
    return proc.returncode == 0


@contextlib.contextmanager
def _locked(layout: DaemonLayout) -> Iterator[None]:
    layout.root.mkdir(parents=True, exist_ok=True)
    with (layout.root / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pid(layout: DaemonLayout) -> int | None:
    try:
        pid = int(layout.pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _write_if_changed(path: Path, text: str, mode: int) -> None:
    """Replace atomically, and only on change: a running daemon may be executing the file."""
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.chmod(mode)
    partial.replace(path)


def _write_runtime(layout: DaemonLayout, drop: Sequence[str]) -> None:
    """The wrapper and its launcher; refreshed on every ``up``, as it runs per container."""
    wrapper = layout.root / "runc_wrapper.py"
    _write_if_changed(wrapper, Path(__file__).with_name("runc_wrapper.py").read_text(), 0o644)
    runc = shutil.which("runc") or "/usr/bin/runc"
    launcher = (
        "#!/bin/sh\n"
        f"SIDECAR_STATE_RUNC_DROP_CAPS={','.join(drop)} SIDECAR_STATE_RUNC={runc} "
        f'exec /usr/bin/python3 {wrapper} "$@"\n'
    )
    _write_if_changed(layout.runtime, launcher, 0o755)


def up(*, layout: DaemonLayout | None = None, out: TextIO | None = None) -> DaemonLayout:
    """Start the daemon unless it answers already; return where it listens (idempotent)."""
    layout = layout or DaemonLayout.default()
    out = out or sys.stderr
    if system_docker():
        run(["version", "--format", "{{.Server.Version}}"], capture=True)
        return layout
    with _locked(layout):
        drop = missing_capabilities(own_bounding_set())
        if drop:
            _write_runtime(layout, drop)
        if answers(layout):
            return layout
        if shutil.which("dockerd") is None:
            raise DockerError("dockerd is missing: run `scripts/setup.sh docker`")
        stale = _pid(layout)
        if stale is not None:
            raise DockerError(
                f"dockerd (pid {stale}) runs but does not answer on {layout.socket}; "
                f"see {layout.log}, or `python -m images.docker down`"
            )
        layout.config.write_text(json.dumps(daemon_config(layout=layout, drop=drop), indent=2))
        # Docker sets the FORWARD policy to DROP when it has to turn forwarding on itself; with
        # forwarding already on it leaves the host's other bridges (the kubelet node) alone.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        started = time.monotonic()
        print(f"[docker] starting dockerd on {layout.socket} (log {layout.log})", file=out)
        with layout.log.open("a") as log:
            subprocess.Popen(
                ["dockerd", f"--config-file={layout.config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        while time.monotonic() - started < START_TIMEOUT_S:
            if answers(layout):
                note = f"; runtime drops {', '.join(drop)}" if drop else ""
                print(f"[docker] up in {time.monotonic() - started:.1f}s{note}", file=out)
                return layout
            time.sleep(0.5)
        tail = "\n".join(layout.log.read_text(errors="replace").splitlines()[-20:])
        raise DockerError(f"dockerd did not answer within {START_TIMEOUT_S:.0f}s:\n{tail}")


def down(*, layout: DaemonLayout | None = None, out: TextIO | None = None) -> bool:
    """Stop the daemon this module started (by its pid file); True when one was running."""
    layout = layout or DaemonLayout.default()
    with _locked(layout):
        pid = _pid(layout)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _pid(layout) == pid:
            time.sleep(0.2)
        if _pid(layout) == pid:
            os.kill(pid, signal.SIGKILL)
        print(f"[docker] stopped dockerd (pid {pid})", file=out or sys.stderr)
        return True


def run(
    args: Sequence[str], *, check: bool = True, capture: bool = False, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``docker args...`` against our daemon; on failure raise with the command's output tail."""
    proc = subprocess.run(
        [docker_cli(), *args],
        env=client_env(),
        capture_output=capture,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        tail = (proc.stdout or b"").decode(errors="replace") + (proc.stderr or b"").decode(
            errors="replace"
        )
        raise DockerError(f"docker {' '.join(args[:3])} failed ({proc.returncode}): {tail[-2000:]}")
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.docker", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "env"])
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            print(up().host)
        elif args.action == "down":
            down()
        else:
            print(f"export DOCKER_HOST={DaemonLayout.default().host}")
    except DockerError as error:
        print(f"[docker] error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
