"""Adjusting the sidecars to a cluster's policies: chart defaults, then the bindings, then the
Pod's own annotations, each level winning over the one before.

LimitRanges (``maxLimitRequestRatio``), OpenShift's SCCs (UIDs from the namespace's range) and
the app's own ports all constrain what we inject; like Vault's, Linkerd's, Dapr's and Istio's
injectors, every such value can be set per cluster (Helm values), per binding (``spec``) and
per Pod (annotations below). Several bindings on one Pod share one hydrator: each resource and
the hydration timeout are the largest any binding asks for, the metrics port that of the first
binding (by name) that sets one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar_operator.api.models import GROUP, StateBinding
from sidecar_operator.api.quantity import parse_quantity
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.plan import merge_hydrator_resources

# Pod (template) annotations -> InjectionDefaults fields.
QUANTITY_ANNOTATIONS = {
    f"{GROUP}/hydrator-cpu-request": "hydrator_cpu_request",
    f"{GROUP}/hydrator-cpu-limit": "hydrator_cpu_limit",
    f"{GROUP}/hydrator-memory-request": "hydrator_memory_request",
    f"{GROUP}/hydrator-memory-limit": "hydrator_memory_limit",
    f"{GROUP}/redis-cpu-request": "redis_cpu_request",
    f"{GROUP}/redis-cpu-limit": "redis_cpu_limit",
}
USER_IDS = f"{GROUP}/user-ids"
METRICS_PORT = f"{GROUP}/metrics-port"
HYDRATION_TIMEOUT = f"{GROUP}/hydration-timeout-seconds"


class InvalidOverride(ValueError):
    """A per-Pod override annotation has a value we cannot use; the message names it."""


def _from_bindings(bindings: Sequence[StateBinding]) -> dict[str, Any]:
    update: dict[str, Any] = {}
    ordered = sorted(bindings, key=lambda b: b.name)
    timeouts = [b.spec.hydrator.hydration_timeout_seconds for b in ordered]
    if any(t is not None for t in timeouts):
        update["hydration_timeout_seconds"] = max(t for t in timeouts if t is not None)
    port = next(
        (b.spec.hydrator.metrics_port for b in ordered if b.spec.hydrator.metrics_port), None
    )
    if port is not None:
        update["hydrator_port"] = port
    for section, merged in merge_hydrator_resources(ordered).items():
        for resource, value in merged.items():
            update[f"hydrator_{resource}_{section.removesuffix('s')}"] = value
    for section, field in (("requests", "redis_cpu_request"), ("limits", "redis_cpu_limit")):
        asked = []
        for binding in ordered:
            resources = binding.spec.store.resources
            values = getattr(resources, section) if resources else None
            if values is not None and values.cpu is not None:
                asked.append(values.cpu)
        if asked:
            update[field] = max(asked, key=parse_quantity)
    return update


def _from_annotations(annotations: Mapping[str, str]) -> dict[str, Any]:
    update: dict[str, Any] = {}
    for key, field in QUANTITY_ANNOTATIONS.items():
        if key in annotations:
            value = annotations[key].strip()
            try:
                if parse_quantity(value) <= 0:
                    raise ValueError
            except ValueError:
                raise InvalidOverride(
                    f"annotation {key}: {value!r} is not a positive quantity (e.g. 100m, 64Mi)"
                ) from None
            update[field] = value
    if USER_IDS in annotations:
        value = annotations[USER_IDS].strip()
        if value not in {"fixed", "platform"}:
            raise InvalidOverride(f"annotation {USER_IDS}: {value!r} is not fixed or platform")
        update["user_ids"] = value
    for key, field, low in (
        (METRICS_PORT, "hydrator_port", 1),
        (HYDRATION_TIMEOUT, "hydration_timeout_seconds", 10),
    ):
        if key in annotations:
            value = annotations[key].strip()
            high = 65535 if field == "hydrator_port" else 86400
            if not value.isdigit() or not low <= int(value) <= high:
                raise InvalidOverride(
                    f"annotation {key}: {value!r} is not a number from {low} to {high}"
                )
            update[field] = int(value)
    return update


def effective_defaults(
    pod: Mapping[str, Any], *, bindings: Sequence[StateBinding], defaults: InjectionDefaults
) -> InjectionDefaults:
    """The defaults for this Pod: the operator's, then its bindings', then its annotations'."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    update = {**_from_bindings(bindings), **_from_annotations(annotations)}
    return defaults.model_copy(update=update) if update else defaults


def port_conflict(spec: Mapping[str, Any], *, port: int) -> str | None:
    """The app container that already declares the hydrator's metrics port, if any.

    Only declared ports can be seen; an app that listens on the port without declaring it
    (OpenTelemetry's Prometheus exporter uses 9464 by default) makes the hydrator fail to bind.
    """
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            for declared in container.get("ports") or []:
                if declared.get("containerPort") == port:
                    return str(container.get("name"))
    return None
