"""Reader impact: the app's GET latency over the socket while the hydrator bootstraps at full speed.

    python -m benchmarks.reader_impact [--quick] [--records 200000] [--repeat 3]

A real KRaft broker holds a compacted topic of N records; redis-server runs with the operator's
command line; database 0 already serves the same N keys (the view a previous hydration left).
An app process (redis-py with hiredis, one connection) reads random keys over the Unix socket at
a steady pace, timestamping every GET. Idle: the app alone. Hydrating: the real
``sidecar-state-hydrator`` process starts on the same Redis and rebuilds the view into the spare
database at full speed (MSET batches in MULTI/EXEC), then publishes it with SWAPDB. The window
is from its first write to the spare database until the rebuilt view is published; only GETs
inside it count. Redis's own per-command latency histograms (``LATENCY HISTOGRAM``) show how
long one write batch holds the single-threaded server, i.e. the longest a GET can wait.
Target: app read p99 while hydrating <= 1.3x the idle p99, idle measured before each round of
hydrating runs (DESIGN.md's absolute 1 ms is reported as context).

As in a Pod: the app, Redis and the hydrator each run in a CPU cgroup weighted by their CPU
requests (the operator's defaults for the sidecars, ``--app-cpu-request`` for the app), inside
a Pod cgroup, beside the broker's (``benchmarks/lib/cgroups.py``); ``--limits`` adds the
sidecars' CPU limits as CFS quotas. Each round also measures the same processes bare (no
cgroups: whichever is busiest takes the cores), as context. Without usable CPU cgroups (not
root, no cpu controller) only the bare figures are measured, and the results say why.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import random
import shutil
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import redis

from benchmarks._common import broker, machine, write_results
from benchmarks.footprint import (
    HydratorProcess,
    hydrator_config,
    make_topic,
    redis_key,
    redis_value,
)
from benchmarks.lib.cgroups import Cpu, CpuGroups, probe, remove_stale
from benchmarks.lib.processes import cpu_seconds, sidecar_redis
from benchmarks.lib.stats import percentile
from localkube.ports import free_port
from sidecar_hydrator.config import HydratorConfig, default, replace
from sidecar_operator.injection.defaults import InjectionDefaults

#: The issue's target: reads while hydrating at full speed stay within 1.3x of idle reads' p99
#: (the same app, Redis and view, in the same run). DESIGN.md's absolute 1 ms is kept as context.
TARGET_RATIO: Final = 1.3
TARGET_P99_MS: Final = 1.0
READS_PER_S: Final = 4000
META_KEY: Final = b"sidecar-state:meta"
#: For the CDF plot.
QUANTILES: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
#: The app container's CPU request (millicores) when not given: the app is the Pod's main
#: container, so it usually asks for more than each sidecar's 100m.
APP_CPU_REQUEST: Final = 500
#: The broker's group (millicores): it stands for a Kafka cluster on other machines, so it
#: gets a core's worth, not a share of the Pod.
BROKER_CPU_REQUEST: Final = 1000
#: How the processes are placed: in the Pod's weighted cgroups, or bare (as before).
POD: Final = "pod"
BARE: Final = "bare"


def millicores(quantity: str) -> int:
    """A Kubernetes CPU quantity (``"100m"``, ``"1"``, ``"0.5"``) in millicores."""
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return round(float(quantity) * 1000)


def pod_resources(
    *, app_request: int, limits: bool, redis_request: int | None = None
) -> dict[str, Cpu]:
    """The Pod's containers as the operator injects them (its default requests and limits;
    ``redis_request`` overrides Redis's, to measure another default)."""
    d = InjectionDefaults()
    hydrator_limit = millicores(d.hydrator_cpu_limit) if limits else None
    redis_limit = millicores(d.redis_cpu_limit) if limits and d.redis_cpu_limit else None
    return {
        "app": Cpu(app_request),
        "redis": Cpu(redis_request or millicores(d.redis_cpu_request), redis_limit),
        "hydrator": Cpu(millicores(d.hydrator_cpu_request), hydrator_limit),
    }


