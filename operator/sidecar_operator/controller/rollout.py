"""Which workloads to roll when bindings change, so their Pods get the new sidecars.

The webhook only acts when a Pod is created. When a binding is created, changed or deleted,
the Pods already running keep their old sidecars (or none); the controller rolls their
workload by writing the new configuration hash into the pod template. A workload whose Pods
already carry the right hash is left alone, so an operator restart rolls nothing; one whose
template already has the new hash is rolling already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sidecar_operator.api.models import LabelSelector, StateBinding
from sidecar_operator.injection import annotations as ann
from sidecar_operator.injection import bindings_hash
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.pod import missing_bindings
from sidecar_operator.injection.selector import selector_matches
from sidecar_operator.injection.workloads import pod_template

ROLLED_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
NOT_INJECTED = "none"


@dataclass(frozen=True, kw_only=True)
class Rollout:
    kind: str
    name: str
    template_hash: str
    reason: str

    def patch(self) -> dict[str, Any]:
        annotations = {ann.TEMPLATE_HASH: self.template_hash}
        return {"spec": {"template": {"metadata": {"annotations": annotations}}}}


def _workload_pods(
    workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    try:
        selector = LabelSelector.model_validate((workload.get("spec") or {}).get("selector"))
    except ValidationError:
        return []
    return [
        pod
        for pod in pods
        if not (pod.get("metadata") or {}).get("deletionTimestamp")
        and selector_matches(selector, (pod.get("metadata") or {}).get("labels") or {})
    ]


def plan_rollouts(
    *,
    workloads: Iterable[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    bindings: Sequence[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
) -> list[Rollout]:
    rollouts = []
    for workload in workloads:
        template = pod_template(dict(workload))
        if template is None or workload.get("kind") not in ROLLED_KINDS:
            continue
        if missing_bindings(template, bindings):
            # Rolling to "without it" would replace healthy Pods by Pods without the state
            # they expect; they keep running, and new ones are admitted with a warning.
            continue
        desired = bindings_hash(template, bindings=bindings, namespace=namespace, defaults=defaults)
        wanted = desired or NOT_INJECTED
        current = ((template.get("metadata") or {}).get("annotations") or {}).get(ann.TEMPLATE_HASH)
        if current == wanted:
            continue  # already rolled (or rolling) to this configuration
        running = [
            ((p.get("metadata") or {}).get("annotations") or {}).get(ann.CONFIG_HASH)
            for p in _workload_pods(workload, pods)
        ]
        if all(h == desired for h in running):
            continue  # its Pods already match (or it has none): new Pods get it at admission
        name = str((workload.get("metadata") or {}).get("name"))
        reason = f"sidecar configuration {desired}" if desired else "no StateBinding selects it now"
        rollouts.append(
            Rollout(kind=str(workload["kind"]), name=name, template_hash=wanted, reason=reason)
        )
    return rollouts
