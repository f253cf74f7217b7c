"""StateBindings made from Deployment annotations.

``sidecarstate.dev/topics: feature-flags`` on a Deployment is the one-line way in: the
operator keeps a StateBinding named after the Deployment, owned by it (so it is
garbage-collected with it), selecting the Deployment's Pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar_operator.api.models import API_VERSION, KIND, parse_binding
from sidecar_operator.injection import annotations as ann

MANAGED_BY = "sidecar-state"


def owned_binding(deployment: Mapping[str, Any]) -> dict[str, Any] | None:
    """The StateBinding a Deployment's annotations ask for; ``None`` if they ask for none.

    Raises ``ValueError`` naming the annotation when its value is invalid.
    """
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    topics = ann.split_names(annotations.get(ann.TOPICS))
    if not topics:
        return None
    kafka: dict[str, Any] = {"topics": list(topics)}
    servers = ann.split_names(annotations.get(ann.BOOTSTRAP_SERVERS))
    if servers:
        kafka["bootstrapServers"] = list(servers)
    if annotations.get(ann.FORMAT):
        kafka["format"] = annotations[ann.FORMAT]
    spec: dict[str, Any] = {
        "selector": (deployment.get("spec") or {}).get("selector") or {},
        "source": {"kafka": kafka},
    }
    if ann.KEY_PREFIX in annotations:
        spec["keys"] = {"prefix": annotations[ann.KEY_PREFIX]}
    if annotations.get(ann.MEMORY):
        spec["store"] = {"maxMemory": annotations[ann.MEMORY]}
    binding = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": {ann.OWNER_LABEL: meta.get("name"), ann.MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "controller": True,
                    # No blockOwnerDeletion: where OwnerReferencesPermissionEnforcement is on
                    # (OpenShift) setting it needs update on deployments/finalizers, a right the
                    # controller should not hold. Foreground deletion of the Deployment then
                    # does not wait for the binding; the garbage collector still deletes it.
                }
            ],
        },
        "spec": spec,
    }
    try:
        parse_binding(binding)
    except ValueError as error:
        raise ValueError(
            f"the sidecarstate.dev/* annotations do not make a valid StateBinding: {error}"
        ) from None
    return binding
