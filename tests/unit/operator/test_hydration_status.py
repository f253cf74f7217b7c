"""The binding's Hydrated and Ready conditions, its Events and the hydrator state it reads:
pure logic, from what the hydrators report to what ``kubectl get sb`` shows."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sidecar_hydrator.health import Metrics
from sidecar_hydrator.reasons import Reason, State
from sidecar_operator.controller.health import (
    HydratorHealth,
    hydrated_condition,
    needs_detail,
    parse_metrics,
    unreachable,
    with_detail,
)
from sidecar_operator.controller.status import build_status, hydration_event
from sidecar_operator.injection import InjectionDefaults

DEFAULTS = InjectionDefaults()
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
MISSING = "topic feature-flagz does not exist on kafka.data.svc:9092"


def waiting(pod: str, reason: Reason = Reason.TOPIC_MISSING, detail: str = MISSING) -> Any:
    return HydratorHealth(pod=pod, hydrated=False, oom_rejections=0, reason=reason, detail=detail)


def fine(pod: str) -> HydratorHealth:
    return HydratorHealth(pod=pod, hydrated=True, oom_rejections=0, reason=Reason.HYDRATED)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def status_of(binding: Any, health: list[HydratorHealth], **kwargs: Any) -> dict[str, Any]:
    return build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS, health=health,
                        now=NOW, **kwargs)  # fmt: skip


def test_hydrated_names_the_reason_the_count_and_the_pods():
    found = hydrated_condition(
        [waiting("shop-2"), waiting("shop-1"), fine("shop-3")], generation=2, now="t"
    )

    assert (found["status"], found["reason"]) == ("False", "TopicMissing")
    assert found["message"].startswith(f"2 of 3 Pods waiting: {MISSING} (shop-1, shop-2)")
    assert "create the topic" in found["message"]  # what to do
    assert found["observedGeneration"] == 2


def test_hydrated_puts_the_worst_reason_first_and_lists_each():
    found = hydrated_condition(
        [
            waiting("a", Reason.HYDRATING, "read 10 of 40 records (25%)"),
            waiting("b", Reason.AUTHENTICATION_FAILED, "k:9092 refused the credentials"),
        ],
        generation=1,
        now="t",
    )

    assert found["reason"] == "AuthenticationFailed"
    assert found["message"].startswith(
        "1 of 2 Pods waiting: k:9092 refused the credentials (b); "
        "1 of 2 Pods hydrating: read 10 of 40 records (25%) (a)"
    )


def test_an_unreachable_hydrator_makes_hydrated_unknown_never_true():
    found = hydrated_condition([fine("a"), unreachable("b")], generation=1, now="t")

    assert (found["status"], found["reason"]) == ("Unknown", "HydratorsUnreachable")
    assert "1 of 2 Pods hydrated" in found["message"] and "b" in found["message"]


def test_a_fail_static_pod_is_hydrated_and_says_why_its_view_does_not_advance():
    serving = HydratorHealth(pod="a", hydrated=True, oom_rejections=0, reason=Reason.UNREACHABLE)

    found = hydrated_condition([serving], generation=1, now="t")

    assert found["status"] == "True"
    assert "1 serving their last view: unreachable" in found["message"]


def test_without_running_pods_hydrated_holds():
    found = hydrated_condition([], generation=1, now="t")

    assert found["status"] == "True" and found["message"] == "no running Pod selected yet"


def test_ready_is_false_with_the_reason_when_pods_cannot_hydrate(make_binding):
    status = status_of(make_binding(), [waiting("shop-1")])

    assert status["ready"] == "False" and status["reason"] == "TopicMissing"
    ready = condition(status, "Ready")
    assert ready["reason"] == "TopicMissing" and MISSING in ready["message"]
    assert condition(status, "Accepted")["status"] == "True"
    assert condition(status, "PodsInjected")["status"] == "True"
    assert status["unhydratedPods"] == ["shop-1"]


def test_ready_is_all_of_the_conditions(make_binding, make_pod):
    binding = make_binding()
    missed = {**make_pod("b"), "status": {"phase": "Running", "podIP": "10.0.0.2"}}

    healthy = status_of(binding, [fine("a")])
    uninjected = build_status(binding, pods=[missed], bindings=[binding], defaults=DEFAULTS,
                              health=[fine("a")], now=NOW)  # fmt: skip

    assert (healthy["ready"], healthy["reason"]) == ("True", "Ready")
    assert "1 of 1 running Pods hydrated" in condition(healthy, "Ready")["message"]
    assert (uninjected["ready"], uninjected["reason"]) == ("False", "MissedInjection")


def test_a_reason_that_appears_is_a_warning_event_once(make_binding):
    binding = make_binding()
    healthy = status_of(binding, [fine("a")])
    broken = status_of(binding, [waiting("a")], previous=healthy)
    still = status_of(binding, [waiting("a")], previous=broken)
    other = status_of(binding, [waiting("a", Reason.UNREACHABLE, "no broker")], previous=still)
    fixed = status_of(binding, [fine("a")], previous=other)

    assert hydration_event(healthy, None) is None
    kind, reason, message = hydration_event(broken, healthy) or ("", "", "")
    assert (kind, reason) == ("Warning", "TopicMissing") and MISSING in message
    assert hydration_event(still, broken) is None  # the same reason: not again
    assert hydration_event(other, still) == ("Warning", "SourceUnreachable",
                                             condition(other, "Hydrated")["message"])  # fmt: skip
    assert hydration_event(fixed, other) == ("Normal", "Hydrated",
                                             condition(fixed, "Hydrated")["message"])  # fmt: skip


def test_a_pod_that_is_only_hydrating_is_not_worth_an_event(make_binding):
    binding = make_binding()
    healthy = status_of(binding, [fine("a")])
    rolling = status_of(binding, [fine("a"), waiting("b", Reason.HYDRATING, "read 1 of 2")],
                        previous=healthy)  # fmt: skip

    assert condition(rolling, "Hydrated")["reason"] == "Hydrating"
    assert hydration_event(rolling, healthy) is None
    assert hydration_event(status_of(binding, [fine("a")], previous=rolling), rolling) is None


def test_the_state_gauge_the_hydrator_exports_is_what_the_controller_reads():
    metrics = Metrics()
    metrics.state_source = lambda: State(
        Reason.HYDRATING, "read 30 of 120 records (25%)", read_records=30, target_records=120
    )
    text = metrics.render().decode()

    health = parse_metrics("a", text)

    assert health.reason is Reason.HYDRATING
    assert (health.read_records, health.target_records) == (30, 120)
    assert health.described() == "hydrating, read 30 of 120 records (25%)"
    assert needs_detail(health)
    # Every reason is exported, 0 or 1: the label's values are bounded and known.
    assert text.count("sidecar_state_hydrator_state{") == len(Reason)


def test_the_probe_body_adds_the_detail_one_bounded_printable_line():
    health = HydratorHealth(pod="a", hydrated=False, oom_rejections=0, reason=Reason.TOPIC_MISSING)

    detailed = with_detail(health, f"topic_missing: {MISSING}\x1b[31m" + "x" * 500 + "\n")
    ignored = with_detail(health, "<html>proxy error</html>")

    assert detailed.detail.startswith(MISSING) and "\x1b" not in detailed.detail
    assert len(detailed.detail) == 300
    assert ignored.detail == "" and ignored.described() == "topic missing"
    assert not needs_detail(fine("b")) and not needs_detail(unreachable("c"))
