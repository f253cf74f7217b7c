"""What the application's own containers get: the socket mounted, and where to find it.

Env the user already set wins: a team that points ``SIDECAR_STATE_REDIS_URL`` elsewhere on
purpose keeps it.
"""

from __future__ import annotations

from typing import Any

from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import REDIS_URL_ENV, SOCKET_ENV, SOCKET_VOLUME


def wire_app_container(container: dict[str, Any], *, defaults: InjectionDefaults) -> dict[str, Any]:
    """Return a copy of ``container`` with the socket volume mounted and the env set."""
    wired = dict(container)
    env = list(container.get("env") or [])
    taken = {item.get("name") for item in env}
    for name, value in (
        (SOCKET_ENV, defaults.socket_path),
        (REDIS_URL_ENV, f"unix://{defaults.socket_path}"),
    ):
        if name not in taken:
            env.append({"name": name, "value": value})
    wired["env"] = env
    mounts = list(container.get("volumeMounts") or [])
    if not any(m.get("name") == SOCKET_VOLUME for m in mounts):
        # Read-only is enough: connecting to a socket is not a write to the filesystem.
        mounts.append({"name": SOCKET_VOLUME, "mountPath": defaults.socket_dir, "readOnly": True})
    wired["volumeMounts"] = mounts
    return wired
