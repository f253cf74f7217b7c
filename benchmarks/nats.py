"""NATS JetStream as the source: bootstrap from a KV bucket, and put -> visible latency.

    python -m benchmarks.nats [--keys 100000] [--repeat 2] [--rate 1000] [--seconds 5]

Both figures are measured beside a bare nats-py *ordered consumer* in the same run, on the
same real nats-server (JetStream on disk) and redis-server (the operator's command line):

- **Bootstrap**: a KV bucket holding N keys; the in-process hydrator on an empty Redis is
  timed until the view is published (hydrated), against the bare consumer reading the same
  bucket (``js.subscribe(ordered_consumer=True)`` with a callback that only counts).
  Target: the hydrator at >= 0.6 of the bare consumer's rate.
- **Put -> visible** at a fixed rate: this process puts (a JetStream publish to
  ``$KV.<bucket>.<key>``, as ``kv.put`` sends it, acks awaited in the background) and stamps
  each send; a subscriber process sees each key land in Redis through keyspace
  notifications, while a bare ordered consumer in another process stamps each receipt. The
  ``sidecar-state-hydrator`` runs as its own process, as in a Pod.
  Target: p99 visible <= 1.5x the bare consumer's p99 receive latency.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import pstats
import shutil
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from typing import Any

import nats
import redis
import redis.asyncio as aioredis
from nats.js.api import DeliverPolicy

from benchmarks._common import machine, write_results
from benchmarks.freshness import STOP_CHANNEL, subscriber, summary, wait_ready
from benchmarks.lib.processes import cpu_seconds
from localkube.ports import free_port
from sidecar_hydrator.config import (
    CONFIG_ENV,
    BindingSource,
    HydratorConfig,
    KeyMapping,
    NatsConnection,
    NatsKv,
    NatsSourceConfig,
    RecordFormat,
)
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.main import tune_gc
from sidecar_state_stack.nats_server import NATS_SERVER_VERSION, NatsServer
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config

TARGET_BOOTSTRAP_RATIO = 0.6
TARGET_P99_RATIO = 1.5
BOOT_BUCKET = "boot"
FRESH_BUCKET = "fresh"


def value_of(i: int) -> bytes:
    """~80-byte JSON documents (the Kafka benchmark's shape)."""
    return f'{{"id": "item-{i:08d}", "v": "value-{i:08d}-padding-padding"}}'.encode()


def binding(server: str, bucket: str, fmt: RecordFormat, prefix: str) -> BindingSource:
    return BindingSource(
        name="bench",
        nats=NatsSourceConfig(
            connection=NatsConnection(servers=(server,)), kv=NatsKv(bucket=bucket)
        ),
        format=fmt,
        keys=KeyMapping(prefix=prefix, value_field="v")
        if fmt == "json"
        else KeyMapping(prefix=prefix),
    )


# -- bootstrap ------------------------------------------------------------------------------------


async def fill_bucket(url: str, n: int) -> float:
    """Put N keys (acked, 1000 in flight); returns seconds."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        await js.create_key_value(bucket=BOOT_BUCKET, history=1)
        started = time.perf_counter()
        for first in range(0, n, 1000):
            await asyncio.gather(
                *(
                    js.publish(f"$KV.{BOOT_BUCKET}.item-{i:08d}", value_of(i))
                    for i in range(first, min(n, first + 1000))
                )
            )
        return time.perf_counter() - started
    finally:
        await nc.close()


async def bare_bootstrap(url: str, n: int) -> tuple[float, float]:
    """Records/s of a bare ordered consumer reading the bucket (a callback that counts), and
    the µs of this process's CPU it spent per record."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        done = asyncio.Event()
        got = 0

        async def count(msg: Any) -> None:
            nonlocal got
            got += 1
            if got >= n:
                done.set()

        cpu_started = time.process_time()
        started = time.perf_counter()
        sub = await js.subscribe(
            f"$KV.{BOOT_BUCKET}.>",
            cb=count,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        await sub.unsubscribe()
        return n / elapsed, cpu / n * 1e6
    finally:
        await nc.close()


async def hydrate(
    url: str, socket: str, n: int, fmt: RecordFormat, *, profile: bool
) -> dict[str, Any]:
    config = HydratorConfig(
        redis_socket=socket, bindings=(binding(url, BOOT_BUCKET, fmt, "item:"),)
    )
    hydrator = Hydrator(config)
    stop = asyncio.Event()
    profiler = cProfile.Profile() if profile else None
    cpu_started = time.process_time()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    task = asyncio.create_task(hydrator.run(stop))
    while not hydrator.hydrated:
        if task.done():
            task.result()
            raise RuntimeError("hydrator stopped before hydrating")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - cpu_started
    stop.set()
    await task
    client = aioredis.Redis(unix_socket_path=socket)
    try:
        own = [k async for k in client.scan_iter(match=b"sidecar-state:*")]
        keys = await client.dbsize() - len(own)
        last = await client.get(b"item:item-%08d" % (n - 1))
        await client.flushall()
    finally:
        await client.aclose()
    assert keys == n, f"{keys} keys in Redis, expected {n}"
    expected = value_of(n - 1) if fmt == "raw" else f"value-{n - 1:08d}-padding-padding".encode()
    assert last == expected, (last, expected)
    result: dict[str, Any] = {"seconds": elapsed, "records_per_s": n / elapsed,
                              "cpu_us_per_record": cpu / n * 1e6}  # fmt: skip
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        result["profile_top_tottime"] = [
            line.strip() for line in out.getvalue().splitlines() if line.strip()
        ][-16:]
    return result


async def bootstrap(
    url: str, socket: str, n: int, repeat: int, fmt: RecordFormat
) -> dict[str, Any]:
    fill_s = await fill_bucket(url, n)
    load = os.getloadavg()[0]
    bare_runs = [await bare_bootstrap(url, n) for _ in range(repeat)]
    bare = [rate for rate, _ in bare_runs]
    _, bare_cpu = max(bare_runs)  # the fastest run's CPU, as the hydrator's best
    tries = [await hydrate(url, socket, n, fmt, profile=False) for _ in range(repeat)]
    profiled = await hydrate(url, socket, n, fmt, profile=True)
    best = min(tries, key=lambda t: t["seconds"])
    row = {
        "keys": n,
        "format": fmt,
        "fill_seconds": round(fill_s, 2),
        "bare_ordered_consumer_records_per_s": round(max(bare)),
        "bare_all": [round(b) for b in bare],
        "hydration_seconds": round(best["seconds"], 3),
        "hydration_records_per_s": round(best["records_per_s"]),
        "hydration_all": [round(t["records_per_s"]) for t in tries],
        "hydrator_cpu_us_per_record": round(best["cpu_us_per_record"], 2),
        "bare_cpu_us_per_record": round(bare_cpu, 2),
        "uptime_load_1m": load,
        "ratio_to_bare": round(best["records_per_s"] / max(bare), 3),
        "profile_top_tottime": profiled.get("profile_top_tottime", []),
    }
    row["met"] = row["ratio_to_bare"] >= TARGET_BOOTSTRAP_RATIO
    print(
        f"bootstrap {n:,} keys ({fmt}): hydrator {row['hydration_records_per_s']:,} rec/s "
        f"({row['hydration_seconds']} s, {row['hydrator_cpu_us_per_record']} us CPU/rec) | bare "
        f"ordered consumer {row['bare_ordered_consumer_records_per_s']:,} rec/s "
        f"({row['bare_cpu_us_per_record']} us CPU/rec) | "
        f"x{row['ratio_to_bare']} (target >= {TARGET_BOOTSTRAP_RATIO})",
        flush=True,
    )
    return row


# -- put -> visible -------------------------------------------------------------------------------


def bare_receiver(url: str, tag: str, conn: multiprocessing.connection.Connection) -> None:
    """Child process: a bare ordered consumer's receive time per key (new messages only)."""

    async def run() -> dict[bytes, int]:
        nc = await nats.connect(url)
        seen: dict[bytes, int] = {}
        done = asyncio.Event()
        stop_key = f"stop-{tag}"
        prefix = f"$KV.{FRESH_BUCKET}."

        async def on(msg: Any) -> None:
            now = time.time_ns()
            key = msg.subject[len(prefix) :]
            if key == stop_key:
                done.set()
            else:
                seen[f"flag:{key}".encode()] = now

        sub = await nc.jetstream().subscribe(
            f"{prefix}>", cb=on, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        conn.send("ready")
        await done.wait()
        await sub.unsubscribe()
        await nc.close()
        return seen

    conn.send(asyncio.run(run()))


async def put_at(url: str, rate: int, seconds: float, tag: str) -> dict[bytes, int]:
    """Put ``rate`` keys/s for ``seconds``; returns Redis key -> send time (ns)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sent: dict[bytes, int] = {}
    acks: list[asyncio.Task[Any]] = []
    try:
        total = int(rate * seconds)
        started = time.perf_counter()
        i = 0
        while i < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while i < due:
                key = f"{tag}-{i:07d}"
                sent[f"flag:{key}".encode()] = time.time_ns()
                acks.append(asyncio.ensure_future(
                    js.publish(f"$KV.{FRESH_BUCKET}.{key}", json.dumps({"v": i % 2 == 0}).encode())
                ))  # fmt: skip
                i += 1
            await asyncio.sleep(0.0005)
        await asyncio.gather(*acks)
        await js.publish(f"$KV.{FRESH_BUCKET}.stop-{tag}", b"{}")
    finally:
        await nc.close()
    return sent


def one_rate(url: str, server: RedisServer, rate: int, seconds: float, tag: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    sub_parent, sub_child = ctx.Pipe()
    bare_parent, bare_child = ctx.Pipe()
    watchers = [
        ctx.Process(target=subscriber, args=(str(server.socket_path), f"flag:{tag}-*", sub_child)),
        ctx.Process(target=bare_receiver, args=(url, tag, bare_child)),
    ]
    for proc in watchers:
        proc.start()
    for pipe in (sub_parent, bare_parent):
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("a watcher process did not start")
    sent = asyncio.run(put_at(url, rate, seconds, tag))
    bare_seen: dict[bytes, int] = bare_parent.recv()
    time.sleep(0.5)  # let the last keys land in Redis
    redis.Redis(unix_socket_path=str(server.socket_path)).publish(STOP_CHANNEL, "stop")
    seen: dict[bytes, int] = sub_parent.recv()[0]  # (seen, floor_seen): no floor pipe here
    for proc in watchers:
        proc.join(10)
    visible = sorted((seen[k] - at) / 1e6 for k, at in sent.items() if k in seen)
    bare = sorted((bare_seen[k] - at) / 1e6 for k, at in sent.items() if k in bare_seen)
    row: dict[str, Any] = {
        "rate": rate, "records": len(sent), "visible": len(visible), "bare_received": len(bare),
        **summary(visible, ""), **summary(bare, "bare_"),
    }  # fmt: skip
    row["p99_ratio"] = round(row["p99_ms"] / row["bare_p99_ms"], 2) if row["bare_p99_ms"] else None
    return row


def freshness(url: str, rate: int, seconds: float) -> dict[str, Any]:
    server = RedisServer(
        config=[*sidecar_redis_config(max_memory_bytes=256 * 2**20), "notify-keyspace-events K$"]
    )
    server.start()
    hydrator: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(_create_bucket(url, FRESH_BUCKET))
        port = free_port()
        config = HydratorConfig(
            redis_socket=str(server.socket_path),
            http_port=port,
            bindings=(binding(url, FRESH_BUCKET, "raw", "flag:"),),
        )
        entry = shutil.which("sidecar-state-hydrator") or os.path.join(
            os.path.dirname(sys.executable), "sidecar-state-hydrator"
        )
        command = [entry] if os.path.exists(entry) else [sys.executable, "-m", "sidecar_hydrator"]
        hydrator = subprocess.Popen(
            command,
            env={**os.environ, CONFIG_ENV: config.to_env_value()},
            stderr=subprocess.DEVNULL,
        )
        wait_ready(port, hydrator)
        one_rate(url, server, rate, min(seconds, 2.0), "warmup")  # not measured
        cpu_before, writes_before = cpu_seconds(hydrator.pid), write_totals(port)
        row = one_rate(url, server, rate, seconds, f"r{rate}")
        cpu, writes = cpu_seconds(hydrator.pid) - cpu_before, write_totals(port)
        count, spent, applied = (writes[k] - writes_before[k] for k in WRITE_METRICS)
        row["uptime_load_1m"] = os.getloadavg()[0]
        # What the hydrator process spent per live record (its whole process: the NATS
        # read, the decode, the Redis write and its own bookkeeping), and how it wrote.
        row["hydrator_cpu_us_per_record"] = round(cpu / max(1, row["records"]) * 1e6, 1)
        row["write_ms_avg"] = round(1000 * spent / count, 3) if count else None
        row["records_per_write"] = round(applied / count, 2) if count else None
    finally:
        if hydrator is not None:
            hydrator.terminate()
            hydrator.wait(5)
        server.close()
    row["met"] = row["p99_ratio"] is not None and row["p99_ratio"] <= TARGET_P99_RATIO
    print(
        f"put -> visible at {rate}/s: p50 {row['p50_ms']} p99 {row['p99_ms']} ms | bare ordered "
        f"consumer p50 {row['bare_p50_ms']} p99 {row['bare_p99_ms']} ms | p99 x{row['p99_ratio']} "
        f"(target <= {TARGET_P99_RATIO}) | {row['visible']}/{row['records']} visible | "
        f"hydrator {row['hydrator_cpu_us_per_record']} us CPU/rec, writes of "
        f"{row['records_per_write']} records in {row['write_ms_avg']} ms on average",
        flush=True,
    )
    return row


#: The hydrator's write metrics (summed over bindings): transactions, their seconds, records.
WRITE_METRICS = (
    "sidecar_state_hydrator_batch_apply_seconds_count",
    "sidecar_state_hydrator_batch_apply_seconds_sum",
    "sidecar_state_hydrator_records_applied_total",
)


def write_totals(port: int) -> dict[str, float]:
    """:data:`WRITE_METRICS` as the hydrator's ``/metrics`` says now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        lines = response.read().decode().splitlines()
    totals = dict.fromkeys(WRITE_METRICS, 0.0)
    for line in lines:
        name, _, value = line.partition(" ")
        base = name.split("{")[0]
        if base in totals:
            totals[base] += float(value)
    return totals


async def _create_bucket(url: str, bucket: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().create_key_value(bucket=bucket, history=1)
    finally:
        await nc.close()


# -- figures ---------------------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of docs/benchmarks.md: bootstrap rate and put -> visible, each against a bare
    ordered consumer of the same run."""
    boot, fresh = results["bootstrap"], results["freshness"]
    return [
        {
            "figure": f"bootstrap of {boot['keys']:,} keys from a KV bucket ({boot['format']})",
            "value": boot["hydration_records_per_s"],
            "unit": "rec/s",
            "baseline": "bare nats-py ordered consumer "
            f"{boot['bare_ordered_consumer_records_per_s']:,} rec/s",
            "ratio": boot["ratio_to_bare"],
            "target": f">= {TARGET_BOOTSTRAP_RATIO} of the bare consumer",
            "met": boot["met"],
        },
        {
            "figure": f"put -> visible at {fresh['rate']:,}/s, p50 / p99",
            "value": f"{fresh['p50_ms']} / {fresh['p99_ms']}",
            "unit": "ms",
            "baseline": "bare ordered consumer receive "
            f"{fresh['bare_p50_ms']} / {fresh['bare_p99_ms']} ms",
            "ratio": fresh["p99_ratio"],
            "target": f"p99 <= {TARGET_P99_RATIO}x the bare consumer's",
            "met": fresh["met"],
        },
    ]


def measure(
    *, keys: int, repeat: int, fmt: RecordFormat, rate: int, seconds: float
) -> dict[str, Any]:
    """Bootstrap of ``keys`` from a KV bucket (best of ``repeat``) and put -> visible at
    ``rate`` for ``seconds``, each beside a bare ordered consumer."""
    tune_gc()  # as the sidecar process does
    results: dict[str, Any] = {
        "benchmark": "nats",
        "machine": {
            **machine(),
            "nats_server": NATS_SERVER_VERSION,
            "nats_py": metadata.version("nats-py"),
        },
        "parameters": {
            "keys": keys,
            "repeat": repeat,
            "format": fmt,
            "rate": rate,
            "seconds": seconds,
            "value_bytes": len(value_of(0)),
            "baseline": "a bare nats-py ordered consumer (push, callback) in the same run",
            "note": "nats-server, redis-server, the hydrator and the clients share the machine",
        },
    }
    redis_server = RedisServer(config=sidecar_redis_config(max_memory_bytes=1024**3))
    redis_server.start()
    try:
        with NatsServer() as server:
            results["bootstrap"] = asyncio.run(
                bootstrap(server.url, str(redis_server.socket_path), keys, repeat, fmt)
            )
            results["freshness"] = freshness(server.url, rate, seconds)
    finally:
        redis_server.close()
    results["figures"] = figures(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nats",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2, help="bootstrap runs; the best counts")
    parser.add_argument("--format", default="json", choices=["json", "raw"])
    parser.add_argument("--rate", type=int, default=1000, help="puts per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of puts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = measure(keys=args.keys, repeat=args.repeat, fmt=args.format, rate=args.rate,
                      seconds=args.seconds)  # fmt: skip
    path = write_results("nats", results)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
