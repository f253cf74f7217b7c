"""The in-memory index of StateBindings, by namespace.

The admission webhook decides from this index alone: no API call on the admission path.
kopf keeps it current from a watch; each replica has its own, so the webhook role needs no
peering and no leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding, parse_binding
from sidecar_operator.events import ObjectRef

_KEPT_METADATA = ("name", "namespace", "uid", "generation", "labels", "ownerReferences")


def _trimmed(body: kopf.Body) -> dict[str, Any]:
    metadata = {key: body.metadata.get(key) for key in _KEPT_METADATA if key in body.metadata}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": metadata, "spec": dict(body.spec)}  # fmt: skip


def namespace_of(namespace: str | None) -> str:
    """kopf types ``namespace`` as optional (for cluster-scoped kinds); every kind these
    handlers watch is namespaced, so it is always set."""
    return namespace or ""


def index_argument(kwargs: Mapping[str, Any], name: str) -> kopf.Index[str, Any]:
    """An index, as kopf hands it to a handler: a keyword argument named after the index's
    function. kopf's callback protocols cannot declare such arguments, so handlers take them
    in ``**kwargs`` and read them here."""
    index: kopf.Index[str, Any] = kwargs[name]
    return index


def bindings_index(kwargs: Mapping[str, Any]) -> kopf.Index[str, StateBinding]:
    """The :func:`bindings_by_namespace` index among a handler's keyword arguments."""
    return index_argument(kwargs, "bindings_by_namespace")


@kopf.index(GROUP, VERSION, PLURAL)
def bindings_by_namespace(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> dict[str, StateBinding]:
    try:
        return {namespace_of(namespace): parse_binding(_trimmed(body))}
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
