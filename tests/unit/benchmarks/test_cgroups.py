"""benchmarks.lib.cgroups: the kubelet's conversions, finding the hierarchy, and a real tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.lib.cgroups import (
    Cpu,
    CpuGroups,
    Hierarchy,
    find_hierarchy,
    probe,
    quota_of,
    remove_stale,
    shares_of,
    weight_of,
)

#: A node whose cpu controller is still bound to cgroup v1 (the unified tree has none).
HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
HYBRID_CGROUP = "4:memory:/x\n1:cpu:/bench\n0::/\n"
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def test_conversions_are_the_kubelets() -> None:
    assert shares_of(100) == 102
    assert shares_of(1000) == 1024
    assert shares_of(1) == 2  # the kernel's minimum
    assert quota_of(200) == 20_000
    assert quota_of(1) == 1000  # the kubelet's minimum quota
    assert weight_of(1000) == 39  # runc: 1 + 1022 * 9999 // 262142
    # Ratios stay as the requests' (within the rounding of small weights).
    assert weight_of(500) / weight_of(100) == pytest.approx(5, rel=0.05)


def test_a_hybrid_node_uses_cgroup_v1_and_says_why() -> None:
    found, why = find_hierarchy(
        mounts_text=HYBRID_MOUNTS,
        proc_cgroup=HYBRID_CGROUP,
        controllers={Path("/sys/fs/cgroup/unified"): ""},
    )
    assert found == Hierarchy("v1", Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu/bench"))
    assert "no cpu controller" in why


def test_a_unified_node_uses_cgroup_v2() -> None:
    found, _ = find_hierarchy(
        mounts_text=V2_MOUNTS,
        proc_cgroup="0::/user.slice\n",
        controllers={Path("/sys/fs/cgroup"): "cpuset cpu io memory pids\n"},
    )
    assert found == Hierarchy("v2", Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/user.slice"))


def test_no_cpu_controller_is_a_reason_not_a_crash() -> None:
    found, why = find_hierarchy(
        mounts_text=V2_MOUNTS, proc_cgroup="0::/\n", controllers={Path("/sys/fs/cgroup"): "io\n"}
    )
    assert found is None
    assert "no cpu controller" in why


def test_the_pod_is_weighted_by_its_requests_and_the_tree_by_the_machine() -> None:
    pod = {"app": Cpu(500), "redis": Cpu(100, limit=200), "hydrator": Cpu(100, limit=200)}
    v1 = CpuGroups(Hierarchy("v1", Path("/c"), Path("/c")), pod=pod, others={"broker": Cpu(1000)},
                   capacity_milli=2000)  # fmt: skip
    settings = v1.settings()
    assert settings[""]["cpu.shares"] == "2048"
    assert settings["pod"]["cpu.shares"] == str(shares_of(700))
    assert settings["pod/redis"] == {
        "cpu.shares": "102", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "20000",
    }  # fmt: skip
    assert settings["pod/app"]["cpu.cfs_quota_us"] == "-1"
    assert settings["broker"]["cpu.shares"] == "1024"
    v2 = CpuGroups(Hierarchy("v2", Path("/c"), Path("/c")), pod=pod, capacity_milli=2000)
    assert v2.settings()["pod/hydrator"] == {"cpu.weight": "4", "cpu.max": "20000 100000"}
    assert v2.settings()["pod/app"]["cpu.max"] == "max 100000"


def test_a_real_tree_holds_a_process_and_is_removed() -> None:
    hierarchy, why = probe()
    if hierarchy is None:
        pytest.skip(f"no usable CPU cgroups here: {why}")
    remove_stale(hierarchy)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with CpuGroups(hierarchy, pod={"app": Cpu(250), "redis": Cpu(100, limit=200)}) as groups:
            assert groups.move("redis", sleeper.pid) == [sleeper.pid]
            procs = (groups.path("redis") / "cgroup.procs").read_text().split()
            assert procs == [str(sleeper.pid)]
            limit_file = "cpu.max" if hierarchy.version == "v2" else "cpu.cfs_quota_us"
            assert "20000" in (groups.path("redis") / limit_file).read_text()
            groups.release(sleeper.pid)
            assert (groups.path("redis") / "cgroup.procs").read_text().split() == []
            groups.move("app", sleeper.pid)
            root = groups.root
        # Closing moves what is left back home and removes every group.
        assert not root.exists()
        home_procs = (hierarchy.home / "cgroup.procs").read_text().split()
        assert str(sleeper.pid) in home_procs
    finally:
        sleeper.kill()
        sleeper.wait()
