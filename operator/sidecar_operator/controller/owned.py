"""StateBindings made from Deployment annotations.

``sidecarstate.dev/topics: feature-flags`` on a Deployment is the one-line way in: the
operator keeps a StateBinding named after the Deployment, owned by it (so it is
garbage-collected with it), selecting the Deployment's Pods. ``sidecarstate.dev/nats-kv``
(a bucket) or ``sidecarstate.dev/nats-stream`` take a NATS JetStream source instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import API_VERSION, KIND, parse_binding


def _source(annotations: Mapping[str, str]) -> dict[str, Any]:
    if ann.TOPICS in annotations:
        source: dict[str, Any] = {"topics": list(ann.split_names(annotations[ann.TOPICS]))}
        servers = ann.split_names(annotations.get(ann.BOOTSTRAP_SERVERS))
        if servers:
            source["bootstrapServers"] = list(servers)
        kind = "kafka"
    else:
        bucket = annotations.get(ann.NATS_KV, "").strip()
        source = {"kv": {"bucket": bucket}} if bucket else {}
        if not bucket:
            source["stream"] = {"name": annotations[ann.NATS_STREAM].strip()}
        servers = ann.split_names(annotations.get(ann.NATS_SERVERS))
        if servers:
            source["servers"] = list(servers)
        kind = "nats"
    if annotations.get(ann.FORMAT):
        source["format"] = annotations[ann.FORMAT]
    return {kind: source}


def owned_binding(deployment: Mapping[str, Any]) -> dict[str, Any] | None:
    """The StateBinding a Deployment's annotations ask for; ``None`` if they ask for none.

    Raises ``ValueError`` naming the annotation when its value is invalid.
    """
    meta = deployment.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    asked = [a for a in ann.SOURCE_ANNOTATIONS if annotations.get(a, "").strip()]
    if not asked:
        return None
    if len(asked) > 1:
        raise ValueError(
            f"the sidecarstate.dev/* annotations ask for more than one source ({', '.join(asked)}):"
            " a binding reads Kafka topics or one NATS KV bucket or stream"
        )
    spec: dict[str, Any] = {
        "selector": (deployment.get("spec") or {}).get("selector") or {},
        "source": _source(annotations),
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
            "labels": {ann.OWNER_LABEL: meta.get("name"), ann.MANAGED_BY_LABEL: ann.MANAGED_BY},
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