def reader(
    socket_path: str,
    n_keys: int,
    rate: int,
    max_s: float,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Child process: GET random keys at ``rate``/s until told to stop (or ``max_s``); sends
    back (start ns since the epoch of each GET, latency ns) as two arrays."""
    client = redis.Redis(unix_socket_path=socket_path)
    client.get(redis_key(0))
    starts, latencies = array("q"), array("q")
    rng = random.Random(7)
    conn.send("ready")
    period = 1 / rate
    deadline = time.monotonic() + max_s
    clock = time.perf_counter_ns
    offset = time.time_ns() - clock()
    next_at = time.perf_counter()
    while not conn.poll() and time.monotonic() < deadline:
        for _ in range(50):
            k = redis_key(rng.randrange(n_keys))
            t0 = clock()
            value = client.get(k)
            latencies.append(clock() - t0)
            starts.append(t0 + offset)
            if value is None:
                raise RuntimeError(f"{k!r} missing: the app would have seen a hole")
            next_at += period
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    client.close()
    conn.send((starts.tobytes(), latencies.tobytes()))


class Reader:
    """The app, as a separate process (it must not share a GIL with anything measured)."""

    def __init__(
        self,
        socket_path: str,
        n_keys: int,
        rate: int,
        max_s: float,
        on_start: Callable[[int], object] | None = None,
    ) -> None:
        """``on_start`` gets the process id before the first read (to place it in a cgroup)."""
        ctx = multiprocessing.get_context("spawn")
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=reader, args=(socket_path, n_keys, rate, max_s, child))
        self._on_start = on_start

    def __enter__(self) -> Reader:
        self.proc.start()
        if self._on_start is not None and self.proc.pid is not None:
            self._on_start(self.proc.pid)
        if not self.parent.poll(60) or self.parent.recv() != "ready":
            raise RuntimeError("the reader process did not start")
        return self

    def stop(self) -> tuple[array[int], array[int]]:
        self.parent.send("stop")
        if not self.parent.poll(120):
            raise RuntimeError("the reader did not report")
        raw_starts, raw_latencies = self.parent.recv()
        self.proc.join(10)
        starts, latencies = array("q"), array("q")
        starts.frombytes(raw_starts)
        latencies.frombytes(raw_latencies)
        return starts, latencies

    def __exit__(self, *_: object) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def summary_ms(values: Sequence[int]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) / 1e6, 3),
        "p99_ms": round(percentile(ordered, 0.99) / 1e6, 3),
        "p999_ms": round(percentile(ordered, 0.999) / 1e6, 3),
        "max_ms": round(ordered[-1] / 1e6, 3) if ordered else float("nan"),
        "quantiles_ms": {
            f"{q:g}": round(percentile(ordered, q) / 1e6, 4) for q in QUANTILES if ordered
        },
    }


def seed_view(client: redis.Redis, n: int) -> None:
    """Database 0 as a previous hydration left it (the keys, not the hydrator's metadata)."""
    client.flushall()
    for start in range(0, n, 10_000):
        client.mset({redis_key(i): redis_value(i) for i in range(start, min(n, start + 10_000))})


class Window:
    """Watches Redis from a thread: when the rebuild's first write lands in the spare database
    and when the rebuilt view is published in database 0 (its metadata hash appears)."""

    def __init__(self, socket_path: str, spare_db: int) -> None:
        self.spare = redis.Redis(unix_socket_path=socket_path, db=spare_db)
        self.served = redis.Redis(unix_socket_path=socket_path, db=0)
        self.first_write_ns: int | None = None
        self.published_ns: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set() and self.published_ns is None:
            now = time.time_ns()
            if self.first_write_ns is None and self.spare.dbsize() > 0:
                self.first_write_ns = now
            if self.first_write_ns is not None and self.served.exists(META_KEY):
                self.published_ns = now
            time.sleep(0.005)

    def __enter__(self) -> Window:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.spare.close()
        self.served.close()


def _pairs(value: Any) -> dict[Any, Any]:
    """A RESP3 map or a RESP2 flat [k1, v1, k2, v2, ...] list as a dict."""
    if isinstance(value, dict):
        return value
    return dict(zip(value[::2], value[1::2], strict=True))


def latency_histograms(client: redis.Redis, commands: Sequence[str]) -> dict[str, Any]:
    """Redis's own per-command latency histograms (µs buckets, powers of two) and counts."""
    raw = client.execute_command("LATENCY", "HISTOGRAM", *commands)  # type: ignore[no-untyped-call]
    out: dict[str, Any] = {}
    for name, body in _pairs(raw).items():
        fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in _pairs(body).items()}
        buckets = {int(k): int(v) for k, v in _pairs(fields.get("histogram_usec", [])).items()}
        label = name.decode() if isinstance(name, bytes) else str(name)
        out[label] = {
            "calls": int(fields.get("calls", 0)),
            "cumulative_by_usec_bucket": buckets,
            "max_bucket_usec": max(buckets) if buckets else None,
        }
    return out


def hydrating_run(
    kafka_bootstrap: str,
    server_socket: str,
    topic: str,
    n: int,
    rate: int,
    workdir: Path,
    i: int,
    batch: int,
    groups: CpuGroups | None = None,
    redis_pid: int | None = None,
) -> dict[str, Any]:
    """One rebuild while the app reads; with ``groups``, the app and the hydrator run in the
    Pod's cgroups (Redis and the broker were placed by the caller)."""
    client = redis.Redis(unix_socket_path=server_socket)
    try:
        seed_view(client, n)
        client.config_resetstat()
    finally:
        client.close()
    config = replace(
        hydrator_config(server_socket, kafka_bootstrap, topic, free_port()),
        bootstrap_batch_max_keys=batch,
    )
    hydrator = HydratorProcess(config, workdir / f"hydrator-{i}.log")
    place_app = None if groups is None else functools.partial(groups.move, "app")
    redis_cpu = cpu_seconds(redis_pid) if redis_pid is not None else float("nan")
    hydrator_cpu = float("nan")
    with (
        Reader(server_socket, n, rate, max_s=120, on_start=place_app) as app,
        Window(server_socket, 1) as window,
    ):
        try:
            started = time.time_ns()
            hydrator.start()
            if groups is not None:
                # Before it has imported anything: its first write is a second away.
                groups.move("hydrator", hydrator.pid)
            hydrator.wait("/readyz", timeout=120, interval=0.05)
            deadline = time.monotonic() + 10
            while window.published_ns is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
        finally:
            starts, latencies = app.stop()
            if hydrator.proc is not None:
                hydrator_cpu = cpu_seconds(hydrator.pid)
            hydrator.stop()
    if redis_pid is not None:
        redis_cpu = cpu_seconds(redis_pid) - redis_cpu
    if window.first_write_ns is None or window.published_ns is None:
        raise RuntimeError("did not see the rebuild start and finish")
    lo, hi = window.first_write_ns - 5_000_000, window.published_ns
    during = [lat for at, lat in zip(starts, latencies, strict=True) if lo <= at <= hi]
    client = redis.Redis(unix_socket_path=server_socket)
    try:
        histograms = latency_histograms(client, ["get", "mset", "exec", "swapdb", "flushdb"])
        assert client.get(redis_key(n - 1)) == redis_value(n - 1)
    finally:
        client.close()
    seconds = (hi - window.first_write_ns) / 1e9
    run: dict[str, Any] = {
        "placement": BARE if groups is None else POD,
        "bootstrap_batch_max_keys": batch,
        "window_seconds": round(seconds, 3),
        "hydration_records_per_s": round(n / seconds),
        "process_start_to_first_write_s": round((window.first_write_ns - started) / 1e9, 2),
        "hydrator_cpu_seconds": round(hydrator_cpu, 2),
        "redis_cpu_seconds": round(redis_cpu, 2),
        "gets_during": summary_ms(during),
        "during_ns": during,
        "redis_latency_histograms": histograms,
    }
    if groups is not None:
        run["throttling"] = {name: groups.throttling(name) for name in ("hydrator", "redis")}
    return run


DEFAULT_BATCH: Final = int(default(HydratorConfig, "bootstrap_batch_max_keys"))


def measure(
    n: int,
    repeat: int,
    rate: int,
    idle_s: float,
    batches: Sequence[int],
    *,
    placements: Sequence[str] = (POD, BARE),
    app_request: int = APP_CPU_REQUEST,
    limits: bool = False,
    redis_request: int | None = None,
) -> dict[str, Any]:
    """Idle, then one rebuild per batch size, per placement, ``repeat`` rounds interleaved;
    the first placement is the one judged (the others are context)."""
    resources = pod_resources(app_request=app_request, limits=limits, redis_request=redis_request)
    hierarchy, why = probe() if POD in placements else (None, "not asked for")
    if hierarchy is None:
        placements = [p for p in placements if p != POD] or [BARE]
    results: dict[str, Any] = {
        "benchmark": "reader_impact",
        "machine": machine(),
        "parameters": {
            "records": n,
            "repeat": repeat,
            "bootstrap_batch_max_keys": list(batches),
            "app_reads_per_s": rate,
            "idle_seconds": idle_s,
            "app": f"redis-py {redis.__version__} + hiredis, GET of random keys over the socket",
            "hydrator": "sidecar-state-hydrator process, defaults except bootstrap_batch_max_keys",
            "window": "first write to the spare db -> rebuilt view published (SWAPDB)",
            "placements": list(placements),
            "note": "broker, redis-server, hydrator and app share 2 cores",
        },
        "cpu_groups": {
            "available": hierarchy is not None,
            "why": why,
            "version": hierarchy.version if hierarchy is not None else None,
            "pod_millicores": {
                name: {"request": cpu.request, "limit": cpu.limit}
                for name, cpu in resources.items()
            },
            "broker_millicores": BROKER_CPU_REQUEST,
            "limits": limits,
        },
        "runs": [],
    }
    if POD in placements and hierarchy is None:
        print(f"CPU cgroups unavailable ({why}): bare processes only", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="ssb-ri-", dir="/tmp"))
    idle: dict[str, list[int]] = {p: [] for p in placements}
    during: dict[tuple[str, int], list[int]] = {(p, b): [] for p in placements for b in batches}
    with contextlib.ExitStack() as stack:
        groups: CpuGroups | None = None
        if hierarchy is not None:
            remove_stale(hierarchy)
            groups = stack.enter_context(
                CpuGroups(hierarchy, pod=resources,
                          others={"broker": Cpu(BROKER_CPU_REQUEST)})
            )  # fmt: skip
            results["cpu_groups"]["settings"] = groups.settings()
        server = sidecar_redis(max_memory_bytes=max(256 * 2**20, n * 800))
        stack.callback(server.close)
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        kafka = stack.enter_context(broker())
        produce_s = make_topic(kafka, "reader-impact", n)
        results["parameters"]["produce_seconds"] = round(produce_s, 2)
        redis_pid, broker_pid = server.pid, kafka.pid
        assert redis_pid is not None and broker_pid is not None
        for i in range(repeat):  # interleaved, so load from the shared machine hits all
            for placement in placements:
                pod = groups if placement == POD else None
                if pod is not None:
                    pod.move("redis", redis_pid)
                    pod.move("broker", broker_pid)
                elif groups is not None:
                    groups.release(redis_pid)
                    groups.release(broker_pid)
                idle_round = idle_run(str(server.socket_path), n, rate, idle_s, pod)
                idle[placement].extend(idle_round)
                print(f"{placement}, idle, round {i + 1}: {summary_ms(idle_round)}", flush=True)
                for batch in batches:
                    run = hydrating_run(
                        kafka.bootstrap_servers, str(server.socket_path), "reader-impact", n,
                        rate, workdir, len(results["runs"]), batch, pod, redis_pid,
                    )  # fmt: skip
                    during[(placement, batch)].extend(run.pop("during_ns"))
                    results["runs"].append(run)
                    print(
                        f"{placement}, run {i + 1}, batch {batch}: "
                        f"{run['hydration_records_per_s']:,} rec/s over {run['window_seconds']} s"
                        f" (hydrator {run['hydrator_cpu_seconds']} s CPU), "
                        f"app GETs {run['gets_during']}",
                        flush=True,
                    )
        if groups is not None:
            groups.release(redis_pid)
            groups.release(broker_pid)
    results["placements"] = {
        p: {
            "idle": summary_ms(idle[p]),
            "hydrating": {str(b): summary_ms(during[(p, b)]) for b in batches},
        }
        for p in placements
    }
    judged = results["placements"][placements[0]]
    results["judged_placement"] = placements[0]
    results["idle"] = judged["idle"]
    results["hydrating"] = judged["hydrating"]
    results["figures"] = figures(results, batches)
    main_row = results["figures"][0]
    results["targets"] = {
        "p99_over_idle_p99": TARGET_RATIO,
        "p99_ms": TARGET_P99_MS,
        "met": main_row["met"],
    }
    return results


