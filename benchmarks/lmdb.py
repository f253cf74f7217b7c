"""The LMDB engine against the Redis engine, in one run: look-ups, bootstrap, memory.

    python -m benchmarks.lmdb [--quick] [--keys N]

Both engines hydrate the same compacted topic (13-byte keys, 50-byte values, raw format) from a
real KRaft broker, each with the real ``sidecar-state-hydrator`` process configured as the
webhook renders it: the Redis engine into a redis-server with the operator's command line, the
LMDB engine into an environment on tmpfs (``/dev/shm``, as the Pod's memory-backed volume).
Then, in interleaved rounds:

* look-up p50/p99 from Python: :class:`sidecar_state_client.LmdbReader` ``get`` (one short
  read transaction each), against redis-py ``GET`` over the Unix socket (the default engine);
* ten look-ups per request, local LMDB, against ten ``GET`` to a remote Redis 0.25 ms away
  (the ``latency`` benchmark's network namespace, with netem or its delay proxy); target >= x50;
* bootstrap of the topic in records/s (process start to ``/startupz``), each engine;
* the Pod's sidecar memory: RSS of the hydrator (plus Redis's, for the Redis engine) and data
  bytes per key (Redis ``used_memory`` over the startup figure; the LMDB file's pages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import lmdb
import redis

from benchmarks import latency
from benchmarks._common import broker, machine, produce_bulk, write_results
from benchmarks.footprint import HydratorProcess, memory
from benchmarks.lib import netns
from benchmarks.lib.figures import figure, print_figures
from benchmarks.lib.processes import sidecar_redis, sigterm_as_exit
from benchmarks.lib.stats import percentile
from localkube.ports import free_port
from sidecar_hydrator.config import BindingSource, HydratorConfig, KafkaConnection, KeyMapping
from sidecar_state_client import LmdbReader, RedisReader
from sidecar_state_stack.kafka_broker import KafkaBroker

MIB: Final = 2**20
PARTITIONS: Final = 4
TARGET_LOCAL_VS_REMOTE: Final = 50.0
REMOTE_RTT_MS: Final = 0.25
PER_REQUEST: Final = 10


def bench_key(i: int) -> bytes:
    return b"k%012d" % i  # 13 bytes


def bench_value(i: int) -> bytes:
    return (b"v%08d-" % i).ljust(50, b"x")


def records(n: int) -> Iterator[tuple[bytes, bytes]]:
    for i in range(n):
        yield bench_key(i), bench_value(i)


def config(
    *, bootstrap: str, topic: str, port: int, engine: str, socket: str = "", path: str = "",
    map_size: int = 64 * MIB,
) -> HydratorConfig:  # fmt: skip
    store: dict[str, Any] = (
        {"store_engine": "lmdb", "lmdb_path": path, "lmdb_map_size": map_size, "max_key_bytes": 511}
        if engine == "lmdb"
        else {"redis_socket": socket}
    )
    return HydratorConfig(
        http_port=port,
        bindings=(
            BindingSource(
                name="bench",
                kafka=KafkaConnection(bootstrap_servers=(bootstrap,)),
                topics=(topic,),
                format="raw",
                keys=KeyMapping(prefix=""),
            ),
        ),
        **store,
    )


def summarize(samples_ns: Sequence[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "n": len(ordered),
        "p50_us": round(percentile(ordered, 0.5) / 1000, 2),
        "p99_us": round(percentile(ordered, 0.99) / 1000, 2),
    }


def time_gets(get: Any, keys: Sequence[bytes], out: list[int]) -> None:
    clock = time.perf_counter_ns
    for k in keys:
        t0 = clock()
        get(k)
        out.append(clock() - t0)


def time_requests(get: Any, requests: Sequence[Sequence[bytes]], out: list[int]) -> None:
    clock = time.perf_counter_ns
    for request in requests:
        t0 = clock()
        for k in request:
            get(k)
        out.append(clock() - t0)


def bootstrap(
    kafka: KafkaBroker, topic: str, n: int, engine: str, workdir: Path, **store: Any
) -> tuple[HydratorProcess, dict[str, Any]]:
    port = free_port()
    cfg = config(bootstrap=kafka.bootstrap_servers, topic=topic, port=port, engine=engine, **store)
    hydrator = HydratorProcess(cfg, workdir / f"hydrator-{engine}.log")
    started = time.monotonic()
    hydrator.start()
    hydrator.wait("/startupz", timeout=600)
    seconds = time.monotonic() - started
    time.sleep(2)  # heartbeats, freed spare copies, idle
    return hydrator, {
        "seconds_to_startupz": round(seconds, 2),
        "records_per_second": round(n / seconds),
        "hydrator": memory(hydrator.pid),
    }


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*.mdb"))


def measure(n: int, rounds: int, samples: int) -> dict[str, Any]:
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    workdir = Path(tempfile.mkdtemp(prefix="ssb-lmdb-", dir="/tmp"))
    lmdb_dir = Path(tempfile.mkdtemp(prefix="ssb-lmdb-env-", dir=shm))
    results: dict[str, Any] = {
        "benchmark": "lmdb",
        "machine": {**machine(), "py_lmdb": lmdb.__version__, "lmdb": ".".join(
            str(x) for x in lmdb.version())},
        "parameters": {
            "keys": n, "key_bytes": len(bench_key(0)), "value_bytes": len(bench_value(0)),
            "rounds": rounds, "samples_per_round": samples, "lookups_per_request": PER_REQUEST,
            "lmdb_dir": str(shm),
            "note": "2 shared cores; both engines measured in interleaved rounds in one run",
        },
    }  # fmt: skip
    map_size = max(64 * MIB, n * 256)
    try:
        with broker() as kafka, contextlib.ExitStack() as stack:
            topic = "lmdb-bench"
            kafka.create_topic(topic, partitions=PARTITIONS, compacted=True)
            produce_s = asyncio.run(produce_bulk(kafka, topic, records(n), partitions=PARTITIONS))
            results["parameters"]["produce_seconds"] = round(produce_s, 1)
            print(f"produced {n} records in {produce_s:.1f} s", flush=True)

            server = sidecar_redis(max_memory_bytes=max(64 * MIB, n * 300))
            stack.callback(server.close)
            redis_h, redis_row = bootstrap(
                kafka, topic, n, "redis", workdir, socket=str(server.socket_path)
            )
            stack.callback(redis_h.stop)
            client = redis.Redis(unix_socket_path=str(server.socket_path))
            info: dict[str, Any] = client.info("memory")
            assert server.pid is not None
            redis_row["redis"] = memory(server.pid)
            redis_row["bytes_per_key"] = round(
                (int(info["used_memory"]) - int(info["used_memory_startup"])) / n, 1
            )
            redis_row["sidecars_rss_mib"] = round(
                redis_row["redis"]["rss_mib"] + redis_row["hydrator"]["rss_mib"], 1
            )
            print(f"redis engine: {redis_row}", flush=True)

            lmdb_h, lmdb_row = bootstrap(
                kafka, topic, n, "lmdb", workdir, path=str(lmdb_dir), map_size=map_size
            )
            stack.callback(lmdb_h.stop)
            lmdb_row["file_bytes"] = file_bytes(lmdb_dir)
            lmdb_row["bytes_per_key"] = round(lmdb_row["file_bytes"] / n, 1)
            lmdb_row["sidecars_rss_mib"] = lmdb_row["hydrator"]["rss_mib"]
            # The view's pages live in tmpfs (charged to the Pod, shared with every reader);
            # the hydrator's RSS counts those it touched. Pod total: its own memory + the file.
            hyd = lmdb_row["hydrator"]
            lmdb_row["pod_memory_mib"] = round(
                hyd["rss_anon_mib"] + hyd["rss_file_mib"] + lmdb_row["file_bytes"] / MIB, 1
            )
            print(f"lmdb engine: {lmdb_row}", flush=True)
            results["bootstrap"] = {"redis": redis_row, "lmdb": lmdb_row}

            reader = LmdbReader(lmdb_dir)
            redis_reader = RedisReader(str(server.socket_path))
            probe = random.Random(7).sample(range(n), 5)
            for i in probe:  # both engines serve the same, complete view
                assert reader.get(bench_key(i)) == bench_value(i)
                assert redis_reader.get(bench_key(i)) == bench_value(i)
            assert reader.meta()["hydrated"] == "1"

            remote = stack.enter_context(remote_redis(workdir))
            results["network"] = remote["network"]
            results.update(lookups(reader, client, remote.get("client"), n, rounds, samples))
            reader.close()
            redis_reader.close()
            client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(lmdb_dir, ignore_errors=True)
    results["figures"] = figures(results)
    return results


@contextlib.contextmanager
def remote_redis(workdir: Path) -> Iterator[dict[str, Any]]:
    """A Redis 0.25 ms away: the latency benchmark's netns link, netem or its delay proxy."""
    netem_ok, note = netns.netem_available()
    netns.remove_stale_namespaces()
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        try:
            link = stack.enter_context(netns.NetnsLink(0))
            latency.start_remote_redis(link, workdir / "remote")
            direct = latency.tcp_target("veth", link.peer_ip, latency.REMOTE_PORT)
            if netem_ok:
                own = stack.enter_context(netns.NetnsLink(1))
                latency.start_remote_redis(own, workdir / "remote-delayed")
                own.netem(REMOTE_RTT_MS)
                target = latency.tcp_target("remote", own.peer_ip, latency.REMOTE_PORT)
                got = latency.added_rtt_ms(direct, target, REMOTE_RTT_MS, 300)
                delay: dict[str, Any] = {"mode": "netem", "achieved_added_rtt_ms": round(got, 4)}
            else:
                port = latency.PROXY_BASE_PORT + 1
                delay = latency.calibrate_proxy(link, port, REMOTE_RTT_MS, direct, 300, workdir)
                target = latency.tcp_target("remote", link.peer_ip, port)
            latency.seed(target)
            out["network"] = {"delay": delay, "netem_probe": note}
            out["client"] = redis.Redis(**target.connect)
            stack.callback(out["client"].close)
        except (OSError, RuntimeError) as error:
            out["network"] = {"skipped": f"no remote Redis: {error}"}
            print(out["network"]["skipped"], flush=True)
        yield out


