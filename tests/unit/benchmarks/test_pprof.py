"""benchmarks.lib.pprof: the stacks of ``go tool pprof -traces`` and their per-Pod summary."""

from __future__ import annotations

import pytest

from benchmarks.lib.pprof import parse_traces, summarize

SEPARATOR = "-----------+-------------------------------------------------------"
TRACES = f"""File: kube-apiserver
Type: cpu
Time: Dec 2, 2026 at 3:50am (UTC)
Duration: 10s, Total samples = 1.23s (12.30%)
{SEPARATOR}
      20ms   encoding/json.(*encodeState).string
             encoding/json.Marshal
             k8s.io/apiserver/pkg/admission/plugin/webhook/mutating.(*mutatingDispatcher).Dispatch
             net/http.(*conn).serve
{SEPARATOR}
   request:  create
      1.2s   crypto/tls.(*Conn).Read (inline)
             k8s.io/client-go/rest.(*Request).Do
             k8s.io/apiserver/pkg/admission/plugin/webhook/mutating.(*mutatingDispatcher).Dispatch
{SEPARATOR}
     500us   runtime.gcBgMarkWorker
{SEPARATOR}
"""


def test_the_stacks_are_read_with_their_cpu_time_leaf_first():
    stacks = parse_traces(TRACES)

    assert [ms for ms, _ in stacks] == [20.0, 1200.0, 0.5]
    assert stacks[0][1][0] == "encoding/json.(*encodeState).string"
    assert stacks[1][1] == (
        "crypto/tls.(*Conn).Read",
        "k8s.io/client-go/rest.(*Request).Do",
        "k8s.io/apiserver/pkg/admission/plugin/webhook/mutating.(*mutatingDispatcher).Dispatch",
    )


def test_a_sample_counts_in_every_category_it_matches_and_per_pod():
    summary = summarize(
        parse_traces(TRACES), per=10,
        categories=[("webhook", r"mutatingDispatcher"), ("TLS", r"^crypto/tls\."),
                    ("JSON", r"^encoding/json\."), ("etcd", r"etcd")],
    )  # fmt: skip

    assert summary["sampled_cpu_ms"] == pytest.approx(1220.5)
    assert summary["cpu_ms_per_pod"] == pytest.approx(122.05)
    assert summary["categories_ms_per_pod"] == {"webhook": 122.0, "TLS": 120.0, "JSON": 2.0,
                                                "etcd": 0.0}  # fmt: skip
    assert summary["top_own"][0] == {"function": "crypto/tls.(*Conn).Read", "ms_per_pod": 120.0,
                                     "share": pytest.approx(0.983, abs=1e-3)}  # fmt: skip
