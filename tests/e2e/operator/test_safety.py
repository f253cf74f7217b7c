"""Safe on a real cluster: the outage-class defects, each against the real control plane.

Every scenario here failed before its fix: the update of an annotated Deployment's binding,
a deleted binding that Pods name, restarts by an operator upgrade, mesh ordering, Windows
Pods, and Secrets or brokers a binding may not use.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from localkube.access import ClusterAccess
from sidecar_state_stack.objects import (
    binding,
    container_names,
    deployment,
    get_binding,
    is_injected,
    pod,
    pods_of,
    redis_arg,
    wait_for,
    wait_reconciled,
)
from sidecar_state_stack.operator_process import OperatorHandle
from tests.e2e.operator.mesh_webhook import mesh_webhook

Pod = dict[str, Any]
SIDECARS = ["sidecar-state-credentials", "sidecar-state-redis", "sidecar-state-hydrator"]


def events_on(cluster: ClusterAccess, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind={kind},involvedObject.name={name}",
    )["items"]
    return items


def all_pods(cluster: ClusterAccess, namespace: str, selector: str, check: Any, count: int) -> Any:
    def probe() -> list[Pod] | None:
        pods = pods_of(cluster, namespace, selector)
        return pods if len(pods) == count and all(check(p) for p in pods) else None

    return wait_for(probe, timeout=90, what=f"{count} Pod(s) {selector} to satisfy the check")


# --- item 1: Deployment annotations ---------------------------------------------------------


def test_changing_a_deployment_annotation_updates_its_binding_and_rolls(
    cluster: ClusterAccess, namespace: str
) -> None:
    annotations = {
        "sidecarstate.dev/topics": "feature-flags",
        "sidecarstate.dev/memory": "32Mi",
        "sidecarstate.dev/key-prefix": "flag:",
    }
    cluster.apply(deployment("annotated", namespace, annotations=annotations))
    all_pods(
        cluster,
        namespace,
        "app=annotated",
        lambda p: is_injected(p) and redis_arg(p, "--maxmemory") == str(32 * 2**20),
        1,
    )

    cluster.kubectl_run(
        "annotate",
        "deployment",
        "annotated",
        "-n",
        namespace,
        "--overwrite",
        "sidecarstate.dev/memory=48Mi",
        "sidecarstate.dev/key-prefix-",
    )

    def updated() -> dict[str, Any] | None:
        found = get_binding(cluster, "annotated", namespace) or {}
        spec = found.get("spec") or {}
        return found if (spec.get("store") or {}).get("maxMemory") == "48Mi" else None

    found = wait_for(updated, timeout=30, what="the owned binding to get maxMemory 48Mi")
    assert "keys" not in found["spec"] or found["spec"]["keys"].get("prefix", "") == ""
    all_pods(
        cluster,
        namespace,
        "app=annotated",
        lambda p: is_injected(p) and redis_arg(p, "--maxmemory") == str(48 * 2**20),
        1,
    )


def test_a_clashing_binding_is_reported_once_not_on_every_deployment_event(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("taken", namespace))
    wait_reconciled(cluster, "taken", namespace)
    cluster.apply(
        deployment(
            "taken",
            namespace,
            labels={"app": "other"},
            annotations={"sidecarstate.dev/topics": "prices"},
        )
    )
    wait_for(
        lambda: [
            e
            for e in events_on(cluster, namespace, "Deployment", "taken")
            if e["reason"] == "BindingExists"
        ],
        timeout=30,
        what="a BindingExists Event",
    )
    for step in range(4):  # each is a Deployment event (and a ReplicaSet roll-out or scale)
        cluster.kubectl_run(
            "annotate",
            "deployment",
            "taken",
            "-n",
            namespace,
            "--overwrite",
            f"example.com/touch={step}",
        )
        cluster.kubectl_run(
            "scale", "deployment", "taken", "-n", namespace, f"--replicas={step % 2 + 1}"
        )
    time.sleep(4)  # Events are posted asynchronously

    clashes = [
        e
        for e in events_on(cluster, namespace, "Deployment", "taken")
        if e["reason"] == "BindingExists"
    ]
    assert len(clashes) == 1 and clashes[0].get("count", 1) == 1, clashes
    assert (get_binding(cluster, "taken", namespace) or {})["spec"]["source"]["kafka"][
        "topics"
    ] == ["feature-flags"]  # never taken over


# --- item 2: a deleted binding that Pods name --------------------------------------------------


def test_deleting_a_named_binding_never_stops_the_workload_having_pods(
    cluster: ClusterAccess, namespace: str
) -> None:
    # Another binding keeps the namespace labelled, so the webhook sees the Pods (with none
    # left, the namespace leaves the webhook's selector and Pods are admitted without it).
    cluster.apply(binding("named", namespace), binding("neighbour", namespace))
    wait_reconciled(cluster, "named", namespace)
    dep = deployment("uses-named", namespace)  # Recreate: the strategy that lost every Pod
    dep["spec"]["template"]["metadata"]["annotations"] = {"sidecarstate.dev/bindings": "named"}
    cluster.apply(dep)
    (before,) = all_pods(cluster, namespace, "app=uses-named", is_injected, 1)

    cluster.kubectl_run("delete", "sb", "named", "-n", namespace)
    time.sleep(5)  # the controller's passes: it must not roll the workload away from the binding
    (still,) = pods_of(cluster, namespace, "app=uses-named")
    assert still["metadata"]["name"] == before["metadata"]["name"]

    # An evicted Pod is replaced: the new one is admitted, without the sidecars, with a warning.
    cluster.kubectl_run("delete", "pod", before["metadata"]["name"], "-n", namespace)
    (after,) = all_pods(cluster, namespace, "app=uses-named", lambda p: not is_injected(p), 1)
    assert after["metadata"]["name"] != before["metadata"]["name"]
    replica_set = after["metadata"]["ownerReferences"][0]["name"]
    (warning, *_) = wait_for(
        lambda: [
            e
            for e in events_on(cluster, namespace, "ReplicaSet", replica_set)
            if e["reason"] == "BindingMissing"
        ],
        timeout=30,
        what="a BindingMissing Event on the ReplicaSet",
    )
    assert warning["type"] == "Warning" and "named" in warning["message"]

    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bare",
            "namespace": namespace,
            "annotations": {"sidecarstate.dev/bindings": "named"},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }
    created = cluster.kubectl_run("create", "-f", "-", input=json.dumps(bare))
    assert "StateBinding(s) named" in created.stderr and "do not exist" in created.stderr


# --- item 3: upgrades restart nothing; binding changes roll at a bounded rate ----------------


def test_an_operator_upgrade_restarts_no_workload(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    cluster.apply(binding("steady", namespace))
    wait_reconciled(cluster, "steady", namespace)
    cluster.apply(deployment("steady", namespace, replicas=2))
    before = all_pods(cluster, namespace, "app=steady", is_injected, 2)
    generation = cluster.kubectl_json("get", "deployment", "steady", "-n", namespace)["metadata"][
        "generation"
    ]

    upgraded = {
        "SIDECAR_STATE_HYDRATOR_IMAGE": "sidecar-state/hydrator:next",
        "SIDECAR_STATE_IMAGE_PULL_POLICY": "Always",
        "SIDECAR_STATE_MAX_MEMORY": "96Mi",
    }
    with operator.restart_with(upgraded):
        # Resume handlers and several watchdog passes (2 s apart in this suite) run meanwhile.
        time.sleep(8)
        found = cluster.kubectl_json("get", "deployment", "steady", "-n", namespace)
        assert found["metadata"]["generation"] == generation, "the Deployment was rolled"
        pods = pods_of(cluster, namespace, "app=steady")
        assert {p["metadata"]["name"] for p in pods} == {p["metadata"]["name"] for p in before}

        # New Pods get the new sidecars: scale up, and the new Pod has the new image.
        cluster.kubectl_run("scale", "deployment", "steady", "-n", namespace, "--replicas=3")
        pods = all_pods(cluster, namespace, "app=steady", is_injected, 3)
        (new,) = [
            p for p in pods if p["metadata"]["name"] not in {b["metadata"]["name"] for b in before}
        ]
        images = {c["name"]: c["image"] for c in new["spec"]["initContainers"]}
        assert images["sidecar-state-hydrator"] == "sidecar-state/hydrator:next"


def test_a_binding_change_rolls_its_workloads_at_a_bounded_rate(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    sb = binding("wide", namespace, labels={"tier": "wide"})
    cluster.apply(sb)
    wait_reconciled(cluster, "wide", namespace)
    names = [f"wide-{i}" for i in range(4)]
    for name in names:
        dep = deployment(name, namespace, labels={"app": name, "tier": "wide"})
        cluster.apply(dep)
    for name in names:
        all_pods(cluster, namespace, f"app={name}", is_injected, 1)

    def rolled() -> list[str]:
        hashes = {}
        for name in names:
            found = cluster.kubectl_json("get", "deployment", name, "-n", namespace)
            annotations = found["spec"]["template"]["metadata"].get("annotations") or {}
            hashes[name] = annotations.get("sidecarstate.dev/template-hash")
        return [n for n, h in hashes.items() if h is not None and h != first[n]]

    first: dict[str, str | None] = {}
    for name in names:
        found = cluster.kubectl_json("get", "deployment", name, "-n", namespace)
        first[name] = (found["spec"]["template"]["metadata"].get("annotations") or {}).get(
            "sidecarstate.dev/template-hash"
        )
    with operator.restart_with({"SIDECAR_STATE_ROLLOUT_MAX_PER_MINUTE": "6"}):
        sb["spec"]["store"]["maxMemory"] = "80Mi"
        cluster.apply(sb)
        time.sleep(6)  # 6 per minute: one now, then one per 10 s
        assert len(rolled()) == 1, rolled()
        wait_for(lambda: len(rolled()) == 4, timeout=90, what="all four rolled, in turn")


# --- item 7: mesh ordering, re-invocation, unreachable hydrators -----------------------------


def test_sidecars_go_after_the_init_containers_and_sidecars_of_a_mesh(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("meshed", namespace))
    wait_reconciled(cluster, "meshed", namespace)
    meshed = pod("meshed", namespace, labels={"app": "meshed"})
    # What Istio's injector (it runs before ours: webhooks run in name order) leaves behind.
    meshed["spec"]["initContainers"] = [
        {"name": "istio-init", "image": "registry.invalid/proxyv2:1"},
        {"name": "istio-proxy", "image": "registry.invalid/proxyv2:1", "restartPolicy": "Always"},
        {"name": "migrate", "image": "registry.invalid/app:1"},
    ]
    cluster.apply(meshed)

    inits, _ = container_names(cluster.kubectl_json("get", "pod", "meshed", "-n", namespace))
    assert inits == ["istio-init", "istio-proxy", *SIDECARS, "migrate"]


@pytest.mark.local_cluster  # the stand-in mesh webhook runs on this machine, out of kind's reach
def test_a_mesh_injected_after_us_is_handled_by_reinvocation(
    cluster: ClusterAccess, namespace: str, tmp_path: Path
) -> None:
    cluster.apply(binding("late-mesh", namespace))
    wait_reconciled(cluster, "late-mesh", namespace)
    with mesh_webhook(cluster, namespace=namespace, workdir=tmp_path):
        cluster.apply(pod("late-mesh", namespace, labels={"app": "late-mesh"}))
        found = cluster.kubectl_json("get", "pod", "late-mesh", "-n", namespace)

    inits, _ = container_names(found)
    assert inits == ["linkerd-proxy", *SIDECARS]
    assert is_injected(found)


def test_an_unreachable_hydrator_is_unknown_and_counted(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("strict", namespace))
    wait_reconciled(cluster, "strict", namespace)
    cluster.apply(pod("strict", namespace, labels={"app": "strict"}))
    # No kubelet runs here: the Pod's status is written as one would under STRICT mTLS, with an
    # address whose metrics port never answers (TEST-NET-1).
    status = {"status": {"phase": "Running", "podIP": "192.0.2.10",
                         "podIPs": [{"ip": "192.0.2.10"}]}}  # fmt: skip
    cluster.kubectl_run("patch", "pod", "strict", "-n", namespace, "--subresource=status",
                        "--type=merge", "-p", json.dumps(status))  # fmt: skip

    def counted() -> dict[str, Any] | None:
        found = get_binding(cluster, "strict", namespace) or {}
        return found if (found.get("status") or {}).get("uncheckedPods") == 1 else None

    found = wait_for(counted, timeout=30, what="uncheckedPods=1 on the binding")
    conditions = {c["type"]: c for c in found["status"]["conditions"]}
    assert conditions["StoreHealthy"]["status"] == "Unknown"
    assert "1 could not be reached" in conditions["StoreHealthy"]["message"]
    assert conditions["Ready"]["status"] == "Unknown"


# --- item 9: Windows Pods --------------------------------------------------------------------


def test_windows_pods_are_skipped_with_an_event(cluster: ClusterAccess, namespace: str) -> None:
    cluster.apply(binding("win", namespace))
    wait_reconciled(cluster, "win", namespace)
    windows = pod("win", namespace, labels={"app": "win"})
    windows["spec"]["os"] = {"name": "windows"}

    created = cluster.kubectl_run("create", "-f", "-", input=json.dumps(windows))

    assert "Windows Pods are never injected" in created.stderr  # the admission warning
    assert not is_injected(cluster.kubectl_json("get", "pod", "win", "-n", namespace))
    (event, *_) = wait_for(
        lambda: [e for e in events_on(cluster, namespace, "StateBinding", "win")
                 if e["reason"] == "Skipped" and "Windows" in e["message"]],
        timeout=15, what="a Skipped Event about the Windows Pod",
    )  # fmt: skip
    assert "Pod win" in event["message"]


# --- item 12: Secrets opt in; brokers are allow-listed ----------------------------------------


def _apply_refused(cluster: ClusterAccess, obj: dict[str, Any]) -> str:
    proc = cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert proc.returncode != 0, f"{obj['metadata']['name']} was admitted"
    return proc.stderr


def test_a_binding_may_use_only_a_secret_that_opted_in(
    cluster: ClusterAccess, namespace: str
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "kafka-creds", "namespace": namespace},
              "stringData": {"username": "app", "password": "s3cret"}}  # fmt: skip
    cluster.apply(secret)
    sb = binding("creds", namespace)
    sb["spec"]["source"]["kafka"]["auth"] = {"secretRef": {"name": "kafka-creds"},
                                             "mechanism": "PLAIN", "tls": True}  # fmt: skip

    message = _apply_refused(cluster, sb)
    assert "Secret 'kafka-creds' has not opted in" in message
    assert (
        f"kubectl label secret kafka-creds -n {namespace} sidecarstate.dev/allow-bindings=true"
        in message
    )

    missing = {**sb, "metadata": {"name": "creds-missing", "namespace": namespace},
               "spec": {**sb["spec"], "source": {"kafka": {**sb["spec"]["source"]["kafka"],
                        "auth": {"secretRef": {"name": "nowhere"}, "mechanism": "PLAIN",
                                 "tls": True}}}}}  # fmt: skip
    assert "Secret 'nowhere' does not exist" in _apply_refused(cluster, missing)

    cluster.kubectl_run("annotate", "secret", "kafka-creds", "-n", namespace,
                        "sidecarstate.dev/allow-bindings=creds")  # fmt: skip
    cluster.apply(sb)
    assert get_binding(cluster, "creds", namespace) is not None


def test_a_nats_binding_may_use_only_a_secret_that_opted_in(
    cluster: ClusterAccess, namespace: str
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "nats-auth", "namespace": namespace},
              "stringData": {"token": "s3cret"}}  # fmt: skip
    cluster.apply(secret)
    sb = binding("nats-creds", namespace)
    sb["spec"]["source"] = {"nats": {"kv": {"bucket": "flags"}, "auth": {
        "secretRef": {"name": "nats-auth"}, "method": "token", "tls": True}}}  # fmt: skip

    message = _apply_refused(cluster, sb)
    assert "spec.source.nats.auth.secretRef.name: Secret 'nats-auth' has not opted in" in message

    cluster.kubectl_run("annotate", "secret", "nats-auth", "-n", namespace,
                        "sidecarstate.dev/allow-bindings=nats-creds")  # fmt: skip
    cluster.apply(sb)
    assert get_binding(cluster, "nats-creds", namespace) is not None


def test_bootstrap_servers_outside_the_allow_list_are_refused(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    with operator.restart_with({"SIDECAR_STATE_ALLOWED_BOOTSTRAP_SERVERS": "*.svc:9092"}):
        sb = binding("elsewhere", namespace)
        servers = ["kafka.data.svc:9092", "collector.example.com:9092"]
        sb["spec"]["source"]["kafka"]["bootstrapServers"] = servers
        message = _apply_refused(cluster, sb)
        assert "bootstrapServers[1]: 'collector.example.com:9092' is not allowed" in message
        assert "*.svc:9092" in message

        sb["spec"]["source"]["kafka"]["bootstrapServers"] = ["kafka.data.svc:9092"]
        cluster.apply(sb)
        assert get_binding(cluster, "elsewhere", namespace) is not None


def test_nats_servers_outside_the_allow_list_are_refused(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    with operator.restart_with({"SIDECAR_STATE_ALLOWED_NATS_SERVERS": "*.nats.svc:4222"}):
        sb = binding("nats-elsewhere", namespace)
        servers = ["tls://flags.nats.svc:4222", "nats://collector.example.com:4222"]
        sb["spec"]["source"] = {"nats": {"kv": {"bucket": "flags"}, "servers": servers}}
        message = _apply_refused(cluster, sb)
        assert (
            "spec.source.nats.servers[1]: 'nats://collector.example.com:4222' is not allowed"
            in message
        )
        assert "*.nats.svc:4222" in message and "nats.allowedServers" in message

        sb["spec"]["source"]["nats"]["servers"] = servers[:1]
        cluster.apply(sb)
        assert get_binding(cluster, "nats-elsewhere", namespace) is not None
        # The operator's default servers need no entry in the list.
        default = binding("nats-default", namespace)
        default["spec"]["source"] = {"nats": {"kv": {"bucket": "flags"}}}
        cluster.apply(default)
        assert get_binding(cluster, "nats-default", namespace) is not None


# --- item 6: native sidecars only where the server runs them ---------------------------------


def test_auto_mode_asks_the_server_and_injects_native_sidecars_on_it(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    version = cluster.kubectl_json("version")["serverVersion"]
    minor = int("".join(ch for ch in version["minor"] if ch.isdigit()))
    cluster.apply(binding("auto", namespace))
    wait_reconciled(cluster, "auto", namespace)
    with operator.restart_with({"SIDECAR_STATE_SIDECAR_MODE": "auto"}):
        assert f"Kubernetes 1.{minor} runs native sidecars" in operator.log_tail(400)
        cluster.apply(pod("auto", namespace, labels={"app": "auto"}))
        found = cluster.kubectl_json("get", "pod", "auto", "-n", namespace)

    inits, containers = container_names(found)
    assert inits == SIDECARS and containers == ["app"]
    running = [c for c in found["spec"]["initContainers"] if c["name"] in SIDECARS[1:]]
    assert [c.get("restartPolicy") for c in running] == ["Always", "Always"]


# --- item 8: policies ------------------------------------------------------------------------


def test_injected_pods_pass_a_limit_range_and_take_per_pod_overrides(
    cluster: ClusterAccess, namespace: str
) -> None:
    ratio = {"type": "Container", "maxLimitRequestRatio": {"cpu": "2", "memory": "2"}}
    limits = {"apiVersion": "v1", "kind": "LimitRange",
              "metadata": {"name": "ratio", "namespace": namespace},
              "spec": {"limits": [ratio]}}  # fmt: skip
    cluster.apply(limits, binding("policed", namespace))
    wait_reconciled(cluster, "policed", namespace)

    def app_pod(name: str, **options: Any) -> dict[str, Any]:
        made = pod(name, namespace, labels={"app": "policed"}, **options)
        quantity = {"cpu": "100m", "memory": "64Mi"}
        made["spec"]["containers"][0]["resources"] = {"requests": quantity, "limits": quantity}
        return made

    cluster.apply(app_pod("policed"))  # LimitRanger admits it, sidecars included
    assert is_injected(cluster.kubectl_json("get", "pod", "policed", "-n", namespace))

    overrides = {"sidecarstate.dev/metrics-port": "9470", "sidecarstate.dev/user-ids": "platform",
                 "sidecarstate.dev/hydrator-cpu-limit": "150m"}  # fmt: skip
    cluster.apply(app_pod("tuned", annotations=overrides))
    found = cluster.kubectl_json("get", "pod", "tuned", "-n", namespace)
    hydrator = next(
        c for c in found["spec"]["initContainers"] if c["name"] == "sidecar-state-hydrator"
    )
    assert hydrator["ports"][0]["containerPort"] == 9470
    assert hydrator["resources"]["limits"]["cpu"] == "150m"
    assert "runAsUser" not in hydrator["securityContext"]


def test_an_app_on_the_metrics_port_is_refused_with_a_hint(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("otel", namespace))
    wait_reconciled(cluster, "otel", namespace)
    app = pod("otel", namespace, labels={"app": "otel"})
    app["spec"]["containers"][0]["ports"] = [{"name": "prometheus", "containerPort": 9464}]

    proc = cluster.kubectl_run("create", "-f", "-", input=json.dumps(app), check=False)

    assert proc.returncode != 0
    assert (
        "already uses port 9464" in proc.stderr and "sidecarstate.dev/metrics-port" in proc.stderr
    )


# --- item 4: reconcile fan-out ----------------------------------------------------------------


def _requests(cluster: ClusterAccess, *, verb: str, resource: str, subresource: str = "") -> float:
    """What the apiserver itself counted (apiserver_request_total), all clients together."""
    total = 0.0
    for line in cluster.kubectl_run("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = line[line.index("{") + 1 : line.index("}")]
        if (f'verb="{verb}"' in labels and f'resource="{resource}"' in labels
                and f'subresource="{subresource}"' in labels):  # fmt: skip
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_many_bindings_in_a_namespace_cost_one_pass_not_one_per_binding(
    cluster: ClusterAccess, namespace: str
) -> None:
    bindings = [binding(f"many-{i}", namespace, labels={"app": f"many-{i}"}) for i in range(10)]
    gets_before = _requests(cluster, verb="GET", resource="statebindings")
    # create (POST only; apply would GET each object) and wait by LIST, so that every GET of a
    # StateBinding counted below is the operator's.
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": bindings})
    cluster.kubectl_run("create", "-f", "-", input=document)

    def all_reconciled() -> bool:
        items = cluster.kubectl_json("get", "statebindings", "-n", namespace)["items"]
        return len(items) == 10 and all(
            (i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"]
            for i in items
        )

    wait_for(all_reconciled, timeout=60, what="all ten bindings reconciled")
    time.sleep(5)  # a few watchdog passes (every 2 s here)

    gets = _requests(cluster, verb="GET", resource="statebindings") - gets_before
    assert gets <= 2, f"{gets:.0f} GETs of StateBindings: one per binding per pass"


# --- item 11: missed injections roll only when the operator is told to ----------------------


def test_pods_an_outage_left_uninjected_are_reported_and_rolled_only_on_opt_in(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    cluster.apply(binding("outaged", namespace))
    wait_reconciled(cluster, "outaged", namespace)
    cluster.apply(deployment("outaged", namespace))
    all_pods(cluster, namespace, "app=outaged", is_injected, 1)
    operator.register_webhooks("Ignore")
    operator.stop()
    try:
        cluster.kubectl_run("scale", "deployment", "outaged", "-n", namespace, "--replicas=2")
        pods = all_pods(cluster, namespace, "app=outaged", lambda p: True, 2)
        assert sorted(is_injected(p) for p in pods) == [False, True]
    finally:
        operator.start()
        operator.register_webhooks("Fail")

    def reported() -> dict[str, Any] | None:
        found = get_binding(cluster, "outaged", namespace) or {}
        return found if (found.get("status") or {}).get("uninjectedPods") else None

    wait_for(reported, timeout=30, what="the uninjected Pod on the binding's status")
    time.sleep(4)  # watchdog passes: without the opt-in they do not roll it
    assert sorted(is_injected(p) for p in pods_of(cluster, namespace, "app=outaged")) == [
        False,
        True,
    ]

    with operator.restart_with({"SIDECAR_STATE_ROLLOUT_MISSED_INJECTIONS": "true"}):
        all_pods(cluster, namespace, "app=outaged", is_injected, 2)


def test_a_namespace_label_pinned_by_its_owner_is_never_changed(
    cluster: ClusterAccess, namespace: str
) -> None:
    """GitOps: ``sidecarstate.dev/injection=always`` keeps the namespace served by the webhook
    whether or not the controller runs; the controller neither rewrites nor removes it."""
    cluster.kubectl_run("label", "namespace", namespace, "sidecarstate.dev/injection=always")
    cluster.apply(binding("pinned", namespace))
    wait_reconciled(cluster, "pinned", namespace)
    cluster.apply(pod("pinned", namespace, labels={"app": "pinned"}))
    assert is_injected(cluster.kubectl_json("get", "pod", "pinned", "-n", namespace))
    cluster.kubectl_run("delete", "sb", "pinned", "-n", namespace)
    time.sleep(5)  # passes for the deletion and the watchdog

    labels = cluster.kubectl_json("get", "namespace", namespace)["metadata"]["labels"]
    assert labels.get("sidecarstate.dev/injection") == "always"
