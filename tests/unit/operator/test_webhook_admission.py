"""The mutating webhook's handler over the engine's decision: what it patches, which Events
and warnings it leaves, and the bounded reasons it counts. Pure: the handler makes no API
call (Events are queued), so it runs here as the webhook server calls it, on the parsed
object of an AdmissionReview."""

from __future__ import annotations

from typing import Any

import jsonpatch
from prometheus_client import REGISTRY

from sidecar_operator.events import Event
from sidecar_operator.handlers.webhook import Verdict, pod_mutate
from sidecar_operator.injection import Injected, InjectionDefaults, inject_pod
from tests.unit.operator.support import webhook_context

DEFAULTS = InjectionDefaults(excluded_namespaces=("kube-system",))


def _admit(
    pod: dict[str, Any], bindings: list[Any], *, namespace: str = "shop"
) -> tuple[Verdict, list[Event]]:
    """Admit ``pod`` (created in ``namespace``) as the webhook server would, with ``bindings``
    indexed."""
    context = webhook_context(DEFAULTS)
    pod["metadata"]["namespace"] = namespace
    verdict = pod_mutate(pod, namespace=namespace, dryrun=False, bindings=bindings, memo=context)
    queue = context.events._queue
    events = [queue.get_nowait() for _ in range(queue.qsize())]
    return verdict, events


def _count(outcome: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "sidecar_state_admissions_total", {"outcome": outcome, "reason": reason}
    )
    return value or 0.0


def test_an_injected_pod_gets_the_engines_pod_and_an_event_on_its_binding(make_pod, make_binding):
    pod = make_pod()
    before = _count("injected", "")

    verdict, events = _admit(pod, [make_binding()])

    expected = inject_pod(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)
    assert isinstance(expected, Injected)
    patched = jsonpatch.apply_patch(pod, verdict.patch)
    assert patched["spec"] == expected.pod["spec"]
    assert patched["metadata"]["annotations"] == expected.pod["metadata"]["annotations"]
    assert verdict.warnings == []
    assert [(e.target.name, e.reason) for e in events] == [("feature-flags", "Injected")]
    assert _count("injected", "") == before + 1


def test_a_skip_counts_a_bounded_reason_and_tells_the_binding_the_sentence(make_pod, make_binding):
    binding = make_binding(namespace="kube-system")
    before = _count("skipped", "excluded_namespace")

    verdict, events = _admit(make_pod(), [binding], namespace="kube-system")

    assert verdict.patch == [] and verdict.warnings == []
    assert _count("skipped", "excluded_namespace") == before + 1
    assert [e.reason for e in events] == ["Skipped"]
    assert events[0].message.endswith(": namespace kube-system is excluded")


def test_a_windows_pod_a_binding_selects_is_warned_about(make_pod, make_binding):
    pod = make_pod()
    pod["spec"]["nodeSelector"] = {"kubernetes.io/os": "windows"}

    verdict, events = _admit(pod, [make_binding()])

    assert verdict.patch == []
    assert len(verdict.warnings) == 1
    assert verdict.warnings[0].startswith("sidecar-state: Windows Pods")
    assert [e.reason for e in events] == ["Skipped"]


def test_a_pod_no_binding_selects_is_skipped_quietly(make_pod, make_binding):
    before = _count("skipped", "not_selected")

    verdict, events = _admit(make_pod(labels={"app": "other"}), [make_binding()])

    assert (verdict.patch, verdict.warnings, events) == ([], [], [])
    assert _count("skipped", "not_selected") == before + 1


def test_a_pod_naming_a_deleted_binding_is_admitted_with_a_warning(make_pod, make_binding):
    pod = make_pod(annotations={"sidecarstate.dev/bindings": "feature-flags,gone"})
    before = _count("admitted", "missing binding")

    verdict, events = _admit(pod, [make_binding()])

    assert verdict.patch, "injected with the bindings that exist"
    assert len(verdict.warnings) == 1
    assert "gone" in verdict.warnings[0] and "without them" in verdict.warnings[0]
    assert sorted(e.reason for e in events) == ["BindingMissing", "Injected"]
    assert _count("admitted", "missing binding") == before + 1


def test_the_admitted_pod_is_left_as_it_came(make_pod, make_binding):
    """The handler renders without a deep copy: it must still not change the request's
    object, which is the reference its patch is computed against."""
    pod = make_pod(init_containers=[{"name": "migrate", "image": "shop/migrate:1"}])
    pod["metadata"]["namespace"] = "shop"
    before = jsonpatch.JsonPatch([]).apply(pod)  # a deep copy

    verdict, _ = _admit(pod, [make_binding()])

    assert verdict.patch
    assert pod == before
