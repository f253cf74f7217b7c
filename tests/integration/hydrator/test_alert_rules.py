"""The chart's alerts fire on what a real hydrator exports.

Each hydrator here runs its real entry point (``serve``: the hydrator and its HTTP server)
against the real Kafka and Redis, and is scraped over HTTP on ``/metrics`` as Prometheus would.
The scraped series — their names and labels as the code writes them, plus the target labels
the PodMonitor adds — become the input of ``promtool test rules`` on the rendered
PrometheusRule. So an alert whose expression names a metric or label the hydrator does not
export, or whose threshold is wrong, fails here. Values over time are scripted per case from
the scraped ones (a scrape is one instant; an alert needs minutes), and each case asserts both
that the right alert fires and that the others stay quiet. The dashboard's per-binding joins
and sums are evaluated on the same series (``promql_expr_test``), so a panel that would come up
empty on real labels fails too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar_hydrator.config import HydratorConfig, replace
from sidecar_hydrator.main import serve
from tests.integration.hydrator.support import (
    eventually,
    make_config,
    produce,
    sidecar_redis_config,
)
from tests.support.kafka_broker import KafkaBroker
from tests.support.monitoring import (
    DASHBOARD,
    find_helm,
    find_promtool,
    rendered_rules,
    run_promtool,
)
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

#: What the PodMonitor's scrape adds to every series of an injected Pod.
TARGET = {
    "namespace": "shop",
    "pod": "checkout-7d9f-x2x4q",
    "container": "sidecar-state-hydrator",
    "endpoint": "state-metrics",
    "instance": "10.244.0.7:9464",
    "job": "sidecar-state-system/demo-sidecar-state-hydrators",
}
HYDRATOR_ALERTS = (
    "SidecarStateNotHydrated",
    "SidecarStateViewStale",
    "SidecarStateStoreRefusingWrites",
    "SidecarStateBadRecords",
)
MINUTES = 30


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float

    def selector(self) -> str:
        labels = {**self.labels, **TARGET}
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{self.name}{{{inner}}}"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@contextlib.asynccontextmanager
async def serving(config: HydratorConfig) -> AsyncIterator[Callable[[], Any]]:
    """The hydrator's real entry point; yields a coroutine function that scrapes it."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop))
    url = f"http://127.0.0.1:{config.http_port}/metrics"

    async def scrape() -> list[Sample]:
        text = await asyncio.to_thread(_get, url)
        return [
            Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    try:
        await eventually(lambda: _answers(url), within=10, what="metrics served")
        yield scrape
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def _answers(url: str) -> bool:
    # In a thread: the server answers on this event loop.
    try:
        await asyncio.to_thread(_get, url)
    except OSError:
        return False
    return True


def rounded(value: float) -> float:
    """A value as :func:`steady` writes it into a series."""
    return float(f"{value:.6f}")


def value_of(samples: list[Sample], name: str) -> float:
    return sum(s.value for s in samples if s.name == name)


def steady(samples: list[Sample], **scripted: Callable[[Sample], str]) -> list[dict[str, str]]:
    """Every scraped series, held at its scraped value, except those scripted by name."""
    series = []
    for sample in samples:
        script = scripted.get(sample.name)
        values = script(sample) if script else f"{sample.value:.6f}+0x{MINUTES}"
        series.append({"series": sample.selector(), "values": values})
    return series


def expected_summary(rules: dict[str, Any], alert: str, labels: Mapping[str, str]) -> str:
    template = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert)
    return re.sub(
        r"\{\{ \$labels\.(\w+) \}\}",
        lambda m: labels[m.group(1)],
        template["annotations"]["summary"],
    )


