"""What the hydrators of a binding's Pods report, read from their Prometheus metrics.

The hydrator has no API credentials (least privilege), so the controller reads its
``/metrics``: whether the Pod's view is hydrated, why not (the state gauge's ``reason``, in
the vocabulary of :mod:`sidecar_hydrator.reasons`), and whether Redis refused writes because
``maxMemory`` is too small — a store that is full serves an incomplete view, which the
binding's status must say loudly. For a hydrator that is not hydrated, the failing
``/readyz`` body adds what exactly ("topic x does not exist on ...").
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sidecar_hydrator.config import (
    HYDRATED_METRIC,
    HYDRATION_READ_METRIC,
    HYDRATION_TARGET_METRIC,
    STALENESS_METRIC,
    STATE_METRIC,
)
from sidecar_hydrator.config import OOM_REJECTIONS_METRIC as OOM_METRIC
from sidecar_hydrator.reasons import (
    CONDITION_REASONS,
    FIXES,
    PRIORITY,
    Reason,
    parse_body,
    progress_detail,
)
from sidecar_operator.api import labels

#: What the hydrator reports before any partition was fully applied.
NEVER_FRESH = -1.0


@dataclass(frozen=True, kw_only=True)
class HydratorHealth:
    pod: str
    hydrated: bool
    oom_rejections: int
    staleness_seconds: float = NEVER_FRESH
    reachable: bool = True
    """False when the scrape failed (a mesh's STRICT mTLS, a NetworkPolicy): health unknown."""
    reason: Reason | None = None
    """The hydrator's state (``None``: a hydrator too old to export it)."""
    detail: str = ""
    """What exactly, from the failing probe's body (empty when not read)."""
    read_records: int = 0
    target_records: int = 0

    def described(self) -> str:
        """What keeps this Pod from being hydrated, in a few words, for the status."""
        if self.detail:
            return self.detail
        if self.reason is Reason.HYDRATING:
            return "hydrating, " + progress_detail(
                read=self.read_records, target=self.target_records
            )
        if self.reason is not None:
            return str(self.reason).replace("_", " ")
        return "not hydrated yet"


def unreachable(pod: str) -> HydratorHealth:
    return HydratorHealth(pod=pod, hydrated=False, oom_rejections=0, reachable=False)


def parse_metrics(pod: str, text: str) -> HydratorHealth:
    """Read the figures the status needs; a missing counter counts as zero, a missing
    staleness as never fresh."""
    oom = 0.0
    hydrated = 0.0
    staleness = NEVER_FRESH
    reason: Reason | None = None
    read = target = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in {OOM_METRIC, f"{OOM_METRIC}_total"}:
                oom += sample.value
            elif sample.name == HYDRATED_METRIC:
                hydrated = sample.value
            elif sample.name == STALENESS_METRIC:
                staleness = sample.value
            elif sample.name == STATE_METRIC and sample.value >= 1:
                # A newer hydrator's reason is left out: the hydrated gauge still tells.
                with contextlib.suppress(ValueError):
                    reason = Reason(sample.labels.get("reason", ""))
            elif sample.name == HYDRATION_READ_METRIC:
                read = int(sample.value)
            elif sample.name == HYDRATION_TARGET_METRIC:
                target = int(sample.value)
    return HydratorHealth(
        pod=pod, hydrated=hydrated >= 1, oom_rejections=int(oom), staleness_seconds=staleness,
        reason=reason, read_records=read, target_records=target,
    )  # fmt: skip


def needs_detail(health: HydratorHealth) -> bool:
    """Whether the failing ``/readyz`` body is worth reading: the Pod is not hydrated."""
    return health.reachable and not health.hydrated


def with_detail(health: HydratorHealth, body: str) -> HydratorHealth:
    """``health`` with the probe body's detail (a body that is no state line is ignored)."""
    parsed = parse_body(body)
    if parsed is None:
        return health
    reason, detail = parsed
    # A hydrator's text lands in the binding's status: one printable line, bounded.
    clean = "".join(ch for ch in detail if ch.isprintable())[:MAX_DETAIL]
    return dataclasses.replace(health, reason=health.reason or reason, detail=clean)


#: The longest detail taken from one hydrator.
MAX_DETAIL = 300
#: How many Pod names a condition message lists per reason.
LISTED_PODS = 5


def _rank(health: HydratorHealth) -> int:
    reason = health.reason or Reason.HYDRATING
    return PRIORITY.index(reason)


def hydrated_condition(
    health: Sequence[HydratorHealth], *, generation: int | None, now: str
) -> dict[str, Any]:
    """``Hydrated``: every running selected Pod's view is complete.

    False names the worst reason (as the condition's ``reason``) and, per reason, how many
    Pods wait, why and which ("2 of 3 Pods waiting: topic x does not exist on k:9092 (a, b)"),
    with what to do. Unknown while some hydrators could not be reached and the others are
    hydrated: an unanswered scrape is never taken for a healthy Pod.
    """
    waiting = sorted((h for h in health if h.reachable and not h.hydrated), key=_rank)
    unchecked = sorted(h.pod for h in health if not h.reachable)
    total = len(health)
    base = {"type": "Hydrated", "lastTransitionTime": now, "observedGeneration": generation}
    if waiting:
        groups: dict[Reason, list[HydratorHealth]] = {}
        for h in waiting:
            groups.setdefault(h.reason or Reason.HYDRATING, []).append(h)
        parts = []
        for reason, members in groups.items():
            pods = sorted(h.pod for h in members)
            shown = ", ".join(pods[:LISTED_PODS]) + (" ..." if len(pods) > LISTED_PODS else "")
            verb = "hydrating" if reason is Reason.HYDRATING else "waiting"
            parts.append(
                f"{len(members)} of {total} Pods {verb}: {members[0].described()} ({shown})"
            )
        worst = waiting[0].reason or Reason.HYDRATING
        fix = FIXES[worst]
        message = "; ".join(parts) + (f". Fix: {fix}" if fix else "")
        if unchecked:
            message += f". {len(unchecked)} more could not be reached: {', '.join(unchecked[:5])}"
        return {**base, "status": "False", "reason": CONDITION_REASONS[worst], "message": message}
    if unchecked:
        return {
            **base, "status": "Unknown", "reason": "HydratorsUnreachable",
            "message": f"{total - len(unchecked)} of {total} Pods hydrated; "
            f"{len(unchecked)} could not be reached on their metrics port: "
            f"{', '.join(unchecked[:10])}",
        }  # fmt: skip
    if not health:
        message = "no running Pod selected yet"
    else:
        message = f"{total} of {total} running Pods hydrated"
        degraded = sorted((h for h in health if h.reason not in (None, Reason.HYDRATED)), key=_rank)
        if degraded:
            # Fail static: the views are complete, and do not advance.
            message += f"; {len(degraded)} serving their last view: {degraded[0].described()}"
    return {**base, "status": "True", "reason": "AllHydrated", "message": message}


def worst_staleness(health: Sequence[HydratorHealth]) -> int | None:
    """The largest staleness among hydrators that were ever fresh, in whole seconds; None when
    none was.

    Whole seconds: a healthy view's sub-second staleness changes on every scrape, and the
    status is patched only when it changes.
    A hydrator that was never fresh is not hydrated, and is reported as such instead: mixing
    its -1 into a maximum would hide it, and a made-up large number would mislead.
    """
    known = [h.staleness_seconds for h in health if h.staleness_seconds >= 0]
    return int(max(known)) if known else None


def _metrics_port(pod: Mapping[str, Any]) -> int | None:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == "sidecar-state-hydrator":
            for declared in container.get("ports") or []:
                if declared.get("name") == "state-metrics":
                    return int(declared["containerPort"])
    return None


def scrape_targets(pods: Sequence[Mapping[str, Any]], *, port: int) -> dict[str, str]:
    """Pod name -> metrics URL, for live injected Pods that have an IP.

    Pending ones too: a Pod whose store is full never finishes starting (its hydrator does
    not report hydrated), and that is exactly the Pod the status must name. Not the ones
    being deleted: a roll-out's old Pod says nothing about the binding any more.
    """
    targets = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if labels.INJECTED_BINDINGS not in (meta.get("annotations") or {}):
            continue
        if meta.get("deletionTimestamp"):
            continue
        if status.get("phase") not in {"Pending", "Running"} or not status.get("podIP"):
            continue
        actual = _metrics_port(pod) or port  # a Pod annotation may have moved it
        targets[str(meta.get("name"))] = f"http://{status['podIP']}:{actual}/metrics"
    return targets


def store_condition(
    health: Sequence[HydratorHealth], *, memory: str, generation: int | None, now: str
) -> dict[str, Any]:
    """``StoreHealthy``: False while any Pod's Redis refuses writes for lack of memory;
    Unknown while some hydrators could not be reached (never "healthy" by default)."""
    full = sorted(h.pod for h in health if h.oom_rejections > 0)
    unchecked = sorted(h.pod for h in health if not h.reachable)
    checked = len(health) - len(unchecked)
    if full:
        return {
            "type": "StoreHealthy", "status": "False", "reason": "StoreFull",
            "message": f"{len(full)} Pod(s) refused writes because the store is full "
            f"(maxMemory {memory}): {', '.join(full[:10])}. Their view is incomplete; raise "
            "spec.store.maxMemory or narrow the topics.",
            "lastTransitionTime": now, "observedGeneration": generation,
        }  # fmt: skip
    if unchecked:
        return {
            "type": "StoreHealthy", "status": "Unknown", "reason": "HydratorsUnreachable",
            "message": f"{checked} hydrator(s) checked; {len(unchecked)} could not be reached "
            f"on their metrics port: {', '.join(unchecked[:10])}. Their health is unknown; "
            "a mesh with STRICT mTLS or a NetworkPolicy may block the controller's scrape "
            "(see docs/operations.md).",
            "lastTransitionTime": now, "observedGeneration": generation,
        }  # fmt: skip
    return {
        "type": "StoreHealthy", "status": "True", "reason": "WithinMemory",
        "message": f"{checked} hydrator(s) checked; none refused a write",
        "lastTransitionTime": now, "observedGeneration": generation,
    }  # fmt: skip
