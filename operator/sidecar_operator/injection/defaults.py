"""Operator-wide defaults that every injection starts from.

They come from the operator's settings (environment, Helm values) in the cluster and from flags
in the CLI; the engine takes them as a plain value so that it stays a pure function.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sidecar_operator import __version__

SidecarMode = Literal["native", "containers"]
UserIds = Literal["fixed", "platform"]
"""fixed: our containers run as fixed UIDs/GIDs with a shared socket group; platform: no
runAsUser/runAsGroup/supplementalGroups, so a policy such as OpenShift's restricted-v2 assigns
them (every container of the Pod then gets the same UID, which can use the socket)."""

ENVOY_VERSION = "1.40.0"

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


class InjectionDefaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_image: str = "ghcr.io/sidecar-state/redis:7.0-bookworm"
    hydrator_image: str = f"ghcr.io/sidecar-state/hydrator:{__version__}"
    #: The interceptor's Envoy: our pinned build of the official release (images/build.py).
    envoy_image: str = f"ghcr.io/sidecar-state/envoy:{ENVOY_VERSION}"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = Field(
        default=(),
        description="Secrets (in the Pod's namespace) added to injected Pods' imagePullSecrets",
    )
    bootstrap_servers: tuple[str, ...] = ("kafka.kafka.svc:9092",)
    #: Where a binding's ``source.nats`` connects when it names no servers.
    nats_servers: tuple[str, ...] = ("nats://nats.nats.svc:4222",)
    max_memory: str = "64Mi"
    sidecar_mode: SidecarMode = "native"
    excluded_namespaces: frozenset[str] = SYSTEM_NAMESPACES
    socket_dir: str = "/var/run/sidecar-state"
    #: engine: lmdb — where the LMDB volume is mounted (SIDECAR_STATE_LMDB_PATH).
    lmdb_dir: str = "/var/run/sidecar-state-lmdb"
    #: engine: lmdb — reader slots in the lock file (every reading process takes one).
    lmdb_max_readers: int = Field(default=126, ge=1, le=65536)
    hydrator_port: int = Field(default=9464, ge=1, le=65535)
    user_ids: UserIds = "fixed"
    redis_user: int = 999
    hydrator_user: int = 65532
    socket_group: int = Field(
        default=7379, description="gid that owns the socket; added to the Pod's groups"
    )
    # Limit/request ratios of 2 pass LimitRanges with maxLimitRequestRatio >= 2.
    hydrator_cpu_request: str = "100m"
    hydrator_cpu_limit: str = "200m"
    hydrator_memory_request: str = "64Mi"
    hydrator_memory_limit: str = "128Mi"
    #: Redis gets a real CPU request and a limit twice that: a tight CFS quota throttles its one
    #: command thread mid-burst while the hydrator writes at full speed, and every app read
    #: queued behind it waits out the rest of the period (the app's GET p99). The limit stays by
    #: default, at the hydrator's ratio of 2, because a namespace whose LimitRange sets a CPU
    #: ``maxLimitRequestRatio`` refuses a container without one: dropping it on upgrade would
    #: make new Pods there forbidden. ``None`` (an empty setting) removes it.
    redis_cpu_request: str = "100m"
    redis_cpu_limit: str | None = "200m"
    hydration_timeout_seconds: int = Field(default=600, ge=10)
    prometheus_annotations: bool = Field(
        default=False,
        description="write prometheus.io/* annotations for the hydrator on injected Pods",
    )
    authz_health_port: int = Field(default=9465, ge=1, le=65535)
    #: ``mode: istio``: where the authorizer also listens on 127.0.0.1 for Istio's sidecar (the
    #: port of the mesh's ServiceEntry; Helm ``interceptor.istio.authorizerPort``).
    authz_loopback_port: int = Field(default=9466, ge=1, le=65535)
    authz_cpu_request: str = "50m"
    authz_cpu_limit: str = "500m"
    authz_memory_request: str = "48Mi"
    authz_memory_limit: str = "96Mi"
    envoy_cpu_request: str = "50m"
    envoy_cpu_limit: str = "1"
    envoy_memory_request: str = "64Mi"
    envoy_memory_limit: str = "128Mi"
    #: Envoy worker threads: one per core it may use, at most this many.
    envoy_concurrency: int = Field(default=2, ge=1)

    @property
    def socket_path(self) -> str:
        return f"{self.socket_dir}/redis.sock"

    @property
    def authz_socket_path(self) -> str:
        return f"{self.socket_dir}/authz.sock"
