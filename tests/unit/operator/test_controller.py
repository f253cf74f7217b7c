"""The controller's pure decisions: status, roll-outs, owned bindings, hydrator health."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sidecar_operator.controller.health import (
    HydratorHealth,
    parse_metrics,
    scrape_targets,
    unreachable,
    worst_staleness,
)
from sidecar_operator.controller.owned import owned_binding
from sidecar_operator.controller.rollout import (
    NOT_INJECTED,
    RolloutPlan,
    RolloutThrottle,
    plan_rollouts,
    pods_may_be_stale,
    workload_rolling,
)
from sidecar_operator.controller.status import build_status
from sidecar_operator.injection import InjectionDefaults, bindings_hash

DEFAULTS = InjectionDefaults()
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def running(pod: dict[str, Any], *, ip: str = "10.244.0.7") -> dict[str, Any]:
    return {**pod, "status": {"phase": "Running", "podIP": ip}}


def with_annotations(pod: dict[str, Any], **annotations: str) -> dict[str, Any]:
    meta = {**pod["metadata"], "annotations": {**pod["metadata"].get("annotations", {})}}
    meta["annotations"].update({k.replace("_", "-"): v for k, v in annotations.items()})
    return {**pod, "metadata": meta}


def injected_by(
    pod: dict[str, Any], *names: str, config_hash: str = "abc", content: str | None = None
) -> dict[str, Any]:
    annotations = {"sidecarstate.dev/injected-bindings": ",".join(names),
                   "sidecarstate.dev/config-hash": config_hash}  # fmt: skip
    if content is not None:
        annotations["sidecarstate.dev/bindings-hash"] = content
    meta = {**pod["metadata"], "annotations": annotations}
    return {**pod, "metadata": meta}


# --- status ----------------------------------------------------------------------------------


def test_status_counts_matched_injected_and_missing_pods(make_binding, make_pod):
    binding = make_binding()
    pods = [
        running(injected_by(make_pod("a"), "feature-flags")),
        running(make_pod("b")),  # selected, but no sidecars: the watchdog's case
        running(make_pod("c", labels={"app": "other"})),  # not selected
        {**make_pod("d"), "status": {"phase": "Succeeded"}},  # finished: not counted
        running(with_annotations(make_pod("e"), **{"sidecarstate.dev/inject": "false"})),
    ]

    status = build_status(binding, pods=pods, bindings=[binding], defaults=DEFAULTS, now=NOW)

    assert (status["matchedPods"], status["injectedPods"]) == (2, 1)
    assert status["uninjectedPods"] == ["b"]
    injected = next(c for c in status["conditions"] if c["type"] == "PodsInjected")
    assert injected["status"] == "False" and injected["reason"] == "MissedInjection"
    assert "b" in injected["message"] and "delete them" in injected["message"]


def test_status_columns_and_ready_condition(make_binding):
    binding = make_binding(topics=["products", "prices"], max_memory="128Mi")

    status = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS, now=NOW)

    assert status["topics"] == "products,prices"
    assert status["memory"] == "128Mi"
    assert status["ready"] == "True"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-11-28T12:00:00Z"


def test_condition_keeps_its_transition_time_while_its_status_holds(make_binding):
    binding = make_binding()
    first = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS, now=NOW)
    later = NOW + dt.timedelta(hours=1)

    second = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS,
                          previous=first, now=later)  # fmt: skip

    assert [c["lastTransitionTime"] for c in second["conditions"]] == [
        c["lastTransitionTime"] for c in first["conditions"]
    ]


def test_a_full_store_makes_the_binding_not_ready(make_binding):
    binding = make_binding()
    health = [HydratorHealth(pod="a", hydrated=True, oom_rejections=12),
              HydratorHealth(pod="b", hydrated=True, oom_rejections=0)]  # fmt: skip

    status = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS,
                          health=health, now=NOW)  # fmt: skip

    assert status["storeFullPods"] == ["a"]
    assert status["ready"] == "False"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "StoreFull" and "spec.store.maxMemory" in ready["message"]


def test_status_carries_hydration_and_the_worst_staleness(make_binding):
    binding = make_binding()
    health = [HydratorHealth(pod="a", hydrated=True, oom_rejections=0, staleness_seconds=0.2),
              HydratorHealth(pod="b", hydrated=True, oom_rejections=0, staleness_seconds=41.7),
              HydratorHealth(pod="c", hydrated=False, oom_rejections=0)]  # fmt: skip

    status = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS,
                          health=health, now=NOW)  # fmt: skip

    assert status["hydratedPods"] == 2
    assert status["unhydratedPods"] == ["c"]
    assert status["worstStalenessSeconds"] == 41
    assert status["source"] == "kafka://kafka.kafka.svc:9092"


def test_worst_staleness_ignores_never_fresh_hydrators_and_is_unset_without_any():
    never = HydratorHealth(pod="n", hydrated=False, oom_rejections=0)

    assert worst_staleness([]) is None
    assert worst_staleness([never]) is None
    assert worst_staleness([never, HydratorHealth(pod="f", hydrated=True, oom_rejections=0,
                                                  staleness_seconds=3.9)]) == 3  # fmt: skip


def test_status_fields_are_all_in_the_crd_schema(make_binding):
    # A field the controller writes but the schema lacks is pruned by the apiserver silently.
    from sidecar_operator.api.crd import openapi_schema

    binding = make_binding()
    status = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS, now=NOW)

    assert set(status) <= set(openapi_schema()["properties"]["status"]["properties"])


# --- hydrator metrics ------------------------------------------------------------------------

METRICS = """\
# HELP sidecar_state_hydrator_hydrated 1 when Redis holds a complete view.
# TYPE sidecar_state_hydrator_hydrated gauge
sidecar_state_hydrator_hydrated 1.0
# HELP sidecar_state_hydrator_redis_oom_rejections_total Key writes Redis refused.
# TYPE sidecar_state_hydrator_redis_oom_rejections_total counter
sidecar_state_hydrator_redis_oom_rejections_total 37.0
# HELP sidecar_state_hydrator_staleness_seconds How old the served view may be.
# TYPE sidecar_state_hydrator_staleness_seconds gauge
sidecar_state_hydrator_staleness_seconds 1.5
"""


def test_parse_metrics_reads_hydrated_and_oom_rejections():
    assert parse_metrics("p", METRICS) == HydratorHealth(
        pod="p", hydrated=True, oom_rejections=37, staleness_seconds=1.5
    )


def test_parse_metrics_reads_what_the_hydrator_itself_exports():
    """The names come from one place (``sidecar_hydrator.config``): the operator reads the
    hydrator's own registry, not a retyped copy of its output."""
    from sidecar_hydrator.health import Metrics
    from sidecar_hydrator.reasons import Reason, State

    exported = Metrics()
    exported.hydrated.set(1)
    exported.oom_rejections.inc(4)
    exported.staleness_source = lambda: 2.5
    exported.state_source = lambda: State(Reason.HYDRATED, read_records=7, target_records=7)

    health = parse_metrics("p", exported.render().decode())

    assert health == HydratorHealth(pod="p", hydrated=True, oom_rejections=4,
                                    staleness_seconds=2.5, reason=Reason.HYDRATED,
                                    read_records=7, target_records=7)  # fmt: skip


