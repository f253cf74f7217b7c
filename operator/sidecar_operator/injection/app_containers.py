"""What the application's own containers get: the socket mounted, and where to find it.

Env the user already set wins: a team that points ``SIDECAR_STATE_REDIS_URL`` elsewhere on
purpose keeps it.
"""

from __future__ import annotations

from typing import Any

from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import (
    LMDB_PATH_ENV,
    LMDB_VOLUME,
    REDIS_URL_ENV,
    SOCKET_ENV,
    SOCKET_VOLUME,
)


def wire_app_container(
    container: dict[str, Any], *, defaults: InjectionDefaults, lmdb: bool = False
) -> dict[str, Any]:
    """Return a copy of ``container`` with the socket volume mounted and the env set; with
    ``lmdb``, the LMDB volume too, and ``SIDECAR_STATE_LMDB_PATH``."""
    wired = dict(container)
    env = list(container.get("env") or [])
    taken = {item.get("name") for item in env}
    variables = [
        (SOCKET_ENV, defaults.socket_path),
        (REDIS_URL_ENV, f"unix://{defaults.socket_path}"),
    ]
    if lmdb:
        variables.append((LMDB_PATH_ENV, defaults.lmdb_dir))
    for name, value in variables:
        if name not in taken:
            env.append({"name": name, "value": value})
    wired["env"] = env
    mounts = list(container.get("volumeMounts") or [])
    if not any(m.get("name") == SOCKET_VOLUME for m in mounts):
        # Read-only is enough: connecting to a socket is not a write to the filesystem.
        mounts.append({"name": SOCKET_VOLUME, "mountPath": defaults.socket_dir, "readOnly": True})
    if lmdb and not any(m.get("name") == LMDB_VOLUME for m in mounts):
        # Not read-only: a reader takes a slot in lock.mdb, and on a read-only mount LMDB
        # silently reads without locks and crashes during the hydrator's commits. data.mdb
        # itself is writable by the hydrator only (file modes, see store_lmdb).
        mounts.append({"name": LMDB_VOLUME, "mountPath": defaults.lmdb_dir})
    wired["volumeMounts"] = mounts
    return wired
