"""Produce -> visible in the Pod's Redis: latency percentiles at fixed produce rates.

    python -m benchmarks.freshness [--rates 100,1000,10000] [--seconds 5]

Runs the real parts as separate processes, as in a Pod: a KRaft broker, redis-server with the
operator's command line, and the ``sidecar-state-hydrator`` process with a rendered config.
This process produces records at a fixed rate, stamping the wall-clock time of each ``send``;
an observer process sees each key land in Redis through keyspace notifications
(``notify-keyspace-events K$``, the one directive added to the sidecar's config — a push, so
measuring does not poll Redis or steal a core). Latency = notification time - send time, so
it includes the producer client, the broker, the hydrator and the write.

The floor is a bare aiokafka consumer of the same topic with the hydrator's fetch wait; it
hands the keys of each fetch to the same observer, which timestamps both sides alike (one
hop from the process that knows, per read): see :func:`subscriber`. Its receive time in its
own process (the floor first measured) is kept as context.
Target: p50 and p99 <= 1.3x the floor's; DESIGN.md's p50 <= 5 ms, p99 <= 20 ms at 1k
records/s as context.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import redis
from aiokafka import AIOKafkaProducer

from benchmarks._common import broker, machine, write_results
from benchmarks.lib.stats import percentile
from localkube.ports import free_port
from sidecar_hydrator.config import (
    CONFIG_ENV,
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    replace,
)
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config

#: The issue's target: the hydrator adds at most 30% to a bare consumer's receive latency, at
#: p50 and at p99 (both measured in the same run). DESIGN.md's absolute targets are context.
TARGET_RATIO = 1.3
TARGET_P50_MS = 5.0
TARGET_P99_MS = 20.0
STOP_CHANNEL = "bench:stop"


def subscriber(
    socket_path: str,
    pattern: str,
    conn: multiprocessing.connection.Connection,
    floor_rx: multiprocessing.connection.Connection | None = None,
) -> None:
    """Child process: the observer. Records (key, arrival ns) for every key written under
    ``pattern`` (keyspace notifications) and for every key the floor's consumer received
    (``floor_rx``: it sends the keys of each fetch the moment it has them; ``None`` where the
    floor is timestamped elsewhere, as in the NATS benchmark). Sends ``(seen, floor_seen)``.

    Both sides are timestamped the same way, by this process: once per read, after parsing
    what that read brought (hiredis, in C), for every key in it; each through one hop from the
    process that knows (Redis, after the write; the floor, after its fetch). So the difference
    is what the hydrator adds, not what observing costs. (Before, the floor was timestamped in
    its own process, and visibility here after one hop more; and by redis-py's ``PubSub``,
    which parses and timestamps one notification after the other, dating the last key of a
    50-key batch about 50 Python parses late.)
    """
    import socket

    import hiredis

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    channel = f"__keyspace@0__:{pattern}".encode()
    for command in ((b"PSUBSCRIBE", channel), (b"SUBSCRIBE", STOP_CHANNEL.encode())):
        sock.sendall(hiredis.pack_command(cast(Any, command)))
    reader = hiredis.Reader()
    prefix = len(b"__keyspace@0__:")
    confirmed = 0
    while confirmed < 2:
        reader.feed(sock.recv(65536))
        while (reply := reader.gets()) is not False:
            confirmed += reply[0] in (b"psubscribe", b"subscribe")
    conn.send("ready")
    seen: dict[bytes, int] = {}
    floor_seen: dict[bytes, int] = {}
    clock = time.time_ns
    stop = False
    waiting: list[Any] = [sock] if floor_rx is None else [sock, floor_rx]
    while not stop:
        for ready in multiprocessing.connection.wait(waiting):
            if ready is floor_rx:
                try:
                    keys = floor_rx.recv_bytes()
                except EOFError:  # the floor is done: stop waiting on its pipe
                    waiting.remove(floor_rx)
                    continue
                now = clock()
                for key in keys.split(b"\n"):
                    floor_seen.setdefault(key, now)
                continue
            chunk = sock.recv(1 << 20)
            if not chunk:
                stop = True
                break
            reader.feed(chunk)
            replies = []
            while (reply := reader.gets()) is not False:
                replies.append(reply)
            now = clock()
            for reply in replies:
                if reply[0] == b"pmessage":
                    seen.setdefault(reply[2][prefix:], now)
                elif reply[0] == b"message":
                    stop = True
    sock.close()
    conn.send((seen, floor_seen))


def redis_py_subscriber(
    socket_path: str, pattern: str, conn: multiprocessing.connection.Connection
) -> None:
    """Child process: :func:`subscriber` as redis-py's ``PubSub`` sees it (each notification
    parsed in Python, then timestamped): what this benchmark measured until it was replaced;
    ``--compare-subscribers`` runs it beside the other to show the difference."""
    client = redis.Redis(unix_socket_path=socket_path)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe(f"__keyspace@0__:{pattern}")
    pubsub.subscribe(STOP_CHANNEL)
    conn.send("ready")
    seen: dict[bytes, int] = {}
    prefix = len(b"__keyspace@0__:")
    for message in pubsub.listen():
        now = time.time_ns()
        if message["type"] == "pmessage":
            seen.setdefault(message["channel"][prefix:], now)
        elif message["type"] == "message":
            break
    conn.send(seen)


def kafka_floor(
    bootstrap: str,
    topic: str,
    tag: str,
    fetch_max_wait_ms: int,
    conn: multiprocessing.connection.Connection,
    observer: multiprocessing.connection.Connection,
) -> None:
    """Child process: a bare aiokafka consumer's receive time per key — the floor the
    hydrator cannot beat (producer, broker and fetch, without decoding or writing), with the
    hydrator's fetch wait. Timestamped here (the issue's floor) and sent on to the observer
    (see :func:`subscriber`)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict[bytes, int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=fetch_max_wait_ms
        )
        await consumer.start()
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        conn.send("ready")
        seen: dict[bytes, int] = {}
        stop_key = f"stop:{tag}".encode()
        try:
            while True:
                data = await consumer.getmany(timeout_ms=200)
                now = time.time_ns()
                keys = [b"flag:" + r.key for records in data.values() for r in records]
                if keys:
                    observer.send_bytes(b"\n".join(keys))
                for key in keys:
                    if key == b"flag:" + stop_key:
                        return seen
                    seen[key] = now
        finally:
            await consumer.stop()

    conn.send(asyncio.run(run()))


