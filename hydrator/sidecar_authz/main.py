"""``sidecar-state-authz``: the authorizer's process — config, JSON logs, listeners, signals.

Listeners: the Unix socket Envoy's ext_authz cluster dials (group-accessible, like Redis's),
optionally ``127.0.0.1:<port>`` for a mesh's own sidecar, and a health port that answers only
``/livez`` and ``/readyz`` (Redis answers), never a check: the checks carry the Pod's data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError

from sidecar_authz.config import CONFIG_ENV, AuthorizerConfig
from sidecar_authz.server import Authorizer, HttpConnection

logger = logging.getLogger("sidecar_authz")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("SIDECAR_STATE_LOG_LEVEL", "INFO").upper())


async def serve(config: AuthorizerConfig, *, stop: asyncio.Event) -> None:
    """Listen until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    authorizer = Authorizer(config)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config.listen_socket)
    servers = []
    if config.loopback_port is not None:
        servers.append(
            await loop.create_server(
                lambda: HttpConnection(authorizer.check), "127.0.0.1", config.loopback_port
            )
        )
    if config.health_port is not None:
        servers.append(
            await loop.create_server(
                lambda: HttpConnection(authorizer.health), None, config.health_port
            )
        )
    # The socket last: once it accepts, every listener is up (what callers wait for).
    servers.append(
        await loop.create_unix_server(
            lambda: HttpConnection(authorizer.check), config.listen_socket
        )
    )
    # Envoy runs as another user of the socket's group (as the app reaches Redis).
    os.chmod(config.listen_socket, 0o660)
    logger.info("authorizer listening on %s (%d rules)", config.listen_socket, len(config.rules))
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await authorizer.redis.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.listen_socket)


async def _main(config: AuthorizerConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, stop=stop)
    logger.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Only ``--help``: the rendered config is the whole interface, so there is nothing to set."""
    return argparse.ArgumentParser(
        prog="sidecar-state-authz",
        description=(
            "The interceptor's authorizer: Envoy's ext_authz HTTP service, answering each"
            " request from the Pod's Redis. The operator injects it for bindings with"
            f" spec.intercept and renders its configuration, as JSON, into {CONFIG_ENV}; it"
            " takes no flags. It serves /livez and /readyz on its health port."
        ),
        epilog=(
            "To see the configuration an injected Pod gets, run"
            " `sidecar-state inject -f workload.yaml -b binding.yaml`."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: configured by ``SIDECAR_STATE_AUTHZ_CONFIG`` (rendered by the operator)."""
    build_parser().parse_args(argv)
    configure_logging()
    try:
        config = AuthorizerConfig.from_env()
    except ValidationError as exc:
        logger.error("invalid %s: %s", CONFIG_ENV, exc)
        return 2
    return asyncio.run(_main(config))


if __name__ == "__main__":
    sys.exit(main())
