"""The in-memory index of StateBindings, by namespace.

The admission webhook decides from this index alone: no API call on the admission path.
kopf keeps it current from a watch; each replica has its own, so the webhook role needs no
peering and no leader.
"""

from __future__ import annotations

from typing import Any

import kopf

from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding, parse_binding
from sidecar_operator.events import ObjectRef

_KEPT_METADATA = ("name", "namespace", "uid", "generation", "labels", "ownerReferences")


def _trimmed(body: kopf.Body) -> dict[str, Any]:
    metadata = {key: body.metadata.get(key) for key in _KEPT_METADATA if key in body.metadata}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": metadata, "spec": dict(body.spec)}  # fmt: skip


@kopf.index(GROUP, VERSION, PLURAL)
def bindings_by_namespace(
    body: kopf.Body, namespace: str, logger: kopf.Logger, **_: Any
) -> dict[str, StateBinding]:
    try:
        return {namespace: parse_binding(_trimmed(body))}
    except ValueError as error:
        # The validating webhook refuses these; one may still exist from before it ran.
        logger.warning(f"StateBinding is invalid and is ignored: {error}")
        return {}


def bindings_in(index: kopf.Index[str, StateBinding], namespace: str) -> list[StateBinding]:
    return list(index.get(namespace, ()))


def binding_ref(binding: StateBinding) -> ObjectRef:
    """What an Event about the binding points at."""
    return ObjectRef(
        api_version=binding.api_version,
        kind=binding.kind,
        name=binding.name,
        namespace=binding.namespace,
        uid=binding.metadata.get("uid"),
    )