def test_parse_metrics_treats_missing_figures_as_zero():
    assert parse_metrics("p", "") == HydratorHealth(pod="p", hydrated=False, oom_rejections=0)


def test_scrape_targets_are_live_injected_pods_with_an_ip(make_pod):
    pods = [
        running(injected_by(make_pod("a"), "x"), ip="10.244.0.5"),
        running(make_pod("b")),  # not injected
        {**injected_by(make_pod("c"), "x"), "status": {"phase": "Pending"}},  # no IP yet
        {**injected_by(make_pod("d"), "x"), "status": {"phase": "Pending", "podIP": "10.9.0.1"}},
        {**injected_by(make_pod("e"), "x"), "status": {"phase": "Succeeded", "podIP": "10.9.0.2"}},
    ]
    leaving = running(injected_by(make_pod("f"), "x"), ip="10.9.0.3")
    leaving["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"  # a roll-out's old Pod
    pods.append(leaving)

    assert scrape_targets(pods, port=9464) == {
        "a": "http://10.244.0.5:9464/metrics",
        "d": "http://10.9.0.1:9464/metrics",
    }


# --- roll-outs -------------------------------------------------------------------------------


def test_a_workload_whose_pods_lack_the_new_configuration_is_rolled(make_binding, make_workload,
                                                                     make_pod):  # fmt: skip
    binding = make_binding()
    deployment = make_workload("Deployment")
    old_pod = running(make_pod("checkout-1"))

    (rollout,) = plan_rollouts(workloads=[deployment], pods=[old_pod], bindings=[binding],
                               namespace="shop", defaults=DEFAULTS).due  # fmt: skip

    expected = bindings_hash(deployment["spec"]["template"], bindings=[binding],
                             namespace="shop", defaults=DEFAULTS)  # fmt: skip
    assert (rollout.kind, rollout.name, rollout.template_hash) == (
        "Deployment", "checkout", expected,
    )  # fmt: skip
    assert rollout.patch() == {"spec": {"template": {"metadata": {"annotations": {
        "sidecarstate.dev/template-hash": expected}}}}}  # fmt: skip


def test_a_workload_whose_pods_already_match_is_not_rolled(make_binding, make_workload,
                                                           make_pod):  # fmt: skip
    binding = make_binding()
    deployment = make_workload("Deployment")
    current = bindings_hash(deployment["spec"]["template"], bindings=[binding],
                            namespace="shop", defaults=DEFAULTS)  # fmt: skip
    pod = running(injected_by(make_pod("checkout-1"), "feature-flags", content=current or ""))

    assert plan_rollouts(workloads=[deployment], pods=[pod], bindings=[binding],
                         namespace="shop", defaults=DEFAULTS).due == []  # fmt: skip


def test_a_workload_already_rolling_to_the_hash_is_left_alone(make_binding, make_workload,
                                                              make_pod):  # fmt: skip
    binding = make_binding()
    deployment = make_workload("Deployment")
    template = deployment["spec"]["template"]
    current = bindings_hash(template, bindings=[binding], namespace="shop", defaults=DEFAULTS)
    template["metadata"]["annotations"] = {"sidecarstate.dev/template-hash": current}

    plan = plan_rollouts(workloads=[deployment], pods=[running(make_pod("old"))],
                         bindings=[binding], namespace="shop", defaults=DEFAULTS)  # fmt: skip
    assert plan.due == []


def test_deleting_the_last_binding_rolls_injected_pods_back(make_workload, make_pod):
    deployment = make_workload("Deployment")
    pod = running(injected_by(make_pod("checkout-1"), "feature-flags"))

    (rollout,) = plan_rollouts(workloads=[deployment], pods=[pod], bindings=[],
                               namespace="shop", defaults=DEFAULTS).due  # fmt: skip

    assert rollout.template_hash == NOT_INJECTED


def test_a_workload_naming_a_deleted_binding_is_not_rolled_to_no_sidecars(make_workload,
                                                                          make_pod):  # fmt: skip
    named = {"sidecarstate.dev/bindings": "feature-flags"}
    deployment = make_workload("Deployment", template=make_pod(annotations=named))
    pod = running(injected_by(make_pod("checkout-1", annotations=named), "feature-flags"))

    assert plan_rollouts(workloads=[deployment], pods=[pod], bindings=[],
                         namespace="shop", defaults=DEFAULTS).due == []  # fmt: skip


@pytest.mark.parametrize("kind", ["Job", "CronJob", "Pod"])
def test_only_long_lived_workloads_are_rolled(kind, make_binding, make_workload, make_pod):
    assert plan_rollouts(workloads=[make_workload(kind)], pods=[running(make_pod())],
                         bindings=[make_binding()], namespace="shop",
                         defaults=DEFAULTS).due == []  # fmt: skip


def test_an_operator_upgrade_or_setting_change_rolls_nothing(make_binding, make_workload,
                                                             make_pod):  # fmt: skip
    binding = make_binding()
    deployment = make_workload("Deployment")
    before = InjectionDefaults(hydrator_image="hydrator:1", image_pull_policy="IfNotPresent")
    content = bindings_hash(deployment["spec"]["template"], bindings=[binding],
                            namespace="shop", defaults=before)  # fmt: skip
    pod = running(injected_by(make_pod("checkout-1"), "feature-flags", content=content))
    after = InjectionDefaults(hydrator_image="hydrator:2", image_pull_policy="Always",
                              redis_image="redis:8", max_memory="256Mi")  # fmt: skip

    assert plan_rollouts(workloads=[deployment], pods=[pod], bindings=[binding],
                         namespace="shop", defaults=after).due == []  # fmt: skip


def test_pods_of_an_older_operator_roll_only_when_their_bindings_change(
    make_binding, make_workload, make_pod
):
    binding = make_binding()
    deployment = make_workload("Deployment")
    old = running(injected_by(make_pod("checkout-1"), "feature-flags"))  # no bindings-hash

    def due(*, changed: tuple[str, ...] = (), bindings: list[Any] | None = None) -> list[Any]:
        return plan_rollouts(workloads=[deployment], pods=[old], namespace="shop",
                             bindings=[binding] if bindings is None else bindings,
                             defaults=DEFAULTS, changed=changed).due  # fmt: skip

    assert due() == []  # an upgrade (or a resume) alone
    assert len(due(changed=("feature-flags",))) == 1  # its binding's spec changed since
    other = make_binding("prices", topics=["prices"])
    assert len(due(bindings=[binding, other])) == 1  # a new binding selects it too


def test_the_watchdog_rolls_pods_an_outage_left_uninjected_only_when_told(
    make_binding, make_workload, make_pod
):
    binding = make_binding()
    deployment = make_workload("Deployment")
    missed = running(make_pod("checkout-1"))  # selected, created without the sidecars

    def due(**options: Any) -> list[Any]:
        return plan_rollouts(workloads=[deployment], pods=[missed], bindings=[binding],
                             namespace="shop", defaults=DEFAULTS, **options).due  # fmt: skip

    assert due(roll_missed=False) == []  # reported (MissedInjection), not rolled
    assert len(due(roll_missed=True)) == 1  # a binding change, or rollout_missed_injections
    assert len(due(roll_missed=False, deferred={"Deployment/checkout"})) == 1  # throttled


def test_a_quiet_namespace_needs_no_workload_listing(make_binding, make_workload, make_pod):
    binding = make_binding()
    deployment = make_workload("Deployment")
    content = bindings_hash(deployment["spec"]["template"], bindings=[binding],
                            namespace="shop", defaults=DEFAULTS)  # fmt: skip
    current = running(injected_by(make_pod("a"), "feature-flags", content=content))
    changed = make_binding(max_memory="1Gi")

    assert not pods_may_be_stale([current, running(make_pod("plain"))], [binding])
    assert pods_may_be_stale([current], [changed])  # the binding's spec changed
    assert pods_may_be_stale([current], [])  # the binding is gone
    assert pods_may_be_stale([running(injected_by(make_pod("old"), "feature-flags"))], [binding])


def test_roll_outs_are_throttled_per_namespace_and_per_minute(make_binding, make_pod):
    binding = make_binding()
    workloads = [make_workload_named(f"w{i}") for i in range(5)]
    plan = plan_rollouts(workloads=workloads, pods=[running(make_pod(f"w{i}-x")) for i in range(5)],
                         bindings=[binding], namespace="shop", defaults=DEFAULTS)  # fmt: skip
    assert len(plan.due) == 5 and plan.in_progress == 0

    throttle = RolloutThrottle(per_minute=18, per_namespace=2, now=0.0)  # a burst of 3
    assert [r.name for r in throttle.allow(plan, now=0.0)] == ["w0", "w1"]  # 2 per namespace
    busy = RolloutPlan(due=plan.due, in_progress=1)
    assert [r.name for r in throttle.allow(busy, now=0.0)] == ["w0"]  # the bucket's third token
    assert throttle.allow(plan, now=1.0) == []  # bucket empty
    assert len(throttle.allow(plan, now=4.0)) == 1  # one token per 3.3 s at 18 per minute
    assert len(throttle.allow(plan, now=600.0)) == 2  # never more than the burst, however idle


def make_workload_named(name: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "checkout"}},
                "spec": {"containers": [{"name": "app", "image": "a"}]}}  # fmt: skip
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "checkout"}},
                     "template": template}}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "rolling"),
    [
        ({"observedGeneration": 2, "updatedReplicas": 3}, False),
        ({"observedGeneration": 1, "updatedReplicas": 3}, True),
        ({"observedGeneration": 2, "updatedReplicas": 1}, True),
    ],
)
def test_a_workload_is_rolling_while_its_controller_replaces_pods(status, rolling):
    workload = {"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 3},
                "status": status}  # fmt: skip
    assert workload_rolling(workload) is rolling


