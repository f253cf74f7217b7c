"""Memory of the two sidecars: the Redis process and the hydrator process, from /proc.

    python -m benchmarks.footprint [--quick] [--sizes 0,100000,1000000]

For each size: a fresh redis-server with the operator's command line and the real
``sidecar-state-hydrator`` process (configured through ``SIDECAR_STATE_HYDRATOR_CONFIG``, as
the webhook renders it) hydrate a compacted topic of that many keys from a real KRaft broker;
once ``/readyz`` answers and things settle, RSS and PSS (``/proc/<pid>/smaps_rollup``) of both
processes are read, with the peak RSS (VmHWM) and Redis's own ``used_memory``. Size 0 is the
idle footprint: the sidecars running, hydrated, on an empty topic.
Targets (issue 17): at idle the hydrator <= 25 MiB RSS, both sidecars <= 40 MiB together.

The hydrator's package runs from compiled bytecode, as in the image (its Dockerfile ends with
``compileall``): a checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would compile every module
of the package at each start, and the compiler's memory stays resident (``--bytecode source``
measures that way).

This module also holds what ``reader_impact`` shares: the hydrator as a process, /proc memory,
and the record generator.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

import redis

import sidecar_hydrator
from benchmarks._common import broker, machine, produce_bulk, write_results
from benchmarks.lib.processes import sidecar_redis
from localkube.ports import free_port
from sidecar_hydrator.config import (
    CONFIG_ENV,
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
)
from sidecar_state_stack.kafka_broker import KafkaBroker

MIB: Final = 2**20
TARGET_IDLE_MIB: Final = 40.0
TARGET_HYDRATOR_IDLE_MIB: Final = 25.0
PARTITIONS: Final = 4
#: Key prefix and JSON fields, as a StateBinding of the seed's flag shape would map them.
PREFIX: Final = "item:"


# -- records ------------------------------------------------------------------------------------


def records(n: int) -> Iterator[tuple[bytes, bytes]]:
    """~60-byte JSON documents keyed by id; the hydrator stores ``v`` under ``item:<id>``."""
    for i in range(n):
        ident = f"item-{i:08d}"
        yield ident.encode(), f'{{"id": "{ident}", "v": "value-{i:08d}-padding-padding"}}'.encode()


def redis_key(i: int) -> bytes:
    return b"%sitem-%08d" % (PREFIX.encode(), i)


def redis_value(i: int) -> bytes:
    return b"value-%08d-padding-padding" % i


def make_topic(kafka: KafkaBroker, topic: str, n: int) -> float:
    """A compacted topic of ``n`` distinct keys; returns the seconds producing took."""
    kafka.create_topic(topic, partitions=PARTITIONS, compacted=True)
    if n == 0:
        return 0.0
    return asyncio.run(produce_bulk(kafka, topic, records(n), partitions=PARTITIONS))


# -- /proc ----------------------------------------------------------------------------------------


def memory(pid: int) -> dict[str, float]:
    """RSS, peak RSS and PSS of one process, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[name] = round(int(rest.split()[0]) / 1024, 2)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty"):
                out[name] = round(int(rest.split()[0]) / 1024, 2)
    return {
        "rss_mib": out.get("VmRSS", float("nan")),
        "peak_rss_mib": out.get("VmHWM", float("nan")),
        "pss_mib": out.get("Pss", float("nan")),
        "rss_anon_mib": out.get("RssAnon", float("nan")),
        "rss_file_mib": out.get("RssFile", float("nan")),
        "pss_anon_mib": out.get("Pss_Anon", float("nan")),
    }


