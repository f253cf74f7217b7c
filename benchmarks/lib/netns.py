"""A network namespace joined to this one by a veth pair on a private /30, and whether this
kernel can add delay on it with ``netem``. Needs root (``ip netns``)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.lib.processes import die_with_parent, terminate

NETNS_PREFIX: Final = "ssb-"
SUBNET_PREFIX: Final = "10.213"


def netem_available() -> tuple[bool, str]:
    """Can this kernel add delay with ``netem``? Probed in a scratch namespace."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return False, "iproute2 (ip, tc) not installed"
    name = f"{NETNS_PREFIX}probe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        probe = subprocess.run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
             "delay", "1ms"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return True, "tc qdisc netem works"
        return False, f"tc netem: {probe.stderr.strip()} (sch_netem not in this kernel)"
    except (OSError, subprocess.CalledProcessError) as error:
        return False, f"network namespaces unavailable: {error}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def remove_stale_namespaces() -> list[str]:
    """Delete ``ssb-<pid>`` namespaces left by a benchmark run whose process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    removed = []
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        tag = name.removeprefix(NETNS_PREFIX).split("-")[0]
        if name.startswith(NETNS_PREFIX) and tag.isdigit() and not Path(f"/proc/{tag}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            removed.append(name)
    return removed


def _used_subnets() -> set[int]:
    text = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False
    ).stdout
    text += subprocess.run(
        ["ip", "-4", "route"], capture_output=True, text=True, check=False
    ).stdout
    used = set()
    for word in text.split():
        if word.startswith(SUBNET_PREFIX + "."):
            with contextlib.suppress(ValueError, IndexError):
                used.add(int(word.split(".")[2]))
    return used


class NetnsLink:
    """A network namespace joined to this one by a veth pair on a private /30.

    Host side ``10.213.<n>.1``, namespace side ``10.213.<n>.2``; the namespace has no other
    interface and no default route, so the only traffic possible is between the two ends.
    :meth:`close` removes everything (also from ``atexit`` and on SIGTERM via SystemExit).
    """

    def __init__(self, slot: int = 0) -> None:
        pid = os.getpid()
        self.netns = f"{NETNS_PREFIX}{pid}-{slot}"
        self.host_if = f"sb{slot}h{pid}"[:15]
        self.peer_if = f"sb{slot}r{pid}"[:15]
        used = _used_subnets()
        start = (pid + slot) % 250
        index = next(i % 250 for i in range(start, start + 250) if i % 250 not in used)
        self.host_ip = f"{SUBNET_PREFIX}.{index}.1"
        self.peer_ip = f"{SUBNET_PREFIX}.{index}.2"
        self.procs: list[subprocess.Popen[Any]] = []
        self._up = False

    def up(self) -> None:
        atexit.register(self.close)
        self._up = True
        steps = [
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if,
             "netns", self.netns],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if],
            ["ip", "-n", self.netns, "link", "set", self.peer_if, "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ]  # fmt: skip
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, text=True)

    def netem(self, rtt_ms: float) -> None:
        """Delay everything the namespace sends back by the whole round trip."""
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "tc", "qdisc", "replace", "dev", self.peer_if,
             "root", "netem", "delay", f"{rtt_ms}ms"],
            check=True, capture_output=True,
        )  # fmt: skip

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *argv], preexec_fn=die_with_parent, **kwargs
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            terminate(proc)
        self.procs.clear()
        if not self._up:
            return
        self._up = False
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)

    def __enter__(self) -> NetnsLink:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
