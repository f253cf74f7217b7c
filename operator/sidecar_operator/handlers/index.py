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


class ParsedBindings:
    """The last parse of each StateBinding (by uid), given again while what the index keeps
    of it is unchanged.

    The controller writes a binding's status as the Pods it selects come and go, so most
    events of a binding change nothing the index keeps; answering them with the same object
    spares the parse, and lets the injection engine's plans (kept per binding object) serve
    every Pod until the binding itself changes.
    """

    def __init__(self, *, capacity: int = 4096) -> None:
        self._by_uid: dict[str, tuple[dict[str, Any], StateBinding]] = {}
        self._capacity = capacity

    def parse(self, trimmed: dict[str, Any]) -> StateBinding:
        """:func:`parse_binding` of ``trimmed``; raises its ``ValueError``."""
        uid = str(trimmed["metadata"].get("uid") or "")
        known = self._by_uid.get(uid)
        if uid and known is not None and known[0] == trimmed:
            return known[1]
        binding = parse_binding(trimmed)
        if uid:
            if len(self._by_uid) >= self._capacity:
                self._by_uid.clear()  # deleted bindings' entries go; live ones are parsed again
            self._by_uid[uid] = (trimmed, binding)
        return binding


_PARSED = ParsedBindings()


# A coroutine: kopf runs a plain function in its thread pool, a hop per event (most of them
# the controller's status writes) on the process that serves admissions.
@kopf.index(GROUP, VERSION, PLURAL)
async def bindings_by_namespace(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> dict[str, StateBinding]:
    try:
        return {namespace_of(namespace): _PARSED.parse(_trimmed(body))}
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
