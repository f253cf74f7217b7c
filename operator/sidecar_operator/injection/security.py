"""The securityContext of every container we inject: non-root, read-only, nothing extra."""

from __future__ import annotations

from typing import Any


def hardened_security_context(*, user: int | None, group: int | None) -> dict[str, Any]:
    """``user``/``group`` ``None``: left to the platform (OpenShift assigns them)."""
    ids = {"runAsUser": user, "runAsGroup": group}
    return {
        "runAsNonRoot": True,
        **{key: value for key, value in ids.items() if value is not None},
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
