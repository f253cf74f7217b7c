"""``sidecar-state-hydrator``: the sidecar's process — config, JSON logs, signals, probes.

SIGTERM (the kubelet stopping the Pod) lets the batch in flight finish, then closes the Kafka
consumers and the Redis connections; a hard deadline keeps the whole exit within about a
second and a half, because a native sidecar that lingers delays the Pod's termination.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sidecar_hydrator.config import CONFIG_ENV, ConfigError, HydratorConfig
from sidecar_hydrator.health import HealthServer, Probes
from sidecar_hydrator.hydrator import Hydrator

if TYPE_CHECKING:
    import argparse

logger = logging.getLogger("sidecar_hydrator")

#: From SIGTERM to exit, at most (the kubelet's grace period is far longer; Pods wait on us).
SHUTDOWN_DEADLINE_SECONDS = 1.5

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def tune_gc() -> None:
    """Collect cyclic garbage rarely: the hydrator allocates several objects per record and
    almost none of them form cycles (reference counting frees them), but the default
    thresholds run a full collection over every buffered record every ~70k allocations —
    measured at a quarter of bootstrap time. Objects alive at start-up are frozen out of it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("SIDECAR_STATE_LOG_LEVEL", "INFO").upper())
    # aiokafka logs every failed reconnect at ERROR; the hydrator reports outages itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def probes_of(hydrator: Hydrator) -> Probes:
    """What the kubelet's probes ask: ``/readyz`` is :meth:`Hydrator.ready`."""
    return Probes(ready=hydrator.ready, started=lambda: hydrator.started, state=hydrator.state)


async def serve(config: HydratorConfig, *, stop: asyncio.Event) -> None:
    """Run the hydrator and its HTTP endpoints until ``stop`` is set."""
    hydrator = Hydrator(config)
    server = HealthServer(
        metrics=hydrator.metrics, probes=probes_of(hydrator), port=config.http_port
    )
    await server.start()
    logger.info(
        "hydrator started",
        extra={
            "bindings": [b.name for b in config.bindings],
            "socket": config.redis_socket,
            "http_port": config.http_port,
        },
    )
    try:
        await hydrator.run(stop)
    finally:
        await server.stop()


async def _main(config: HydratorConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(serve(config, stop=stop))
    await asyncio.wait([task, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED")
    if not task.done():
        logger.info("stopping: finishing the batch in flight")
        done, _ = await asyncio.wait([task], timeout=SHUTDOWN_DEADLINE_SECONDS)
        if not done:
            logger.warning("shutdown deadline passed; cancelling")
            task.cancel()
            await asyncio.wait([task], timeout=0.3)
    if task.done() and not task.cancelled() and task.exception() is not None:
        logger.error("hydrator failed", exc_info=task.exception())
        return 1
    logger.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Only ``--help``: the rendered config is the whole interface, so there is nothing to set."""
    import argparse  # only when there are arguments to parse: not in a running sidecar

    return argparse.ArgumentParser(
        prog="sidecar-state-hydrator",
        description=(
            "The sidecar that keeps a Pod's Redis current from Kafka or NATS JetStream. The"
            " operator injects it and renders its whole configuration, as JSON, into the"
            f" {CONFIG_ENV} environment"
            " variable; it takes no flags. It serves /livez, /readyz, /startupz and /metrics on"
            " the configured HTTP port."
        ),
        epilog=(
            "To see the configuration an injected Pod gets, run"
            " `sidecar-state inject -f workload.yaml -b binding.yaml`."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: configured by ``SIDECAR_STATE_HYDRATOR_CONFIG`` (rendered by the operator).

    Arguments are parsed only when there are some (``--help``, or a mistake to refuse):
    argparse and the gettext it loads are ~0.4 MiB of an idle sidecar that has none.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args:
        build_parser().parse_args(args)
    configure_logging()
    try:
        config = HydratorConfig.from_env()
    except ConfigError as exc:
        logger.error("invalid %s: %s", CONFIG_ENV, exc)
        return 2
    tune_gc()
    return asyncio.run(_main(config))


if __name__ == "__main__":
    sys.exit(main())