def exe_name(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return "?"


# -- the hydrator as a process ------------------------------------------------------------------


def hydrator_command() -> list[str]:
    """The ``sidecar-state-hydrator`` entry point next to this interpreter (not a pyenv shim,
    whose bash start-up would be timed too), else the one on PATH, else ``-m``."""
    beside = Path(sys.executable).parent / "sidecar-state-hydrator"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("sidecar-state-hydrator")
    return [found] if found else [sys.executable, "-m", "sidecar_hydrator"]


def hydrator_config(socket_path: str, bootstrap: str, topic: str, port: int) -> HydratorConfig:
    return HydratorConfig(
        redis_socket=socket_path,
        http_port=port,
        bindings=(
            BindingSource(
                name="bench",
                kafka=KafkaConnection(bootstrap_servers=(bootstrap,)),
                topics=(topic,),
                format="json",
                keys=KeyMapping(prefix=PREFIX, key_field="id", value_field="v"),
            ),
        ),
    )


def compiled_package(workdir: Path) -> Path:
    """A directory holding a copy of the hydrator's package with its bytecode compiled, to go
    first on the hydrator's ``PYTHONPATH``: the image runs compiled bytecode, and the standard
    library and site-packages here have theirs already. A copy, so that no bytecode is written
    into the checkout (and none of it goes stale there)."""
    root = workdir / "compiled"
    shutil.copytree(
        Path(sidecar_hydrator.__file__).parent,
        root / "sidecar_hydrator",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if not compileall.compile_dir(root, quiet=1):
        raise RuntimeError(f"compileall failed in {root}")
    return root


def with_pythonpath(env: dict[str, str], first: Path | None) -> dict[str, str]:
    if first is None:
        return env
    rest = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": str(first) + (os.pathsep + rest if rest else "")}


class HydratorProcess:
    """The real ``sidecar-state-hydrator``, configured as the webhook configures it;
    ``pythonpath`` (see :func:`compiled_package`) goes first on its ``PYTHONPATH``."""

    def __init__(
        self, config: HydratorConfig, log_path: Path, *, pythonpath: Path | None = None
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.pythonpath = pythonpath
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            hydrator_command(),
            env=with_pythonpath(
                {**os.environ, CONFIG_ENV: self.config.to_env_value()}, self.pythonpath
            ),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def probe(self, path: str) -> bool:
        url = f"http://127.0.0.1:{self.config.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait(self, path: str = "/readyz", timeout: float = 120.0, interval: float = 0.02) -> float:
        """Wait until ``path`` answers 200; returns the monotonic time it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the hydrator exited; log: {self.log_tail()}")
            if self.probe(path):
                return time.monotonic()
            time.sleep(interval)
        raise RuntimeError(f"the hydrator's {path} not OK in {timeout} s; log: {self.log_tail()}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.config.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> HydratorProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def settle(client: redis.Redis, seconds: float) -> None:
    """Let the spare database's asynchronous flush finish and the processes go idle."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info: dict[str, Any] = client.info("memory")
        if int(info.get("lazyfree_pending_objects", 0)) == 0:
            break
        time.sleep(0.1)
    time.sleep(max(0.0, deadline - time.monotonic()))


_IMPORT_PROBE: Final = """
import importlib, json, re, sys
def rss():
    text = open("/proc/self/status").read()
    return int(re.search(r"VmRSS:\\s+(\\d+)", text).group(1)) / 1024
steps = [("python " + sys.version.split()[0], rss())]
for name in sys.argv[1:]:
    if name == "aiokafka":  # as the hydrator does before a Kafka binding's client
        from sidecar_hydrator import lazy_imports
        lazy_imports.defer()
    importlib.import_module(name)
    steps.append((name, rss()))
print(json.dumps(steps))
"""

#: The hydrator's imports in dependency order; each step's RSS growth is attributed to it.
#: ``ssl`` is asyncio's (it imports it whatever the config; libssl and libcrypto), counted
#: apart so that asyncio's own share shows; ``sidecar_hydrator.store`` brings the hydrator's
#: Redis client (``resp``, hiredis); ``kafka_source`` is imported once a Kafka binding is
#: built (``main`` alone loads no source's client).
IMPORT_STEPS: Final = (
    "ssl",
    "asyncio",
    "orjson",
    "sidecar_hydrator.config",
    "sidecar_hydrator.store",
    "aiokafka",
    "sidecar_hydrator.main",
    "sidecar_hydrator.kafka_source",
)


def import_profile(pythonpath: Path | None = None) -> list[dict[str, Any]]:
    """RSS growth of a fresh interpreter per import: what the hydrator's idle RSS is made of."""
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *IMPORT_STEPS],
        capture_output=True, text=True, check=True, timeout=60,
        env=with_pythonpath(dict(os.environ), pythonpath),
    )  # fmt: skip
    steps = json.loads(proc.stdout)
    rows = [{"step": steps[0][0], "rss_mib": round(steps[0][1], 1), "added_mib": None}]
    for (_, before), (name, after) in itertools.pairwise(steps):
        rows.append(
            {"step": name, "rss_mib": round(after, 1), "added_mib": round(after - before, 1)}
        )
    return rows


# -- the benchmark ------------------------------------------------------------------------------


def one_size(
    kafka: KafkaBroker, n: int, workdir: Path, settle_s: float, pythonpath: Path | None
) -> dict[str, Any]:
    topic = f"footprint-{n}"
    produce_s = make_topic(kafka, topic, n)
    server = sidecar_redis(max_memory_bytes=max(64 * MIB, n * 400))
    try:
        assert server.pid is not None
        redis_idle_before = memory(server.pid)
        port = free_port()
        config = hydrator_config(str(server.socket_path), kafka.bootstrap_servers, topic, port)
        log = workdir / f"hydrator-{n}.log"
        with HydratorProcess(config, log, pythonpath=pythonpath) as hydrator:
            started = time.monotonic()
            hydrator.wait("/readyz")
            ready_s = time.monotonic() - started
            client = redis.Redis(unix_socket_path=str(server.socket_path))
            try:
                settle(client, settle_s)
                # The hydrator's own keys (offsets, metadata, sentinel, topic IDs) do not count.
                own = sum(1 for _ in client.scan_iter(match=b"sidecar-state:*"))
                keys = int(client.dbsize()) - own
                sample = client.get(redis_key(n - 1)) if n else None
                info: dict[str, Any] = client.info("memory")
                hydrator_mem = memory(hydrator.pid)
                redis_mem = memory(server.pid)
                hydrator_exe = exe_name(hydrator.pid)
            finally:
                client.close()
    finally:
        server.close()
    assert keys == n, f"{keys} keys besides the hydrator's own, expected {n}"
    assert n == 0 or sample == redis_value(n - 1), sample
    together = redis_mem["rss_mib"] + hydrator_mem["rss_mib"]
    return {
        "keys": n,
        "produce_seconds": round(produce_s, 2),
        "ready_seconds_from_process_start": round(ready_s, 2),
        "hydrator_executable": hydrator_exe,
        "redis": redis_mem,
        "redis_before_hydrator": redis_idle_before,
        "redis_used_memory_mib": round(int(info["used_memory"]) / MIB, 2),
        "redis_used_memory_dataset_mib": round(int(info["used_memory_dataset"]) / MIB, 2),
        "redis_bytes_per_key": round(
            (int(info["used_memory"]) - int(info["used_memory_startup"])) / n, 1
        )
        if n
        else None,
        "hydrator": hydrator_mem,
        "together_rss_mib": round(together, 2),
        "together_pss_mib": round(redis_mem["pss_mib"] + hydrator_mem["pss_mib"], 2),
    }


def measure(sizes: Sequence[int], settle_s: float, bytecode: str = "compiled") -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "footprint",
        "machine": machine(),
        "parameters": {
            "sizes": list(sizes),
            "partitions": PARTITIONS,
            "format": "json, key_field=id, value_field=v (~27-byte values, ~21-byte keys)",
            "settle_seconds": settle_s,
            "redis": "redis_server_args() config, maxmemory max(64 MiB, 400 B/key)",
            "hydrator": " ".join(hydrator_command()) + f" ({CONFIG_ENV})",
            "measured": "/proc/<pid>/status VmRSS, VmHWM; /proc/<pid>/smaps_rollup Pss",
            "bytecode": {
                "compiled": "the hydrator's package compiled beforehand, as in the image",
                "source": "the hydrator's package compiled at each start"
                + (" (PYTHONDONTWRITEBYTECODE=1)" if sys.flags.dont_write_bytecode else ""),
            }[bytecode],
        },
        "runs": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="ssb-fp-", dir="/tmp"))
    try:
        pythonpath = compiled_package(workdir) if bytecode == "compiled" else None
        with broker() as kafka:
            for n in sizes:
                row = one_size(kafka, n, workdir, settle_s, pythonpath)
                results["runs"].append(row)
                print_row(row)
        results["hydrator_import_profile"] = import_profile(pythonpath)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    idle = next((r for r in results["runs"] if r["keys"] == 0), None)
    python_mib = results["hydrator_import_profile"][0]["rss_mib"]
    results["figures"] = figures(results["runs"], idle, python_mib=python_mib)
    results["targets"] = {
        "idle_together_rss_mib": TARGET_IDLE_MIB,
        "idle_hydrator_rss_mib": TARGET_HYDRATOR_IDLE_MIB,
        "met": None
        if idle is None
        else idle["together_rss_mib"] <= TARGET_IDLE_MIB
        and idle["hydrator"]["rss_mib"] <= TARGET_HYDRATOR_IDLE_MIB,
    }
    return results


