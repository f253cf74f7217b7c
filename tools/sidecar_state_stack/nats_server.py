"""A real ``nats-server`` with JetStream on loopback, for integration tests and benchmarks.

Why real: the NATS source depends on server behaviour a fake gets wrong — KV delete and purge
markers, last-per-subject delivery, sequences that survive a restart, ephemeral consumers that
do not, and what nats-py does while the server is down.

Why built from its Go module: the machines reach package registries only; the Go module proxy
has ``github.com/nats-io/nats-server/v2``. :func:`install_nats_server` builds one version once
into ``${SIDECAR_STATE_CACHE:-~/.cache/sidecar-state}/tools/nats-server-<version>/`` (about
1.5-2.5 min cold on two cores), like the other Go tools.

Command line (run from the repository root)::

    python3 -m sidecar_state_stack.nats_server install   # build the binary (no-op when cached)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from localkube.cache import cache_root
from localkube.errors import BuildError
from localkube.gobuild import go_install
from localkube.ports import free_port
from localkube.processes import ChildService

NATS_SERVER_VERSION: Final = os.environ.get("SIDECAR_STATE_NATS_VERSION", "v2.15.2")
_MODULE: Final = "github.com/nats-io/nats-server/v2"


class NatsServerError(RuntimeError):
    """nats-server could not be built or started."""


def nats_server_binary(version: str = NATS_SERVER_VERSION) -> Path:
    return cache_root() / "tools" / f"nats-server-{version}" / "nats-server"


def install_nats_server(version: str = NATS_SERVER_VERSION) -> Path:
    """Build ``nats-server`` ``version`` from its Go module unless cached; return the binary
    (:func:`localkube.gobuild.go_install`: locked, and moved into place only once complete)."""
    binary = nats_server_binary(version)
    if binary.is_file():
        return binary
    try:
        # No -ldflags: the binary stays as upstream's module builds it.
        return go_install(
            f"{_MODULE}@{version}", target=binary.parent, out=sys.stderr, ldflags=None, label="nats"
        )
    except BuildError as error:
        raise NatsServerError(f"building nats-server {version} failed: {error}") from error


class NatsServer(ChildService):
    """One ``nats-server -js`` on a free port of ``host`` (loopback by default; a node's
    address for Pods to reach), its store and log in ``workdir``.

    The JetStream store is on disk in ``workdir``, so :meth:`restart` (and :meth:`kill` then
    :meth:`start`) keeps streams and their sequences, on the same port, as a real server
    restart does. ``config`` is extra nats-server config text (accounts, authorization).
    """

    def __init__(
        self,
        *,
        config: str = "",
        host: str = "127.0.0.1",
        version: str = NATS_SERVER_VERSION,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.binary = install_nats_server(version)
        self.config = config
        self.host = host
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._owns_workdir = True
        self.workdir = Path(tempfile.mkdtemp(prefix="sidecar-nats-"))
        self.port = free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats-server.log"

    def start(self) -> None:
        """Start and wait until the port accepts connections (JetStream is up by then)."""
        if self.running:
            raise NatsServerError(f"nats-server already running (pid {self.pid})")
        conf = self.workdir / "nats.conf"
        conf.write_text(
            f"listen: {self.host}:{self.port}\n"
            f"jetstream {{ store_dir: {str(self.workdir / 'js')!r} }}\n"
            f"{self.config}\n"
        )
        self._launch(
            [str(self.binary), "-c", str(conf)], self.log_path,
            ready=self._answers, timeout=self.start_timeout,
            not_ready=f"no INFO on port {self.port}", interval=0.02,
        )  # fmt: skip

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def _failure(self, what: str) -> NatsServerError:
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            tail = "(missing)"
        return NatsServerError(f"{what}.\n--- {self.log_path} (tail) ---\n{tail}")

    # stop(), kill() (as a crashed server or a lost node would) and restart() are
    # ChildService's; the JetStream store in ``workdir`` survives them.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m sidecar_state_stack.nats_server")
    parser.add_argument("command", choices=["install"])
    parser.parse_args(argv)
    print(install_nats_server())
    return 0


if __name__ == "__main__":
    sys.exit(main())
