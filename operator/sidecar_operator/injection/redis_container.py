"""The Redis sidecar: a store reachable only over the Unix socket, never over TCP."""

from __future__ import annotations

from typing import Any

from sidecar_operator.api.quantity import format_bytes
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import (
    ACL_FILE_PATH,
    CREDENTIALS_DIR,
    CREDENTIALS_VOLUME,
    REDIS_CONTAINER,
    SOCKET_VOLUME,
)
from sidecar_operator.injection.plan import SidecarPlan
from sidecar_operator.injection.security import hardened_security_context

MIB = 2**20


def redis_server_args(
    *,
    socket_path: str,
    data_dir: str,
    acl_file: str,
    max_memory_bytes: int,
    eviction_policy: str,
) -> list[str]:
    """The ``redis-server`` command line; tests start Debian's redis-server with it too.

    ``port 0`` removes the TCP listener; no persistence because the stream, not the disk, is
    the source of truth; ``noeviction`` by default because a view that silently drops keys
    answers wrongly instead of failing loudly. ``aclfile``: every app container can connect
    to the socket (it is in the socket's group), so what a connection may do is decided by
    ACLs: without credentials only reads (see :mod:`sidecar_hydrator.credentials`).
    """
    return [
        "redis-server",
        "--port", "0",
        "--unixsocket", socket_path,
        "--unixsocketperm", "770",
        "--save", "",
        "--appendonly", "no",
        "--dir", data_dir,
        "--aclfile", acl_file,
        "--maxmemory", str(max_memory_bytes),
        "--maxmemory-policy", eviction_policy,
        "--protected-mode", "yes",
        "--databases", "2",
    ]  # fmt: skip


def redis_memory_limit(max_memory_bytes: int) -> int:
    """Container limit above ``maxmemory``: Redis's own overhead and fragmentation need room,
    or the kernel kills it before Redis can refuse a write. Rounded up to whole MiB."""
    wanted = max_memory_bytes + max(16 * MIB, max_memory_bytes // 4)
    return -(-wanted // MIB) * MIB


def build_redis_container(*, plan: SidecarPlan, defaults: InjectionDefaults) -> dict[str, Any]:
    def ping() -> dict[str, Any]:
        return {"exec": {"command": ["redis-cli", "-s", defaults.socket_path, "ping"]}}

    memory = format_bytes(redis_memory_limit(plan.max_memory_bytes))
    return {
        "name": REDIS_CONTAINER,
        "image": defaults.redis_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": redis_server_args(
            socket_path=defaults.socket_path,
            data_dir=defaults.socket_dir,
            acl_file=ACL_FILE_PATH,
            max_memory_bytes=plan.max_memory_bytes,
            eviction_policy=plan.eviction_policy,
        ),
        "resources": {
            "requests": {"cpu": defaults.redis_cpu_request, "memory": memory},
            "limits": (
                {"cpu": defaults.redis_cpu_limit, "memory": memory}
                if defaults.redis_cpu_limit
                else {"memory": memory}
            ),
        },
        "volumeMounts": [
            {"name": SOCKET_VOLUME, "mountPath": defaults.socket_dir},
            {"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True},
        ],
        "startupProbe": {**ping(), "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {**ping(), "periodSeconds": 10, "timeoutSeconds": 2},
        "securityContext": hardened_security_context(
            user=defaults.redis_user if defaults.user_ids == "fixed" else None,
            group=defaults.socket_group if defaults.user_ids == "fixed" else None,
        ),
    }
