"""Volumes we add: the in-memory socket directory, the hydrator's Redis credentials, and
Secrets holding Kafka CA files."""

from __future__ import annotations

from typing import Any

from sidecar_operator.api.quantity import format_bytes
from sidecar_operator.injection.names import CREDENTIALS_VOLUME, LMDB_VOLUME, SOCKET_VOLUME
from sidecar_operator.injection.plan import SidecarPlan, lmdb_volume_bytes

# Only a socket lives there; the limit stops anyone using it as scratch space in memory.
SOCKET_VOLUME_SIZE = "1Mi"
#: A password and a two-line ACL file.
CREDENTIALS_VOLUME_SIZE = "64Ki"


def build_volumes(*, plan: SidecarPlan) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": SOCKET_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": SOCKET_VOLUME_SIZE}},
    ]
    if plan.engine == "lmdb":
        # No Redis, so no credentials: the LMDB environment's files carry the permissions.
        size = format_bytes(lmdb_volume_bytes(plan.max_memory_bytes))
        volumes.append({"name": LMDB_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": size}})
    else:
        volumes.append(
            {
                "name": CREDENTIALS_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": CREDENTIALS_VOLUME_SIZE},
            }
        )
    volumes += [
        {
            "name": secret.volume_name,
            "secret": {
                "secretName": secret.secret_name,
                "items": [{"key": key, "path": key} for key in secret.files],
                "optional": True,
            },
        }
        for secret in plan.secrets
        if secret.files
    ]
    return volumes
