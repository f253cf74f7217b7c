"""CPU cgroups for a benchmark's processes, weighted as Kubernetes weights a Pod's containers.

A benchmark that runs Redis, the hydrator and an app as bare processes lets whichever is
busiest take the cores: the hydrator at full speed then starves the app and Redis, which no
Pod allows. The kubelet gives every container a CPU cgroup whose weight follows its CPU
request (and a CFS quota from its limit), inside a Pod cgroup weighted by the sum of its
containers' requests, inside ``kubepods`` weighted by the node's allocatable CPU. This module
builds the same tree under the benchmark's own cgroup::

    ssb-<pid>            weight of the machine's cores (kubepods)
      pod                sum of the Pod's requests
        app, redis, hydrator   each its request (and, if given, its limit as a quota)
      broker ...         other processes of the benchmark, each its own request

with the kubelet's conversions (:func:`shares_of`, :func:`weight_of`, :func:`quota_of`), on the
unified hierarchy (cgroup v2: ``cpu.weight``, ``cpu.max``) or, where the ``cpu`` controller is
still bound to cgroup v1, on that (``cpu.shares``, ``cpu.cfs_quota_us``), as the kubelet does
on such a node. Processes are moved in with their descendants and every thread. :func:`probe`
says whether either is usable here and why not; nothing is ever assumed.

Needs root. :meth:`CpuGroups.close` moves what is left back where the benchmark runs and
removes the tree (also from ``atexit``); :func:`remove_stale` removes trees of benchmark
processes that died before they could.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

PREFIX: Final = "ssb-"
#: The kubelet's CFS period (µs).
PERIOD_US: Final = 100_000
#: cgroup v1 ``cpu.shares`` bounds (the kernel's), and what a CPU of requests is worth.
MIN_SHARES: Final = 2
MAX_SHARES: Final = 262_144
SHARES_PER_CPU: Final = 1024
#: The smallest quota the kubelet sets (1 ms per period).
MIN_QUOTA_US: Final = 1000

Version = Literal["v2", "v1"]


def shares_of(milli: int) -> int:
    """The kubelet's ``MilliCPUToShares``: ``cpu.shares`` of a CPU request in millicores."""
    return max(MIN_SHARES, min(MAX_SHARES, milli * SHARES_PER_CPU // 1000))


def weight_of(milli: int) -> int:
    """``cpu.weight`` (cgroup v2) of a CPU request: its shares as runc converts them for the
    kubelet (``1 + (shares - 2) * 9999 / 262142``), so ratios stay as the requests'."""
    return 1 + (shares_of(milli) - MIN_SHARES) * 9999 // (MAX_SHARES - MIN_SHARES)


def quota_of(milli: int) -> int:
    """The kubelet's ``MilliCPUToQuota``: CFS quota (µs per :data:`PERIOD_US`) of a limit."""
    return max(MIN_QUOTA_US, milli * PERIOD_US // 1000)


@dataclass(frozen=True, slots=True)
class Cpu:
    """One container's CPU resources, in millicores (``limit`` ``None``: no quota)."""

    request: int
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where CPU cgroups can be made: the mount, its version, and the cgroup we are in."""

    version: Version
    mount: Path
    #: The benchmark's own cgroup (absolute path under ``mount``): the tree goes under it,
    #: and processes go back to it.
    home: Path


def _own_cgroup(version: Version, mount: Path, proc_cgroup: str) -> Path:
    """Our cgroup in that hierarchy, from ``/proc/self/cgroup``."""
    for line in proc_cgroup.splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if version == "v2" and hierarchy_id == "0" and controllers == "":
            return mount / path.lstrip("/")
        if version == "v1" and "cpu" in controllers.split(","):
            return mount / path.lstrip("/")
    return mount


def _mounts(mounts_text: str) -> Iterator[tuple[str, Path, set[str]]]:
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            yield fields[2], Path(fields[1]), set(fields[3].split(","))


def find_hierarchy(
    *, mounts_text: str, proc_cgroup: str, controllers: Mapping[Path, str]
) -> tuple[Hierarchy | None, str]:
    """The hierarchy whose ``cpu`` controller we can use, or ``None`` and why not (pure:
    ``controllers`` is the ``cgroup.controllers`` text of each v2 mount)."""
    reasons = []
    for fstype, mount, _options in _mounts(mounts_text):
        if fstype != "cgroup2":
            continue
        if "cpu" in controllers.get(mount, "").split():
            return Hierarchy("v2", mount, _own_cgroup("v2", mount, proc_cgroup)), "cgroup v2"
        reasons.append(f"cgroup2 at {mount} has no cpu controller (it is bound to cgroup v1)")
    for fstype, mount, options in _mounts(mounts_text):
        if fstype == "cgroup" and "cpu" in options:
            home = _own_cgroup("v1", mount, proc_cgroup)
            return Hierarchy("v1", mount, home), "; ".join([*reasons, f"cgroup v1 cpu at {mount}"])
    reasons.append("no cgroup hierarchy with the cpu controller is mounted")
    return None, "; ".join(reasons)


def probe() -> tuple[Hierarchy | None, str]:
    """This machine's usable CPU cgroup hierarchy (and that we may write to it), or why not."""
    try:
        mounts_text = Path("/proc/self/mounts").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError as error:
        return None, f"cannot read the mounts: {error}"
    controllers = {}
    for fstype, mount, _ in _mounts(mounts_text):
        if fstype == "cgroup2":
            with contextlib.suppress(OSError):
                controllers[mount] = (mount / "cgroup.controllers").read_text()
    found, why = find_hierarchy(
        mounts_text=mounts_text, proc_cgroup=proc_cgroup, controllers=controllers
    )
    if found is None:
        return None, why
    scratch = found.home / f"{PREFIX}probe{os.getpid()}"
    try:
        scratch.mkdir()
        scratch.rmdir()
    except OSError as error:
        return None, f"{why}, but {found.home} is not writable: {error}"
    return found, why


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields follow the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a broker started by a script has the JVM as a child)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


class CpuGroups:
    """A tree of CPU cgroups weighted as a Pod's containers (see the module docstring).

    ``pod`` and ``others`` name the leaves: ``CpuGroups(pod={"app": Cpu(500), ...},
    others={"broker": Cpu(1000)})``; :meth:`move` puts a process (and its descendants) in one,
    :meth:`release` takes it back to the benchmark's own cgroup.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        pod: Mapping[str, Cpu],
        others: Mapping[str, Cpu] | None = None,
        capacity_milli: int | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.root = hierarchy.home / f"{PREFIX}{os.getpid()}"
        self.pod = dict(pod)
        self.others = dict(others or {})
        if set(self.pod) & set(self.others) or "pod" in self.others:
            raise ValueError("group names must be unique (and not 'pod')")
        self.capacity_milli = capacity_milli or (os.cpu_count() or 1) * 1000
        self._made: list[Path] = []

    def path(self, name: str) -> Path:
        return self.root / "pod" / name if name in self.pod else self.root / name

    def settings(self) -> dict[str, dict[str, str]]:
        """Group path (relative to the tree's root, "" for it) -> file -> value written."""
        pod_request = sum(cpu.request for cpu in self.pod.values())
        out = {"": self._files(Cpu(self.capacity_milli)), "pod": self._files(Cpu(pod_request))}
        for name, cpu in self.pod.items():
            out[f"pod/{name}"] = self._files(cpu)
        for name, cpu in self.others.items():
            out[name] = self._files(cpu)
        return out

    def _files(self, cpu: Cpu) -> dict[str, str]:
        if self.hierarchy.version == "v2":
            quota = "max" if cpu.limit is None else str(quota_of(cpu.limit))
            return {"cpu.weight": str(weight_of(cpu.request)), "cpu.max": f"{quota} {PERIOD_US}"}
        return {
            "cpu.shares": str(shares_of(cpu.request)),
            "cpu.cfs_period_us": str(PERIOD_US),
            "cpu.cfs_quota_us": "-1" if cpu.limit is None else str(quota_of(cpu.limit)),
        }

    def create(self) -> None:
        atexit.register(self.close)
        v2 = self.hierarchy.version == "v2"
        if v2:
            # A v2 child gets cpu files only if its parent delegates the controller: our home
            # first (it may not, and cannot if it holds processes and is not the root).
            control = self.hierarchy.home / "cgroup.subtree_control"
            if "cpu" not in control.read_text().split():
                control.write_text("+cpu")
        for relative, files in sorted(self.settings().items()):
            group = self.root / relative if relative else self.root
            group.mkdir()
            self._made.append(group)
            if v2 and relative in ("", "pod"):
                (group / "cgroup.subtree_control").write_text("+cpu")
            for name, value in files.items():
                (group / name).write_text(value)

    def move(self, name: str, pid: int) -> list[int]:
        """Put ``pid``, its descendants and all their threads in group ``name``."""
        moved = []
        for member in process_tree(pid):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                (self.path(name) / "cgroup.procs").write_text(str(member))
                moved.append(member)
        return moved

    def release(self, pid: int) -> None:
        """Take ``pid`` and its descendants back to the benchmark's own cgroup."""
        for member in process_tree(pid):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                (self.hierarchy.home / "cgroup.procs").write_text(str(member))

    def throttling(self, name: str) -> dict[str, int]:
        """The group's ``cpu.stat`` counters (``nr_throttled``, ``throttled_usec`` or v1's
        ``throttled_time`` in ns, ...): how often a limit held it back."""
        stats: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (self.path(name) / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    stats[key] = int(value)
        return stats

    def close(self) -> None:
        """Move every process left in the tree back home, then remove the tree."""
        for group in reversed(self._made):
            _empty(group, self.hierarchy.home)
            with contextlib.suppress(OSError):
                group.rmdir()
        self._made.clear()

    def __enter__(self) -> CpuGroups:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _empty(group: Path, home: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (home / "cgroup.procs").write_text(pid)


def remove_stale(hierarchy: Hierarchy) -> list[str]:
    """Remove ``ssb-<pid>`` trees whose benchmark process is gone; returns their names."""
    removed = []
    for tree in hierarchy.home.glob(f"{PREFIX}*"):
        tag = tree.name.removeprefix(PREFIX)
        if not tag.isdigit() or Path(f"/proc/{tag}").exists():
            continue
        for group in sorted(
            (p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            _empty(group, hierarchy.home)
            with contextlib.suppress(OSError):
                group.rmdir()
        _empty(tree, hierarchy.home)
        with contextlib.suppress(OSError):
            tree.rmdir()
            removed.append(tree.name)
    return removed
