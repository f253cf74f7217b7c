"""The hydrator sidecar: reads the bindings' topics and keeps the Pod's Redis current."""

from __future__ import annotations

from typing import Any

from sidecar_hydrator.config import CONFIG_ENV
from sidecar_hydrator.config_pydantic import rendered
from sidecar_operator.api.quantity import format_bytes, quantity_bytes
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import (
    CREDENTIALS_DIR,
    CREDENTIALS_VOLUME,
    HYDRATOR_CONTAINER,
    LMDB_VOLUME,
    SOCKET_VOLUME,
)
from sidecar_operator.injection.plan import SidecarPlan, lmdb_volume_bytes
from sidecar_operator.injection.security import hardened_security_context


def _secret_env(plan: SidecarPlan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for secret in plan.secrets:
        for var, key in secret.env:
            reference: dict[str, Any] = {"name": secret.secret_name, "key": key, "optional": True}
            env.append(
                {
                    "name": var,
                    "valueFrom": {"secretKeyRef": reference},
                }
            )
    return env


def build_hydrator_container(*, plan: SidecarPlan, defaults: InjectionDefaults) -> dict[str, Any]:
    port = defaults.hydrator_port

    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, **timing}

    memory_request, memory_limit = defaults.hydrator_memory_request, defaults.hydrator_memory_limit
    if plan.engine == "lmdb":
        mounts: list[dict[str, Any]] = [{"name": LMDB_VOLUME, "mountPath": defaults.lmdb_dir}]
        # The environment's pages live in a memory-backed volume and are charged to the
        # process that writes them: the limit covers two environments (a rebuild).
        extra = lmdb_volume_bytes(plan.max_memory_bytes)
        memory_request = format_bytes(quantity_bytes(memory_request) + extra)
        memory_limit = format_bytes(quantity_bytes(memory_limit) + extra)
    else:
        mounts = [
            {"name": SOCKET_VOLUME, "mountPath": defaults.socket_dir},
            {"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True},
        ]
    mounts += [
        {"name": s.volume_name, "mountPath": s.mount_path, "readOnly": True}
        for s in plan.secrets
        if s.files
    ]
    return {
        "name": HYDRATOR_CONTAINER,
        "image": defaults.hydrator_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["sidecar-state-hydrator"],
        "env": [
            {"name": CONFIG_ENV, "value": rendered(plan.hydrator_config)},
            *_secret_env(plan),
        ],
        "ports": [{"name": "state-metrics", "containerPort": port, "protocol": "TCP"}],
        # The bindings' spec.hydrator.resources and the Pod's annotations are folded into the
        # defaults already (injection.overrides).
        "resources": {
            "requests": {"cpu": defaults.hydrator_cpu_request, "memory": memory_request},
            "limits": {"cpu": defaults.hydrator_cpu_limit, "memory": memory_limit},
        },
        "volumeMounts": mounts,
        # The startup probe means "hydrated": with native sidecars the app starts only then.
        "startupProbe": probe(
            "/startupz", periodSeconds=1, failureThreshold=defaults.hydration_timeout_seconds
        ),
        "readinessProbe": probe("/readyz", periodSeconds=5),
        "livenessProbe": probe("/livez", periodSeconds=10, timeoutSeconds=2),
        "securityContext": hardened_security_context(
            user=defaults.hydrator_user if defaults.user_ids == "fixed" else None,
            group=defaults.socket_group if defaults.user_ids == "fixed" else None,
        ),
    }
