"""The injection engine: a pure function of Pod, bindings and defaults.

One module per concern of the injected Pod, so anyone can find where a field is set:
``redis_container``, ``hydrator_container``, ``volumes``, ``app_containers`` (env and mounts),
``security``, ``annotations``; with ``spec.intercept`` also ``intercept_plan`` (the binding
meets the Pod), ``authorizer_container``, ``envoy_container`` and ``envoy_bootstrap`` (Envoy's
whole configuration); ``plan`` merges bindings, ``pod`` puts it together.
"""

from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.pod import (
    Injected,
    InjectionConflict,
    InvalidPod,
    Outcome,
    Skipped,
    UnknownBinding,
    bindings_hash,
    inject_pod,
    select_bindings,
)

__all__ = [
    "Injected",
    "InjectionConflict",
    "InjectionDefaults",
    "InvalidPod",
    "Outcome",
    "Skipped",
    "UnknownBinding",
    "bindings_hash",
    "inject_pod",
    "select_bindings",
]
