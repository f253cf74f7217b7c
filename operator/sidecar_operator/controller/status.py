"""A StateBinding's status, computed from the binding and the Pods of its namespace.

Conditions, each meaning what a user reads into it:

- ``Accepted``: the spec is valid (an invalid one never gets here: the CRD and the validating
  webhook refuse it), and Pods it selects are injected from now on;
- ``PodsInjected``: every selected live Pod carries the sidecars;
- ``Hydrated``: every selected running Pod's hydrator reports a complete view; when not, the
  reason and the Pods are named (see :func:`controller.health.hydrated_condition`);
- ``StoreHealthy``: no Pod's Redis refused a write for lack of memory;
- ``Ready``: all of them. False when any is False, Unknown when none is False but one is
  Unknown (an unreachable hydrator is never counted as a healthy one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import StateBinding
from sidecar_operator.api.quantity import format_bytes, quantity_bytes
from sidecar_operator.controller.health import (
    HydratorHealth,
    hydrated_condition,
    store_condition,
    worst_staleness,
)
from sidecar_operator.injection import Selection, select
from sidecar_operator.injection.defaults import InjectionDefaults

# How many un-injected Pod names the status lists; the count is always exact.
MAX_LISTED = 20


def _live(pod: Mapping[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and phase not in {
        "Succeeded",
        "Failed",
    }


@dataclass(frozen=True, kw_only=True)
class PodSurvey:
    """The live Pods of a namespace, each read once: the bindings an injected Pod carries, or
    the engine's selection for a Pod without sidecars. Every binding's counts come from it."""

    injected: tuple[tuple[str, ...], ...]
    """Per injected Pod, the bindings it got (``injected-bindings``)."""
    uninjected: tuple[tuple[str, Selection], ...]
    """Per Pod without sidecars, its name and what the engine decides for it now."""


def survey_pods(
    pods: Iterable[Mapping[str, Any]],
    *,
    bindings: Sequence[StateBinding],
    defaults: InjectionDefaults,
    namespace: str = "",
) -> PodSurvey:
    """Read each live Pod once (``namespace`` stands in for a Pod that names none)."""
    injected: list[tuple[str, ...]] = []
    uninjected: list[tuple[str, Selection]] = []
    for pod in pods:
        if not _live(pod):
            continue
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if ann.INJECTED_BINDINGS in annotations:
            injected.append(ann.split_names(annotations[ann.INJECTED_BINDINGS]))
            continue
        where = meta.get("namespace") or namespace
        selection = select(pod, bindings=bindings, namespace=where, defaults=defaults)
        uninjected.append((str(meta.get("name")), selection))
    return PodSurvey(injected=tuple(injected), uninjected=tuple(uninjected))


def _would_inject(binding: StateBinding, selection: Selection) -> bool:
    """Whether a new Pod like this one would get ``binding``'s sidecars. A Pod that names a
    binding that does not exist is not counted: the binding it names is what it waits for."""
    if selection.skip is not None or selection.missing:
        return False
    return binding.name in {b.name for b in selection.selected}


def pod_counts(
    binding: StateBinding,
    *,
    pods: Iterable[Mapping[str, Any]] = (),
    bindings: Sequence[StateBinding] = (),
    defaults: InjectionDefaults | None = None,
    survey: PodSurvey | None = None,
) -> tuple[int, int, list[str]]:
    """(matched, injected, names of matched Pods without sidecars) for one binding.

    From ``survey`` when given (one per namespace pass), else from ``pods``, ``bindings`` and
    ``defaults``.
    """
    if survey is None:
        if defaults is None:
            raise TypeError("pod_counts needs either survey or defaults")
        survey = survey_pods(pods, bindings=bindings, defaults=defaults,
                             namespace=binding.namespace)  # fmt: skip
    injected = sum(1 for names in survey.injected if binding.name in names)
    missing = sorted(name for name, selection in survey.uninjected
                     if _would_inject(binding, selection))  # fmt: skip
    return injected + len(missing), injected, missing


def _condition(
    kind: str, ok: bool, reason: str, message: str, *, generation: int | None, now: str
) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "observedGeneration": generation,
    }


def _keep_transition_times(
    new: list[dict[str, Any]], old: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in old}
    for condition in new:
        before = previous.get(condition["type"])
        if before and before.get("status") == condition["status"]:
            condition["lastTransitionTime"] = before.get("lastTransitionTime")
    return new


def source_url(binding: StateBinding, defaults: InjectionDefaults) -> str:
    """Where the binding reads from, for status: ``kafka://`` brokers or the NATS servers."""
    source = binding.spec.source
    if source.kafka is not None:
        return "kafka://" + ",".join(source.kafka.bootstrap_servers or defaults.bootstrap_servers)
    assert source.nats is not None
    return ",".join(source.nats.servers or defaults.nats_servers)


