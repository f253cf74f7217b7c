"""The engine's two steps: ``decide`` (whether, and with what) and ``render`` (the Pod), and
the callers that read only the decision: roll-out hashes, status counts, admission metrics."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sidecar_operator.controller.status import pod_counts, survey_pods
from sidecar_operator.injection import (
    Injected,
    InjectionDefaults,
    Skipped,
    SkipReason,
    UnknownBinding,
    bindings_hash,
    decide,
    inject_pod,
    render,
    select,
)
from sidecar_operator.injection import pod as engine

BINDINGS = "sidecarstate.dev/bindings"
INJECT = "sidecarstate.dev/inject"
DEFAULTS = InjectionDefaults()


def test_decision_carries_the_plan_and_render_builds_the_same_pod_as_inject_pod(
    make_pod, make_binding
):
    pod = make_pod()
    before = copy.deepcopy(pod)

    decision = decide(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)

    assert decision.skip is None and decision.reason is None and decision.plan is not None
    assert [b.name for b in decision.selected] == ["feature-flags"]
    rendered = render(decision)
    whole = inject_pod(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)
    assert isinstance(whole, Injected)
    assert rendered.pod == whole.pod and rendered.config_hash == whole.config_hash
    assert decision.plan.bindings_hash == rendered.bindings_hash == whole.bindings_hash
    assert pod == before, "neither step may change the Pod it was given"


def test_roll_out_hash_comes_from_the_plan_without_copying_the_template(
    make_pod, make_binding, monkeypatch
):
    expected = inject_pod(make_pod(), bindings=[make_binding()], namespace="shop",
                          defaults=DEFAULTS)  # fmt: skip
    assert isinstance(expected, Injected)

    def no_copy(value: Any, memo: Any = None) -> Any:
        raise AssertionError("the roll-out hash must not copy the Pod")

    template, binding = make_pod(), make_binding()
    monkeypatch.setattr(copy, "deepcopy", no_copy)
    assert bindings_hash(template, bindings=[binding], namespace="shop",
                         defaults=DEFAULTS) == expected.bindings_hash  # fmt: skip


def test_rendering_for_the_webhook_copies_only_what_it_changes(make_pod, make_binding, monkeypatch):
    """The webhook renders once per Pod created (``share``): no deep copy of the Pod, and
    the Pod it was given is left as it was."""
    pod = make_pod(init_containers=[{"name": "migrate", "image": "shop/migrate:1"}],
                   volumes=[{"name": "cache", "emptyDir": {}}])  # fmt: skip
    before = json.loads(json.dumps(pod))
    expected = inject_pod(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)

    def no_copy(value: Any, memo: Any = None) -> Any:
        raise AssertionError("rendering must not deep-copy the Pod")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    decision = decide(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)
    assert render(decision, share=True) == expected
    assert pod == before


def test_a_skipped_decision_is_not_rendered(make_pod):
    decision = decide(make_pod(), bindings=[], namespace="shop", defaults=DEFAULTS)

    assert decision.skip is SkipReason.NOT_SELECTED and decision.plan is None
    with pytest.raises(ValueError, match="no StateBinding selects this Pod"):
        render(decision)


@pytest.mark.parametrize(
    ("change", "skip", "sentence"),
    [
        ({"namespace": "kube-system"}, SkipReason.EXCLUDED_NAMESPACE,
         "namespace kube-system is excluded"),
        ({"annotations": {INJECT: "false"}}, SkipReason.OPTED_OUT,
         "opted out with sidecarstate.dev/inject: false"),
        ({"annotations": {"sidecarstate.dev/injected-bindings": "x"}},
         SkipReason.ALREADY_INJECTED, "already injected"),
        ({"spec": {"hostNetwork": True}}, SkipReason.HOST_NETWORK,
         "hostNetwork Pods are never injected"),
        ({"spec": {"os": {"name": "windows"}}}, SkipReason.WINDOWS, engine.WINDOWS_SKIP),
    ],
)  # fmt: skip
def test_skips_have_a_bounded_reason_and_the_same_sentence_as_before(
    make_pod, make_binding, change, skip, sentence
):
    pod = make_pod(annotations=change.get("annotations"))
    pod["spec"].update(change.get("spec", {}))
    namespace = change.get("namespace", "shop")

    decision = decide(pod, bindings=[make_binding()], namespace=namespace, defaults=DEFAULTS)

    assert decision.skip is skip and decision.reason == sentence
    # The Pod itself rules injection out: the bindings that select it hear why.
    assert [b.name for b in decision.selected] == ["feature-flags"]
    outcome = inject_pod(pod, bindings=[make_binding()], namespace=namespace, defaults=DEFAULTS)
    assert isinstance(outcome, Skipped) and outcome.skip is skip and outcome.reason == sentence


def test_skip_reason_label_does_not_grow_with_namespace_names(make_pod):
    """``sidecar_state_admissions_total{reason}`` takes the enum's value: one series per kind
    of skip, not one per excluded namespace."""
    defaults = InjectionDefaults(excluded_namespaces=("kube-system", "istio-system"))
    values = {
        decide(make_pod(), bindings=[], namespace=ns, defaults=defaults).skip
        for ns in defaults.excluded_namespaces
    }
    assert values == {SkipReason.EXCLUDED_NAMESPACE}
    assert all(r.value.isidentifier() and r.value.islower() for r in SkipReason)


def test_opted_out_pod_naming_a_missing_binding_is_skipped_not_refused(make_pod):
    pod = make_pod(annotations={INJECT: "false", BINDINGS: "gone"})

    decision = decide(pod, bindings=[], namespace="shop", defaults=DEFAULTS)

    assert decision.skip is SkipReason.OPTED_OUT and decision.missing == ()


def test_missing_named_binding_refuses_unless_admitted(make_pod, make_binding):
    pod = make_pod(annotations={BINDINGS: "gone"})

    with pytest.raises(UnknownBinding, match="gone"):
        decide(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)
    admitted = decide(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS,
                      admit_missing=True)  # fmt: skip
    assert admitted.skip is SkipReason.BINDINGS_MISSING and admitted.missing == ("gone",)
    assert admitted.reason == "the StateBinding(s) it names (gone) do not exist"
    # The cheap half never raises: the status reads it for every Pod.
    selection = select(pod, bindings=[make_binding()], namespace="shop", defaults=DEFAULTS)
    assert selection.skip is SkipReason.BINDINGS_MISSING and selection.missing == ("gone",)


def test_status_survey_reads_each_pod_once_and_counts_as_per_binding(
    make_pod, make_binding, monkeypatch
):
    flags = make_binding()
    orders = make_binding("orders", match_labels={"app": "orders"}, topics=["orders"])
    pods = [
        {**make_pod("a"), "status": {"phase": "Running"}},
        {**make_pod("b", labels={"app": "orders"}), "status": {"phase": "Running"}},
        {**make_pod("c", annotations={BINDINGS: "orders,gone"}), "status": {"phase": "Running"}},
    ]
    bindings = [flags, orders]
    separate = [pod_counts(b, pods=pods, bindings=bindings, defaults=DEFAULTS) for b in bindings]

    calls = []
    real = engine.skip_reason

    def counting(pod: Any, **kwargs: Any) -> Any:
        calls.append(pod["metadata"]["name"])
        return real(pod, **kwargs)

    monkeypatch.setattr(engine, "skip_reason", counting)
    survey = survey_pods(pods, bindings=bindings, defaults=DEFAULTS, namespace="shop")
    shared = [pod_counts(b, survey=survey) for b in bindings]

    assert shared == separate == [(1, 0, ["a"]), (1, 0, ["b"])]
    assert sorted(calls) == ["a", "b", "c"], "one selection per Pod, not per binding x Pod"
