"""Go CPU profiles (``/debug/pprof/profile``) read as stacks, and summarised per Pod.

``go tool pprof -traces`` prints every sampled stack with its CPU time; reading those in
Python lets one summary put a sample in every category one of its frames matches (inclusive,
as pprof's ``cum``), so "the webhook call" and "JSON" can both count the JSON the call
encodes. Go is needed only to read the profile; without it the summary is ``None``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

_SEPARATOR: Final = re.compile(r"^-+\+-+$")
_VALUE: Final = re.compile(r"^\s*([0-9.]+)(ns|us|µs|ms|s|m|h)\s+(\S.*)$")
_UNIT_MS: Final = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}

Stack = tuple[float, tuple[str, ...]]
"""CPU milliseconds of one sampled stack, and its frames from leaf to root."""


def _frame(text: str) -> str:
    """A function name as pprof prints it, without its ``(inline)`` mark."""
    return text.strip().removesuffix("(inline)").strip()


def parse_traces(text: str) -> list[Stack]:
    """The stacks of ``go tool pprof -traces`` output (CPU profiles)."""
    stacks: list[Stack] = []
    value: float | None = None
    frames: list[str] = []
    for line in text.splitlines():
        if _SEPARATOR.match(line.strip()):
            if value is not None and frames:
                stacks.append((value, tuple(frames)))
            value, frames = None, []
            continue
        match = _VALUE.match(line)
        if match and value is None:
            value = float(match.group(1)) * _UNIT_MS[match.group(2)]
            frames.append(_frame(match.group(3)))
        elif value is not None and line.strip() and not line.lstrip().startswith("bytes:"):
            frames.append(_frame(line))
    if value is not None and frames:
        stacks.append((value, tuple(frames)))
    return stacks


def read_stacks(profile: Path) -> list[Stack] | None:
    """The stacks of a profile file, or ``None`` without Go (or if pprof cannot read it)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists()
                                else None)  # fmt: skip
    if go is None:
        return None
    done = subprocess.run([go, "tool", "pprof", "-traces", str(profile)],
                          capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    if done.returncode != 0:
        return None
    return parse_traces(done.stdout)


def summarize(
    stacks: Sequence[Stack],
    *,
    per: int,
    categories: Sequence[tuple[str, str]],
    top: int = 12,
) -> dict[str, Any]:
    """CPU ms per unit of work (``per``: Pods created in the window): in all, in each of
    ``categories`` (name, regular expression searched in every frame: inclusive), and for
    the leaf functions that cost the most (own time)."""
    total = sum(ms for ms, _ in stacks)
    compiled = [(name, re.compile(pattern)) for name, pattern in categories]
    inclusive = dict.fromkeys((name for name, _ in categories), 0.0)
    own: dict[str, float] = {}
    for ms, frames in stacks:
        own[frames[0]] = own.get(frames[0], 0.0) + ms
        for name, pattern in compiled:
            if any(pattern.search(frame) for frame in frames):
                inclusive[name] += ms
    per = max(per, 1)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    top_own = [
        {"function": name, "ms_per_pod": round(ms / per, 3),
         "share": round(ms / total, 3) if total else 0.0}
        for name, ms in ranked
    ]  # fmt: skip
    return {
        "sampled_cpu_ms": round(total, 1),
        "per": per,
        "cpu_ms_per_pod": round(total / per, 2),
        "categories_ms_per_pod": {name: round(ms / per, 2) for name, ms in inclusive.items()},
        "top_own": top_own,
    }
