"""``sidecar-state check`` against the real control plane, with one thing broken per case.

The command runs as a user runs it: a process with the cluster's kubeconfig. A healthy
namespace passes (exit 0); then a namespace without the injection label, a wiped caBundle, and
a binding that is not Ready each fail (exit 1) with the ✗ line and its advice.

The controller repairs the label and the status within seconds (its watchdog), so the cases
that break those run with the controller paused: locally the operator is replaced by one that
runs the webhook role only; on an existing cluster the controller is scaled to zero and its Pod
waited out (its own check then fails too). The chart's webhook role restores a wiped caBundle
within seconds (handlers/ca_bundle.py); that case takes away its right to patch the
configurations meanwhile, as a tightened RBAC would.

The last case fires the operator's alerts (missed injection, webhook refusals) with
``promtool test rules`` on series scraped from the real operator's ``/metrics``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localkube.access import ClusterAccess
from sidecar_operator.check import FAILED, OK
from sidecar_operator.webhook_config import DEFAULT_NAME
from sidecar_state_stack.monitoring import find_helm, find_promtool, rendered_rules, run_promtool
from sidecar_state_stack.objects import binding, get_binding, pod, wait_for
from sidecar_state_stack.operator_process import (
    OPERATOR_NAMESPACE,
    REPO,
    ChartOperator,
    LocalOperator,
    OperatorHandle,
)

LABEL = "sidecarstate.dev/injection"


def sidecar_state_check(cluster: ClusterAccess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar_operator.cli", "check", *args],
        env=cluster.env(), capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip


def failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(FAILED + " ")]


class WebhookOnly(LocalOperator):
    """The operator without its controller: nothing repairs labels or status meanwhile."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "SIDECAR_STATE_ROLE": "webhook"}


@contextlib.contextmanager
def controller_paused(
    cluster: ClusterAccess, operator: OperatorHandle, workdir: Path
) -> Iterator[None]:
    if isinstance(operator, ChartOperator):
        operator.stop_controller()
        try:
            yield
        finally:
            operator.start()
        return
    policy = operator.failure_policy
    operator.stop()
    webhook = WebhookOnly(cluster=cluster, workdir=workdir)
    webhook.start()
    webhook.register_webhooks(policy)
    try:
        yield
    finally:
        webhook.stop()
        operator.start()
        operator.register_webhooks(policy)


@contextlib.contextmanager
def ca_bundle_repair_paused(operator: OperatorHandle) -> Iterator[None]:
    """The chart's webhook role without ``patch`` on its webhook configurations, until the
    authorizer says so (``kubectl auth can-i`` as its ServiceAccount); a local operator
    registered with ``register-webhooks`` repairs nothing, so there it changes nothing."""
    if not isinstance(operator, ChartOperator):
        yield
        return
    cluster, role = operator.cluster, operator.webhook
    rules = cluster.kubectl_json("get", "clusterrole", role)["rules"]
    ours = [
        {**r, "verbs": [v for v in r["verbs"] if v != "patch"]}
        if r.get("apiGroups") == ["admissionregistration.k8s.io"] and "patch" in r["verbs"]
        else r
        for r in rules
    ]
    assert ours != rules, f"ClusterRole {role} grants no patch on webhook configurations"

    def can_patch() -> bool:
        proc = cluster.kubectl_run(
            "auth", "can-i", "patch", f"mutatingwebhookconfigurations/{operator.configuration}",
            f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{role}", check=False,
        )  # fmt: skip
        return proc.stdout.strip() == "yes"

    def set_rules(value: list[dict[str, object]], *, allowed: bool) -> None:
        patch = json.dumps([{"op": "replace", "path": "/rules", "value": value}])
        cluster.kubectl_run("patch", "clusterrole", role, "--type=json", "-p", patch)
        wait_for(lambda: can_patch() == allowed, timeout=30,
                 what=f"{role} {'' if allowed else 'not '}allowed to patch")  # fmt: skip

    set_rules(ours, allowed=False)
    try:
        yield
    finally:
        set_rules(rules, allowed=True)


def reconciled(cluster: ClusterAccess, name: str, namespace: str) -> None:
    def ready() -> bool:
        found = get_binding(cluster, name, namespace) or {}
        status = found.get("status") or {}
        labels = cluster.kubectl_json("get", "namespace", namespace)["metadata"].get("labels", {})
        return status.get("ready") == "True" and labels.get(LABEL) == "enabled"

    wait_for(ready, timeout=60, what=f"{namespace}/{name} Ready and its namespace labelled")


