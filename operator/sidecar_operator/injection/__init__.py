"""The injection engine: a pure function of Pod, bindings and defaults.

One module per concern of the injected Pod, so anyone can find where a field is set:
``redis_container``, ``hydrator_container``, ``volumes``, ``app_containers`` (env and mounts),
``security``, ``service_account`` (the token mount the apiserver would add to our containers);
with ``spec.intercept`` also ``intercept_plan`` (the binding meets the Pod),
``authorizer_container``, ``envoy_container`` and ``envoy_bootstrap`` (Envoy's whole
configuration); ``plan`` merges bindings, ``pod`` decides (:func:`decide`) and puts it
together (:func:`render`). The annotations and labels it reads and writes are part of the API:
``sidecar_operator.api.labels``.
"""

from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.pod import (
    Decision,
    Injected,
    InjectionConflict,
    InvalidPod,
    Outcome,
    PodPlan,
    Selection,
    Skipped,
    SkipReason,
    UnknownBinding,
    bindings_hash,
    decide,
    describe_skip,
    inject_pod,
    render,
    select,
    select_bindings,
)

__all__ = [
    "Decision",
    "Injected",
    "InjectionConflict",
    "InjectionDefaults",
    "InvalidPod",
    "Outcome",
    "PodPlan",
    "Selection",
    "SkipReason",
    "Skipped",
    "UnknownBinding",
    "bindings_hash",
    "decide",
    "describe_skip",
    "inject_pod",
    "render",
    "select",
    "select_bindings",
]
