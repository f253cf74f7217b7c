"""The latency floor: look-ups over the Pod's Unix socket vs TCP loopback vs a "remote" Redis.

    python -m benchmarks.latency [--quick]

An app-style request does 10 sequential GETs (and, alternatively, one MGET of the same 10 keys)
against four Redis servers started here with the sidecar's command line
(``redis_server_args``):

* ``uds``    the sidecar Redis, over its Unix socket (``port 0``, as in the Pod);
* ``tcp``    a second redis-server, same config plus ``port``/``bind 127.0.0.1``;
* ``veth``   a third one inside a network namespace behind a veth pair (a private /30 that
             exists only between this namespace and that one), no added delay;
* ``remote-0.25ms`` / ``remote-1ms``  the same netns Redis with 0.25 ms (same zone) and 1 ms
             (cross zone) of round-trip delay added.

Delay: ``tc qdisc ... netem`` on the peer's veth when the kernel has ``sch_netem``; otherwise a
userspace delay proxy inside the netns (``python -m benchmarks.latency proxy``) that releases
each reply no earlier than the delay after its request arrived (sleep, then spin the last
400 µs), calibrated against the ``veth`` path so that the *added* round trip equals the
target. Which one ran is in the results.

Clients: redis-py with hiredis (the app), a raw Python socket (the floor any Python client
sits on), and redis-benchmark (C, single client). Measurements are interleaved in rounds so
that the shared machine's noise hits every target alike. Targets (DESIGN.md): look-up p50
within 1.5x of a bare Redis GET over UDS (redis-benchmark); 10 look-ups local vs remote at
0.25 ms RTT >= 10x faster.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import gc
import io
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import hiredis
import redis

from benchmarks._common import machine, write_results
from benchmarks.lib.delay_proxy import run_proxy
from benchmarks.lib.figures import figure, print_figures
from benchmarks.lib.netns import NetnsLink, netem_available, remove_stale_namespaces
from benchmarks.lib.processes import sigterm_as_exit
from benchmarks.lib.stats import percentile, ratio, summarize_ns
from localkube.ports import free_port
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config

REPO: Final = Path(__file__).resolve().parents[1]
TARGET_LOOKUP_RATIO: Final = 1.5
TARGET_LOCAL_VS_REMOTE: Final = 10.0
#: Added round trip of each "remote" target, in ms.
REMOTE_RTT_MS: Final = {"remote-0.25ms": 0.25, "remote-1ms": 1.0}
KEYS: Final = 1000
PER_REQUEST: Final = 10
REMOTE_PORT: Final = 6379
PROXY_BASE_PORT: Final = 6380


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    #: redis-py connection keywords.
    connect: dict[str, Any]
    #: redis-benchmark's address arguments.
    bench_args: list[str]
    #: (family, address) for the raw-socket client.
    raw: tuple[socket.AddressFamily, Any]
    local: bool = True
    #: Per-round sample counts; remote targets take fewer, slower samples.
    gets: int = 2000
    requests: int = 300
    bench_n: int = 20_000
    added_rtt_ms: float = 0.0
    delay: dict[str, Any] = field(default_factory=dict)


def unix_target(name: str, path: str) -> Target:
    return Target(
        name=name,
        connect={"unix_socket_path": path},
        bench_args=["-s", path],
        raw=(socket.AF_UNIX, path),
    )


def tcp_target(name: str, host: str, port: int, *, rtt_ms: float = 0.0) -> Target:
    slow = 1.0 + 4 * rtt_ms  # remote targets: fewer samples per round, same wall time
    return Target(
        name=name,
        connect={"host": host, "port": port},
        bench_args=["-h", host, "-p", str(port)],
        raw=(socket.AF_INET, (host, port)),
        local=host.startswith("127."),
        gets=int(2000 / slow / (1 + 10 * rtt_ms)),
        requests=int(300 / slow),
        bench_n=int(20_000 / (1 + 40 * rtt_ms)),
        added_rtt_ms=rtt_ms,
    )


def key(i: int) -> bytes:
    return b"item:item-%08d" % i


def value(i: int) -> bytes:
    return b"value-%08d-padding-padding" % i


def seed(target: Target) -> None:
    client = redis.Redis(**target.connect)
    try:
        client.flushall()
        for start in range(0, KEYS, 500):
            client.mset({key(i): value(i) for i in range(start, min(KEYS, start + 500))})
        assert client.dbsize() == KEYS
    finally:
        client.close()


def raw_ping_rtt(target: Target, count: int, budget_s: float) -> list[int]:
    """Round trips of PING on a raw socket (the network path plus Redis's cheapest command)."""
    family, address = target.raw
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples: list[int] = []
    deadline = time.monotonic() + budget_s
    try:
        while len(samples) < count and time.monotonic() < deadline:
            t0 = time.perf_counter_ns()
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
            samples.append(time.perf_counter_ns() - t0)
            assert reply == b"+PONG\r\n", reply
    finally:
        sock.close()
    return samples[count // 10 :]  # drop the warm-up tenth


# -- clients ------------------------------------------------------------------------------------


@dataclass
class PySamples:
    get: list[int] = field(default_factory=list)
    request_10_gets: list[int] = field(default_factory=list)
    request_mget: list[int] = field(default_factory=list)
    #: GET through thinner client paths (local targets only): where redis-py's time goes.
    variants: dict[str, list[int]] = field(default_factory=dict)


#: Thinner and thinner GET paths, from the app's default client down to a bare socket.
VARIANTS: Final = (
    "redis_py_single_connection",
    "redis_py_connection_send_read",
    "hiredis_on_socket",
    "raw_socket_prepacked",
)


def py_round(client: redis.Redis, target: Target, out: PySamples, budget_s: float, i0: int) -> None:
    """One round of redis-py (hiredis) look-ups: single GETs, 10-GET requests, MGET requests."""
    clock = time.perf_counter_ns
    deadline = time.monotonic() + budget_s / 3
    for n in range(target.gets):
        k = key((i0 + n * 7) % KEYS)
        t0 = clock()
        got = client.get(k)
        out.get.append(clock() - t0)
        if got is None or time.monotonic() > deadline:
            assert got is not None
            break
    deadline = time.monotonic() + budget_s / 3
    for n in range(target.requests):
        keys = [key((i0 + n * 13 + j * 101) % KEYS) for j in range(PER_REQUEST)]
        t0 = clock()
        for k in keys:
            client.get(k)
        out.request_10_gets.append(clock() - t0)
        if time.monotonic() > deadline:
            break
    deadline = time.monotonic() + budget_s / 3
    for n in range(target.requests):
        keys = [key((i0 + n * 13 + j * 101) % KEYS) for j in range(PER_REQUEST)]
        t0 = clock()
        got_all = client.mget(keys)
        out.request_mget.append(clock() - t0)
        if time.monotonic() > deadline:
            assert len(got_all) == PER_REQUEST
            break


def variants_round(target: Target, out: PySamples, count: int, budget_s: float) -> None:
    """GETs through each of :data:`VARIANTS`, ``count`` each (bounded by ``budget_s``)."""
    family, address = target.raw
    keys = [key(i) for i in range(0, KEYS, 10)]
    prepacked = [b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys]
    single = redis.Redis(**target.connect, single_connection_client=True)
    pooled = redis.Redis(**target.connect)
    conn = pooled.connection_pool.get_connection()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.connect(address)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()

    def via_single(k: bytes, _i: int) -> object:
        return single.get(k)

    def via_connection(k: bytes, _i: int) -> object:
        conn.send_command("GET", k)  # type: ignore[no-untyped-call]
        return conn.read_response()

    def via_hiredis(k: bytes, _i: int) -> object:
        sock.sendall(hiredis.pack_command((b"GET", k)))  # type: ignore[arg-type]
        reply: object = False
        while reply is False:
            reader.feed(sock.recv(4096))
            reply = reader.gets()
        return reply

    def via_raw(_k: bytes, i: int) -> object:
        sock.sendall(prepacked[i % len(prepacked)])
        return sock.recv(4096)

    paths: dict[str, Callable[[bytes, int], object]] = {
        "redis_py_single_connection": via_single,
        "redis_py_connection_send_read": via_connection,
        "hiredis_on_socket": via_hiredis,
        "raw_socket_prepacked": via_raw,
    }
    clock = time.perf_counter_ns
    try:
        for name, path in paths.items():
            samples = out.variants.setdefault(name, [])
            deadline = time.monotonic() + budget_s / len(paths)
            for n in range(count):
                k = keys[n % len(keys)]
                t0 = clock()
                got = path(k, n)
                samples.append(clock() - t0)
                if not got or time.monotonic() > deadline:
                    assert got, (name, got)
                    break
    finally:
        sock.close()
        pooled.connection_pool.release(conn)
        pooled.close()
        single.close()


def redis_benchmark(
    target: Target, command: Sequence[str], n: int, timeout: float
) -> dict[str, Any]:
    """redis-benchmark, one client, no pipelining: rps and latency percentiles (µs)."""
    argv = ["redis-benchmark", *target.bench_args, "-c", "1", "-n", str(n), "--csv",
            "--precision", "3", *command]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    if not rows:
        raise RuntimeError(f"redis-benchmark printed no CSV: {proc.stdout!r} {proc.stderr!r}")
    row = rows[-1]
    return {
        "n": n,
        "rps": float(row["rps"]),
        "p50_us": round(float(row["p50_latency_ms"]) * 1000, 1),
        "p99_us": round(float(row["p99_latency_ms"]) * 1000, 1),
        "avg_us": round(float(row["avg_latency_ms"]) * 1000, 1),
    }


def profile_redis_py(target: Target, count: int) -> dict[str, Any]:
    """Where a redis-py GET spends its time (cProfile, top functions by own time)."""
    client = redis.Redis(**target.connect)
    try:
        client.get(key(0))
        profiler = cProfile.Profile()
        profiler.enable()
        for n in range(count):
            client.get(key(n % KEYS))
        profiler.disable()
    finally:
        client.close()
    stats = pstats.Stats(profiler)
    entries = []
    raw_stats: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, function), (_cc, calls, tottime, _ct, _callers) in raw_stats.items():
        entries.append((tottime, calls, f"{Path(filename).name}:{line}({function})"))
    entries.sort(reverse=True)
    total = sum(e[0] for e in entries)
    return {
        "gets": count,
        "top_by_own_time": [
            {
                "function": name,
                "calls_per_get": round(calls / count, 2),
                "share": round(tottime / total, 3),
            }
            for tottime, calls, name in entries[:10]
        ],
        "python_functions_per_get": round(sum(e[1] for e in entries) / count, 1),
    }


# -- the run ------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_servers() -> Iterator[tuple[RedisServer, RedisServer, int]]:
    config = sidecar_redis_config(max_memory_bytes=64 * 2**20)
    uds = RedisServer(config=config)
    port = free_port()
    tcp = RedisServer(config=[*config, f"port {port}", "bind 127.0.0.1"])
    try:
        uds.start()
        tcp.start()
        yield uds, tcp, port
    finally:
        uds.close()
        tcp.close()


def start_remote_redis(link: NetnsLink, workdir: Path) -> subprocess.Popen[Any]:
    """redis-server in the namespace: the sidecar's config plus a TCP listener on the /30."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [
        *sidecar_redis_config(max_memory_bytes=64 * 2**20),
        f"port {REMOTE_PORT}",
        f"bind {link.peer_ip} 127.0.0.1",
        "protected-mode no",  # reached from 10.213.n.1, not loopback; the /30 is private
        f"unixsocket {workdir / 'remote.sock'}",
        f"dir {workdir}",
        f"logfile {workdir / 'remote.log'}",
        "daemonize no",
    ]
    conf = workdir / "remote.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = link.spawn(["redis-server", str(conf)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((link.peer_ip, REMOTE_PORT), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"remote redis-server did not answer; see {workdir / 'remote.log'}")


def start_proxy(link: NetnsLink, port: int, delay_file: Path) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = link.spawn(
        [sys.executable, "-m", "benchmarks.latency", "proxy",
         "--listen", f"{link.peer_ip}:{port}", "--target", f"127.0.0.1:{REMOTE_PORT}",
         "--delay-file", str(delay_file)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the delay proxy did not start")
    return proc


def added_rtt_ms(direct: Target, delayed: Target, rtt_ms: float, pings: int) -> float:
    """Median PING round trip through ``delayed`` minus the direct veth path's, in ms."""
    base = percentile(sorted(raw_ping_rtt(direct, pings, 3)), 0.5)
    via = percentile(sorted(raw_ping_rtt(delayed, pings, 3 + 2 * rtt_ms)), 0.5)
    return (via - base) / 1e6


def calibrate_proxy(
    link: NetnsLink, port: int, rtt_ms: float, direct: Target, pings: int, workdir: Path
) -> dict[str, Any]:
    """Start a proxy whose *added* round trip over the direct veth path is ``rtt_ms``.

    Step 0 measures the proxy's cost without delay (for the record); then the delay starts at
    the target and is corrected from the measured result, up to three times.
    """
    delay_file = workdir / f"delay-{port}"
    delay_file.write_text("0")
    start_proxy(link, port, delay_file)
    probe = tcp_target("probe", link.peer_ip, port)
    overhead_ms = added_rtt_ms(direct, probe, 0, pings)
    steps = [{"delay_us": 0, "added_rtt_ms": round(overhead_ms, 4)}]
    delay_ns = int(rtt_ms * 1e6)
    for attempt in range(4):
        delay_file.write_text(str(delay_ns))
        got_ms = added_rtt_ms(direct, probe, rtt_ms, pings)
        steps.append({"delay_us": delay_ns / 1000, "added_rtt_ms": round(got_ms, 4)})
        if abs(got_ms - rtt_ms) <= 0.05 * rtt_ms or attempt == 3:
            break
        delay_ns = max(0, delay_ns + int((rtt_ms - got_ms) * 1e6))
    return {
        "mode": "userspace proxy in the netns (reply released >= delay after its request)",
        "target_rtt_ms": rtt_ms,
        "proxy_overhead_rtt_ms": round(overhead_ms, 4),
        "reply_delay_us": delay_ns / 1000,
        "achieved_added_rtt_ms": steps[-1]["added_rtt_ms"],
        "steps": steps,
    }


def measure(quick: bool) -> dict[str, Any]:
    # Many short rounds, so that bursts of load from the shared machine hit every target alike.
    rounds, scale = (4, 0.3) if quick else (8, 0.6)
    budget = 1.5 if quick else 2.5  # seconds per target per round, upper bound
    netem_ok, netem_note = netem_available()
    results: dict[str, Any] = {
        "benchmark": "latency",
        "machine": machine(),
        "parameters": {
            "keys": KEYS,
            "lookups_per_request": PER_REQUEST,
            "rounds": rounds,
            "figures": "percentiles over all rounds' samples (redis-benchmark: median run)",
            "value_bytes": len(value(0)),
            "client": f"redis-py {redis.__version__} (hiredis parser), sync, one connection",
            "c_baseline": "redis-benchmark -c 1 -n N --csv --precision 3 GET <key> / MGET",
            "servers": "redis-server with redis_server_args(); tcp: + port/bind 127.0.0.1; "
            "netns: + port/bind 10.213.n.2/protected-mode no",
            "delay": "netem" if netem_ok else "userspace delay proxy in the netns",
            "netem_probe": netem_note,
            "note": "2 shared cores; every figure measured in interleaved rounds in one run",
        },
    }
    print(f"delay: {results['parameters']['delay']} ({netem_note})", flush=True)
    removed = remove_stale_namespaces()
    if removed:
        print(f"removed stale namespaces {removed}")
    workdir = Path(tempfile.mkdtemp(prefix="ssb-lat-", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            uds, _tcp, tcp_port = stack.enter_context(local_servers())
            targets = [
                unix_target("uds", str(uds.socket_path)),
                tcp_target("tcp", "127.0.0.1", tcp_port),
            ]
            pings = 300 if quick else 600
            try:
                results["network"] = add_remote_targets(stack, targets, workdir, netem_ok, pings)
            except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
                detail = getattr(error, "stderr", "") or ""
                results["network"] = {"skipped": f"no remote targets: {error} {detail}".strip()}
                print(results["network"]["skipped"], flush=True)
                targets = targets[:2]
            for target in targets:
                target.gets = max(50, int(target.gets * scale))
                target.requests = max(20, int(target.requests * scale))
                target.bench_n = max(200, int(target.bench_n * scale))
            results["parameters"]["per_round"] = {
                t.name: {"gets": t.gets, "requests": t.requests, "redis_benchmark_n": t.bench_n}
                for t in targets
            }
            results.update(run_rounds(targets, rounds, budget, quick))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["ratios"], results["figures"] = derive(results)
    return results


def add_remote_targets(
    stack: contextlib.ExitStack,
    targets: list[Target],
    workdir: Path,
    netem_ok: bool,
    pings: int,
) -> dict[str, Any]:
    """The netns Redis without delay (``veth``) and with each of :data:`REMOTE_RTT_MS`."""
    link = stack.enter_context(NetnsLink(0))
    start_remote_redis(link, workdir / "veth")
    direct = tcp_target("veth", link.peer_ip, REMOTE_PORT)
    direct.local = False
    targets.append(direct)
    delays: dict[str, Any] = {}
    for slot, (name, rtt) in enumerate(REMOTE_RTT_MS.items(), start=1):
        if netem_ok:  # a link of its own per delay, so rounds can interleave
            own = stack.enter_context(NetnsLink(slot))
            start_remote_redis(own, workdir / name)
            own.netem(rtt)
            remote = tcp_target(name, own.peer_ip, REMOTE_PORT, rtt_ms=rtt)
            got = added_rtt_ms(direct, remote, rtt, pings)
            delays[name] = {"mode": "netem on the peer veth", "target_rtt_ms": rtt,
                            "achieved_added_rtt_ms": round(got, 4)}  # fmt: skip
        else:
            port = PROXY_BASE_PORT + slot
            delays[name] = calibrate_proxy(link, port, rtt, direct, pings, workdir)
            remote = tcp_target(name, link.peer_ip, port, rtt_ms=rtt)
        remote.local = False
        remote.delay = delays[name]
        targets.append(remote)
        print(f"{name}: {delays[name]}", flush=True)
    return {
        "link": f"veth {link.host_ip}/30 <-> {link.peer_ip}/30 in netns {link.netns}",
        "delays": delays,
        "ping_rtt_us": {
            t.name: summarize_ns(raw_ping_rtt(t, pings, 3 + 2 * t.added_rtt_ms)) for t in targets
        },
    }


def run_rounds(targets: list[Target], rounds: int, budget: float, quick: bool) -> dict[str, Any]:
    for target in targets:
        seed(target)
    clients = {t.name: redis.Redis(**t.connect) for t in targets}
    samples = {t.name: PySamples() for t in targets}
    bench: dict[str, dict[str, list[dict[str, Any]]]] = {
        t.name: {"get": [], "mget": []} for t in targets
    }
    mget_command = ["MGET", *(key(j * 101).decode() for j in range(PER_REQUEST))]
    gc.collect()
    gc.freeze()
    try:
        for client in clients.values():  # connect and warm up
            for i in range(200):
                client.get(key(i))
        for r in range(rounds):
            started = time.monotonic()
            for target in targets:
                py_round(clients[target.name], target, samples[target.name], budget, r * 37)
                if target.local:
                    variants_round(target, samples[target.name], target.gets, budget / 2)
                n = target.bench_n
                bench[target.name]["get"].append(
                    redis_benchmark(target, ["GET", key(r).decode()], n, 60)
                )
                bench[target.name]["mget"].append(
                    redis_benchmark(target, mget_command, max(100, n // 2), 60)
                )
            print(f"round {r + 1}/{rounds}: {time.monotonic() - started:.1f} s", flush=True)
    finally:
        for client in clients.values():
            client.close()
        gc.unfreeze()
    python = {}
    for name, s in samples.items():
        python[name] = {
            "get": summarize_ns(s.get),
            "request_10_gets": summarize_ns(s.request_10_gets),
            "request_mget_10": summarize_ns(s.request_mget),
        }
        for variant, values in s.variants.items():
            python[name][variant] = summarize_ns(values)
    c_baseline = {
        name: {kind: _median_runs(runs) for kind, runs in kinds.items()}
        for name, kinds in bench.items()
    }
    uds = next(t for t in targets if t.name == "uds")
    return {
        "python": python,
        "redis_benchmark": c_baseline,
        "profile_redis_py_get_uds": profile_redis_py(uds, 5000 if quick else 20_000),
    }


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """redis-benchmark percentiles per run; the median run of each figure across rounds."""

    def med(name: str) -> float:
        values = sorted(float(run[name]) for run in runs)
        return values[len(values) // 2]

    return {
        "runs": len(runs),
        "n_per_run": runs[0]["n"],
        "rps": med("rps"),
        "p50_us": med("p50_us"),
        "p99_us": med("p99_us"),
        "avg_us": med("avg_us"),
        "p50_us_all": [run["p50_us"] for run in runs],
    }


def _p50_p99_ratios(a: dict[str, Any], b: dict[str, Any], kinds: Sequence[str]) -> dict[str, Any]:
    return {
        kind: {
            "p50": ratio(a[kind]["p50_us"], b[kind]["p50_us"]),
            "p99": ratio(a[kind]["p99_us"], b[kind]["p99_us"]),
        }
        for kind in kinds
        if kind in a and kind in b
    }


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of docs/benchmarks.md (the ratios they come from are in ``derive``)."""
    return derive(results)[1]


def derive(results: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    py = results["python"]
    c = results["redis_benchmark"]
    uds, tcp = py["uds"], py["tcp"]
    bare = c["uds"]["get"]["p50_us"]
    kinds = ("get", "request_10_gets", "request_mget_10", *VARIANTS)
    ratios: dict[str, Any] = {
        "get_p50_over_redis_benchmark_uds_p50": {
            kind: ratio(uds[kind]["p50_us"], bare) for kind in ("get", *VARIANTS) if kind in uds
        },
        "tcp_over_uds": _p50_p99_ratios(tcp, uds, kinds),
        "redis_benchmark_tcp_over_uds": _p50_p99_ratios(c["tcp"], c["uds"], ("get", "mget")),
    }
    for name in ("veth", *REMOTE_RTT_MS):
        if name not in py:
            continue
        ratios[f"{name}_over_uds"] = _p50_p99_ratios(py[name], uds, kinds)
        ratios[f"redis_benchmark_{name}_over_uds"] = _p50_p99_ratios(
            c[name], c["uds"], ("get", "mget")
        )
        # Paired by round (the same minute of the shared machine), then the median.
        paired = sorted(
            r / u
            for r, u in zip(
                c[name]["get"]["p50_us_all"], c["uds"]["get"]["p50_us_all"], strict=True
            )
        )
        ratios[f"redis_benchmark_{name}_over_uds"]["get"]["p50_paired_median"] = round(
            paired[len(paired) // 2], 2
        )
        ratios[f"{name}_10_gets_over_uds_mget"] = ratio(
            py[name]["request_10_gets"]["p50_us"], uds["request_mget_10"]["p50_us"]
        )
    lookup = ratios["get_p50_over_redis_benchmark_uds_p50"]["get"]
    lean = ratios["get_p50_over_redis_benchmark_uds_p50"].get("redis_py_connection_send_read")
    rows = [
        figure(
            "app look-up p50 over the socket (redis-py GET)",
            uds["get"]["p50_us"], "µs",
            f"redis-benchmark GET over UDS p50 {bare} µs", lookup,
            f"<= {TARGET_LOOKUP_RATIO}x", lookup <= TARGET_LOOKUP_RATIO,
        ),
        figure(
            "  same, redis-py Connection.send_command/read_response",
            uds.get("redis_py_connection_send_read", {}).get("p50_us", float("nan")), "µs",
            f"redis-benchmark GET over UDS p50 {bare} µs", lean,
            f"<= {TARGET_LOOKUP_RATIO}x", None if lean is None else lean <= TARGET_LOOKUP_RATIO,
        ),
        figure(
            "C GET p50, UDS vs TCP loopback (redis-benchmark)",
            c["uds"]["get"]["p50_us"], "µs",
            f"TCP p50 {c['tcp']['get']['p50_us']} µs",
            ratios["redis_benchmark_tcp_over_uds"]["get"]["p50"], "(context) TCP/UDS", None,
        ),
        figure(
            "redis-py GET p50, UDS vs TCP loopback",
            uds["get"]["p50_us"], "µs", f"TCP p50 {tcp['get']['p50_us']} µs",
            ratios["tcp_over_uds"]["get"]["p50"], "(context) TCP/UDS", None,
        ),
    ]  # fmt: skip
    for name, rtt in REMOTE_RTT_MS.items():
        if name not in py:
            continue
        gate = rtt == 0.25
        speedup = ratios[f"{name}_over_uds"]["request_10_gets"]["p50"]
        c_speedup = ratios[f"redis_benchmark_{name}_over_uds"]["get"]["p50_paired_median"]
        mget = ratios[f"{name}_10_gets_over_uds_mget"]
        remote = py[name]["request_10_gets"]
        target = f">= {TARGET_LOCAL_VS_REMOTE}x" if gate else "(context)"
        rows += [
            figure(
                f"10 GETs/request, local UDS vs remote {rtt} ms RTT, p50 (redis-py)",
                uds["request_10_gets"]["p50_us"], "µs",
                f"remote p50 {remote['p50_us']} / p99 {remote['p99_us']} µs", speedup,
                target, speedup >= TARGET_LOCAL_VS_REMOTE if gate else None,
            ),
            figure(
                f"  same with a C client (redis-benchmark GET x10; ratio: median of rounds), "
                f"remote {rtt} ms",
                round(10 * c["uds"]["get"]["p50_us"], 1), "µs",
                f"remote {round(10 * c[name]['get']['p50_us'], 1)} µs", c_speedup,
                target, c_speedup >= TARGET_LOCAL_VS_REMOTE if gate else None,
            ),
            figure(
                f"  local MGET of the 10 vs remote 10 GETs ({rtt} ms), p50 (redis-py)",
                uds["request_mget_10"]["p50_us"], "µs",
                f"remote 10 GETs p50 {remote['p50_us']} µs", mget,
                target, mget >= TARGET_LOCAL_VS_REMOTE if gate else None,
            ),
        ]  # fmt: skip
    results["targets"] = {
        "lookup_p50_ratio": {"target": TARGET_LOOKUP_RATIO, "value": lookup},
        "local_vs_remote_0.25ms": {
            "target": TARGET_LOCAL_VS_REMOTE,
            "value": ratios.get("remote-0.25ms_over_uds", {}).get("request_10_gets", {}).get("p50"),
        },
    }
    return ratios, rows


def print_table(results: dict[str, Any]) -> None:
    py, c = results["python"], results["redis_benchmark"]
    print(f"{'target':<14} {'GET p50/p99 µs':>16} {'10xGET p50/p99 µs':>20} "
          f"{'MGET10 p50/p99 µs':>20} {'C GET p50/p99':>15} {'C MGET p50':>10}")  # fmt: skip
    for name, row in py.items():
        print(
            f"{name:<14} {row['get']['p50_us']:>8}/{row['get']['p99_us']:<7} "
            f"{row['request_10_gets']['p50_us']:>10}/{row['request_10_gets']['p99_us']:<9} "
            f"{row['request_mget_10']['p50_us']:>10}/{row['request_mget_10']['p99_us']:<9} "
            f"{c[name]['get']['p50_us']:>7}/{c[name]['get']['p99_us']:<7} "
            f"{c[name]['mget']['p50_us']:>10}"
        )
    for variant in VARIANTS:
        cells = [
            f"{name} {row[variant]['p50_us']}/{row[variant]['p99_us']}"
            for name, row in py.items()
            if variant in row
        ]
        print(f"  GET via {variant} p50/p99 µs: {', '.join(cells)}")
    print_figures(results["figures"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    sub = parser.add_subparsers(dest="command")
    proxy = sub.add_parser("proxy", help="(internal) the delay proxy run inside the netns")
    proxy.add_argument("--listen", required=True)
    proxy.add_argument("--target", required=True)
    proxy.add_argument("--delay-file", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and samples")
    args = parser.parse_args(argv)
    if args.command == "proxy":
        host, port = args.listen.rsplit(":", 1)
        thost, tport = args.target.rsplit(":", 1)
        with contextlib.suppress(KeyboardInterrupt):
            run_proxy((host, int(port)), (thost, int(tport)), args.delay_file)
        return
    sigterm_as_exit()
    started = time.monotonic()
    results = measure(args.quick)
    results["seconds"] = round(time.monotonic() - started, 1)
    print_table(results)
    path = write_results("latency", results)
    print(f"written {path} in {results['seconds']} s")


if __name__ == "__main__":
    main()