def figures(
    runs: list[dict[str, Any]], idle: dict[str, Any] | None, *, python_mib: float
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if idle is not None:
        rows.append(
            {
                "figure": "sidecars' RSS at idle (Redis + hydrator)",
                "value": idle["together_rss_mib"],
                "unit": "MiB",
                "baseline": f"Redis {idle['redis']['rss_mib']} + hydrator "
                f"{idle['hydrator']['rss_mib']} MiB; PSS together {idle['together_pss_mib']}",
                "ratio": round(idle["together_rss_mib"] / TARGET_IDLE_MIB, 2),
                "target": f"<= {TARGET_IDLE_MIB:.0f} MiB",
                "met": idle["together_rss_mib"] <= TARGET_IDLE_MIB,
            }
        )
        rows.append(
            {
                "figure": "hydrator RSS at idle",
                "value": idle["hydrator"]["rss_mib"],
                "unit": "MiB",
                "baseline": f"an interpreter importing nothing {python_mib} MiB; PSS "
                f"{idle['hydrator']['pss_mib']}",
                "ratio": round(idle["hydrator"]["rss_mib"] / TARGET_HYDRATOR_IDLE_MIB, 2),
                "target": f"<= {TARGET_HYDRATOR_IDLE_MIB:.0f} MiB",
                "met": idle["hydrator"]["rss_mib"] <= TARGET_HYDRATOR_IDLE_MIB,
            }
        )
    for run in runs:
        if run["keys"] == 0:
            continue
        rows.append(
            {
                "figure": f"sidecars' RSS with {run['keys']:,} keys",
                "value": run["together_rss_mib"],
                "unit": "MiB",
                "baseline": f"Redis {run['redis']['rss_mib']} (used_memory "
                f"{run['redis_used_memory_mib']}, {run['redis_bytes_per_key']} B/key) + hydrator"
                f" {run['hydrator']['rss_mib']} (peak {run['hydrator']['peak_rss_mib']})",
                "ratio": round(run["together_rss_mib"] / idle["together_rss_mib"], 2)
                if idle
                else None,
                "target": "(context) x idle",
                "met": None,
            }
        )
    return rows


def print_row(row: dict[str, Any]) -> None:
    r, h = row["redis"], row["hydrator"]
    print(
        f"{row['keys']:>9,} keys: redis RSS {r['rss_mib']:7.1f} PSS {r['pss_mib']:7.1f} "
        f"(used_memory {row['redis_used_memory_mib']:.1f}) | hydrator RSS {h['rss_mib']:6.1f} "
        f"PSS {h['pss_mib']:6.1f} peak {h['peak_rss_mib']:6.1f} | together RSS "
        f"{row['together_rss_mib']:.1f} MiB | ready {row['ready_seconds_from_process_start']} s",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint")
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading")
    parser.add_argument("--quick", action="store_true", help="sizes 0,100000; 2 s settle")
    parser.add_argument(
        "--bytecode",
        choices=("compiled", "source"),
        default="compiled",
        help="run the hydrator's package from bytecode compiled beforehand (as the image"
        " does; default) or from source (compiled at each start when PYTHONDONTWRITEBYTECODE"
        " is set)",
    )
    args = parser.parse_args(argv)
    sizes = [0, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    settle_s = 2.0 if args.quick else args.settle
    started = time.monotonic()
    results = measure(sizes, settle_s, bytecode=args.bytecode)
    results["seconds"] = round(time.monotonic() - started, 1)
    print("hydrator RSS by import:", ", ".join(
        f"{r['step']} {r['rss_mib']}" for r in results["hydrator_import_profile"]))  # fmt: skip
    for row in results["figures"]:
        verdict = {True: "MET", False: "SHORT", None: ""}[row["met"]]
        print(f"  {row['figure']}: {row['value']} {row['unit']} | {row['baseline']} | "
              f"target {row['target']} {verdict}")  # fmt: skip
    path = write_results("footprint", results)
    print(f"written {path} in {results['seconds']} s")


if __name__ == "__main__":
    main()
