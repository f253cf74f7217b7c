"""benchmarks.admission: py-spy's stacks by category, and the shortfall notes built from the
measured figures and profiles."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from benchmarks.admission import pyspy_summary, shortfall_notes

LOOP = "<module> (run.py);BaseEventLoop._run_once (asyncio/base_events.py)"
COLLAPSED = f"""\
MainThread;{LOOP};Handle._run (asyncio/events.py);RequestHandler._handle_request (aiohttp/web_protocol.py);AdmissionServer.handle (sidecar_operator/webhook_server.py);pod_mutate (sidecar_operator/handlers/webhook.py);render (sidecar_operator/injection/pod.py) 50
MainThread;{LOOP};Handle._run (asyncio/events.py);RequestHandler._handle_request (aiohttp/web_protocol.py);Response.write_eof (aiohttp/web_response.py);SSLProtocol._do_write (asyncio/sslproto.py);_SelectorSocketTransport.write (asyncio/selector_events.py) 25
MainThread;{LOOP};Handle._run (asyncio/events.py);SSLProtocol._do_read (asyncio/sslproto.py);SSLObject.read (ssl.py) 10
MainThread;{LOOP};Handle._run (asyncio/events.py);RequestHandler._handle_request (aiohttp/web_protocol.py);AdmissionServer.handle (sidecar_operator/webhook_server.py);review_response (sidecar_operator/webhook_server.py) 5
MainThread;{LOOP};Handle._run (asyncio/events.py);process_resource_event (kopf/_core/reactor/processing.py) 10
"""  # noqa: E501


def test_every_sample_counts_once_in_the_category_nearest_its_leaf():
    summary = pyspy_summary(COLLAPSED, per=10, rate=100)

    assert summary is not None
    shares = summary["category_shares"]
    assert shares["handler (decide, render, JSON patch)"] == 0.5
    assert shares["socket send and receive (kernel)"] == 0.25
    assert shares["TLS (encrypt, decrypt, handshakes)"] == 0.1
    assert shares["AdmissionReview parsed and answered (aiohttp, orjson)"] == 0.05
    assert shares["kopf (watches, the StateBinding index)"] == 0.1
    assert sum(shares.values()) == pytest.approx(1.0)
    # 100 samples at 100 per second over 10 Pods: 100 ms per Pod, 50 of them in the handler.
    assert summary["active_ms_per_pod"] == 100.0
    assert summary["categories_ms_per_pod"]["handler (decide, render, JSON patch)"] == 50.0


def test_no_samples_no_summary():
    assert pyspy_summary("", per=10) is None


def _run(concurrency: int, webhook: bool, p50: float, p99: float, api: float) -> dict[str, Any]:
    run: dict[str, Any] = {
        "concurrency": concurrency, "webhook": webhook,
        "create": {"p50_ms": p50, "p99_ms": p99},
        "cpu_ms_per_pod": {"operator": 1.0 if webhook else 0.0, "controller": 4.0,
                           "etcd": 3.0, "kube-apiserver": api},
        "runqueue_wait_ms_per_pod": {"operator": 0.5, "kube-apiserver": 10.0},
        "binding_status_writes_per_pod": 0.5 if webhook else 0.2,
    }  # fmt: skip
    if webhook:
        run["apiserver_webhook_call"] = {"p50_ms_interpolated": 3.1, "p99_ms_interpolated": 88.0,
                                         "share_within_5ms": 0.62}  # fmt: skip
        run["operator_handler"] = {"p50_ms_interpolated": 0.4, "p99_ms_interpolated": 2.2}
        run["webhook_calls_per_pod"] = 1.0
        run["webhook_connections_per_pod"] = 0.3
    return run


def _apiserver(cpu: float, dispatch: float, storage: float) -> dict[str, Any]:
    return {"cpu_ms_per_pod": cpu, "categories_ms_per_pod": {
        "mutating webhook calls": dispatch, "  round trip (HTTP/1.1, TLS)": dispatch / 4,
        "storage (etcd client)": storage,
    }}  # fmt: skip


RESULTS: dict[str, Any] = {
    "machine": {"nproc": 2},
    "runs": [
        _run(1, False, 5.0, 11.0, 9.0), _run(1, True, 9.5, 20.0, 15.0),
        _run(50, False, 50.0, 80.0, 7.5), _run(50, True, 120.0, 190.0, 14.0),
    ],
    "direct": [
        {"concurrency": 1, "p50_ms": 0.9, "p99_ms": 1.5, "operator_cpu_ms_per_call": 0.6,
         "review_bytes": 2048, "answer_bytes": 7168, "patch_bytes": 5120},
        {"concurrency": 50, "p50_ms": 20.0, "p99_ms": 60.0, "operator_cpu_ms_per_call": 0.5},
    ],
    "sizes": {"patch": 5120, "pod_json_without_webhook": 2048, "pod_json_with_webhook": 9216,
              "containers_with_webhook": 4},
    "profile_1_concurrent": {
        "off": {"apiserver": _apiserver(9.6, 0.0, 2.0)},
        "on": {"apiserver": _apiserver(16.8, 2.0, 3.2),
               "operator_pyspy": pyspy_summary(COLLAPSED, per=10)},
    },
    "operator_profile_at_max_concurrency": pyspy_summary(COLLAPSED, per=300),
    "figures": [
        {"figure": "Pod create with webhook, 1 concurrent, p50 / p99", "met": False},
        {"figure": "Pod create with webhook, 50 concurrent, p50 / p99", "met": False},
        {"figure": "  webhook call as the apiserver sees it, 50 concurrent, p99", "met": False},
    ],
}  # fmt: skip


def test_the_notes_say_where_the_added_time_goes_at_1_and_at_50_concurrent():
    one, burst = shortfall_notes(RESULTS)

    assert "adds 4.5 ms to a Pod create at p50 (9.5 against 5 ms" in one
    assert "16.8 ms with the webhook against 9.6 without, +7.2 ms" in one
    assert "the webhook call is 2 ms of that" in one
    assert "storage (etcd client) +1.20" in one
    assert "9 KiB of JSON with 4 containers, against 2 KiB" in one
    assert "handler (decide, render, JSON patch) 50%" in one
    assert "Next levers" in one
    assert "status writes, 0.5 per Pod against 0.2 without" in one
    assert "p99 with / without x2.38 (190 against 80 ms" in burst
    assert "0.5 ms of CPU each (one event loop: 50 of them are ~25 ms of work in a row)" in burst
    assert "Next lever" in burst
    assert "$" not in one + burst  # every placeholder filled


def test_without_profiles_the_notes_still_quote_the_measured_figures():
    results = copy.deepcopy(RESULTS)
    results["profile_1_concurrent"] = None
    results["operator_profile_at_max_concurrency"] = None

    one, burst = shortfall_notes(results)

    assert "not profiled" in one
    assert "no py-spy profile" in burst
    assert "adds 4.5 ms" in one


def test_figures_that_meet_their_targets_need_no_note():
    results = copy.deepcopy(RESULTS)
    for figure in results["figures"]:
        figure["met"] = True

    assert shortfall_notes(results) == []


def test_the_controllers_status_writes_are_summed_from_the_request_counter():
    from benchmarks.admission import _binding_status, labelled_sum

    series = 'apiserver_request_total{{code="{}",resource="{}",subresource="{}",verb="{}"}} {}'
    text = "\n".join([
        series.format(200, "statebindings", "status", "PATCH", 7),
        series.format(409, "statebindings", "status", "PATCH", 2),
        series.format(200, "statebindings", "", "PATCH", 5),
        series.format(201, "pods", "", "POST", 9),
    ])  # fmt: skip

    assert labelled_sum(text, "apiserver_request_total", _binding_status) == 9


def test_a_thread_waiting_for_work_is_not_counted_as_busy():
    waiting = (
        f"MainThread;{LOOP};EpollSelector.select (selectors.py) 40\n"
        "pool;Thread._bootstrap (threading.py);_worker (concurrent/futures/thread.py) 60\n"
    )

    summary = pyspy_summary(COLLAPSED + waiting, per=10, rate=100)

    assert summary is not None
    assert summary["samples"] == 100
    assert summary["waiting_samples"] == 100