def build_status(
    binding: StateBinding,
    *,
    pods: Iterable[Mapping[str, Any]],
    bindings: Sequence[StateBinding],
    defaults: InjectionDefaults,
    previous: Mapping[str, Any] | None = None,
    health: Sequence[HydratorHealth] = (),
    now: dt.datetime | None = None,
    survey: PodSurvey | None = None,
) -> dict[str, Any]:
    """The whole ``status`` of a binding; conditions keep their transition times.

    ``health`` is what the hydrators of this binding's Pods reported (may be empty).
    ``survey`` is :func:`survey_pods` of ``pods``, when the caller builds one status per
    binding of a namespace and reads each Pod once.
    """
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    generation = binding.metadata.get("generation")
    matched, injected, missing = pod_counts(
        binding, pods=pods, bindings=bindings, defaults=defaults, survey=survey
    )
    memory = binding.spec.store.max_memory or defaults.max_memory
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (" ..." if len(missing) > MAX_LISTED else "")
        injected_condition = _condition(
            "PodsInjected", False, "MissedInjection",
            f"{len(missing)} selected Pod(s) run without the sidecars: {shown}. They were "
            "probably created while the webhook was unavailable; delete them (or roll their "
            "workload) to re-create them with the sidecars.",
            generation=generation, now=stamp,
        )  # fmt: skip
    else:
        injected_condition = _condition(
            "PodsInjected", True, "AllInjected",
            f"{injected} of {matched} selected Pod(s) carry the sidecars",
            generation=generation, now=stamp,
        )  # fmt: skip
    shown_memory = format_bytes(quantity_bytes(memory))
    store = store_condition(health, memory=shown_memory, generation=generation, now=stamp)
    accepted = _condition(
        "Accepted", True, "SpecValid",
        f"injecting Pods selected by this binding with "
        f"{'topics ' if binding.spec.source.kafka else 'NATS '}"
        f"{', '.join(binding.spec.source.read)}",
        generation=generation, now=stamp,
    )  # fmt: skip
    hydrated = hydrated_condition(health, generation=generation, now=stamp)
    ready = ready_condition([hydrated, store, injected_condition, accepted])
    previous = previous or {}
    conditions = _keep_transition_times(
        [ready, accepted, injected_condition, hydrated, store], previous.get("conditions") or []
    )
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "matchedPods": matched,
        "injectedPods": injected,
        "uninjectedPods": missing[:MAX_LISTED],
        "storeFullPods": sorted(h.pod for h in health if h.oom_rejections > 0)[:MAX_LISTED],
        "uncheckedPods": sum(1 for h in health if not h.reachable),
        "hydratedPods": sum(1 for h in health if h.hydrated),
        "unhydratedPods": sorted(h.pod for h in health if h.reachable and not h.hydrated)[
            :MAX_LISTED
        ],
        "worstStalenessSeconds": worst_staleness(health),
        "source": source_url(binding, defaults),
        "topics": ",".join(binding.spec.source.read),
        "memory": shown_memory,
        "ready": ready["status"],
        "reason": ready["reason"],
    }


def ready_condition(conditions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``Ready`` = all of ``conditions``: the first False one's reason and message (in the
    order given, most telling first), else the first Unknown one's, else True."""
    for status in ("False", "Unknown"):
        first = next((c for c in conditions if c["status"] == status), None)
        if first is not None:
            return {**first, "type": "Ready"}
    message = "; ".join(str(c["message"]) for c in reversed(conditions) if c.get("message"))
    return {**conditions[0], "type": "Ready", "reason": "Ready", "message": message}


def _find(conditions: Any, kind: str) -> Mapping[str, Any]:
    return next((c for c in conditions or () if c.get("type") == kind), {})


def hydration_event(
    status: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> tuple[Literal["Normal", "Warning"], str, str] | None:
    """The Event a status change is worth, as ``(type, reason, message)``, or ``None``.

    A Warning when a reason first appears on ``Hydrated`` (a missing topic, refused
    credentials, a full store...; a Pod that is merely hydrating is not worth one), a Normal
    one when the Pods are hydrated again after one. Posted once per change, not per pass: the
    previous status is the memory, so an operator restart does not repeat them.
    """
    now = _find(status.get("conditions"), "Hydrated")
    before = _find((previous or {}).get("conditions"), "Hydrated")
    if now.get("status") == "False" and now.get("reason") != "Hydrating":
        if now.get("reason") != before.get("reason") or before.get("status") != "False":
            return "Warning", str(now["reason"]), str(now.get("message", ""))
        return None
    if (
        now.get("status") == "True"
        and before.get("status") == "False"
        and before.get("reason") != "Hydrating"
    ):
        return "Normal", "Hydrated", str(now.get("message", ""))
    return None
