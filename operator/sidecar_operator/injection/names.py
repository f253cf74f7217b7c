"""Names of everything we add to a Pod; a Pod that already uses one of them conflicts."""

from __future__ import annotations

REDIS_CONTAINER = "sidecar-state-redis"
HYDRATOR_CONTAINER = "sidecar-state-hydrator"
SOCKET_VOLUME = "sidecar-state-socket"
SOCKET_ENV = "SIDECAR_STATE_SOCKET"
REDIS_URL_ENV = "SIDECAR_STATE_REDIS_URL"

CONTAINER_NAMES = frozenset({REDIS_CONTAINER, HYDRATOR_CONTAINER})
