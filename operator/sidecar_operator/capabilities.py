"""What the cluster can do, found out once at start: does it run native sidecars?

Native sidecars (init containers with ``restartPolicy: Always``) are on by default from
Kubernetes 1.29; on 1.28 they exist behind the alpha ``SidecarContainers`` gate, and older
apiservers drop the field silently — the Pod then waits in Init forever for a "sidecar" that
never exits. So ``sidecar_mode: auto`` (the default) asks the server: its version, and on
1.28 a server-side dry run of a Pod with such an init container, which shows whether the
apiserver kept the field. ``native`` on a server without them refuses to start, saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, cast

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


def needs_probe(version: tuple[int, int]) -> bool:
    """Only 1.28 can go either way (its feature gate); the version decides the rest."""
    return version[:2] == NATIVE_BEHIND_GATE


def choose_sidecar_mode(
    requested: RequestedMode, *, version: tuple[int, int], probe_kept_restart_policy: bool | None
) -> Choice:
    """Pick the sidecar mode from what was asked and what the server showed."""
    shown = f"{version[0]}.{version[1]}"
    if version >= NATIVE_BY_DEFAULT:
        native, why = True, f"Kubernetes {shown} runs native sidecars"
    elif needs_probe(version) and probe_kept_restart_policy:
        native, why = True, f"Kubernetes {shown} has the SidecarContainers feature gate on"
    elif needs_probe(version):
        native, why = False, f"Kubernetes {shown} has the SidecarContainers feature gate off"
    else:
        native, why = False, f"Kubernetes {shown} has no native sidecars (1.29+)"
    if requested == "containers":
        return Choice(mode="containers", reason="sidecar mode containers, as configured")
    if requested == "native" and not native:
        raise UnsupportedMode(
            f"sidecar mode native was asked for, but {why}: the apiserver would drop "
            "restartPolicy: Always and injected Pods would wait in Init forever. Set "
            "sidecars.mode=auto or containers (SIDECAR_STATE_SIDECAR_MODE), or enable the "
            "SidecarContainers feature gate."
        )
    mode: SidecarMode = "native" if native else "containers"
    return Choice(mode=mode, reason=f"{why}: sidecar mode {mode} ({requested} asked)")


PROBE_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "sidecar-state-capability-probe-"},
    "spec": {
        "initContainers": [
            {"name": "probe", "image": "probe.invalid/none", "restartPolicy": "Always"}
        ],
        "containers": [{"name": "main", "image": "probe.invalid/none"}],
    },
}


def detect(requested: RequestedMode, *, namespace: str) -> Choice:
    """Ask the server (blocking; called once before the event loop starts)."""
    import kubernetes

    from sidecar_operator import kube

    if requested == "containers":
        return choose_sidecar_mode(
            requested, version=NATIVE_BY_DEFAULT, probe_kept_restart_policy=None
        )
    info = kubernetes.client.VersionApi(kube.client()).get_code()
    version = parse_version(info.major, info.minor)
    kept: bool | None = None
    if needs_probe(version):
        core = kubernetes.client.CoreV1Api(kube.client())
        created = core.create_namespaced_pod(namespace, cast(Any, PROBE_POD), dry_run="All")
        inits = (created.spec.init_containers if created.spec else None) or []
        kept = bool(inits) and inits[0].restart_policy == "Always"
    return choose_sidecar_mode(requested, version=version, probe_kept_restart_policy=kept)
