"""Issue 6: an injected Pod really runs on a real node, and behaves as DESIGN.md says."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from demo.publish import publish, publish_many
from sidecar_state_stack.objects import get_binding, wait_for
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import (
    app_json,
    app_pod,
    big_flags,
    bind,
    container_status,
    flag_binding,
    flag_topic,
    get_pod,
    http_get,
    metric,
    run_job,
    start_app_pod,
    wait_answer,
    wait_oom_rejections,
    wait_ready,
)


def _ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_injected_pod_is_ready_and_app_started_after_hydration(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster = node_cluster.cluster
    topic = flag_topic(node_cluster.broker, namespace)
    bind(cluster, flag_binding("shop", namespace, topic=topic))
    pod = start_app_pod(cluster, "shop-1", namespace, app="shop")
    ip = pod["status"]["podIP"]
    status = app_json(ip, "/status")
    meta_at_start = status["meta"]
    # What the app itself saw when its process started: a complete view, built before it.
    assert meta_at_start["hydrated"] == "1", meta_at_start
    built_at_ms = int(meta_at_start["built_at_ms"])
    assert built_at_ms <= status["started_at_ms"], (built_at_ms, status)
    # The kubelet's view agrees (second resolution): the app started after both sidecars.
    app_started = _ts(container_status(pod, "app")["state"]["running"]["startedAt"])
    for sidecar in ("sidecar-state-redis", "sidecar-state-hydrator"):
        started = _ts(container_status(pod, sidecar)["state"]["running"]["startedAt"])
        assert started <= app_started
    assert app_started >= built_at_ms // 1000
    print(
        f"\n[node] hydrated at {built_at_ms}, app process started "
        f"{status['started_at_ms'] - built_at_ms} ms later",
        file=sys.stderr,
    )
    assert wait_answer(ip, "Showing New Layout", timeout=2)

    # What monitoring reads from this Pod: the PodMonitor's label, and the hydrator's store
    # figures; and what the controller put on the status from its scrape.
    assert pod["metadata"]["labels"]["sidecarstate.dev/injected"] == "true"
    wait_for(
        lambda: metric(ip, "sidecar_state_hydrator_redis_max_memory_bytes") == 16 * 2**20,
        timeout=10,
        what="the hydrator to report Redis maxmemory (16Mi)",
    )
    assert 0 < metric(ip, "sidecar_state_hydrator_redis_used_memory_bytes") < 16 * 2**20
    reported = wait_for(
        lambda: (
            (b := get_binding(cluster, "shop", namespace))
            and (b.get("status") or {}).get("hydratedPods") == 1
            and b["status"]
        ),
        timeout=60,
        what="the binding's status to count the hydrated Pod",
    )
    assert reported["unhydratedPods"] == []
    assert 0 <= reported["worstStalenessSeconds"] < 30, reported
    wide = cluster.kubectl_run("get", "sb", "shop", "-n", namespace, "-o", "wide").stdout
    header, row = (line.split() for line in wide.splitlines()[:2])
    assert row[header.index("HYDRATED")] == "1", wide


def _shop(node_cluster: NodeCluster, namespace: str, *, enabled: bool = False) -> tuple[str, str]:
    """A binding + one injected Pod answering from topic ``flags-<ns>``; returns (Pod IP, topic)."""
    cluster = node_cluster.cluster
    topic = flag_topic(node_cluster.broker, namespace, enabled=enabled)
    bind(cluster, flag_binding("shop", namespace, topic=topic))
    ip: str = start_app_pod(cluster, "shop-1", namespace, app="shop")["status"]["podIP"]
    wait_answer(ip, "Showing New Layout" if enabled else "Showing Old Layout", timeout=5)
    return ip, topic


def test_flag_change_is_visible_in_the_app_within_one_second(
    node_cluster: NodeCluster, namespace: str
) -> None:
    ip, topic = _shop(node_cluster, namespace, enabled=False)
    lags = []
    for enabled in (True, False, True, False, True):
        acked = publish(
            node_cluster.broker.bootstrap_servers, "new-ui-layout", enabled, topic=topic
        )
        seen = wait_answer(ip, "Showing New Layout" if enabled else "Showing Old Layout")
        lags.append(seen - acked)
    print(f"\n[node] flag lag (Kafka ack -> app answer), s: {[round(x, 3) for x in lags]}")
    assert max(lags) < 1.0, lags


def test_job_with_the_sidecars_completes(node_cluster: NodeCluster, namespace: str) -> None:
    cluster = node_cluster.cluster
    bind(
        cluster, flag_binding("batch", namespace, topic=flag_topic(node_cluster.broker, namespace))
    )
    script = (
        "import os, sys; sys.path.insert(0, '/opt/demo'); from app import Redis; "
        "r = Redis(os.environ['SIDECAR_STATE_REDIS_URL']); "
        "assert r.meta()['hydrated'] == '1'; "
        "print('new-ui-layout=' + r.command('GET', 'flag:new-ui-layout'))"
    )
    logs = run_job(cluster, "batch", namespace, script)
    assert "new-ui-layout=true" in logs, logs
    done = cluster.kubectl_json("get", "job", "batch", "-n", namespace)
    assert done["status"]["succeeded"] == 1


def test_killed_redis_restarts_is_rebuilt_and_the_app_recovers(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster = node_cluster.cluster
    ip, _ = _shop(node_cluster, namespace, enabled=True)
    before = app_json(ip, "/flags")["meta"]
    rebuilds = metric(ip, "sidecar_state_hydrator_rebuilds_total")
    pod = get_pod(cluster, "shop-1", namespace)
    redis = container_status(pod, "sidecar-state-redis")
    container_id = redis["containerID"].split("://", 1)[1]
    node_cluster.kill_container(container_id)
    killed_at = time.time()

    def restarted() -> dict[str, Any] | None:
        got = get_pod(cluster, "shop-1", namespace)
        return got if container_status(got, "sidecar-state-redis")["restartCount"] >= 1 else None

    wait_for(restarted, timeout=60, what="the Redis sidecar to restart")
    recovered = wait_answer(ip, "Showing New Layout", timeout=60)
    after = app_json(ip, "/flags")["meta"]
    assert after["hydrated"] == "1"
    assert after["run_id"] != before["run_id"] or int(after["built_at_ms"]) > int(
        before["built_at_ms"]
    ), (before, after)
    assert metric(ip, "sidecar_state_hydrator_rebuilds_total") > rebuilds
    print(f"\n[node] Redis killed -> app answers again after {recovered - killed_at:.2f} s")


def test_app_keeps_answering_while_kafka_is_down(node_cluster: NodeCluster, namespace: str) -> None:
    ip, _ = _shop(node_cluster, namespace, enabled=True)
    broker = node_cluster.broker
    broker.stop()
    try:
        deadline = time.monotonic() + 8
        answers = 0
        while time.monotonic() < deadline:
            assert http_get(f"http://{ip}:8080/") == (200, "Showing New Layout\n")
            answers += 1
            time.sleep(0.2)
        assert answers > 20
    finally:
        broker.start()


def _overfilled(node_cluster: NodeCluster, namespace: str, name: str) -> tuple[str, str]:
    """Binding ``name`` (a 4Mi store) on a topic of 6 MB, and its Pod ``<name>-1``, once Redis
    refuses the hydrator's writes; returns (Pod IP, topic)."""
    cluster, broker = node_cluster.cluster, node_cluster.broker
    topic = f"{name}-{namespace}"
    broker.create_topic(topic)
    asyncio.run(publish_many(broker.bootstrap_servers, big_flags(), topic=topic))
    bind(cluster, flag_binding(name, namespace, topic=topic, max_memory="4Mi"))
    cluster.apply(app_pod(f"{name}-1", namespace, app=name))
    return wait_oom_rejections(cluster, f"{name}-1", namespace), topic


