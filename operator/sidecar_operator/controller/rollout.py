"""Which workloads to roll when bindings change, so their Pods get the new sidecars, and how
fast.

The webhook only acts when a Pod is created. When a binding is created, changed or deleted,
the Pods already running keep their old sidecars (or none); the controller rolls their
workload by writing the bindings' content hash into the pod template, and the workload's own
strategy (maxUnavailable, partitions, ...) replaces the Pods.

What counts as a change is the *content of the bindings* only (``bindings-hash`` on Pods):
never the operator's images, pull policy or defaults, so that an operator upgrade or a chart
value change rolls nothing by itself — new Pods simply get the new sidecars. Pods injected by
an older operator carry no content hash; they are current as long as they carry the bindings
the template would get now and none of those bindings has changed since this controller
started (``changed``).

A workload whose Pods already match is left alone, so an operator restart rolls nothing; one
whose template already has the wanted hash is rolling already. Roll-outs are throttled
(:class:`RolloutThrottle`): a few at a time per namespace and a bounded number per minute.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import LabelSelector, StateBinding
from sidecar_operator.injection import InjectionConflict, InvalidPod, UnknownBinding, decide
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.pod import binding_content_hash, missing_bindings
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


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    due: list[Rollout]
    """Workloads whose Pods are stale and whose template does not ask for the new hash yet."""
    in_progress: int
    """Workloads we rolled to the wanted hash whose controller is still replacing Pods."""


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


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


def workload_rolling(workload: Mapping[str, Any]) -> bool:
    """Whether the workload's own controller is still replacing its Pods, from its status."""
    meta = workload.get("metadata") or {}
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 0):
        return True
    if workload.get("kind") == "DaemonSet":
        wanted = status.get("desiredNumberScheduled") or 0
        return (status.get("updatedNumberScheduled") or 0) < wanted
    replicas = spec.get("replicas", 1)
    return (status.get("updatedReplicas") or 0) < (replicas or 0)


def pod_is_current(
    pod: Mapping[str, Any],
    *,
    desired: str | None,
    desired_names: tuple[str, ...],
    changed: Collection[str],
) -> bool:
    """Whether a running Pod already has what a new Pod of its workload would get."""
    annotations = _annotations(pod)
    names = ann.split_names(annotations.get(ann.INJECTED_BINDINGS))
    if desired is None:
        return not names
    if ann.BINDINGS_HASH in annotations:
        return annotations[ann.BINDINGS_HASH] == desired
    # Injected by an older operator (no content hash): current unless its bindings differ.
    return tuple(sorted(names)) == desired_names and not set(names) & set(changed)


def pods_may_be_stale(pods: Iterable[Mapping[str, Any]], bindings: Sequence[StateBinding]) -> bool:
    """Whether any injected Pod may lack its bindings' current content, judged from the Pods
    alone; when not, a watchdog pass needs no LIST of the namespace's workloads.

    Conservative: a Pod of an older operator (no content hash) or one naming a binding that
    is gone counts as maybe stale. Pods that a new binding now selects are the business of
    that binding's own pass, which always plans.
    """
    by_name = {b.name: b for b in bindings}
    for pod in pods:
        annotations = _annotations(pod)
        names = ann.split_names(annotations.get(ann.INJECTED_BINDINGS))
        if not names or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if ann.BINDINGS_HASH not in annotations or any(n not in by_name for n in names):
            return True
        if annotations[ann.BINDINGS_HASH] != binding_content_hash(by_name[n] for n in names):
            return True
    return False


def plan_rollouts(
    *,
    workloads: Iterable[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    bindings: Sequence[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
    changed: Collection[str] = (),
    roll_missed: bool = True,
    deferred: Collection[str] = (),
) -> RolloutPlan:
    """``changed``: names of bindings of this namespace whose spec changed since start.

    Pods without any sidecars where a new Pod would get them are stale for two reasons that
    look alike: a binding now selects them (the pass of a binding change: ``roll_missed``), or
    the webhook missed them during an outage with failurePolicy Ignore, which the watchdog's
    passes roll only when the operator is told to (``rollout_missed_injections``) and
    otherwise report. ``deferred`` (``Kind/name``) are workloads a throttled pass left for
    later: they roll whatever the pass.
    """
    due = []
    in_progress = 0
    for workload in workloads:
        template = pod_template(dict(workload))
        if template is None or workload.get("kind") not in ROLLED_KINDS:
            continue
        if missing_bindings(template, bindings):
            # Rolling to "without it" would replace healthy Pods by Pods without the state
            # they expect; they keep running, and new ones are admitted with a warning.
            continue
        desired, names = _desired(template, bindings=bindings, namespace=namespace,
                                  defaults=defaults)  # fmt: skip
        key = f"{workload.get('kind')}/{(workload.get('metadata') or {}).get('name')}"
        rolls_uninjected = roll_missed or key in deferred
        stale = [
            p
            for p in _workload_pods(workload, pods)
            if not pod_is_current(p, desired=desired, desired_names=names, changed=changed)
            and (rolls_uninjected or ann.INJECTED_BINDINGS in _annotations(p))
        ]
        wanted = desired or NOT_INJECTED
        if _annotations(template).get(ann.TEMPLATE_HASH) == wanted:
            in_progress += workload_rolling(workload)  # already rolled (or rolling) to it
            continue
        if not stale:
            continue  # its Pods already match (or it has none): new Pods get it at admission
        name = str((workload.get("metadata") or {}).get("name"))
        reason = f"bindings {desired}" if desired else "no StateBinding selects it now"
        due.append(
            Rollout(kind=str(workload["kind"]), name=name, template_hash=wanted, reason=reason)
        )
    return RolloutPlan(due=due, in_progress=in_progress)


def _desired(
    template: Mapping[str, Any],
    *,
    bindings: Sequence[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
) -> tuple[str | None, tuple[str, ...]]:
    """The bindings' content hash a Pod from ``template`` would get now and the names of
    those bindings, from the engine's decision (no Pod is built); ``(None, ())`` if it would
    not be injected."""
    try:
        decision = decide(template, bindings=bindings, namespace=namespace, defaults=defaults)
    except (InjectionConflict, UnknownBinding, InvalidPod):
        return None, ()
    if decision.plan is None:
        return None, ()
    return decision.plan.bindings_hash, tuple(sorted(b.name for b in decision.selected))


class RolloutThrottle:
    """How many roll-outs may start now: a token bucket for the whole cluster, and a cap on
    roll-outs in progress per namespace.

    A binding that selects 200 workloads must not restart them all at once (nor make 200
    hydrators re-read their topics together). The bucket holds ten seconds' worth of tokens
    (at least one), so a burst is small too. Deferred roll-outs are found again by the next
    pass, which happens every watchdog interval.
    """

    def __init__(self, *, per_minute: float, per_namespace: int, now: float) -> None:
        self.per_minute = per_minute
        self.per_namespace = per_namespace
        self.burst = max(1.0, per_minute / 6)
        self._tokens = self.burst
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.per_minute / 60)
        self._updated = now

    def allow(self, plan: RolloutPlan, *, now: float) -> list[Rollout]:
        """The roll-outs of ``plan`` to start now; each one returned is counted as started."""
        self._refill(now)
        room = max(0, self.per_namespace - plan.in_progress)
        started = []
        for rollout in plan.due[:room]:
            if self._tokens < 1:
                break
            self._tokens -= 1
            started.append(rollout)
        return started
