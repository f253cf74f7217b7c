"""Bootstrap throughput: a compacted topic of N keys -> the Pod's Redis, against raw MSET.

    python -m benchmarks.hydration [--sizes 100000,1000000] [--partitions 4]

For each size: produce N distinct keys to a fresh compacted topic, measure the raw Redis rate
(MSET inside MULTI/EXEC, the same keys and values, batches of the hydrator's bootstrap size),
then start a hydrator on an empty Redis and time it until the view is published (hydrated).
Both run on this machine in the same run, next to the broker; the ratio is what counts.
Targets: >= 250k records/s and >= 0.5x a bare aiokafka consumer's rate in the same run; 1M keys
< 10 s. The machine is shared: each row carries the load average, and the CPU per record of
the hydrator and of the bare consumer (their ratio moves much less with load than the rates).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, cast

import redis.asyncio as aioredis

from benchmarks._common import broker, machine, produce_bulk, write_results
from benchmarks.lib.processes import sidecar_redis
from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    RecordFormat,
    default,
)
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.kafka_source import consumer_options
from sidecar_hydrator.main import tune_gc
from sidecar_hydrator.resp import Client

TARGET_RECORDS_PER_S = 250_000
#: Records/s of the hydrator / of a bare aiokafka consumer reading the same topic (issue 17).
TARGET_RATIO_TO_BARE = 0.5
TARGET_1M_SECONDS = 10.0


def records(n: int) -> Iterator[tuple[bytes, bytes]]:
    """~80-byte JSON documents, keyed by id (the seed's flag shape, with a payload)."""
    for i in range(n):
        key = f"item-{i:08d}"
        yield key.encode(), f'{{"id": "{key}", "v": "value-{i:08d}-padding-padding"}}'.encode()


def expected_pairs(n: int, fmt: RecordFormat) -> Iterator[tuple[bytes, bytes]]:
    for key, value in records(n):
        if fmt == "json":
            yield b"item:" + key, f"value-{int(key[5:]):08d}-padding-padding".encode()
        else:
            yield b"item:" + key, value


def _last_pair(n: int, fmt: RecordFormat) -> Iterator[tuple[bytes, bytes]]:
    key = f"item-{n - 1:08d}"
    if fmt == "json":
        yield b"item:" + key.encode(), f"value-{n - 1:08d}-padding-padding".encode()
    else:
        yield (
            b"item:" + key.encode(),
            f'{{"id": "{key}", "v": "value-{n - 1:08d}-padding-padding"}}'.encode(),
        )


async def mset_rate(socket: str, n: int, fmt: RecordFormat, batch: int) -> float:
    """Keys/s of MSET in MULTI/EXEC, same keys, values and batch size as the hydrator's."""
    client = Client(path=socket)  # the hydrator's own client (sidecar_hydrator.resp)
    try:
        await client.execute("FLUSHALL")
        pairs = list(expected_pairs(n, fmt))
        started = time.perf_counter()
        for i in range(0, n, batch):
            chunk = itertools.chain.from_iterable(pairs[i : i + batch])
            await client.transaction([("MSET", *chunk)])
        elapsed = time.perf_counter() - started
        assert await client.execute("DBSIZE") == n
        await client.execute("FLUSHALL")
        return n / elapsed
    finally:
        await client.disconnect()


async def hydrate(
    bootstrap: str, socket: str, topic: str, n: int, fmt: RecordFormat
) -> dict[str, float]:
    config = HydratorConfig(
        redis_socket=socket,
        bindings=(
            BindingSource(
                name="bench",
                kafka=KafkaConnection(bootstrap_servers=(bootstrap,)),
                topics=(topic,),
                format=fmt,
                keys=KeyMapping(prefix="item:", key_field="id", value_field="v")
                if fmt == "json"
                else KeyMapping(prefix="item:"),
            ),
        ),
    )
    hydrator = Hydrator(config)
    stop = asyncio.Event()
    cpu_started = time.process_time()
    started = time.perf_counter()
    task = asyncio.create_task(hydrator.run(stop))
    while not hydrator.hydrated:
        if task.done():
            task.result()
            raise RuntimeError("hydrator stopped before hydrating")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    stop.set()
    await task
    client = aioredis.Redis(unix_socket_path=socket)
    try:
        # The hydrator's own keys (offsets, metadata, sentinel, topic IDs) do not count.
        own = [k async for k in client.scan_iter(match=b"sidecar-state:*")]
        keys = await client.dbsize() - len(own)
        sample = await client.get(b"item:item-%08d" % (n - 1))
        await client.flushall()
    finally:
        await client.aclose()
    assert keys == n, f"{keys} keys in Redis, expected {n}"
    last = next(expected_pairs(n, fmt) if n == 1 else _last_pair(n, fmt))
    assert sample == last[1], (sample, last)
    return {"seconds": elapsed, "records_per_s": n / elapsed, "cpu_us_per_record": cpu / n * 1e6}


async def consume_rate(bootstrap: str, topic: str, n: int, partitions: int) -> tuple[float, float]:
    """Records/s of a bare aiokafka consumer reading the topic (same fetch settings, no work):
    the ceiling set by the Kafka client before the hydrator decodes or writes anything. Also
    its CPU µs per record: on a shared machine the CPU ratio moves far less than the rates."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    options = consumer_options(
        KafkaConnection(bootstrap_servers=(bootstrap,)), client_id="bare", config=_config()
    )
    # aiokafka's own ConsumerRecords: the baseline is the stock client, not the hydrator's
    # lighter records (kafka_internals.LIGHT_RECORDS), which are part of what is measured.
    options.pop("value_deserializer")
    consumer = AIOKafkaConsumer(**options)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        cpu_started = time.process_time()
        started = time.perf_counter()
        got = 0
        while got < n:
            data = await consumer.getmany(timeout_ms=200, max_records=5000)
            got += sum(len(records) for records in data.values())
        cpu = time.process_time() - cpu_started
        return n / (time.perf_counter() - started), cpu / n * 1e6
    finally:
        await consumer.stop()


def _config() -> HydratorConfig:
    return HydratorConfig(
        bindings=(
            BindingSource(
                name="x", kafka=KafkaConnection(bootstrap_servers=("unused:1",)), topics=("x",)
            ),
        )
    )


async def measure(
    sizes: list[int], partitions: int, formats: list[RecordFormat], repeat: int
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "hydration",
        "machine": machine(),
        "parameters": {
            "sizes": sizes,
            "partitions": partitions,
            "formats": formats,
            "repeat": repeat,
            "figures": "best of `repeat` runs (the machine is shared); all runs are listed",
            "value_bytes": len(next(records(1))[1]),
            "bootstrap_batch_max_keys": default(HydratorConfig, "bootstrap_batch_max_keys"),
            "note": "broker, redis-server, and the hydrator share the same machine",
        },
        "runs": [],
    }
    batch = results["parameters"]["bootstrap_batch_max_keys"]
    redis_server = sidecar_redis(max_memory_bytes=2 * 1024**3)
    try:
        with broker() as kafka:
            for n in sizes:
                topic = f"hydration-{n}"
                kafka.create_topic(topic, partitions=partitions, compacted=True)
                produce_s = await produce_bulk(kafka, topic, records(n), partitions=partitions)
                bare_runs: list[tuple[float, float]] = []
                tries_of: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in formats}
                # Interleaved: the baseline and the hydrator see the same load of the machine.
                for _ in range(repeat):
                    bare_runs.append(
                        await consume_rate(kafka.bootstrap_servers, topic, n, partitions)
                    )
                    for fmt in formats:
                        tries_of[fmt].append(
                            await hydrate(
                                kafka.bootstrap_servers,
                                str(redis_server.socket_path),
                                topic,
                                n,
                                fmt,
                            )
                        )
                bare = max(rate for rate, _ in bare_runs)
                bare_cpu = min(cpu for _, cpu in bare_runs)
                for fmt in formats:
                    baseline = max(
                        [
                            await mset_rate(str(redis_server.socket_path), n, fmt, batch)
                            for _ in range(repeat)
                        ]
                    )
                    tries = tries_of[fmt]
                    best = min(tries, key=lambda t: t["seconds"])
                    results["runs"].append(
                        {
                            "keys": n,
                            "format": fmt,
                            "produce_seconds": round(produce_s, 2),
                            "mset_keys_per_s": round(baseline),
                            "bare_consumer_records_per_s": round(bare),
                            "hydration_seconds": round(best["seconds"], 3),
                            "hydration_seconds_all": [round(t["seconds"], 3) for t in tries],
                            "hydration_records_per_s": round(best["records_per_s"]),
                            "hydrator_cpu_us_per_record": round(best["cpu_us_per_record"], 2),
                            "hydrator_cpu_us_per_record_best": round(
                                min(t["cpu_us_per_record"] for t in tries), 2
                            ),
                            "bare_consumer_cpu_us_per_record": round(bare_cpu, 2),
                            # CPU per record, bare consumer / hydrator (best of each): the rate
                            # ratio a machine of its own would see when both are CPU-bound.
                            "cpu_ratio_to_bare_consumer": round(
                                bare_cpu / min(t["cpu_us_per_record"] for t in tries), 3
                            ),
                            "load_average": [round(x, 2) for x in os.getloadavg()],
                            "ratio_to_mset": round(best["records_per_s"] / baseline, 3),
                            "ratio_to_bare_consumer": round(best["records_per_s"] / bare, 3),
                            "meets_rate_target": best["records_per_s"] >= TARGET_RECORDS_PER_S
                            and best["records_per_s"] / bare >= TARGET_RATIO_TO_BARE,
                        }
                    )
                    print_row(results["runs"][-1])
    finally:
        redis_server.close()
    million = [r for r in results["runs"] if r["keys"] == 1_000_000]
    results["targets"] = {
        "records_per_s": TARGET_RECORDS_PER_S,
        "ratio_to_bare_consumer": TARGET_RATIO_TO_BARE,
        "one_million_keys_seconds": TARGET_1M_SECONDS,
        "one_million_met": {
            r["format"]: r["hydration_seconds"] < TARGET_1M_SECONDS for r in million
        },
    }
    return results


def print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['keys']:>9,} keys {row['format']:>4}: hydrated in {row['hydration_seconds']:6.2f} s"
        f" = {row['hydration_records_per_s']:>9,} rec/s | raw MSET {row['mset_keys_per_s']:>9,}"
        f" keys/s (x{row['ratio_to_mset']:.2f}) | bare consumer"
        f" {row['bare_consumer_records_per_s']:>9,} rec/s (x{row['ratio_to_bare_consumer']:.2f})"
        f" | CPU/rec {row['hydrator_cpu_us_per_record_best']:.2f} us vs bare"
        f" {row['bare_consumer_cpu_us_per_record']:.2f} (x{row['cpu_ratio_to_bare_consumer']:.2f})"
        f" | load {row['load_average'][0]}",
        flush=True,
    )


def figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of a results file against their targets, as run_all tabulates them."""
    rows = []
    for run in data.get("runs", []):
        rows.append(
            {
                "figure": f"hydration of {run['keys']:,} keys ({run['format']})",
                "value": run["hydration_records_per_s"],
                "unit": "rec/s",
                "baseline": f"bare consumer {run['bare_consumer_records_per_s']:,} rec/s; raw "
                f"MSET {run['mset_keys_per_s']:,} keys/s (x{run['ratio_to_mset']})"
                + (
                    f"; CPU/rec {run['hydrator_cpu_us_per_record_best']} vs bare "
                    f"{run['bare_consumer_cpu_us_per_record']} us "
                    f"(x{run['cpu_ratio_to_bare_consumer']}); load {run['load_average'][0]}"
                    if "cpu_ratio_to_bare_consumer" in run
                    else ""
                ),
                "ratio": run["ratio_to_bare_consumer"],
                "target": f">= {TARGET_RATIO_TO_BARE}x bare, >= {TARGET_RECORDS_PER_S:,} rec/s",
                "met": run["meets_rate_target"],
            }
        )
        if run["keys"] >= 1_000_000:
            rows.append(
                {
                    "figure": f"  {run['keys']:,} keys ({run['format']}) hydrated in",
                    "value": run["hydration_seconds"],
                    "unit": "s",
                    "baseline": f"raw MSET of the same keys "
                    f"{run['keys'] / run['mset_keys_per_s']:.2f} s",
                    "ratio": round(
                        run["hydration_seconds"] * run["mset_keys_per_s"] / run["keys"], 2
                    ),
                    "target": "< 10 s",
                    "met": run["hydration_seconds"] < 10,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hydration")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--formats", default="json,raw")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_gc()  # as the sidecar process does
    sizes = [int(s) for s in args.sizes.split(",")]
    formats = [cast(RecordFormat, f) for f in args.formats.split(",")]
    results = asyncio.run(measure(sizes, args.partitions, formats, args.repeat))
    path = write_results("hydration", results)
    print(f"written {path}")


if __name__ == "__main__":
    main()
