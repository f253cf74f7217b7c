"""Scenarios 5 and 6: status, Events and columns; webhook outages, Fail and Ignore."""

from __future__ import annotations

import json

from localkube.access import ClusterAccess
from sidecar_state_stack.objects import binding, deployment, get_binding, is_injected, pod, wait_for
from sidecar_state_stack.operator_process import OperatorHandle


def _condition(found: dict, kind: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in found["status"]["conditions"] if c["type"] == kind)


def test_status_events_and_columns(cluster: ClusterAccess, namespace: str) -> None:
    cluster.apply(binding("catalog", namespace, topics=["products", "prices"]))
    cluster.apply(deployment("catalog", namespace, replicas=3))

    def counted() -> dict | None:  # type: ignore[type-arg]
        found = get_binding(cluster, "catalog", namespace)
        status = (found or {}).get("status") or {}
        if (status.get("matchedPods"), status.get("injectedPods")) != (3, 3):
            return None
        # A pass may count the Pods before their hydrators listen: Ready is then Unknown
        # (HydratorsUnreachable), truthfully, until a later pass reaches them.
        return found if _condition(found, "Ready")["status"] == "True" else None

    found = wait_for(counted, timeout=90, what="matchedPods=3 injectedPods=3 and Ready=True")
    assert _condition(found, "Ready")["observedGeneration"] == 1
    assert _condition(found, "PodsInjected")["status"] == "True"
    assert found["status"]["uninjectedPods"] == []

    table = cluster.kubectl_run("get", "sb", "catalog", "-n", namespace).stdout.split("\n")
    header, row = table[0].split(), table[1].split()
    assert header[:6] == ["NAME", "TOPICS", "MEMORY", "MATCHED", "INJECTED", "READY"]
    assert row[:6] == ["catalog", "products,prices", "64Mi", "3", "3", "True"]

    def injected_events() -> list[dict] | None:  # type: ignore[type-arg]
        events = cluster.kubectl_json(
            "get", "events", "-n", namespace, "--field-selector",
            "involvedObject.kind=StateBinding,involvedObject.name=catalog",
        )["items"]  # fmt: skip
        return [e for e in events if e["reason"] == "Injected"] or None

    # Events are coalesced and posted off the admission path, a second or so later.
    injected = wait_for(injected_events, timeout=15, what="an Injected Event on the binding")
    assert "sidecars injected" in injected[0]["message"]


def test_webhook_outage_fail_refuses_matching_pods_only(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    cluster.apply(binding("outage", namespace))
    wait_for(lambda: (get_binding(cluster, "outage", namespace) or {}).get("status"),
             what="binding reconciled")  # fmt: skip
    cluster.kubectl_run("create", "namespace", f"{namespace}-other")
    operator.stop()
    try:
        matching = json.dumps(pod("refused", namespace, labels={"app": "outage"}))
        proc = cluster.kubectl_run("create", "-f", "-", input=matching, check=False)
        assert proc.returncode != 0
        assert "inject-pods.sidecarstate.dev" in proc.stderr, proc.stderr

        unrelated = json.dumps(pod("fine", f"{namespace}-other", labels={"app": "outage"}))
        cluster.kubectl_run("create", "-f", "-", input=unrelated)
    finally:
        operator.start()
        cluster.kubectl_run("delete", "namespace", f"{namespace}-other", "--wait=false")


def test_webhook_outage_ignore_is_reported_by_the_watchdog(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    cluster.apply(binding("watched", namespace))
    wait_for(lambda: (get_binding(cluster, "watched", namespace) or {}).get("status"),
             what="binding reconciled")  # fmt: skip
    operator.register_webhooks("Ignore")
    operator.stop()
    try:
        cluster.apply(pod("missed", namespace, labels={"app": "watched"}))
        assert not is_injected(cluster.kubectl_json("get", "pod", "missed", "-n", namespace))
    finally:
        operator.start()
        operator.register_webhooks("Fail")

    def reported() -> dict | None:  # type: ignore[type-arg]
        found = get_binding(cluster, "watched", namespace) or {}
        return found if "missed" in (found.get("status") or {}).get("uninjectedPods", []) else None

    found = wait_for(reported, timeout=30, what="the watchdog to report the Pod")
    condition = _condition(found, "PodsInjected")
    assert condition["status"] == "False" and condition["reason"] == "MissedInjection"
    assert "missed" in condition["message"]