# --- bindings owned by Deployments -----------------------------------------------------------


def annotated(make_workload, **annotations: str) -> dict[str, Any]:
    deployment = make_workload("Deployment")
    deployment["metadata"]["uid"] = "uid-1"
    deployment["metadata"]["annotations"] = {f"sidecarstate.dev/{k.replace('_', '-')}": v
                                             for k, v in annotations.items()}  # fmt: skip
    return deployment


def test_annotations_make_an_owned_binding(make_workload):
    deployment = annotated(make_workload, topics="flags, prices", memory="32Mi",
                           key_prefix="flag:", bootstrap_servers="k:9092")  # fmt: skip

    binding = owned_binding(deployment)

    assert binding is not None
    assert binding["metadata"]["name"] == "checkout"
    assert binding["metadata"]["ownerReferences"][0] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout", "uid": "uid-1",
        "controller": True,
    }  # fmt: skip  # no blockOwnerDeletion: it needs deployments/finalizers on OpenShift
    assert binding["spec"]["selector"] == {"matchLabels": {"app": "checkout"}}
    assert binding["spec"]["source"]["kafka"] == {"topics": ["flags", "prices"],
                                                  "bootstrapServers": ["k:9092"]}  # fmt: skip
    assert binding["spec"]["store"] == {"maxMemory": "32Mi"}
    assert binding["spec"]["keys"] == {"prefix": "flag:"}