def test_a_healthy_namespace_passes(cluster: ClusterAccess, namespace: str) -> None:
    cluster.apply(binding("flags", namespace))
    reconciled(cluster, "flags", namespace)

    proc = sidecar_state_check(cluster, "--namespace", namespace)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert failures(proc.stdout) == []
    for line in (
        f"{OK} statebindings.sidecarstate.dev is installed",
        f"{OK} inject-pods.sidecarstate.dev: caBundle verifies the serving certificate",
        f"{OK} inject-pods.sidecarstate.dev: the endpoint answers",
        f"{OK} validate-statebindings.sidecarstate.dev: the endpoint answers",
        f"{OK} namespace {namespace} has {LABEL}=enabled",
        f"{OK} StateBinding {namespace}/flags is Ready",
    ):
        assert line in proc.stdout, proc.stdout
    assert "checks passed" in proc.stdout

    wide = cluster.kubectl_run("get", "sb", "flags", "-n", namespace, "-o", "wide").stdout
    header, row = (line.split() for line in wide.splitlines()[:2])
    assert header[-3:] == ["SOURCE", "HYDRATED", "WORST-STALENESS"]
    assert row[header.index("SOURCE")] == "kafka://kafka.data.svc:9092"

    explained = cluster.kubectl_run("explain", "statebinding.spec.source.kafka.topics").stdout
    explained = " ".join(explained.split())  # kubectl wraps lines
    assert "1-64 Kafka topics" in explained and "Example: [feature-flags, prices]" in explained


def test_a_namespace_without_the_injection_label_fails(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle, tmp_path: Path
) -> None:
    cluster.apply(binding("flags", namespace))
    reconciled(cluster, "flags", namespace)
    with controller_paused(cluster, operator, tmp_path):
        cluster.kubectl_run("label", "namespace", namespace, f"{LABEL}-")

        proc = sidecar_state_check(cluster, "--namespace", namespace)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{FAILED} namespace {namespace} has {LABEL}=enabled" in proc.stdout
    assert f"kubectl label namespace {namespace} {LABEL}=enabled" in proc.stdout
    if isinstance(operator, LocalOperator):
        assert len(failures(proc.stdout)) == 1, proc.stdout