def test_topic_bigger_than_max_memory_is_reported(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster = node_cluster.cluster
    ip, _ = _overfilled(node_cluster, namespace, "big")
    oom = metric(ip, "sidecar_state_hydrator_redis_oom_rejections_total")
    status = wait_for(
        lambda: (
            (b := get_binding(cluster, "big", namespace))
            and "big-1" in (b.get("status", {}).get("storeFullPods") or [])
            and b["status"]
        ),
        timeout=60,
        what="the binding's status to list the Pod as store-full",
    )
    print(f"\n[node] OOM rejections: {oom:.0f}; binding status: {json.dumps(status)[:400]}")
    pod = get_pod(cluster, "big-1", namespace)
    app = container_status(pod, "app")
    # Not silently served a wrong view: a partial view must never count as hydrated (the app
    # container would then never start), or the app must be able to see it is partial.
    assert metric(ip, "sidecar_state_hydrator_hydrated") == 0
    assert "running" not in app["state"], app
    assert "big-1" in wait_for(
        lambda: (
            (get_binding(cluster, "big", namespace) or {}).get("status", {}).get("unhydratedPods")
        ),
        timeout=60,
        what="the binding's status to list the Pod as not hydrated",
    )


def test_a_full_store_freed_by_tombstones_turns_ready_with_the_whole_view(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    ip, topic = _overfilled(node_cluster, namespace, "full")
    assert metric(ip, "sidecar_state_hydrator_hydrated") == 0

    async def tombstones() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for i in range(5500):
                await producer.send(topic, key=f"k{i}".encode(), value=None)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(tombstones())
    # The writes Redis refused are retried once the tombstones freed memory: the view becomes
    # whole, the hydrator's startup probe passes, and the app starts on it.
    wait_ready(cluster, "full-1", namespace, timeout=120)
    view = app_json(ip, "/flags")
    assert view["meta"]["hydrated"] == "1" and view["meta"]["complete"] == "1", view["meta"]
    assert sorted(view["flags"]) == sorted(f"k{i}" for i in range(5500, 6000))  # unprefixed
    assert metric(ip, "sidecar_state_hydrator_hydrated") == 1