def test_no_topics_annotation_means_no_binding(make_workload):
    assert owned_binding(annotated(make_workload, memory="32Mi")) is None


def test_invalid_annotations_name_the_problem(make_workload):
    with pytest.raises(ValueError, match=r"sidecarstate.dev/\*.*spec.store.maxMemory"):
        owned_binding(annotated(make_workload, topics="flags", memory="lots"))


def test_unreachable_hydrators_make_health_unknown_and_are_counted(make_binding):
    binding = make_binding()
    health = [HydratorHealth(pod="a", hydrated=True, oom_rejections=0), unreachable("b"),
              unreachable("c")]  # fmt: skip

    status = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS,
                          health=health, now=NOW)  # fmt: skip

    assert status["uncheckedPods"] == 2 and status["ready"] == "Unknown"
    assert status["unhydratedPods"] == []  # not answering is not "not hydrated"
    store = next(c for c in status["conditions"] if c["type"] == "StoreHealthy")
    assert (store["status"], store["reason"]) == ("Unknown", "HydratorsUnreachable")
    assert store["message"].startswith("1 hydrator(s) checked; 2 could not be reached")


def test_a_full_store_wins_over_unreachable_ones(make_binding):
    binding = make_binding()
    health = [HydratorHealth(pod="a", hydrated=True, oom_rejections=3), unreachable("b")]

    status = build_status(binding, pods=[], bindings=[binding], defaults=DEFAULTS,
                          health=health, now=NOW)  # fmt: skip

    assert status["ready"] == "False" and status["uncheckedPods"] == 1