def lookups(
    reader: LmdbReader,
    client: redis.Redis,
    remote: redis.Redis | None,
    n: int,
    rounds: int,
    samples: int,
) -> dict[str, Any]:
    rng = random.Random(1)
    raw: dict[str, list[int]] = {
        "lmdb_get": [], "redis_uds_get": [], "lmdb_10": [], "redis_uds_10": [], "remote_10": [],
    }  # fmt: skip
    remote_keys = [latency.key(i) for i in range(latency.KEYS)]
    for _ in range(rounds):
        keys = [bench_key(rng.randrange(n)) for _ in range(samples)]
        requests = [keys[i : i + PER_REQUEST] for i in range(0, len(keys), PER_REQUEST)]
        time_gets(reader.get, keys, raw["lmdb_get"])
        time_gets(client.get, keys, raw["redis_uds_get"])
        time_requests(reader.get, requests, raw["lmdb_10"])
        time_requests(client.get, requests[: len(requests) // 4], raw["redis_uds_10"])
        if remote is not None:
            far = [[rng.choice(remote_keys) for _ in range(PER_REQUEST)] for _ in range(60)]
            time_requests(remote.get, far, raw["remote_10"])
    return {"lookups": {name: summarize(v) for name, v in raw.items() if v}}


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    look = results["lookups"]
    boot = results["bootstrap"]
    lm, rd = look["lmdb_get"], look["redis_uds_get"]
    rows = [
        figure(
            "LMDB look-up p50 (Python client, in process)", lm["p50_us"], "µs",
            f"Redis GET over the socket p50 {rd['p50_us']} / p99 {rd['p99_us']} µs "
            f"(LMDB p99 {lm['p99_us']} µs)",
            round(rd["p50_us"] / lm["p50_us"], 1), "(context) Redis/LMDB", None,
        ),
        figure(
            "LMDB 10 look-ups per request, p50", look["lmdb_10"]["p50_us"], "µs",
            f"local Redis 10 GETs p50 {look['redis_uds_10']['p50_us']} µs",
            round(look["redis_uds_10"]["p50_us"] / look["lmdb_10"]["p50_us"], 1),
            "(context) Redis/LMDB", None,
        ),
    ]  # fmt: skip
    if "remote_10" in look:
        speedup = round(look["remote_10"]["p50_us"] / look["lmdb_10"]["p50_us"], 1)
        rows.append(
            figure(
                f"10 look-ups, local LMDB vs remote Redis {REMOTE_RTT_MS} ms RTT, p50",
                look["lmdb_10"]["p50_us"], "µs",
                f"remote 10 GETs p50 {look['remote_10']['p50_us']} µs", speedup,
                f">= {TARGET_LOCAL_VS_REMOTE}x", speedup >= TARGET_LOCAL_VS_REMOTE,
            )
        )  # fmt: skip
    keys = results["parameters"]["keys"]
    rows += [
        figure(
            f"bootstrap of {keys} keys, LMDB engine", boot["lmdb"]["records_per_second"],
            "records/s", f"Redis engine {boot['redis']['records_per_second']} records/s",
            round(boot["lmdb"]["records_per_second"] / boot["redis"]["records_per_second"], 2),
            "(context) LMDB/Redis", None,
        ),
        figure(
            "sidecar RSS, LMDB engine (hydrator only)", boot["lmdb"]["sidecars_rss_mib"], "MiB",
            f"Redis engine (hydrator + Redis) {boot['redis']['sidecars_rss_mib']} MiB",
            round(boot["lmdb"]["sidecars_rss_mib"] / boot["redis"]["sidecars_rss_mib"], 2),
            "(context) LMDB/Redis", None,
        ),
        figure(
            "Pod memory, LMDB engine (hydrator anon+file RSS + the data file in tmpfs)",
            boot["lmdb"]["pod_memory_mib"], "MiB",
            f"Redis engine (hydrator + Redis RSS) {boot['redis']['sidecars_rss_mib']} MiB",
            round(boot["lmdb"]["pod_memory_mib"] / boot["redis"]["sidecars_rss_mib"], 2),
            "(context) LMDB/Redis", None,
        ),
        figure(
            "data bytes per key, LMDB file", boot["lmdb"]["bytes_per_key"], "B",
            f"Redis used_memory per key {boot['redis']['bytes_per_key']} B",
            round(boot["lmdb"]["bytes_per_key"] / boot["redis"]["bytes_per_key"], 2),
            "(context) LMDB/Redis", None,
        ),
    ]  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lmdb", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200k keys, fewer rounds")
    parser.add_argument("--keys", type=int, help="keys in the topic (default 1M; quick 200k)")
    args = parser.parse_args(argv)
    sigterm_as_exit()
    n = args.keys or (200_000 if args.quick else 1_000_000)
    rounds, samples = (4, 2000) if args.quick else (8, 5000)
    started = time.monotonic()
    results = measure(n, rounds, samples)
    results["seconds"] = round(time.monotonic() - started, 1)
    for name, row in results["lookups"].items():
        print(f"  {name:<14} p50 {row['p50_us']:>9} µs  p99 {row['p99_us']:>9} µs  n={row['n']}")
    print_figures(results["figures"])
    path = write_results("lmdb", results)
    print(f"written {path} in {results['seconds']} s")


if __name__ == "__main__":
    main()
