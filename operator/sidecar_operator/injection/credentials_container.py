"""The one-shot init container that gives the hydrator a Redis password only it can read.

It runs before Redis (a plain init container, first in line in both sidecar modes) as the
hydrator's UID, from the hydrator's image: ``sidecar-state-credentials`` writes a random
password (0400) and an ACL file holding only its SHA-256 into the credentials volume, which
Redis and the hydrator mount read-only and app containers do not mount at all. Why this design
and not a Secret: see :mod:`sidecar_hydrator.credentials`.
"""

from __future__ import annotations

from typing import Any

from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    CREDENTIALS_DIR,
    CREDENTIALS_VOLUME,
)
from sidecar_operator.injection.security import hardened_security_context

#: Python's start plus two small files: far below the hydrator's own needs.
CREDENTIALS_MEMORY = "32Mi"


def build_credentials_container(*, defaults: InjectionDefaults) -> dict[str, Any]:
    return {
        "name": CREDENTIALS_CONTAINER,
        "image": defaults.hydrator_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["sidecar-state-credentials", CREDENTIALS_DIR],
        "resources": {
            "requests": {"cpu": defaults.hydrator_cpu_request, "memory": CREDENTIALS_MEMORY},
            "limits": {"cpu": defaults.hydrator_cpu_limit, "memory": CREDENTIALS_MEMORY},
        },
        "volumeMounts": [{"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR}],
        "securityContext": hardened_security_context(
            user=defaults.hydrator_user if defaults.user_ids == "fixed" else None,
            group=defaults.socket_group if defaults.user_ids == "fixed" else None,
        ),
    }