def alert_checks(
    rules: dict[str, Any],
    *,
    at: str,
    firing: str | None,
    labels: Mapping[str, str],
    quiet_at: str | None = None,
) -> list[dict[str, Any]]:
    """At ``at``, ``firing`` fires with ``labels`` and the other alerts do not; at
    ``quiet_at`` (before its ``for:`` ran out) it does not fire yet either."""
    checks = []
    if firing is not None and quiet_at is not None:
        checks.append({"eval_time": quiet_at, "alertname": firing, "exp_alerts": []})
    for alert in HYDRATOR_ALERTS:
        expected: list[dict[str, Any]] = []
        if alert == firing:
            severity = next(
                r["labels"]["severity"]
                for g in rules["groups"]
                for r in g["rules"]
                if r.get("alert") == alert
            )
            expected = [
                {
                    "exp_labels": {**labels, "severity": severity},
                    "exp_annotations": {"summary": expected_summary(rules, alert, labels)},
                }
            ]
        checks.append({"eval_time": at, "alertname": alert, "exp_alerts": expected})
    return checks


@pytest.fixture(scope="module")
def tools() -> tuple[Path, Path]:
    helm, promtool = find_helm(), find_promtool()
    if helm is None or promtool is None:
        message = "needs helm (`make cluster-build`) and promtool (`scripts/setup.sh tools`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return helm, promtool