def idle_run(
    socket_path: str, n: int, rate: int, idle_s: float, groups: CpuGroups | None
) -> array[int]:
    """The baseline: the same app on the same Redis and view, nothing hydrating."""
    client = redis.Redis(unix_socket_path=socket_path)
    try:
        seed_view(client, n)
        client.config_resetstat()
        place_app = None if groups is None else functools.partial(groups.move, "app")
        with Reader(socket_path, n, rate, max_s=idle_s + 30, on_start=place_app) as app:
            time.sleep(idle_s)
            _, latencies = app.stop()
    finally:
        client.close()
    return latencies


def figures(results: dict[str, Any], batches: Sequence[int]) -> list[dict[str, Any]]:
    """One row per placement and batch size; only the first placement's are judged."""
    placements = results.get("placements") or {
        BARE: {"idle": results["idle"], "hydrating": results["hydrating"]}
    }
    first = results.get("judged_placement", next(iter(placements)))
    cpu = results.get("cpu_groups", {})
    pod = cpu.get("pod_millicores", {})
    weights = ", ".join(
        f"{name} {m['request']}m" + (f"/{m['limit']}m" if m.get("limit") else "")
        for name, m in pod.items()
    )
    rows = []
    for placement in [first, *(p for p in placements if p != first)]:
        idle = placements[placement]["idle"]
        for batch in batches:
            runs = [
                r
                for r in results["runs"]
                if r["bootstrap_batch_max_keys"] == batch and r.get("placement", BARE) == placement
            ]
            got = placements[placement]["hydrating"][str(batch)]
            rate = sorted(r["hydration_records_per_s"] for r in runs)[len(runs) // 2]
            exec_max = max((r["redis_latency_histograms"].get("exec", {}).get("max_bucket_usec")
                            or 0) for r in runs)  # fmt: skip
            judged = placement == first
            where = (
                f" (Pod cgroups: {weights}{' limits' if cpu.get('limits') else ''})"
                if placement == POD
                else " (bare processes)"
            )
            label = "app GET p99 over the socket while hydrating at full speed" + where
            if batch != batches[0]:
                label += f", bootstrap batch {batch} keys"
            ratio = round(got["p99_ms"] / idle["p99_ms"], 2) if idle["p99_ms"] else None
            rows.append(
                {
                    "figure": label,
                    "value": got["p99_ms"],
                    "unit": "ms",
                    "baseline": f"idle p99 {idle['p99_ms']} ms (same placement); p50 "
                    f"{got['p50_ms']} vs idle {idle['p50_ms']}; batch {batch} keys, {rate:,} "
                    f"rec/s, Redis EXEC <= {exec_max} µs",
                    "ratio": ratio,
                    "target": f"<= x{TARGET_RATIO} of idle p99" if judged else "(context)",
                    "met": (bool(idle["p99_ms"]) and got["p99_ms"] <= TARGET_RATIO * idle["p99_ms"])
                    if judged
                    else None,
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reader_impact")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=READS_PER_S, help="app GETs per second")
    parser.add_argument("--idle-seconds", type=float, default=4.0)
    parser.add_argument(
        "--batches",
        default=f"{DEFAULT_BATCH},500",
        help="bootstrap_batch_max_keys values; the first is the figure judged on the target",
    )
    parser.add_argument(
        "--placements",
        default=f"{POD},{BARE}",
        help=f"{POD}: each process in a CPU cgroup weighted as the Pod's requests; {BARE}: "
        "plain processes. The first is judged, the others are context",
    )
    parser.add_argument(
        "--app-cpu-request", type=int, default=APP_CPU_REQUEST,
        help="the app container's CPU request, millicores (the sidecars': the operator's)",
    )  # fmt: skip
    parser.add_argument(
        "--limits", action="store_true", help="also the sidecars' CPU limits, as CFS quotas"
    )
    parser.add_argument(
        "--redis-cpu-request", type=int, default=None,
        help="Redis's CPU request, millicores, instead of the operator's default",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="100k records, 1 run per batch")
    args = parser.parse_args(argv)
    n, repeat = (100_000, 1) if args.quick else (args.records, args.repeat)
    batches = [int(b) for b in args.batches.split(",")]
    placements = [p.strip() for p in args.placements.split(",")]
    if not set(placements) <= {POD, BARE}:
        parser.error(f"--placements: {POD} and/or {BARE}")
    started = time.monotonic()
    results = measure(
        n, repeat, args.rate, 2.0 if args.quick else args.idle_seconds, batches,
        placements=placements, app_request=args.app_cpu_request, limits=args.limits,
        redis_request=args.redis_cpu_request,
    )  # fmt: skip
    results["seconds"] = round(time.monotonic() - started, 1)
    for row in results["figures"]:
        verdict = {True: "MET", False: "SHORT", None: ""}[row["met"]]
        print(f"  {row['figure']}: {row['value']} ms | {row['baseline']} | x{row['ratio']} | "
              f"target {row['target']} {verdict}")  # fmt: skip
    path = write_results("reader_impact", results)
    print(f"written {path} in {results['seconds']} s")


if __name__ == "__main__":
    main()
