"""Names of everything we add to a Pod; a Pod that already uses one of them conflicts."""

from __future__ import annotations

from sidecar_hydrator.credentials import ACL_FILE, HYDRATOR_REDIS_USER, PASSWORD_FILE

REDIS_CONTAINER = "sidecar-state-redis"
HYDRATOR_CONTAINER = "sidecar-state-hydrator"
CREDENTIALS_CONTAINER = "sidecar-state-credentials"
AUTHZ_CONTAINER = "sidecar-state-authz"
ENVOY_CONTAINER = "sidecar-state-envoy"
#: The Envoy container's port (a Service targets it by this name; at most 15 characters).
INTERCEPT_PORT_NAME = "state-intercept"
SOCKET_VOLUME = "sidecar-state-socket"
#: The hydrator's Redis password and the ACL file: mounted into Redis and the hydrator only.
CREDENTIALS_VOLUME = "sidecar-state-credentials"
CREDENTIALS_DIR = "/var/run/sidecar-state-credentials"
ACL_FILE_PATH = f"{CREDENTIALS_DIR}/{ACL_FILE}"
HYDRATOR_PASSWORD_PATH = f"{CREDENTIALS_DIR}/{PASSWORD_FILE}"
#: The Redis ACL user the hydrator writes as (apps get ``default``, which may only read).
HYDRATOR_ACL_USER = HYDRATOR_REDIS_USER
SOCKET_ENV = "SIDECAR_STATE_SOCKET"
#: engine: lmdb — the memory-backed volume with the LMDB environment, and the app's env var.
LMDB_VOLUME = "sidecar-state-lmdb"
LMDB_PATH_ENV = "SIDECAR_STATE_LMDB_PATH"
REDIS_URL_ENV = "SIDECAR_STATE_REDIS_URL"

CONTAINER_NAMES = frozenset(
    {CREDENTIALS_CONTAINER, REDIS_CONTAINER, HYDRATOR_CONTAINER, AUTHZ_CONTAINER, ENVOY_CONTAINER}
)
VOLUME_NAMES = frozenset({SOCKET_VOLUME, CREDENTIALS_VOLUME, LMDB_VOLUME})
