"""The admission webhook configurations, as plain dicts.

The admission server (:mod:`sidecar_operator.webhook_server`) serves ``/<MUTATE_PODS>`` and
``/<VALIDATE_BINDINGS>`` and answers 404 on any other path, so the path in the configuration
must be one of those: both come from the constants here (the chart is checked against them by
a unit test).

In the cluster the Helm chart owns these objects (with a ``service`` reference); out of the
cluster — development and the e2e suite — ``sidecar-state-operator register-webhooks`` writes
them with a ``url`` pointing at the operator on this machine.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import GROUP, PLURAL, VERSION
from sidecar_operator.injection.defaults import SYSTEM_NAMESPACES

MUTATE_PODS = "inject-pods"
VALIDATE_BINDINGS = "validate-statebindings"
DEFAULT_NAME = "sidecar-state"

FailurePolicy = Literal["Fail", "Ignore"]


def _client_config(*, base_url: str, path: str, ca_bundle: bytes) -> dict[str, Any]:
    return {
        "url": f"{base_url.rstrip('/')}/{path}",
        "caBundle": base64.b64encode(ca_bundle).decode(),
    }


def namespace_selector(excluded: Sequence[str], served: Sequence[str] = ()) -> dict[str, Any]:
    """Only namespaces that hold StateBindings reach the webhook.

    The controller labels them (``sidecarstate.dev/injection: enabled``), or a user pins the
    label (``always``) so that injection never depends on the controller running. With
    ``failurePolicy: Fail``, an operator outage then blocks only Pods that could need the
    sidecars, never those of other teams or of kube-system.
    """
    return {
        "matchExpressions": [
            {
                "key": ann.INJECTION_LABEL,
                "operator": "In",
                "values": list(ann.INJECTION_LABEL_VALUES),
            },
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": sorted({*SYSTEM_NAMESPACES, *excluded}),
            },
            # A namespaced install (watch_namespaces) serves only its namespaces.
            *(
                [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(served)}]
                if served
                else []
            ),
        ]
    }


def opt_out_selector() -> dict[str, Any]:
    # Only labels can be selected on; the annotation opt-out is checked in the handler.
    return {"matchExpressions": [{"key": ann.INJECT, "operator": "NotIn", "values": ["false"]}]}


def build_mutating_configuration(
    *,
    base_url: str,
    ca_bundle: bytes,
    excluded_namespaces: Sequence[str] = (),
    served_namespaces: Sequence[str] = (),
    failure_policy: FailurePolicy = "Fail",
    timeout_seconds: int = 5,
    name: str = DEFAULT_NAME,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{MUTATE_PODS}.{GROUP}",
                "clientConfig": _client_config(
                    base_url=base_url, path=MUTATE_PODS, ca_bundle=ca_bundle
                ),
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": namespace_selector(excluded_namespaces, served_namespaces),
                "objectSelector": opt_out_selector(),
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "failurePolicy": failure_policy,
                "reinvocationPolicy": "IfNeeded",
            }
        ],
    }


def build_validating_configuration(
    *,
    base_url: str,
    ca_bundle: bytes,
    failure_policy: FailurePolicy = "Fail",
    timeout_seconds: int = 5,
    name: str = DEFAULT_NAME,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{VALIDATE_BINDINGS}.{GROUP}",
                "clientConfig": _client_config(
                    base_url=base_url, path=VALIDATE_BINDINGS, ca_bundle=ca_bundle
                ),
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [PLURAL],
                        "scope": "Namespaced",
                    }
                ],
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "failurePolicy": failure_policy,
            }
        ],
    }
