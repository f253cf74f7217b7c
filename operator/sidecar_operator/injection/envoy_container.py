"""The interceptor's Envoy sidecar: the app's front door on ``listenPort``.

The bootstrap (:mod:`~sidecar_operator.injection.envoy_bootstrap`) goes in as an argument: it
is a function of the binding and the Pod only, so nothing else (no ConfigMap, no xDS server)
has to exist or stay in step. Only ``args`` are set, so the image's entry point stays in
charge: ours runs the binary, the official image's script does the same.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.envoy_bootstrap import build_envoy_bootstrap
from sidecar_operator.injection.intercept_plan import InterceptPlan
from sidecar_operator.injection.names import ENVOY_CONTAINER, INTERCEPT_PORT_NAME, SOCKET_VOLUME
from sidecar_operator.injection.security import hardened_security_context


def envoy_bootstrap_for(plan: InterceptPlan, *, defaults: InjectionDefaults) -> dict[str, Any]:
    intercept = plan.intercept
    return build_envoy_bootstrap(
        listen_port=intercept.listen_port,
        app_port=plan.app_port,
        authz_socket=defaults.authz_socket_path,
        timeout_ms=plan.timeout_ms,
        failure_open=intercept.failure.mode == "open",
        failure_status=intercept.failure.status,
        stripped_headers=plan.authorizer.injected_headers(),
        check_headers=plan.authorizer.credential_headers(),
        bypass_prefixes=tuple(b.path_prefix for b in intercept.bypass if b.path_prefix),
        bypass_paths=(*(b.path for b in intercept.bypass if b.path), *plan.bypass_paths),
    )


def build_envoy_container(*, plan: InterceptPlan, defaults: InjectionDefaults) -> dict[str, Any]:
    bootstrap = json.dumps(envoy_bootstrap_for(plan, defaults=defaults), separators=(",", ":"))
    listen = plan.intercept.listen_port
    return {
        "name": ENVOY_CONTAINER,
        "image": defaults.envoy_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "args": [
            "--config-yaml",
            bootstrap,
            # No shared memory for hot restarts: a container restarts, it never hot-restarts.
            "--disable-hot-restart",
            "--concurrency",
            str(defaults.envoy_concurrency),
            "--log-level",
            "warn",
        ],
        "ports": [{"name": INTERCEPT_PORT_NAME, "containerPort": listen, "protocol": "TCP"}],
        "resources": {
            "requests": {
                "cpu": defaults.envoy_cpu_request,
                "memory": defaults.envoy_memory_request,
            },
            "limits": {"cpu": defaults.envoy_cpu_limit, "memory": defaults.envoy_memory_limit},
        },
        # The socket directory holds authz.sock; Envoy only connects to it.
        "volumeMounts": [
            {"name": SOCKET_VOLUME, "mountPath": defaults.socket_dir, "readOnly": True}
        ],
        "startupProbe": {"tcpSocket": {"port": listen}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"tcpSocket": {"port": listen}, "periodSeconds": 5},
        "securityContext": hardened_security_context(
            user=defaults.hydrator_user, group=defaults.socket_group
        ),
    }
