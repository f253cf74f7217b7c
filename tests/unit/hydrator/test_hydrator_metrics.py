"""The hydrator's own metrics text is what prometheus_client would write for the same metrics.

The sidecar renders /metrics without prometheus_client (2 MiB of its memory); Prometheus, the
operator's status reader and the alert rules must not see a difference. prometheus_client is a
test dependency here, the reference, never imported by the sidecar.
"""

from __future__ import annotations

import math
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar_hydrator import metrics
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.reasons import Reason, State

BUCKETS = (0.0002, 0.001, 0.25, 1.0)


def _both(ops: Any) -> tuple[str, str]:
    """``ops(Counter, Gauge, Histogram, registry)`` on ours and on prometheus_client's."""
    ours = metrics.Registry()
    ops(metrics.Counter, metrics.Gauge, metrics.Histogram, ours)
    theirs = prometheus_client.CollectorRegistry()
    ops(prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram, theirs)
    reference = prometheus_client.generate_latest(theirs).decode()
    # The optional _created series (creation timestamps) are left out by ours.
    lines, skip = [], False
    for line in reference.splitlines(keepends=True):
        if line.startswith("# HELP"):
            skip = line.split()[2].endswith("_created")
        if not skip and not line.split(" ")[0].split("{")[0].endswith("_created"):
            lines.append(line)
    return ours.render().decode(), "".join(lines)


def _counters(counter: Any, gauge: Any, histogram: Any, registry: Any) -> None:
    plain = counter("oom", "Plain.", registry=registry)
    plain.inc(3)
    labelled = counter("records_read", 'With "labels"\\ and\nnewlines.', ["binding", "kind"],
                       namespace="sidecar_state_hydrator", registry=registry)  # fmt: skip
    labelled.labels(binding="a", kind="x").inc()
    labelled.labels(binding='we"ird\\na\nme', kind="y").inc(2.5)
    labelled.labels(binding="a", kind="x").inc(10**7)
    counter("never", "Never used, labelled.", ["binding"], registry=registry)


def _gauges(counter: Any, gauge: Any, histogram: Any, registry: Any) -> None:
    gauge("zero", "Never set.", registry=registry)
    gauge("big", "Large.", registry=registry).set(1_764_633_600.123)
    gauge("small", "Small.", registry=registry).set(-0.5)
    gauge("inf", "Infinite.", registry=registry).set(math.inf)
    gauge("fn", "A function.", registry=registry).set_function(lambda: 1)
    lag = gauge("lag", "Per partition.", ["topic", "partition"], registry=registry)
    lag.labels(topic="t", partition="0").set(12)
    lag.labels(topic="t", partition="1").set(1e-9)


def _histograms(counter: Any, gauge: Any, histogram: Any, registry: Any) -> None:
    seconds = histogram("apply_seconds", "Histogram.", namespace="ns", registry=registry,
                        buckets=BUCKETS)  # fmt: skip
    for value in (0.0001, 0.0002, 0.0003, 0.5, 2.0, 0.001):
        seconds.observe(value)
    histogram("empty", "Never observed.", registry=registry, buckets=BUCKETS)


@pytest.mark.parametrize("ops", [_counters, _gauges, _histograms])
def test_the_text_is_prometheus_clients(ops: Any) -> None:
    ours, theirs = _both(ops)
    assert ours == theirs


def test_the_hydrators_metrics_parse_as_prometheus_text() -> None:
    """Every family of the hydrator, with series, parses with prometheus_client's parser and
    says what its registry says."""
    m = Metrics()
    m.records_read.labels(binding="b", source="kafka").inc(5)
    m.bad_records.labels(binding="b", source="kafka", kind="not_json").inc()
    m.lag.labels(binding="b", source="kafka", topic="t", partition="0").set(3)
    m.apply_seconds.observe(0.003)
    m.mark_applied(1_764_633_600.5)
    m.staleness_source = lambda: 1.5
    m.state_source = lambda: State(Reason.HYDRATED)
    m.hydrated.set_function(lambda: 1)
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(m.render().decode())
        for s in family.samples
    }
    own = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in m.registry.collect()
        for s in family.samples
    }
    age = "sidecar_state_hydrator_last_apply_age_seconds"  # read at the clock: moves
    assert parsed.pop((age, ())) == pytest.approx(own.pop((age, ())), abs=5)
    assert parsed == own
    assert parsed[("sidecar_state_hydrator_records_read_total",
                   (("binding", "b"), ("source", "kafka")))] == 5  # fmt: skip
    assert parsed[("sidecar_state_hydrator_state", (("reason", "hydrated"),))] == 1
    assert parsed[("sidecar_state_hydrator_staleness_seconds", ())] == 1.5
    assert m.registry.get_sample_value("sidecar_state_hydrator_hydrated") == 1


def test_an_unknown_optional_gauge_has_no_sample() -> None:
    m = Metrics()  # never applied: no age, no staleness
    text = m.render().decode()
    assert "# TYPE sidecar_state_hydrator_staleness_seconds gauge" in text
    assert "\nsidecar_state_hydrator_staleness_seconds " not in text
    assert m.registry.get_sample_value("sidecar_state_hydrator_last_apply_age_seconds") is None


def test_wrong_labels_are_refused() -> None:
    counter = metrics.Counter("c", "C.", ["binding"], registry=metrics.Registry())
    with pytest.raises(ValueError, match="labels"):
        counter.labels(kind="x")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels(binding="b").inc(-1)
