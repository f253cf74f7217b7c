"""The objects a binding's ``spec.intercept`` asks the controller to keep, decided purely.

- ``mode: istio``: an Istio ``AuthorizationPolicy`` (action CUSTOM) that sends the requests of
  the binding's Pods to the operator's Istio extension provider, which the cluster admin points
  at the authorizer's loopback listener once (README, Interceptor). Bypass paths become
  ``notPaths``; a numeric ``port`` limits the policy to it (a port name cannot be resolved
  without a Pod, so a named port means every port of the workload).
- ``networkPolicy: true``: a NetworkPolicy that admits ingress to the binding's Pods on Envoy's
  ``listenPort`` only, so no client reaches the app's own port and forges the headers, plus
  the hydrator's metrics port from the operator's namespace (the controller's health scrape).

Both are named after the binding, labelled as ours and owned by it (deleted with it by the
garbage collector). :func:`desired_objects` returns every kind the operator may manage, with
``None`` for "should not exist", so that turning a feature off deletes what it made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import API_VERSION, KIND, StateBinding

MANAGED_BY = "sidecar-state"
#: Label on generated objects naming the binding they belong to.
BINDING_LABEL = ann.OWNER_LABEL.replace("/owner", "/binding")
NAME_PREFIX = "sidecar-state-"
MAX_NAME = 253


@dataclass(frozen=True, kw_only=True)
class ObjectKind:
    """An API kind the controller writes, as the dynamic client addresses it."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


AUTHORIZATION_POLICY = ObjectKind(
    group="security.istio.io", version="v1", plural="authorizationpolicies",
    kind="AuthorizationPolicy",
)  # fmt: skip
NETWORK_POLICY = ObjectKind(
    group="networking.k8s.io", version="v1", plural="networkpolicies", kind="NetworkPolicy"
)


def object_name(binding: str) -> str:
    """``sidecar-state-<binding>``; a name too long for that ends in a hash of the binding's."""
    name = NAME_PREFIX + binding
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(binding.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}-{digest}"


def _metadata(binding: StateBinding) -> dict[str, Any]:
    meta = binding.metadata
    return {
        "name": object_name(binding.name),
        "namespace": binding.namespace,
        "labels": {ann.MANAGED_BY_LABEL: MANAGED_BY, BINDING_LABEL: binding.name},
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": binding.name,
                "uid": meta.get("uid"),
                "controller": True,
                # As for owned bindings: no blockOwnerDeletion, which would need update on
                # statebindings/finalizers where OwnerReferencesPermissionEnforcement is on.
            }
        ],
    }


def _selector(binding: StateBinding) -> dict[str, Any]:
    """The binding's selector as a Kubernetes LabelSelector."""
    selector = binding.spec.selector
    result: dict[str, Any] = {}
    if selector.match_labels:
        result["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        result["matchExpressions"] = [
            {
                "key": e.key,
                "operator": e.operator,
                **({"values": list(e.values)} if e.values else {}),
            }
            for e in selector.match_expressions
        ]
    return result


def authorization_policy(binding: StateBinding, *, provider: str) -> dict[str, Any] | None:
    """The AuthorizationPolicy of a ``mode: istio`` binding; ``None`` for any other binding."""
    intercept = binding.spec.intercept
    if intercept is None or intercept.mode != "istio":
        return None
    operation: dict[str, Any] = {}
    if isinstance(intercept.port, int):
        operation["ports"] = [str(intercept.port)]
    # Istio's paths: exact, or a prefix written with a trailing "*".
    not_paths = [b.path for b in intercept.bypass if b.path]
    not_paths += [f"{b.path_prefix}*" for b in intercept.bypass if b.path_prefix]
    if not_paths:
        operation["notPaths"] = sorted(set(not_paths))
    rule: dict[str, Any] = {"to": [{"operation": operation}]} if operation else {}
    return {
        "apiVersion": AUTHORIZATION_POLICY.api_version,
        "kind": AUTHORIZATION_POLICY.kind,
        "metadata": _metadata(binding),
        "spec": {
            # matchLabels only (Istio's WorkloadSelector): the model refuses matchExpressions.
            "selector": {"matchLabels": dict(binding.spec.selector.match_labels)},
            "action": "CUSTOM",
            "provider": {"name": provider},
            "rules": [rule],
        },
    }


def network_policy(
    binding: StateBinding, *, operator_namespace: str, metrics_port: int
) -> dict[str, Any] | None:
    """The NetworkPolicy of a binding with ``networkPolicy: true``; ``None`` otherwise."""
    intercept = binding.spec.intercept
    if intercept is None or intercept.mode != "envoy" or not intercept.network_policy:
        return None
    hydrator_port = binding.spec.hydrator.metrics_port or metrics_port
    return {
        "apiVersion": NETWORK_POLICY.api_version,
        "kind": NETWORK_POLICY.kind,
        "metadata": _metadata(binding),
        "spec": {
            "podSelector": _selector(binding),
            "policyTypes": ["Ingress"],
            "ingress": [
                # Anyone may reach Envoy; nothing else of these Pods is reachable from outside.
                {"ports": [{"protocol": "TCP", "port": intercept.listen_port}]},
                # The controller reads the hydrator's health from its metrics port.
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": operator_namespace}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": hydrator_port}],
                },
            ],
        },
    }


@dataclass(frozen=True, kw_only=True)
class Desired:
    """One object the controller keeps for a binding: ``body`` ``None`` means "none"."""

    kind: ObjectKind
    name: str
    body: dict[str, Any] | None


def desired_objects(
    binding: StateBinding,
    *,
    istio_provider: str | None,
    network_policies: bool,
    operator_namespace: str,
    metrics_port: int,
) -> list[Desired]:
    """Every kind the operator may manage (per its settings), each with what should exist."""
    name = object_name(binding.name)
    wanted = []
    if istio_provider:
        body = authorization_policy(binding, provider=istio_provider)
        wanted.append(Desired(kind=AUTHORIZATION_POLICY, name=name, body=body))
    if network_policies:
        body = network_policy(
            binding, operator_namespace=operator_namespace, metrics_port=metrics_port
        )
        wanted.append(Desired(kind=NETWORK_POLICY, name=name, body=body))
    return wanted


def owned_by(existing: Mapping[str, Any], binding: StateBinding) -> bool:
    """Whether an object found under our name is ours to change or delete (never a user's)."""
    meta = existing.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        labels.get(BINDING_LABEL) == binding.name and labels.get(ann.MANAGED_BY_LABEL) == MANAGED_BY
    )


def needs_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """The fields we set differ (the apiserver's additions, status and defaults, are not ours)."""
    meta = existing.get("metadata") or {}
    want = desired["metadata"]
    labels = meta.get("labels") or {}
    return (
        existing.get("spec") != desired["spec"]
        or any(labels.get(k) != v for k, v in want["labels"].items())
        or (meta.get("ownerReferences") or []) != want["ownerReferences"]
    )
