"""Where our native sidecars go among the Pod's init containers, next to a service mesh.

Mutating webhooks run in name order, so Istio's and Linkerd's injectors run before ours. Init
containers start in order, so if ours came first the hydrator would start before the mesh has
set up the Pod's network (``istio-init``, ``linkerd-init``) or before its proxy runs (the
mesh's own native sidecar), could not reach Kafka, and the Pod would sit in Init. So our
sidecars go right after the last init container that is a mesh's or another native sidecar,
and before the application's own init containers, which may then read the state.

The webhook configuration asks for ``reinvocationPolicy: IfNeeded``: when a webhook that runs
after ours adds such containers behind ours, the apiserver calls us again, and
:func:`reposition` moves ours behind them. Both are idempotent: placing twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar_operator.injection.names import CONTAINER_NAMES

MESH_INIT_CONTAINERS = frozenset(
    {
        "istio-init",
        "istio-validation",
        "istio-proxy",
        "linkerd-init",
        "linkerd-network-validator",
        "linkerd-proxy",
        "kuma-init",
        "kuma-sidecar",
        "consul-connect-inject-init",
        "consul-dataplane",
    }
)
"""Init containers that set up or carry a mesh's networking (besides any native sidecar)."""


def _goes_before_ours(container: Mapping[str, Any]) -> bool:
    return (
        container.get("restartPolicy") == "Always" or container.get("name") in MESH_INIT_CONTAINERS
    )


def insertion_index(init_containers: Sequence[Mapping[str, Any]]) -> int:
    """Index in ``init_containers`` (ours excluded) where our sidecars go."""
    last = -1
    for index, container in enumerate(init_containers):
        if _goes_before_ours(container):
            last = index
    return last + 1


def place(
    init_containers: Sequence[Mapping[str, Any]], sidecars: Sequence[Mapping[str, Any]]
) -> list[Any]:
    """``init_containers`` (without ours) with ``sidecars`` inserted where they belong."""
    at = insertion_index(init_containers)
    return [*init_containers[:at], *sidecars, *init_containers[at:]]


def reposition(init_containers: Sequence[Mapping[str, Any]]) -> list[Any] | None:
    """For an already injected Pod: its init containers with ours moved to where they belong,
    or ``None`` when they are there already (or there are none of ours)."""
    ours = [c for c in init_containers if c.get("name") in CONTAINER_NAMES]
    if not ours:
        return None
    others = [c for c in init_containers if c.get("name") not in CONTAINER_NAMES]
    placed = place(others, ours)
    return None if placed == list(init_containers) else placed
