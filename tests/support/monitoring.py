"""What the chart's alerts and dashboard may name, and the tools that check them.

The PrometheusRule and the Grafana dashboard are text that names metrics and labels; nothing
but a test ties those names to the code. This module lists what the code really exports (the
hydrator's registry, the operator's metrics) and what Prometheus adds to a scraped series, pulls
metric and label names out of PromQL, and finds ``helm`` and ``promtool`` (built from Go modules
by ``scripts/setup.sh``, cached under ``~/.cache/sidecar-state``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sidecar-state"
DASHBOARD = CHART / "dashboards" / "sidecar-state.json"
RELEASE = "demo"
NAMESPACE = "sidecar-state-system"
KUBE_VERSION = "1.34.0"

#: Labels the Prometheus Operator puts on every series it scrapes through a PodMonitor or a
#: ServiceMonitor (target labels), besides the metric's own.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "instance", "job"})
#: Series of the kube-apiserver that the alerts read (webhook call failures), with their labels
#: (k8s.io/apiserver/pkg/admission/metrics).
APISERVER_SERIES = {
    "apiserver_admission_webhook_rejection_count": frozenset(
        {"name", "type", "operation", "error_type", "rejection_code"}
    ),
    "apiserver_admission_webhook_fail_open_count": frozenset({"name", "type"}),
}
#: PromQL words that look like metric names but are not.
_PROMQL_WORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
        "offset", "bool", "sum", "max", "min", "avg", "count", "rate", "increase",
        "histogram_quantile", "label_values", "topk", "bottomk", "abs", "absent", "le", "inf",
    }
)  # fmt: skip


def _sample_names(family_name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{family_name}_total"}
    if kind == "histogram":
        return {f"{family_name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {family_name}


def _metric_series(metric: Any) -> dict[str, frozenset[str]]:
    labels = frozenset(getattr(metric, "_labelnames", ()))
    return {
        name: labels | ({"le"} if name.endswith("_bucket") else set())
        for family in metric.describe()
        for name in _sample_names(family.name, family.type)
    }


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the hydrator and the operator export -> its label names."""
    from sidecar_hydrator.health import Metrics, OptionalGauge
    from sidecar_hydrator.metrics import Metric as HydratorMetric
    from sidecar_operator import metrics as operator_metrics

    series: dict[str, frozenset[str]] = {}
    hydrator = Metrics()
    for value in [*vars(hydrator).values(), *vars(operator_metrics).values()]:
        if isinstance(value, MetricWrapperBase | HydratorMetric):
            series.update(_metric_series(value))
        elif isinstance(value, OptionalGauge):  # a gauge with no sample while unknown
            series[value.name] = frozenset()
    return series


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions, keywords,
    label names or strings)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", without_matchers
    )
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    names = set()
    for match in re.finditer(
        r"(?<![\w$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", without_ranges
    ):
        word = match.group(1)
        if word.lower() not in _PROMQL_WORDS and not re.fullmatch(r"[0-9]+[smhdwy]", word):
            names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Label names a PromQL expression groups, joins or filters on."""
    names: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        names |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return names


def _cache() -> Path:
    return Path(
        os.environ.get("SIDECAR_STATE_CACHE") or Path.home() / ".cache" / "sidecar-state"
    ).expanduser()


def _find(name: str, *, env: str, cache_glob: str) -> Path | None:
    configured = os.environ.get(env)
    if configured:
        return Path(configured)
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    built = sorted(_cache().glob(cache_glob), reverse=True)
    return next((path for path in built if os.access(path, os.X_OK)), None)


def find_helm() -> Path | None:
    """``$HELM``, then ``PATH``, then the helm that the e2e cluster build cached."""
    return _find("helm", env="HELM", cache_glob="k8s/*/bin/helm")


def find_promtool() -> Path | None:
    """``$PROMTOOL``, then ``PATH``, then the promtool of ``scripts/setup.sh tools``."""
    return _find("promtool", env="PROMTOOL", cache_glob="tools/promtool-*/promtool")


def render_chart(helm: Path, values: dict[str, Any], *, workdir: Path) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values``, as objects."""
    values_file = workdir / "values.json"
    values_file.write_text(json.dumps(values))
    proc = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--kube-version", KUBE_VERSION, "--values", str(values_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def rendered_rules(helm: Path, *, workdir: Path, values: dict[str, Any] | None = None) -> Path:
    """The chart's PrometheusRule, rendered, as a Prometheus rule file (its ``spec``)."""
    monitoring = {"monitoring": {"prometheusRule": {"enabled": True, **(values or {})}}}
    (rule,) = [
        obj
        for obj in render_chart(helm, monitoring, workdir=workdir)
        if obj["kind"] == "PrometheusRule"
    ]
    path = workdir / "sidecar-state.rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def run_promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False
    )