def test_a_wiped_ca_bundle_fails(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    cluster.apply(binding("flags", namespace))
    reconciled(cluster, "flags", namespace)
    name = operator.configuration if isinstance(operator, ChartOperator) else DEFAULT_NAME
    config = cluster.kubectl_json("get", "mutatingwebhookconfiguration", name)
    saved = config["webhooks"][0]["clientConfig"]["caBundle"]
    assert base64.b64decode(saved).startswith(b"-----BEGIN CERTIFICATE-----")
    wipe = [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ""}]
    with ca_bundle_repair_paused(operator):
        cluster.kubectl_run("patch", "mutatingwebhookconfiguration", name, "--type=json",
                            "-p", json.dumps(wipe))  # fmt: skip
        try:
            proc = sidecar_state_check(cluster, "--namespace", namespace)
            # What the apiserver does meanwhile, and what SidecarStateWebhookFailing reads.
            matching = json.dumps(pod("p", namespace, labels={"app": "flags"}))
            refused = cluster.kubectl_run("create", "-f", "-", input=matching, check=False)
            metrics = cluster.kubectl_run("get", "--raw", "/metrics").stdout
        finally:
            restore = [
                {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": saved}
            ]
            cluster.kubectl_run("patch", "mutatingwebhookconfiguration", name, "--type=json",
                                "-p", json.dumps(restore))  # fmt: skip

    assert proc.returncode == 1, proc.stdout + proc.stderr
    (failure,) = failures(proc.stdout)
    assert failure.startswith(
        f"{FAILED} inject-pods.sidecarstate.dev: caBundle verifies the serving certificate"
    )
    assert "rollout restart" in proc.stdout
    assert refused.returncode != 0 and "inject-pods.sidecarstate.dev" in refused.stderr
    failing = [
        line for line in metrics.splitlines()
        if line.startswith("apiserver_admission_webhook_rejection_count{")
        and 'name="inject-pods.sidecarstate.dev"' in line
        and 'error_type="calling_webhook_error"' in line
    ]  # fmt: skip
    assert failing, "the apiserver exports no series the SidecarStateWebhookFailing alert reads"


def test_a_binding_that_is_not_ready_fails(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle, tmp_path: Path
) -> None:
    cluster.apply(binding("flags", namespace), binding("prices", namespace))
    reconciled(cluster, "flags", namespace)
    reconciled(cluster, "prices", namespace)
    with controller_paused(cluster, operator, tmp_path):
        # What the controller writes when a Pod's store is full (the node suite makes it for
        # real; here no Pod runs).
        status = (get_binding(cluster, "prices", namespace) or {})["status"]
        status["conditions"] = [
            {**c, "status": "False", "reason": "StoreFull",
             "message": "1 Pod(s) refused writes because the store is full"}
            if c["type"] == "Ready" else c
            for c in status["conditions"]
        ]  # fmt: skip
        status["ready"] = "False"
        cluster.kubectl_run("patch", "statebinding", "prices", "-n", namespace,
                            "--subresource=status", "--type=merge",
                            "-p", json.dumps({"status": status}))  # fmt: skip

        proc = sidecar_state_check(cluster, "--namespace", namespace)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{FAILED} StateBinding {namespace}/prices is Ready (StoreFull: 1 Pod(s)" in proc.stdout
    assert f"kubectl describe statebinding -n {namespace} prices" in proc.stdout
    assert f"{OK} StateBinding {namespace}/flags is Ready" in proc.stdout
    if isinstance(operator, LocalOperator):
        assert len(failures(proc.stdout)) == 1, proc.stdout


@pytest.fixture(autouse=True)
def _operator_ready(operator: OperatorHandle) -> None:
    """Each case starts from a running operator (a failed case may have left it paused)."""
    operator.wait_ready()


def _scraped(text: str, *, target: dict[str, str]) -> list[dict[str, str]]:
    """Prometheus text -> promtool input series, with the ServiceMonitor's target labels added
    under ``honorLabels`` (a label the metric has wins)."""
    series = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = {**target, **sample.labels}
            inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            series.append({"series": f"{sample.name}{{{inner}}}", "value": sample.value})
    return series


@pytest.mark.local_cluster  # the local operator's metrics port
def test_operator_alerts_fire_on_the_operators_real_series(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle, tmp_path: Path
) -> None:
    helm, promtool = find_helm(), find_promtool()
    assert isinstance(operator, LocalOperator)
    if helm is None or promtool is None:
        pytest.skip("needs helm and promtool (scripts/setup.sh tools)")
    # A refused Pod (a container name of ours) and a Pod created while the webhook was away.
    cluster.apply(binding("watched", namespace))
    reconciled(cluster, "watched", namespace)
    conflicting = pod("conflict", namespace, labels={"app": "watched"})
    conflicting["spec"]["containers"][0]["name"] = "sidecar-state-redis"
    refused = cluster.kubectl_run("create", "-f", "-", input=json.dumps(conflicting), check=False)
    assert refused.returncode != 0 and "reserved by sidecar-state" in refused.stderr
    policy = operator.failure_policy
    operator.register_webhooks("Ignore")
    operator.stop()
    try:
        cluster.apply(pod("missed", namespace, labels={"app": "watched"}))
    finally:
        operator.start()
        operator.register_webhooks(policy)
    # A refusal before the restart is gone with the old process: refuse one more.
    cluster.kubectl_run("create", "-f", "-", input=json.dumps(conflicting), check=False)
    wait_for(lambda: "missed" in ((get_binding(cluster, "watched", namespace) or {})
                                  .get("status") or {}).get("uninjectedPods", []),
             timeout=30, what="the watchdog to report the Pod")  # fmt: skip
    url = f"http://127.0.0.1:{operator.health_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()

    target = {"namespace": "sidecar-state-system", "pod": "sidecar-state-controller-0",
              "job": "demo-sidecar-state-metrics", "instance": "10.244.0.9:8080",
              "endpoint": "metrics", "container": "operator"}  # fmt: skip
    series = _scraped(text, target=target)
    names = {s["series"].split("{", 1)[0] for s in series}
    assert {"sidecar_state_uninjected_pods", "sidecar_state_admissions_total"} <= names

    def values(entry: dict[str, str]) -> str:
        if entry["series"].startswith("sidecar_state_admissions_total{") and (
            'outcome="refused"' in entry["series"]
        ):
            return f"0x5 {entry['value']:.0f}+0x30"  # the refusals happen at minute 6
        return f"{entry['value']:.6f}+0x30"

    rules_file = rendered_rules(helm, workdir=tmp_path)
    rules = yaml.safe_load(rules_file.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    missed = {"namespace": namespace, "binding": "watched", "severity": "warning"}
    tests = [{
        "interval": "1m",
        "input_series": [{"series": s["series"], "values": values(s)} for s in series],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "SidecarStateMissedInjection", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "SidecarStateMissedInjection",
             "exp_alerts": [{"exp_labels": missed}]},
            {"eval_time": "4m", "alertname": "SidecarStateWebhookRefusing", "exp_alerts": []},
            {"eval_time": "8m", "alertname": "SidecarStateWebhookRefusing",
             "exp_alerts": [{"exp_labels": {"reason": "InjectionConflict",
                                            "severity": "warning"}}]},
        ],
    }]  # fmt: skip
    test_file = tmp_path / "operator-alerts.test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "tests": tests}))

    proc = run_promtool(promtool, "test", "rules", str(test_file))

    assert proc.returncode == 0, proc.stdout + proc.stderr
