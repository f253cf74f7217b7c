"""The chart's monitoring: PodMonitor, ServiceMonitor, PrometheusRule and Grafana dashboard.

Alerts and dashboards are text naming metrics and labels; a renamed metric silently turns an
alert into one that never fires and a panel into an empty one. So every query here is checked
against the series the code really exports (``tools/sidecar_state_stack/monitoring.py``), every
rule and query is parsed by ``promtool`` (built from its Go module by
``scripts/setup.sh tools``), and the scrape objects are checked against what the webhook writes
on injected Pods.
``tests/integration/hydrator/test_alert_rules.py`` fires the alerts on a real hydrator's series.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import parse_binding
from sidecar_operator.injection import Injected, inject_pod
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import HYDRATOR_CONTAINER
from sidecar_operator.settings import OperatorSettings
from sidecar_state_stack.monitoring import (
    APISERVER_SERIES,
    DASHBOARD,
    ROOT,
    TARGET_LABELS,
    exported_series,
    find_helm,
    find_promtool,
    label_names,
    metric_names,
    render_chart,
    rendered_rules,
    run_promtool,
)

RUNBOOKS = ROOT / "docs" / "runbooks.md"
Objects = list[dict[str, Any]]
ALL_ON = {
    "monitoring": {
        "prometheusAnnotations": True,
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}


@pytest.fixture(scope="module")
def helm() -> Path:
    found = find_helm()
    if found is None:
        missing("no helm: set $HELM, or build it with `scripts/setup.sh helm`")
    return found


@pytest.fixture(scope="module")
def promtool() -> Path:
    found = find_promtool()
    if found is None:
        missing("no promtool: set $PROMTOOL, or build it with `scripts/setup.sh tools`")
    return found


def missing(message: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where setup must have built the tool."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Objects]:
    sets = {"default": {}, "all-on": ALL_ON}
    cache: dict[str, Objects] = {}

    def _render(name: str) -> Objects:
        if name not in cache:
            cache[name] = render_chart(helm, sets[name], workdir=tmp_path_factory.mktemp(name))
        return cache[name]

    return _render


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="module")
def series() -> dict[str, frozenset[str]]:
    return {**exported_series(), **APISERVER_SERIES}


def of_kind(objects: Objects, kind: str) -> Objects:
    return [obj for obj in objects if obj["kind"] == kind]


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def alerts(rules_file: Path) -> list[dict[str, Any]]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def unknown_names(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """Metric names the code does not export, and labels none of the named metrics carries."""
    named = metric_names(expr)
    problems = [f"metric {name}" for name in sorted(named - set(series))]
    known_labels = set(TARGET_LABELS).union(*(series.get(name, frozenset()) for name in named))
    problems += [f"label {label}" for label in sorted(label_names(expr) - known_labels)]
    return problems


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard(dashboard):
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    assert dashboard["uid"] == "sidecar-state" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], f"panel {panel['title']} says nothing about itself"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_dashboard_panels_do_not_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(
    "metric",
    [
        "sidecar_state_hydrator_staleness_seconds",  # freshness and staleness per binding
        "sidecar_state_hydrator_last_apply_age_seconds",
        "sidecar_state_hydrator_hydrated",  # hydration progress
        "sidecar_state_hydrator_lag_records",
        "sidecar_state_hydrator_records_applied_total",  # records applied and bad records
        "sidecar_state_hydrator_bad_records_total",
        "sidecar_state_hydrator_redis_used_memory_bytes",  # store memory against maxMemory
        "sidecar_state_hydrator_redis_max_memory_bytes",
        "sidecar_state_admissions_total",  # admissions (injected, skipped, refused)
        "sidecar_state_admission_seconds_bucket",  # webhook latency
    ],
)
def test_dashboard_shows(metric, dashboard):
    assert any(metric in metric_names(expr) for _, expr in queries(dashboard))


def test_every_dashboard_query_names_metrics_and_labels_the_code_exports(dashboard, series):
    problems = {title: unknown_names(expr, series) for title, expr in queries(dashboard)}

    assert all(metric_names(expr) for _, expr in queries(dashboard))
    assert {title: p for title, p in problems.items() if p} == {}


def test_the_name_check_catches_a_renamed_metric(series):
    # Guards the check above: it must reject what the code does not export.
    assert unknown_names("rate(sidecar_state_hydrator_records_total[5m])", series) == [
        "metric sidecar_state_hydrator_records_total"
    ]
    assert unknown_names("sum by (topic) (sidecar_state_hydrator_hydrated)", series) == [
        "label topic"
    ]


def test_every_dashboard_query_parses(dashboard, promtool, tmp_path):
    # promtool parses rule files only: each query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$namespace", ".*")}
        for i, (_, expr) in enumerate(queries(dashboard))
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    proc = run_promtool(promtool, "check", "rules", str(path))

    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the chart's objects ---------------------------------------------------------------------


def test_monitoring_is_off_by_default(render):
    objects = render("default")
    kinds = {obj["kind"] for obj in objects}
    pod_annotations = [
        d["spec"]["template"]["metadata"].get("annotations") or {}
        for d in of_kind(objects, "Deployment")
    ]

    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert not any(k.startswith("prometheus.io/") for a in pod_annotations for k in a)


def injected_pod() -> dict[str, Any]:
    binding = parse_binding({
        "metadata": {"name": "flags", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "a"}},
                 "source": {"kafka": {"topics": ["flags"]}}},
    })  # fmt: skip
    pod = {"metadata": {"name": "a", "labels": {"app": "a"}},
           "spec": {"containers": [{"name": "app", "image": "app"}]}}  # fmt: skip
    outcome = inject_pod(pod, bindings=[binding], namespace="shop", defaults=InjectionDefaults())
    assert isinstance(outcome, Injected)
    return outcome.pod


def test_pod_monitor_selects_injected_pods_on_the_hydrators_port(render):
    (monitor,) = of_kind(render("all-on"), "PodMonitor")
    pod = injected_pod()
    (container,) = [c for c in pod["spec"]["initContainers"] if c["name"] == HYDRATOR_CONTAINER]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]

    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["selector"] == {"matchLabels": {ann.INJECTED_LABEL: "true"}}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert endpoint["port"] in {port["name"] for port in container["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_service_monitor_reaches_both_operator_roles(render):
    objects = render("all-on")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    (service,) = [
        s for s in of_kind(objects, "Service") if s["metadata"]["name"].endswith("-metrics")
    ]
    deployments = of_kind(objects, "Deployment")
    (endpoint,) = monitor["spec"]["endpoints"]

    assert len(deployments) == 2
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "health" in {port["name"] for port in container["ports"]}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["ports"][0]["targetPort"] == "health"
    # The operator's series carry namespace/binding of the binding, not of the operator's Pod.
    assert endpoint["honorLabels"] is True


def test_prometheus_annotations_reach_the_operator_pods_and_the_injection(render, monkeypatch):
    deployments = of_kind(render("all-on"), "Deployment")
    for deployment in deployments:
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SIDECAR_STATE_PROMETHEUS_ANNOTATIONS"] == "true"
        monkeypatch.setenv("SIDECAR_STATE_PROMETHEUS_ANNOTATIONS", "true")
        assert OperatorSettings().injection_defaults().prometheus_annotations is True


def test_dashboard_config_map_carries_the_grafana_label_and_the_json(render, dashboard):
    (config_map,) = of_kind(render("all-on"), "ConfigMap")

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["sidecar-state.json"]) == dashboard


def test_a_misspelt_monitoring_value_is_refused(helm, tmp_path):
    with pytest.raises(AssertionError, match="enable"):
        render_chart(helm, {"monitoring": {"podMonitor": {"enable": True}}}, workdir=tmp_path)


# --- the alerts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules_file(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rendered_rules(helm, workdir=tmp_path_factory.mktemp("rules"))


def test_rendered_rules_pass_promtool_check(rules_file, promtool):
    proc = run_promtool(promtool, "check", "rules", str(rules_file))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_the_suggested_alerts_are_there(rules_file):
    assert {rule["alert"] for rule in alerts(rules_file)} == {
        "SidecarStateNotHydrated",
        "SidecarStateViewStale",
        "SidecarStateStoreRefusingWrites",
        "SidecarStateBadRecords",
        "SidecarStateMissedInjection",
        "SidecarStateWebhookRefusing",
        "SidecarStateWebhookFailing",
    }


def test_every_alert_names_metrics_and_labels_that_exist(rules_file, series):
    problems = {rule["alert"]: unknown_names(rule["expr"], series) for rule in alerts(rules_file)}

    assert {alert: p for alert, p in problems.items() if p} == {}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section(rules_file):
    anchors = {
        re.sub(r"[^a-z0-9-]", "", heading.strip().lower().replace(" ", "-"))
        for heading in re.findall(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    }
    for rule in alerts(rules_file):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert anchor in anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def test_thresholds_come_from_the_values(helm, tmp_path):
    path = rendered_rules(
        helm, workdir=tmp_path, values={"stalenessThresholdSeconds": 42, "notHydratedFor": "3m"}
    )
    by_name = {rule["alert"]: rule for rule in alerts(path)}

    assert by_name["SidecarStateViewStale"]["expr"].endswith("> 42")
    assert by_name["SidecarStateNotHydrated"]["for"] == "3m"
