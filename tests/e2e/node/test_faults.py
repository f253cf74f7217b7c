"""Issue 11 on a real node: the hydrator's faults with real Pods, where the kubelet restarts
what dies and the app container waits for the startup probe.

- A hydrator SIGKILLed mid-bootstrap: the app does not start on the partial view, and the
  restarted hydrator continues the bootstrap rather than reading the topic again.
- The broker restarted under a steady 200 records/s: nothing produced is missing from the view.

("A full store freed by tombstones" is in ``test_pods.py``.) What the app reads is the judge:
its ``/flags`` (every ``flag:*`` key and the metadata hash) and ``/status`` (what the metadata
said when its process started).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.objects import wait_for
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import (
    APP_PORT,
    app_json,
    app_pod,
    bind,
    container_status,
    flag_binding,
    flag_topic,
    get_pod,
    http_get,
    metric,
    start_app_pod,
    wait_ready,
)

HYDRATOR = "sidecar-state-hydrator"


def _ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _flag(i: int, prefix: str = "k") -> tuple[str, bytes]:
    return f"{prefix}{i}", json.dumps({"id": f"{prefix}{i}", "enabled": f"v{i}"}).encode()


async def _publish_bulk(bootstrap: str, records: Sequence[tuple[str, bytes]], topic: str) -> None:
    """Many records fast: large batches, every ack awaited."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k.encode(), value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _flags(ip: str) -> dict[str, Any]:
    """The app's ``/flags``, given time: a view of 150,000 keys is a few MB of JSON."""
    status, body = http_get(f"http://{ip}:{APP_PORT}/flags", timeout=30)
    assert status == 200, (status, body[:500])
    flags: dict[str, Any] = json.loads(body)
    return flags


def _read_total(ip: str) -> float | None:
    try:
        return metric(ip, "sidecar_state_hydrator_records_read_total")
    except OSError:
        return None


def test_a_hydrator_killed_mid_bootstrap_resumes_and_the_app_starts_on_the_whole_view(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    topic = f"boot-{namespace}"
    broker.create_topic(topic)
    # Enough records to take several seconds at the sidecar's CPU limit (200m).
    total = 150_000
    asyncio.run(_publish_bulk(broker.bootstrap_servers, [_flag(i) for i in range(total)], topic))
    bind(cluster, flag_binding("boot", namespace, topic=topic, max_memory="64Mi"))
    cluster.apply(app_pod("boot-1", namespace, app="boot"))

    def running() -> tuple[str, str] | None:
        pod = get_pod(cluster, "boot-1", namespace)
        ip = pod["status"].get("podIP")
        try:
            hydrator = container_status(pod, HYDRATOR)
        except StopIteration:
            return None
        if not ip or "running" not in hydrator["state"]:
            return None
        return ip, hydrator["containerID"].split("://", 1)[1]

    ip, hydrator_id = wait_for(running, timeout=60, interval=0.2, what="the hydrator running")
    # Mid-bootstrap: a fifth of the topic read (several 5000-key batches written with their
    # offsets into the spare database), the view not complete.
    read_before = wait_for(
        lambda: (r := _read_total(ip)) is not None and r >= total // 5 and r,
        timeout=120,
        interval=0.05,
        what="the bootstrap under way",
    )
    node_cluster.kill_container(hydrator_id)
    assert read_before < total, f"bootstrap done before the kill ({read_before}): grow the topic"
    app = container_status(get_pod(cluster, "boot-1", namespace), "app")
    assert "running" not in app["state"] and not app.get("started"), app  # no early start

    def restarted() -> dict[str, Any] | None:
        got = get_pod(cluster, "boot-1", namespace)
        status = container_status(got, HYDRATOR)
        return got if status["restartCount"] >= 1 and "running" in status["state"] else None

    restarted_pod = wait_for(restarted, timeout=60, interval=0.5, what="the hydrator restarted")
    second_start = _ts(container_status(restarted_pod, HYDRATOR)["state"]["running"]["startedAt"])
    pod = wait_ready(cluster, "boot-1", namespace, timeout=180)

    # The app started after the second hydrator, on a complete view built by it.
    app_started = _ts(container_status(pod, "app")["state"]["running"]["startedAt"])
    hydrator_now = container_status(pod, HYDRATOR)
    assert app_started >= second_start, (app_started, second_start, hydrator_now)
    status = app_json(ip, "/status")
    assert status["meta"]["hydrated"] == "1", status
    assert int(status["meta"]["built_at_ms"]) <= status["started_at_ms"], status
    # The restarted hydrator read only what the killed one had not stored.
    read_after = metric(ip, "sidecar_state_hydrator_records_read_total")
    assert 0 < read_after < total, (read_before, read_after, total)
    logs = cluster.kubectl_run("logs", "boot-1", "-n", namespace, "-c", HYDRATOR).stdout
    assert "continuing the rebuild an earlier hydrator left" in logs, logs[-3000:]
    # And the view is whole and exact.
    view = _flags(ip)
    assert view["meta"]["hydrated"] == "1" and view["meta"]["complete"] == "1", view["meta"]
    assert view["flags"] == {f"k{i}": f"v{i}" for i in range(total)}
    print(
        f"\n[node] killed after {read_before:.0f} of {total} records; the restarted hydrator "
        f"read {read_after:.0f}",
        file=sys.stderr,
    )


class _SteadyProducer:
    """``rate`` records a second (unique keys ``p<i>``), on a clock that a broker away does not
    hold up (each send is its own task); a record whose delivery failed is sent again once the
    broker is back, as a producing app would. ``sent`` counts records, each delivered once."""

    def __init__(self, broker: KafkaBroker, topic: str, *, rate: int) -> None:
        self.broker, self.topic, self.rate = broker, topic, rate
        self.sent = 0
        self.failed: list[int] = []
        self.undelivered: list[int] | None = None  # set when every send got its answer
        self.producing_seconds = 0.0
        self.stop = threading.Event()

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.broker.bootstrap_servers,
            acks="all",
            linger_ms=0,
            request_timeout_ms=5000,
            retry_backoff_ms=200,
        )
        await producer.start()
        try:
            deliveries: list[asyncio.Task[int | None]] = []
            started = time.monotonic()
            while not self.stop.is_set():
                due = started + self.sent / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                deliveries.append(asyncio.create_task(self._deliver(producer, self.sent)))
                self.sent += 1
            self.producing_seconds = time.monotonic() - started
            self.failed = [i for i in await asyncio.gather(*deliveries) if i is not None]
            # The broker is back: these must get in now.
            again = await asyncio.gather(*(self._deliver(producer, i) for i in self.failed))
            self.undelivered = [i for i in again if i is not None]
        finally:
            await producer.stop()

    async def _deliver(self, producer: AIOKafkaProducer, i: int) -> int | None:
        """Send record ``i`` and wait for its ack; ``i`` back if it failed, else None."""
        key, value = _flag(i, prefix="p")
        try:
            await (await producer.send(self.topic, key=key.encode(), value=value))
        except KafkaError:
            return i
        return None


