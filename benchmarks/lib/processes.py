"""Child processes of a benchmark: they die with it, stop on time, and let clean-up run."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Final

from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config

_PR_SET_PDEATHSIG: Final = 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (its threads included) so far, from /proc/<pid>/stat;
    NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """``preexec_fn``: SIGKILL this child when the benchmark dies, so nothing is left behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sigterm_as_exit() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (netns clean-up) run."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def sidecar_redis(max_memory_bytes: int) -> RedisServer:
    """A redis-server started with the operator's rendered command line."""
    server = RedisServer(config=sidecar_redis_config(max_memory_bytes=max_memory_bytes))
    server.start()
    return server
