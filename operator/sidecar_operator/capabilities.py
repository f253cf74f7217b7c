"""What the cluster can do, found out once at start: does it run native sidecars?

Native sidecars (init containers with ``restartPolicy: Always``) are on by default from
Kubernetes 1.29; on 1.28 they exist behind the alpha ``SidecarContainers`` gate, and older
apiservers drop the field silently — the Pod then waits in Init forever for a "sidecar" that
never exits. So ``sidecar_mode: auto`` (the default) reads the server's version: native on
1.29+, plain sidecar containers below (on 1.28 the gate cannot be seen from outside; whoever
enabled it sets ``native``). ``native`` on a server older than 1.28 refuses to start, saying
why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sidecar_operator.injection.defaults import SidecarMode

RequestedMode = Literal["auto", "native", "containers"]
NATIVE_BY_DEFAULT = (1, 29)
NATIVE_BEHIND_GATE = (1, 28)


class UnsupportedMode(RuntimeError):
    """The requested sidecar mode cannot work on this cluster."""


@dataclass(frozen=True, kw_only=True)
class Choice:
    mode: SidecarMode
    reason: str


def parse_version(major: str, minor: str) -> tuple[int, int]:
    """``("1", "28+")`` -> ``(1, 28)``: managed clusters append ``+`` and more to the minor."""
    found_major = re.match(r"\d+", major or "")
    found_minor = re.match(r"\d+", minor or "")
    if not found_major or not found_minor:
        raise ValueError(f"cannot read the server version {major!r}.{minor!r}")
    return int(found_major.group()), int(found_minor.group())


def choose_sidecar_mode(requested: RequestedMode, *, version: tuple[int, int]) -> Choice:
    """Pick the sidecar mode from what was asked and the server's version."""
    shown = f"{version[0]}.{version[1]}"
    if requested == "containers":
        return Choice(mode="containers", reason="sidecar mode containers, as configured")
    if version >= NATIVE_BY_DEFAULT:
        return Choice(mode="native", reason=f"Kubernetes {shown} runs native sidecars")
    if version == NATIVE_BEHIND_GATE:
        if requested == "native":
            return Choice(mode="native", reason=f"Kubernetes {shown}: native sidecars as "
                          "configured; they need the SidecarContainers feature gate")  # fmt: skip
        return Choice(mode="containers", reason=f"Kubernetes {shown} has native sidecars only "
                      "behind the SidecarContainers gate: plain sidecar containers (set "
                      "sidecars.mode=native where the gate is on)")  # fmt: skip
    if requested == "native":
        raise UnsupportedMode(
            f"sidecar mode native was asked for, but Kubernetes {shown} has no native sidecars "
            "(1.29+, or 1.28 with the SidecarContainers gate): the apiserver would drop "
            "restartPolicy: Always and injected Pods would wait in Init forever. Set "
            "sidecars.mode=auto or containers (SIDECAR_STATE_SIDECAR_MODE)."
        )
    return Choice(mode="containers", reason=f"Kubernetes {shown} has no native sidecars: "
                  "plain sidecar containers")  # fmt: skip


def detect(requested: RequestedMode) -> Choice:
    """Ask the server its version (blocking; once, before the event loop starts)."""
    import kubernetes

    from sidecar_operator import kube

    if requested == "containers":
        return choose_sidecar_mode(requested, version=NATIVE_BY_DEFAULT)
    info = kubernetes.client.VersionApi(kube.client()).get_code()
    return choose_sidecar_mode(requested, version=parse_version(info.major, info.minor))