async def produce_at(
    bootstrap: str, topic: str, rate: int, seconds: float, tag: str
) -> dict[bytes, int]:
    """Produce ``rate`` records/s for ``seconds``; returns key -> send time (ns)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await producer.start()
    sent: dict[bytes, int] = {}
    try:
        total = int(rate * seconds)
        started = time.perf_counter()
        i = 0
        futures = []
        while i < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while i < due:
                key = f"fresh:{tag}:{i:07d}"
                value = json.dumps({"id": key, "enabled": i % 2 == 0}).encode()
                sent[f"flag:{key}".encode()] = time.time_ns()
                futures.append(await producer.send(topic, key=key.encode(), value=value))
                i += 1
            await asyncio.sleep(0.0005)
        await producer.flush()
        await asyncio.gather(*futures)
        stop = json.dumps({"id": f"stop:{tag}", "enabled": False}).encode()
        await producer.send_and_wait(topic, key=f"stop:{tag}".encode(), value=stop)
    finally:
        await producer.stop()
    return sent


def profile_of(collapsed: str, top: int = 12) -> dict[str, Any]:
    """py-spy's collapsed stacks (``frame;frame;... count`` per line) as the shares of the
    samples each function is on the stack of (inclusive) and at the top of (own)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)

    def shares(counts: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [{"function": f, "share": round(n / total, 3)} for f, n in ranked]

    return {"samples": total, "top_own": shares(own), "top_inclusive": shares(inclusive)}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hydrator exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("hydrator not ready in time")


def measure(
    rates: list[int],
    seconds: float,
    *,
    settings: Mapping[str, int] | None = None,
    compare_subscribers: bool = False,
    repeat: int = 1,
    profile: bool = False,
) -> dict[str, Any]:
    """``settings``: hydrator config fields other than the defaults (to measure one at a time);
    ``compare_subscribers``: also timestamp with redis-py's ``PubSub`` (the earlier method)."""
    settings = dict(settings or {})
    results: dict[str, Any] = {
        "benchmark": "freshness",
        "machine": machine(),
        "parameters": {
            "rates": rates,
            "seconds_per_rate": seconds,
            "repeat": repeat,
            "format": "json",
            "producer": "aiokafka acks=1 linger_ms=0",
            "measurement": "keyspace notification arrival - producer send (wall clock, ns)",
            "baseline": "kafka_floor: a bare aiokafka consumer's receive time - send time, as "
            "the same observer sees it (kafka_floor_in_process: as the consumer saw it)",
            "observer": "raw socket + hiredis, one timestamp per read",
            "note": "broker, redis-server, hydrator, producer and subscriber share the machine",
            "hydrator_settings": settings,
        },
        "load_average_before": os.getloadavg(),
        "runs": [],
    }
    server = RedisServer(
        config=[*sidecar_redis_config(max_memory_bytes=512 * 2**20), "notify-keyspace-events K$"]
    )
    server.start()
    hydrator: subprocess.Popen[bytes] | None = None
    try:
        with broker() as kafka:
            topic = "freshness"
            kafka.create_topic(topic, partitions=1, compacted=True)
            port = free_port()
            config = HydratorConfig(
                redis_socket=str(server.socket_path),
                http_port=port,
                bindings=(
                    BindingSource(
                        name="flags",
                        kafka=KafkaConnection(bootstrap_servers=(kafka.bootstrap_servers,)),
                        topics=(topic,),
                        keys=KeyMapping(prefix="flag:", key_field="id", value_field="enabled"),
                    ),
                ),
            )
            config = replace(config, **settings)
            fetch_wait = config.fetch_max_wait_ms
            entry = shutil.which("sidecar-state-hydrator")
            command = [entry] if entry else [sys.executable, "-m", "sidecar_hydrator"]
            hydrator = subprocess.Popen(
                command,
                env={**os.environ, CONFIG_ENV: config.to_env_value()},
                stderr=subprocess.DEVNULL,
            )
            wait_ready(port, hydrator)
            results["hydrator_rss_mib_idle"] = rss_mib(hydrator.pid)
            # A fresh JVM and a fresh hydrator are slower than warm ones; not measured.
            one_rate(kafka.bootstrap_servers, server, topic, 1000, min(seconds, 3.0), fetch_wait,
                     tag="warmup")  # fmt: skip
            by_rate: dict[int, list[dict[str, Any]]] = {rate: [] for rate in rates}
            for _ in range(repeat):  # interleaved, so the machine's load hits every rate
                for rate in rates:
                    row = one_rate(kafka.bootstrap_servers, server, topic, rate, seconds,
                                   fetch_wait, compare_subscribers=compare_subscribers)  # fmt: skip
                    by_rate[rate].append(row)
                    print_row(row)
            for rate in rates:
                row = pooled(by_rate[rate])
                del row["samples"]
                results["runs"].append(row)
                if repeat > 1:
                    print("pooled:", end=" ")
                    print_row(row)
            if profile:
                results["hydrator_profile_at_1k"] = profiled_run(
                    kafka.bootstrap_servers, server, topic, seconds, fetch_wait, hydrator.pid
                )
            results["hydrator_rss_mib_after"] = rss_mib(hydrator.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                metrics = r.read().decode().splitlines()
            results["hydrator_event_to_visible_histogram"] = [
                line
                for line in metrics
                if line.startswith("sidecar_state_hydrator_event_to_visible_seconds")
            ]
            # Records per write (batch): how the live path batches at each rate.
            results["hydrator_writes"] = [
                line
                for line in metrics
                if line.startswith(
                    ("sidecar_state_hydrator_batch_apply_seconds_count",
                     "sidecar_state_hydrator_batch_apply_seconds_sum",
                     "sidecar_state_hydrator_records_applied_total")
                )
            ]  # fmt: skip
            print(
                f"hydrator RSS: {results['hydrator_rss_mib_idle']:.1f} MiB idle, "
                f"{results['hydrator_rss_mib_after']:.1f} MiB after the runs"
            )
    finally:
        if hydrator is not None:
            hydrator.terminate()
            hydrator.wait(5)
        server.close()
    results["load_average_after"] = os.getloadavg()
    at_1k = [r for r in results["runs"] if r["rate"] == 1000]
    results["targets"] = {
        "p50_ms": TARGET_P50_MS,
        "p99_ms": TARGET_P99_MS,
        "ratio_to_floor": TARGET_RATIO,
        "met_at_1k": bool(at_1k)
        and at_1k[0]["p50_ms"] <= TARGET_RATIO * at_1k[0]["kafka_floor_p50_ms"]
        and at_1k[0]["p99_ms"] <= TARGET_RATIO * at_1k[0]["kafka_floor_p99_ms"],
        "absolute_met_at_1k": bool(at_1k)
        and at_1k[0]["p50_ms"] <= TARGET_P50_MS
        and at_1k[0]["p99_ms"] <= TARGET_P99_MS,
    }
    return results


def one_rate(
    bootstrap: str,
    server: RedisServer,
    topic: str,
    rate: int,
    seconds: float,
    fetch_max_wait_ms: int,
    *,
    tag: str = "",
    compare_subscribers: bool = False,
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    tag = tag or f"r{rate}"
    pattern = f"flag:fresh:{tag}:*"
    sub_parent, sub_child = ctx.Pipe()
    floor_parent, floor_child = ctx.Pipe()
    floor_rx, floor_tx = ctx.Pipe(duplex=False)
    watchers = [
        ctx.Process(
            target=subscriber, args=(str(server.socket_path), pattern, sub_child, floor_rx)
        ),
        ctx.Process(
            target=kafka_floor,
            args=(bootstrap, topic, tag, fetch_max_wait_ms, floor_child, floor_tx),
        ),
    ]
    pipes = [sub_parent, floor_parent]
    if compare_subscribers:
        old_parent, old_child = ctx.Pipe()
        watchers.append(
            ctx.Process(
                target=redis_py_subscriber, args=(str(server.socket_path), pattern, old_child)
            )
        )
        pipes.append(old_parent)
    for proc in watchers:
        proc.start()
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("a watcher process did not start")
    sent = asyncio.run(produce_at(bootstrap, topic, rate, seconds, tag))
    floor_seen: dict[bytes, int] = floor_parent.recv()
    time.sleep(0.5)  # let the last records land in Redis
    redis.Redis(unix_socket_path=str(server.socket_path)).publish(STOP_CHANNEL, "stop")
    seen, observed_floor = sub_parent.recv()
    old_seen: dict[bytes, int] = pipes[2].recv() if compare_subscribers else {}
    for proc in watchers:
        proc.join(10)

    def latencies(at_ns: Mapping[bytes, int]) -> list[float]:
        return sorted((at_ns[key] - at) / 1e6 for key, at in sent.items() if key in at_ns)

    samples = {
        "": latencies(seen),
        "kafka_floor_": latencies(observed_floor),
        # The first floor: the same receive, timestamped in the consumer's process.
        "kafka_floor_in_process_": latencies(floor_seen),
    }
    if compare_subscribers:
        samples["redis_py_subscriber_"] = latencies(old_seen)
    return row_of(rate, len(sent), samples)


def row_of(rate: int, records: int, samples: Mapping[str, list[float]]) -> dict[str, Any]:
    """One rate's figures from its latency samples (ms) by series prefix (``""``: visible);
    the samples are kept, so that repeated runs are pooled (:func:`pooled`)."""
    visible, floor = samples[""], samples["kafka_floor_"]
    row: dict[str, Any] = {"rate": rate, "records": records, "visible": len(visible)}
    for prefix, values in samples.items():
        row.update(summary(values, prefix))
    row["p50_over_floor_ms"] = round(percentile(visible, 0.5) - percentile(floor, 0.5), 3)
    row["ratios"] = ratios(row)
    row["samples"] = dict(samples)
    return row


def ratios(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Visible over the floor (and over the in-process floor), p50 and p99."""
    out: dict[str, float | None] = {}
    for floor in ("kafka_floor_", "kafka_floor_in_process_"):
        for q in ("p50", "p99"):
            base = row.get(f"{floor}{q}_ms")
            out[f"{q}_over_{floor.rstrip('_')}"] = round(row[f"{q}_ms"] / base, 2) if base else None
    return out


def pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one rate as one: their samples pooled, each run's ratios kept."""
    samples: dict[str, list[float]] = {}
    for row in rows:
        for prefix, values in row["samples"].items():
            samples.setdefault(prefix, []).extend(values)
    row = row_of(rows[0]["rate"], sum(r["records"] for r in rows), {
        prefix: sorted(values) for prefix, values in samples.items()
    })  # fmt: skip
    row["repeats"] = [r["ratios"] for r in rows]
    return row


def profiled_run(
    bootstrap: str, server: RedisServer, topic: str, seconds: float, fetch_wait: int, pid: int
) -> dict[str, Any]:
    """One more 1k/s run (not pooled: sampling slows the process) with py-spy sampling the
    hydrator: where its CPU goes on the live path. Without py-spy, says so."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    out = Path(tempfile.mkdtemp(prefix="ssb-fresh-")) / "hydrator.txt"
    sampler = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(int(seconds) + 1), "--rate", "250",
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        row = one_rate(bootstrap, server, topic, 1000, seconds, fetch_wait, tag="profiled")
        sampler.wait(seconds + 30)
        found = profile_of(out.read_text()) if out.exists() else {"skipped": "no py-spy output"}
    finally:
        if sampler.poll() is None:
            sampler.kill()
        shutil.rmtree(out.parent, ignore_errors=True)
    row.pop("samples", None)
    return {**found, "run": row, "py_spy": "--rate 250 --nonblocking (CPU samples only)"}


def summary(latencies: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}p50_ms": round(percentile(latencies, 0.50), 3),
        f"{prefix}p90_ms": round(percentile(latencies, 0.90), 3),
        f"{prefix}p99_ms": round(percentile(latencies, 0.99), 3),
        f"{prefix}max_ms": round(latencies[-1], 3),
        f"{prefix}mean_ms": round(statistics.fmean(latencies), 3),
    }


def print_row(row: dict[str, Any]) -> None:
    old = (
        f" | redis-py subscriber p50 {row['redis_py_subscriber_p50_ms']:6.2f} "
        f"p99 {row['redis_py_subscriber_p99_ms']:6.2f}"
        if "redis_py_subscriber_p50_ms" in row
        else ""
    )
    print(
        f"{row['rate']:>6}/s x {row['records'] // max(1, row['rate'])} s: "
        f"visible p50 {row['p50_ms']:6.2f} ms p99 {row['p99_ms']:6.2f} max {row['max_ms']:6.2f}"
        f" | kafka floor p50 {row['kafka_floor_p50_ms']:6.2f} p99 {row['kafka_floor_p99_ms']:6.2f}"
        f" (in its process {row.get('kafka_floor_in_process_p50_ms', 0):6.2f} / "
        f"{row.get('kafka_floor_in_process_p99_ms', 0):6.2f})"
        f" | x{row['p50_ms'] / row['kafka_floor_p50_ms']:.2f} / "
        f"x{row['p99_ms'] / row['kafka_floor_p99_ms']:.2f}{old}"
        f" | {row['visible']}/{row['records']} visible",
        flush=True,
    )


def figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of a results file against their targets, as run_all tabulates them."""
    rows = []
    for run in data.get("runs", []):
        gate = run["rate"] == 1000
        floor50, floor99 = run["kafka_floor_p50_ms"], run["kafka_floor_p99_ms"]
        r50 = round(run["p50_ms"] / floor50, 2) if floor50 else None
        r99 = round(run["p99_ms"] / floor99, 2) if floor99 else None
        worst = max(r50, r99) if r50 is not None and r99 is not None else None
        rows.append(
            {
                "figure": f"produce -> visible at {run['rate']:,} rec/s, p50 / p99",
                "value": f"{run['p50_ms']} / {run['p99_ms']}",
                "unit": "ms",
                "baseline": f"Kafka floor (bare consumer, same run, same observer) {floor50} /"
                f" {floor99} ms; p50 x{r50}, p99 x{r99}"
                + (
                    f"; in the consumer's process {run['kafka_floor_in_process_p50_ms']} / "
                    f"{run['kafka_floor_in_process_p99_ms']} ms"
                    if "kafka_floor_in_process_p50_ms" in run
                    else ""
                )
                + f"; absolute target p50 <= {TARGET_P50_MS}, p99 <= {TARGET_P99_MS} ms",
                "ratio": worst,
                "target": f"p50 and p99 <= x{TARGET_RATIO} of the floor" if gate else "(context)",
                "met": (worst is not None and worst <= TARGET_RATIO) if gate else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.freshness")
    parser.add_argument("--rates", default="100,1000,10000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--repeat", type=int, default=2,
        help="runs per rate, interleaved; their samples are pooled (each run's ratios kept)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="a hydrator config field (an integer) other than its default, e.g. "
        "fetch_max_wait_ms=20; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="one more 1k/s run with py-spy sampling the hydrator (not pooled)",
    )  # fmt: skip
    parser.add_argument(
        "--compare-subscribers", action="store_true",
        help="also timestamp visibility with redis-py's PubSub, the earlier method",
    )  # fmt: skip
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name] = int(value)
    results = measure(
        [int(r) for r in args.rates.split(",")], args.seconds, settings=settings,
        compare_subscribers=args.compare_subscribers, repeat=args.repeat, profile=args.profile,
    )  # fmt: skip
    path = write_results("freshness", results)
    print(f"written {path}")


if __name__ == "__main__":
    main()
