"""What one controller pass costs over many Pods: CPU time and resident memory.

    python -m benchmarks.controller_pass [--quick]

A local control plane and the operator as a process (``LocalOperator``, role ``all``, watchdog
every 2 s). One namespace holds a StateBinding selecting ``app=bench`` and N Pod objects
(created through the webhook, so they are injected; no kubelet needed) whose status is patched
to Running. Once the binding counts them all, the operator's CPU time (utime + stime from
``/proc``) and passes (``sidecar_state_controller_passes_total``) are sampled over a window of
watchdog passes; memory is the process's VmRSS at the end. The baseline is the same
window before any Pod exists (the binding alone), in the same run. Targets: the controller's chart
limits, 500m CPU (a pass every 15 s at most 7.5 s of CPU; we ask for < 0.8 s per pass per
2,000 Pods, on a machine shared with other work) and 384Mi.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from benchmarks._common import machine, write_results
from benchmarks.lib.figures import figure, print_figures
from benchmarks.lib.processes import sigterm_as_exit
from localkube.access import ClusterAccess
from localkube.controlplane import LocalControlPlane
from sidecar_state_stack.objects import binding, pod, wait_for, wait_reconciled
from sidecar_state_stack.operator_process import OPERATOR_NAMESPACE, REPO, LocalOperator

NAMESPACE: Final = "bench-controller"
CLOCK_TICKS: Final = 100  # USER_HZ on Linux
TARGET_CPU_PER_PASS_S: Final = 0.8
TARGET_RSS_MIB: Final = 384.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) / 1024 if found else 0.0


def passes(health_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(r"^sidecar_state_controller_passes_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def measure(pods: int, window: float) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "controller_pass",
        "machine": machine(),
        "parameters": {"pods": pods, "window_seconds": window, "watchdog_interval_seconds": 2,
                       "note": "apiserver, etcd, controllers, operator and client share 2 cores"},
    }  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="ssb-ctl-", dir="/tmp"))
    plane = LocalControlPlane(workdir=workdir / "cluster")
    operator: LocalOperator | None = None
    try:
        plane.start()
        cluster = ClusterAccess(kubeconfig=plane.kubeconfig, kubectl=plane.binaries.kubectl,
                                helm=plane.binaries.helm, existing=False)  # fmt: skip
        cluster.kubectl_run("apply", "--server-side", "-f", str(REPO / "crds"))
        # Right after the apply the CRD may have no conditions yet, which kubectl wait
        # refuses as an error rather than waiting: poll until it reports Established.
        wait_for(lambda: cluster.kubectl_run(
            "wait", "--for=condition=Established", "--timeout=30s",
            "crd/statebindings.sidecarstate.dev", check=False).returncode == 0,
            timeout=90, interval=0.5, what="the StateBinding CRD to be Established")  # fmt: skip
        cluster.kubectl_run("create", "namespace", OPERATOR_NAMESPACE)
        cluster.kubectl_run("create", "namespace", NAMESPACE)
        operator = LocalOperator(cluster=cluster, workdir=workdir / "operator")
        operator.start()
        operator.register_webhooks("Fail")
        cluster.apply(binding("bench", NAMESPACE))
        wait_reconciled(cluster, "bench", NAMESPACE)
        api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(plane.kubeconfig)
        )
        core = k8s.CoreV1Api(api)
        assert operator.process is not None
        pid = operator.process.pid
        # The baseline in the same run: the same passes over the binding with no Pods yet.
        results["empty"] = sample_passes(operator.health_port, pid, window)

        def create(index: int) -> None:
            name = f"bench-{index}"
            manifest = pod(name, NAMESPACE, labels={"app": "bench"})
            core.create_namespaced_pod(NAMESPACE, cast(Any, manifest))  # a dict serializes too
            core.patch_namespaced_pod_status(name, NAMESPACE, {"status": {"phase": "Running"}})

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, range(pods)))
        results["create_seconds"] = round(time.monotonic() - started, 1)

        def counted() -> bool:
            found = cluster.kubectl_json("get", "statebinding", "bench", "-n", NAMESPACE)
            return bool((found.get("status") or {}).get("injectedPods") == pods)

        wait_for(counted, timeout=180, what=f"injectedPods={pods}")
        results["loaded"] = sample_passes(operator.health_port, pid, window)
    finally:
        if operator is not None:
            with contextlib.suppress(Exception):
                operator.unregister_webhooks()
            operator.stop()
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["figures"] = figures(results)
    return results


def sample_passes(health_port: int, pid: int, window: float) -> dict[str, float]:
    """The operator's CPU per watchdog pass over ``window`` seconds, and its RSS after."""
    passes_before, cpu_before = passes(health_port), cpu_seconds(pid)
    time.sleep(window)
    ran = passes(health_port) - passes_before
    cpu = cpu_seconds(pid) - cpu_before
    return {"passes": ran, "cpu_seconds_per_pass": round(cpu / max(ran, 1), 3),
            "rss_mib": round(rss_mib(pid), 1)}  # fmt: skip


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of docs/benchmarks.md: CPU per pass and memory with N Pods, each beside the
    same operator's figure with none (same run)."""
    pods = results["parameters"]["pods"]
    loaded, empty = results["loaded"], results["empty"]
    per_pass, idle = loaded["cpu_seconds_per_pass"], empty["cpu_seconds_per_pass"]
    return [
        figure(f"controller CPU per watchdog/status pass over {pods:,} Pods",
               round(per_pass * 1000), "ms",
               f"{round(idle * 1000)} ms per pass with 0 Pods; {loaded['passes']:.0f} passes "
               f"in {results['parameters']['window_seconds']:.0f} s",
               round(per_pass / idle, 1) if idle else None,
               f"< {TARGET_CPU_PER_PASS_S * 1000:.0f} ms", per_pass < TARGET_CPU_PER_PASS_S),
        figure(f"operator resident memory with {pods:,} Pods", loaded["rss_mib"], "MiB",
               f"{empty['rss_mib']} MiB with 0 Pods; role all (webhook and controller in one "
               "process)", round(loaded["rss_mib"] / empty["rss_mib"], 2),
               f"< {TARGET_RSS_MIB:.0f} MiB", loaded["rss_mib"] < TARGET_RSS_MIB),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.controller_pass")
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a shorter window")
    args = parser.parse_args(argv)
    sigterm_as_exit()
    results = measure(args.pods, window=8.0 if args.quick else 20.0)
    print_figures(results["figures"])
    print(f"written {write_results('controller_pass', results)}")


if __name__ == "__main__":
    main()