def test_a_broker_restart_under_200_records_a_second_loses_nothing(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    topic = flag_topic(broker, namespace, prefix="steady")
    bind(cluster, flag_binding("steady", namespace, topic=topic))
    ip: str = start_app_pod(cluster, "steady-1", namespace, app="steady")["status"]["podIP"]

    producer = _SteadyProducer(broker, topic, rate=200)
    thread = threading.Thread(target=asyncio.run, args=(producer.run(),), daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        time.sleep(3.0)  # traffic flows into the view
        restart_began = time.monotonic() - started
        broker.stop()
        broker.start()
        restarted = time.monotonic() - started
        time.sleep(4.0)  # and goes on after the restart
    finally:
        producer.stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive(), "the producer did not finish"
    assert producer.undelivered == [], producer.undelivered  # sent again after the restart
    elapsed = time.monotonic() - started
    assert producer.sent >= 200 * 6, producer.sent

    expected = {"new-ui-layout": "true"} | dict((f"p{i}", f"v{i}") for i in range(producer.sent))

    def whole() -> dict[str, Any] | None:
        view: dict[str, Any] = app_json(ip, "/flags")
        meta = view["meta"]
        done = meta.get("hydrated") == "1" and meta.get("lag") == "0"
        return view if view["flags"] == expected and done else None

    try:
        view = wait_for(whole, timeout=30, interval=0.5, what="every produced record in the view")
    except AssertionError:
        got = app_json(ip, "/flags")
        missing = sorted(set(expected) - set(got["flags"]))
        raise AssertionError(
            f"{len(missing)} of {len(expected)} missing: {missing[:20]}; meta {got['meta']}"
        ) from None
    assert view["meta"]["complete"] == "1", view["meta"]
    print(
        f"\n[node] {producer.sent} records at 200/s over {producer.producing_seconds:.1f} s "
        f"(all delivered after {elapsed:.1f} s); broker down "
        f"{restart_began:.1f}-{restarted:.1f} s; {len(producer.failed)} sends failed and were "
        "sent again; none lost",
        file=sys.stderr,
    )
