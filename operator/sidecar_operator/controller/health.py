"""What the hydrators of a binding's Pods report, read from their Prometheus metrics.

The hydrator has no API credentials (least privilege), so the controller reads its
``/metrics``: whether the Pod's view is hydrated, and whether Redis refused writes because
``maxMemory`` is too small — a store that is full serves an incomplete view, which the
binding's status must say loudly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sidecar_hydrator.config import HYDRATED_METRIC, STALENESS_METRIC
from sidecar_hydrator.config import OOM_REJECTIONS_METRIC as OOM_METRIC
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


def unreachable(pod: str) -> HydratorHealth:
    return HydratorHealth(pod=pod, hydrated=False, oom_rejections=0, reachable=False)


def parse_metrics(pod: str, text: str) -> HydratorHealth:
    """Read the figures the status needs; a missing counter counts as zero, a missing
    staleness as never fresh."""
    oom = 0.0
    hydrated = 0.0
    staleness = NEVER_FRESH
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in {OOM_METRIC, f"{OOM_METRIC}_total"}:
                oom += sample.value
            elif sample.name == HYDRATED_METRIC:
                hydrated = sample.value
            elif sample.name == STALENESS_METRIC:
                staleness = sample.value
    return HydratorHealth(
        pod=pod, hydrated=hydrated >= 1, oom_rejections=int(oom), staleness_seconds=staleness
    )


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
    not report hydrated), and that is exactly the Pod the status must name.
    """
    targets = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if labels.INJECTED_BINDINGS not in (meta.get("annotations") or {}):
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
