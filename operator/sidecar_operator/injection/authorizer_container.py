"""The authorizer sidecar: answers Envoy's checks from the Pod's Redis (``sidecar_authz``).

Its own container (from the hydrator image, with its own entry point) rather than a thread of
the hydrator, so that a Kafka catch-up burst never delays a request.
"""

from __future__ import annotations

from typing import Any

from sidecar_authz.config import CONFIG_ENV
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.intercept_plan import InterceptPlan
from sidecar_operator.injection.names import AUTHZ_CONTAINER, SOCKET_VOLUME
from sidecar_operator.injection.security import hardened_security_context


def build_authorizer_container(
    *, plan: InterceptPlan, defaults: InjectionDefaults
) -> dict[str, Any]:
    port = defaults.authz_health_port

    def probe(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, **timing}

    return {
        "name": AUTHZ_CONTAINER,
        "image": defaults.hydrator_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["sidecar-state-authz"],
        "env": [{"name": CONFIG_ENV, "value": plan.authorizer.to_env_value()}],
        "ports": [{"name": "authz-health", "containerPort": port, "protocol": "TCP"}],
        "resources": {
            "requests": {
                "cpu": defaults.authz_cpu_request,
                "memory": defaults.authz_memory_request,
            },
            "limits": {"cpu": defaults.authz_cpu_limit, "memory": defaults.authz_memory_limit},
        },
        "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": defaults.socket_dir}],
        # Started means listening with Redis answering: Envoy, next in line, can use it.
        "startupProbe": probe("/readyz", periodSeconds=1, failureThreshold=60),
        "readinessProbe": probe("/readyz", periodSeconds=5),
        "livenessProbe": probe("/livez", periodSeconds=10, timeoutSeconds=2),
        "securityContext": hardened_security_context(
            user=defaults.hydrator_user, group=defaults.socket_group
        ),
    }
