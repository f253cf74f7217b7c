"""A real ``redis-server`` on a Unix socket, configured like the sidecar's, for tests.

Why real: the hydrator's contract is with the Redis binary the pod runs (MULTI/EXEC, SWAPDB,
``maxmemory`` OOM errors, a restart that loses everything); a fake would not show those.
Why a Unix socket and ``port 0``: that is how the sidecar is reached in the pod, and it keeps
parallel tests from fighting over TCP ports.

Debian's ``redis-server`` package provides the binary (``apt-get install -y redis-server``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from localkube.processes import ChildService
from sidecar_operator.injection.redis_container import redis_server_args

#: The Unix-domain socket path limit (sun_path) is 108 bytes including the NUL.
_MAX_SOCKET_PATH: Final = 107


class RedisServerError(RuntimeError):
    """redis-server could not be started or did not answer PING."""


def _last_directive(lines: Sequence[str], name: str) -> str | None:
    """The value of the last ``name`` directive (redis applies the last one it reads)."""
    value: str | None = None
    for line in lines:
        try:
            parts = shlex.split(line, comments=True)
        except ValueError:  # unbalanced quotes: redis-server itself will report the line
            continue
        if parts and parts[0].lower() == name and len(parts) > 1:
            value = parts[1]
    return value


class RedisServer(ChildService):
    """``redis-server`` without persistence, listening only on a Unix socket in a temp dir.

    ``config`` (a list of directive lines or a whole config file's text) is appended after the
    defaults below, so it can override any of them — that is where the operator's rendered
    sidecar configuration goes. With the defaults Redis keeps nothing on disk, so
    :meth:`restart` brings it back *empty* on the same socket: the "sidecar lost its data" case.
    """

    def __init__(
        self,
        *,
        config: Sequence[str] | str = (),
        defaults: bool = True,
        workdir: Path | None = None,
        executable: str = "redis-server",
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        """Prepare (but do not start) a server.

        ``defaults=False`` uses ``config`` verbatim (it must then set ``unixsocket`` itself).
        ``workdir`` is kept on :meth:`close` when given; the default temporary directory is
        removed unless ``SIDECAR_STATE_KEEP_TEST_DIRS=1``. It is created directly under
        ``/tmp``-like roots, never under pytest's long ``tmp_path``, because socket paths are
        limited to 107 bytes.
        """
        self.executable = executable
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._owns_workdir = workdir is None
        self.workdir = workdir if workdir is not None else _short_tempdir("sidecar-redis-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        user_lines = config.splitlines() if isinstance(config, str) else list(config)
        default_lines = [
            "port 0",
            f"unixsocket {self.workdir / 'redis.sock'}",
            "unixsocketperm 770",
            'save ""',
            "appendonly no",
            f"dir {self.workdir}",
            f"logfile {self.log_path}",
            "daemonize no",
            "supervised no",
            "always-show-logo no",
        ]
        self.config_lines: list[str] = (default_lines if defaults else []) + user_lines
        socket_value = _last_directive(self.config_lines, "unixsocket")
        if socket_value is None:
            raise ValueError("the Redis config has no 'unixsocket' directive")
        self.socket_path = Path(socket_value)
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"unix socket path too long (> {_MAX_SOCKET_PATH} bytes)")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def url(self) -> str:
        """A redis-py URL: ``redis.asyncio.from_url(server.url)``."""
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        """Start redis-server and wait until it answers PING on the socket."""
        if self.running:
            raise RedisServerError(f"redis-server already running (pid {self.pid})")
        if shutil.which(self.executable) is None:
            raise RedisServerError(
                f"{self.executable!r} not found: apt-get install -y redis-server "
                "(then `systemctl disable --now redis-server` if it autostarted; tests run "
                "their own)"
            )
        self.config_path.write_text("\n".join(self.config_lines) + "\n")
        self.socket_path.unlink(missing_ok=True)
        self._launch(
            [self.executable, str(self.config_path)], self.workdir / "redis.out",
            ready=self.ping, timeout=self.start_timeout,
            not_ready=f"no PONG on {self.socket_path}", interval=0.01,
        )  # fmt: skip

    def ping(self) -> bool:
        """One raw PING over the socket (no client library, so usable from any context)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _failure(self, what: str) -> RedisServerError:
        texts = []
        for path in (self.workdir / "redis.out", self.log_path):
            try:
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-20:])
            except FileNotFoundError:
                tail = "(missing)"
            texts.append(f"--- {path} (tail) ---\n{tail}")
        return RedisServerError(
            f"{what}.\n" + "\n".join(texts) + f"\nconfig: {self.config_path}\n"
            "A config error names the bad directive above; set SIDECAR_STATE_KEEP_TEST_DIRS=1 "
            "to keep the directory."
        )

    # stop(): SIGTERM first (Redis shuts down cleanly; with ``save ""`` it writes nothing).
    # restart() comes back on the same socket, empty without persistence.


def _short_tempdir(prefix: str) -> Path:
    """A fresh temp dir whose path leaves room for a socket name (TMPDIR may be long)."""
    root = tempfile.gettempdir()
    if len(root) > 60:
        root = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def sidecar_redis_config(
    *, max_memory_bytes: int = 256 * 2**20, acl_file: str | None = None
) -> list[str]:
    """The injected Redis's command line (the engine's rendering) as redis.conf lines.

    ``unixsocket`` and ``dir`` are left to :class:`RedisServer`, which puts them in a short
    temporary directory. ``aclfile`` only when ``acl_file`` is given (one written by
    ``sidecar_hydrator.credentials``): without it the test itself may write as the app's
    ``default`` user, to play a damaged store.
    """
    args = redis_server_args(
        socket_path="/unused",
        data_dir="/unused",
        acl_file=acl_file or "/unused",
        max_memory_bytes=max_memory_bytes,
        eviction_policy="noeviction",
    )[1:]
    pairs = zip(args[::2], args[1::2], strict=True)
    left_out = ("--unixsocket", "--dir") if acl_file else ("--unixsocket", "--dir", "--aclfile")
    return [
        f"{name[2:]} {shlex.quote(value) if value else chr(34) * 2}"
        for name, value in pairs
        if name not in left_out
    ]
