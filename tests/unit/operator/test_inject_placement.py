"""Our native sidecars next to a service mesh's init containers and sidecars (issue item 7)."""

from __future__ import annotations

from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
)
from sidecar_operator.injection.placement import reposition

SIDECARS = [CREDENTIALS_CONTAINER, REDIS_CONTAINER, HYDRATOR_CONTAINER]


def native(name: str) -> dict[str, object]:
    return {"name": name, "image": f"mesh/{name}:1", "restartPolicy": "Always"}


def test_sidecars_go_after_a_mesh_that_ran_before_us(make_pod, make_container, make_binding,
                                                     injected):  # fmt: skip
    inits = [make_container("istio-init"), native("istio-proxy"), make_container("migrate")]

    result = injected(make_pod(init_containers=inits), make_binding())

    assert result.init_names == ["istio-init", "istio-proxy", *SIDECARS, "migrate"]


def test_sidecars_go_after_linkerd_init_even_without_a_native_proxy(
    make_pod, make_container, make_binding, injected
):
    result = injected(make_pod(init_containers=[make_container("linkerd-init")]), make_binding())

    assert result.init_names == ["linkerd-init", *SIDECARS]


def test_sidecars_go_after_any_native_sidecar(make_pod, make_binding, injected):
    result = injected(make_pod(init_containers=[native("log-shipper")]), make_binding())

    assert result.init_names == ["log-shipper", *SIDECARS]


def test_reinvocation_moves_ours_behind_a_mesh_added_after_us(seed_injected):
    inits = [*seed_injected.spec["initContainers"], native("linkerd-proxy")]

    moved = reposition(inits)

    assert moved is not None
    assert [c["name"] for c in moved] == ["linkerd-proxy", *SIDECARS]
    assert reposition(moved) is None  # idempotent: a second re-invocation changes nothing


def test_reinvocation_leaves_a_well_placed_pod_alone(seed_injected):
    assert reposition(seed_injected.spec["initContainers"]) is None
    assert reposition([{"name": "migrate"}]) is None  # not ours: nothing to move