@pytest.mark.timeout(180)
@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * 2**20)])
async def test_alerts_fire_on_series_scraped_from_real_hydrators(
    tools: tuple[Path, Path],
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    make_redis_server: Callable[..., RedisServer],
    tmp_path: Path,
) -> None:
    helm, promtool = tools
    # A healthy hydrator that skips bad records: the steady state, and the bad-record series.
    topic = make_topic()
    good = [(f"f{i}".encode(), b'{"id": "f%d", "on": true}' % i) for i in range(20)]
    bad = [(b"x", b"not json"), (b"y", b"{broken")]
    await produce(kafka_broker, topic, good + bad)
    roomy = make_redis_server(config=sidecar_redis_config())
    config = make_config(broker=kafka_broker, redis=roomy, topics=[topic], name="flags",
                         key_field="id", http_port=free_port())  # fmt: skip
    async with serving(config) as scrape:
        await eventually(
            lambda: _hydrated_and_counted(scrape), within=30, what="hydrated with bad records"
        )
        healthy = await scrape()

    # A hydrator whose store is too small: Redis refuses writes.
    full_topic = make_topic()
    await produce(kafka_broker, full_topic, [
        (f"big{i}".encode(), b'{"id": "big%d", "v": "%s"}' % (i, b"x" * 100_000))
        for i in range(60)
    ])  # fmt: skip
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[full_topic],
                         name="flags", key_field="id", http_port=free_port(),
                         bootstrap_batch_max_keys=5, live_batch_max_keys=5)  # fmt: skip
    async with serving(config) as scrape:
        await eventually(lambda: _refused(scrape), within=30, what="OOM counted")
        full = await scrape()

    # A hydrator that cannot reach Kafka: never hydrated.
    nowhere = make_redis_server(config=sidecar_redis_config())
    config = make_config(broker=kafka_broker, redis=nowhere, topics=[make_topic()],
                         name="flags", http_port=free_port())  # fmt: skip
    config = replace(config, bindings=tuple(
        replace(b, kafka=replace(b.kafka, bootstrap_servers=(f"127.0.0.1:{free_port()}",)))
        for b in config.bindings
    ))  # fmt: skip
    async with serving(config) as scrape:
        await asyncio.sleep(2)
        cold = await scrape()

    # What the scrapes say, before anything is scripted.
    assert value_of(healthy, "sidecar_state_hydrator_hydrated") == 1
    assert 0 <= value_of(healthy, "sidecar_state_hydrator_staleness_seconds") < 60
    assert value_of(cold, "sidecar_state_hydrator_hydrated") == 0
    assert value_of(full, "sidecar_state_hydrator_redis_oom_rejections_total") > 0
    bad_series = [s for s in healthy if s.name == "sidecar_state_hydrator_bad_records_total"]
    assert {s.labels["kind"] for s in bad_series} == {"not_json"}

    rules_file = rendered_rules(helm, workdir=tmp_path)
    rules = yaml.safe_load(rules_file.read_text())
    # promtool compares annotations exactly: keep the summary, whose labels are checked.
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))
    pod = {"namespace": TARGET["namespace"], "pod": TARGET["pod"]}
    (bad_kind,) = bad_series
    staleness = value_of(healthy, "sidecar_state_hydrator_staleness_seconds")

    tests = [
        {  # healthy: nothing fires
            "interval": "1m",
            "input_series": steady(healthy),
            "alert_rule_test": alert_checks(rules, at="20m", firing=None, labels=pod),
        },
        {  # the cold hydrator, for longer than notHydratedFor (10m)
            "interval": "1m",
            "input_series": steady(cold),
            "alert_rule_test": alert_checks(
                rules, at="15m", firing="SidecarStateNotHydrated", labels=pod, quiet_at="5m"
            ),
        },
        {  # Kafka away: staleness grows a minute a minute past 300 s, for more than 5m
            "interval": "1m",
            "input_series": steady(
                healthy,
                sidecar_state_hydrator_staleness_seconds=lambda s: f"{staleness:.3f}+60x{MINUTES}",
            ),
            "alert_rule_test": alert_checks(
                rules, at="12m", firing="SidecarStateViewStale", labels=pod, quiet_at="6m"
            ),
        },
        {  # the full store: the counter goes from 0 to what Redis refused
            "interval": "1m",
            "input_series": steady(
                full,
                sidecar_state_hydrator_redis_oom_rejections_total=(
                    lambda s: f"0x5 {s.value:.0f}+0x{MINUTES}"
                ),
                sidecar_state_hydrator_hydrated=lambda s: f"1+0x{MINUTES}",
            ),
            "alert_rule_test": alert_checks(
                rules, at="7m", firing="SidecarStateStoreRefusingWrites", labels=pod
            ),
        },
        {  # a producer that keeps sending what the hydrator skipped: 10 a minute per kind
            "interval": "1m",
            "input_series": steady(
                healthy,
                sidecar_state_hydrator_bad_records_total=lambda s: f"{s.value:.0f}+10x{MINUTES}",
            ),
            "alert_rule_test": alert_checks(
                rules,
                at="15m",
                firing="SidecarStateBadRecords",
                labels={
                    **pod,
                    "binding": bad_kind.labels["binding"],
                    "kind": bad_kind.labels["kind"],
                },
            ),
        },
    ]
    # The dashboard's joins and sums, on the same real series: per binding, not per Pod.
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    binding_labels = f'{{binding="flags", namespace="{TARGET["namespace"]}"}}'
    pod_labels = f'{{namespace="{TARGET["namespace"]}", pod="{TARGET["pod"]}"}}'
    expected = {
        ("Worst staleness per binding", 0): [(binding_labels, rounded(staleness))],
        ("Hydration progress: records behind per binding", 0): [(binding_labels, 0.0)],
        ("Store memory against maxMemory", 1): [(pod_labels, 256.0 * 2**20)],
        ("Bad records per second by kind", 0): [
            (f'{{binding="flags", kind="not_json", namespace="{TARGET["namespace"]}"}}', 0.0)
        ],
    }
    tests.append({
        "interval": "1m",
        "input_series": steady(healthy),
        "promql_expr_test": [
            {"expr": panels[title]["targets"][index]["expr"].replace("$namespace", ".*"),
             "eval_time": "10m",
             "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}
            for (title, index), samples in expected.items()
        ],
    })  # fmt: skip
    test_file = tmp_path / "alerts.test.yaml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests,
    }, sort_keys=False))  # fmt: skip

    proc = run_promtool(promtool, "test", "rules", str(test_file))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


async def _hydrated_and_counted(scrape: Callable[[], Any]) -> bool:
    samples = await scrape()
    return (
        value_of(samples, "sidecar_state_hydrator_hydrated") == 1
        and value_of(samples, "sidecar_state_hydrator_bad_records_total") >= 2
        # Store figures come with the first heartbeat, a second after the start.
        and value_of(samples, "sidecar_state_hydrator_redis_max_memory_bytes") > 0
    )


async def _refused(scrape: Callable[[], Any]) -> bool:
    samples = await scrape()
    return value_of(samples, "sidecar_state_hydrator_redis_oom_rejections_total") > 0
