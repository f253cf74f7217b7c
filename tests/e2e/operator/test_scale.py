"""Scale on the real apiserver: 2,000 injected Pod objects (no kubelet needed), statuses
patched, and what the controller spends per pass (issue item 10).

The figures (CPU seconds and resident memory of the operator process per pass) are printed
and held to 0.8 s of CPU per pass and the controller's memory limit (384Mi).
"""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
import pytest

from localkube.access import ClusterAccess
from sidecar_state_stack.objects import binding, pod, wait_for, wait_reconciled
from sidecar_state_stack.operator_process import LocalOperator, OperatorHandle

PODS = 2000
CLOCK_TICKS = 100  # USER_HZ on Linux


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _rss_mib(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found.group(1)) / 1024


def _passes(operator: LocalOperator) -> float:
    url = f"http://127.0.0.1:{operator.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^sidecar_state_controller_passes_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_pass_over_2000_pods_stays_within_the_controllers_limits(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    if not isinstance(operator, LocalOperator) or operator.process is None:
        pytest.skip("measures the operator process on this machine")
    cluster.apply(binding("scale", namespace))
    wait_reconciled(cluster, "scale", namespace)
    api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    core = kubernetes.client.CoreV1Api(api)

    def create(index: int) -> None:
        core.create_namespaced_pod(
            namespace, pod(f"scale-{index}", namespace, labels={"app": "scale"})
        )
        core.patch_namespaced_pod_status(
            f"scale-{index}", namespace, {"status": {"phase": "Running"}}
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, range(PODS)))

    def counted() -> bool:
        found = cluster.kubectl_json("get", "statebindings", "-n", namespace)["items"][0]
        return (found.get("status") or {}).get("injectedPods") == PODS

    wait_for(counted, timeout=120, what=f"injectedPods={PODS} on the binding")
    pid = operator.process.pid
    passes_before, cpu_before = _passes(operator), _cpu_seconds(pid)
    time.sleep(12)  # several watchdog passes over every namespace (2 s apart here)
    passes = _passes(operator) - passes_before
    cpu = _cpu_seconds(pid) - cpu_before
    rss = _rss_mib(pid)
    per_pass = cpu / max(passes, 1)
    print(f"\nscale: {PODS} Pods, {passes:.0f} passes, {per_pass * 1000:.0f} ms CPU per pass, "
          f"RSS {rss:.0f} MiB")  # fmt: skip

    assert passes >= 3
    # 500m over a 15 s watchdog interval would allow 7.5 s; ask for far less, with room for a
    # machine shared with other work (0.27-0.51 s measured; the previous code about 1 s).
    assert per_pass < 0.8, f"{per_pass:.2f} s CPU per pass"
    assert rss < 384, f"{rss:.0f} MiB resident"
