"""The one definition of the project's cache root.

Everything built or fetched for the tests, the benchmarks and the demo (Kubernetes binaries,
the kind node image's parts, Kafka's jars, nats-server, promtool, Docker's data-root) lives
under it, outside the repo, so clean checkouts stay cheap and every worktree shares one warm
cache. ``scripts/setup.sh`` and ``install_kafka.sh`` spell the same default in shell
(``${SIDECAR_STATE_CACHE:-$HOME/.cache/sidecar-state}``); change both together.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that moves the cache (CI's cold runs point it at an empty folder).
CACHE_ENV = "SIDECAR_STATE_CACHE"


def cache_root() -> Path:
    """``$SIDECAR_STATE_CACHE``, or ``~/.cache/sidecar-state`` when it is unset or empty."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "sidecar-state"
