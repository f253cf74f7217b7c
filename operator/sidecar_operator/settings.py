"""Operator settings, read once from the environment (the Helm chart sets them).

Every variable is ``SIDECAR_STATE_<FIELD>``; list values are comma-separated.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar_operator.capabilities import RequestedMode
from sidecar_operator.injection.defaults import (
    SYSTEM_NAMESPACES,
    InjectionDefaults,
    SidecarMode,
    UserIds,
)

Role = Literal["all", "webhook", "controller"]


def _split(value: object) -> object:
    if not isinstance(value, str):
        return value
    return tuple(part.strip() for part in value.split(",") if part.strip())


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split)]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIDECAR_STATE_", frozen=True, extra="ignore")

    role: Role = "all"
    namespace: str = Field(
        default="sidecar-state-system", description="the operator's own namespace (excluded)"
    )
    redis_image: str = InjectionDefaults().redis_image
    hydrator_image: str = InjectionDefaults().hydrator_image
    envoy_image: str = InjectionDefaults().envoy_image
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: CommaList = ()
    bootstrap_servers: CommaList = InjectionDefaults().bootstrap_servers
    nats_servers: CommaList = InjectionDefaults().nats_servers
    max_memory: str = InjectionDefaults().max_memory
    sidecar_mode: RequestedMode = Field(
        default="auto", description="auto: native sidecars where the server runs them"
    )
    excluded_namespaces: CommaList = ()
    watch_namespaces: CommaList = Field(
        default=(),
        description="namespaces served (a namespaced install with Roles); empty = all",
    )
    # Cluster-wide defaults of the sidecars (Helm values sidecars.*); bindings and Pod
    # annotations override them (injection.overrides).
    user_ids: UserIds = InjectionDefaults().user_ids
    metrics_port: int = Field(default=InjectionDefaults().hydrator_port, ge=1, le=65535)
    hydration_timeout_seconds: int = Field(
        default=InjectionDefaults().hydration_timeout_seconds, ge=10
    )
    hydrator_cpu_request: str = InjectionDefaults().hydrator_cpu_request
    hydrator_cpu_limit: str = InjectionDefaults().hydrator_cpu_limit
    hydrator_memory_request: str = InjectionDefaults().hydrator_memory_request
    hydrator_memory_limit: str = InjectionDefaults().hydrator_memory_limit
    redis_cpu_request: str = InjectionDefaults().redis_cpu_request
    #: Unset: the default limit (twice the request; see InjectionDefaults). Empty: none.
    redis_cpu_limit: str | None = InjectionDefaults().redis_cpu_limit
    allowed_bootstrap_servers: CommaList = Field(
        default=(),
        description="host:port patterns (* wildcards) a binding may read from; empty = any",
    )
    allowed_nats_servers: CommaList = Field(
        default=(),
        description=(
            "host:port patterns (* wildcards) a NATS binding's servers may name (the scheme "
            "dropped); empty = any"
        ),
    )

    webhook_host: str = "0.0.0.0"
    webhook_port: int = 8443
    webhook_cert_file: str | None = None
    webhook_key_file: str | None = None
    health_port: int = 8080
    # Webhook TLS without cert-manager (webhook_tls): the Secret that holds the operator's
    # own CA and serving certificate; unset, the cert files come from elsewhere (cert-manager's
    # Secret volume, `dev-certs`).
    tls_secret: str | None = None
    webhook_service: str = Field(
        default="sidecar-state-webhook", description="the webhook Service (certificate names)"
    )
    webhook_configuration: str = Field(
        default="sidecar-state", description="name of both webhook configurations (caBundle)"
    )

    watchdog_interval_seconds: float = Field(default=15.0, gt=0)
    rollout_workloads: bool = True
    rollout_missed_injections: bool = Field(
        default=False,
        description="the watchdog rolls workloads whose Pods were created without sidecars",
    )
    rollout_max_per_minute: float = Field(
        default=10.0, gt=0, description="roll-outs the controller starts per minute, cluster-wide"
    )
    rollout_max_in_progress_per_namespace: int = Field(
        default=2, ge=1, description="roll-outs of one namespace that may run at once"
    )
    prometheus_annotations: bool = False
    # The interceptor's objects (controller.intercept_objects); each also needs its RBAC, which
    # the chart grants only when the value is set.
    istio_provider: str = Field(
        default="",
        description="the mesh's extensionProviders name for spec.intercept mode istio; "
        "empty = mode istio is refused",
    )
    istio_authorizer_port: int = Field(
        default=InjectionDefaults().authz_loopback_port, ge=1, le=65535,
        description="the authorizer's 127.0.0.1 port in mode istio (the ServiceEntry's port)",
    )  # fmt: skip
    network_policies: bool = Field(
        default=False,
        description="bindings may set spec.intercept.networkPolicy (the controller writes them)",
    )

    def injection_defaults(self, *, sidecar_mode: SidecarMode | None = None) -> InjectionDefaults:
        """The engine's defaults; ``sidecar_mode`` is what ``auto`` resolved to at start
        (without it, ``auto`` means native, the mode of every supported Kubernetes)."""
        resolved: SidecarMode = sidecar_mode or (
            "containers" if self.sidecar_mode == "containers" else "native"
        )
        return InjectionDefaults(
            redis_image=self.redis_image,
            hydrator_image=self.hydrator_image,
            envoy_image=self.envoy_image,
            image_pull_policy=self.image_pull_policy,
            image_pull_secrets=self.image_pull_secrets,
            bootstrap_servers=self.bootstrap_servers,
            nats_servers=self.nats_servers,
            max_memory=self.max_memory,
            sidecar_mode=resolved,
            user_ids=self.user_ids,
            hydrator_port=self.metrics_port,
            hydration_timeout_seconds=self.hydration_timeout_seconds,
            hydrator_cpu_request=self.hydrator_cpu_request,
            hydrator_cpu_limit=self.hydrator_cpu_limit,
            hydrator_memory_request=self.hydrator_memory_request,
            hydrator_memory_limit=self.hydrator_memory_limit,
            redis_cpu_request=self.redis_cpu_request,
            redis_cpu_limit=self.redis_cpu_limit or None,
            prometheus_annotations=self.prometheus_annotations,
            authz_loopback_port=self.istio_authorizer_port,
            excluded_namespaces=SYSTEM_NAMESPACES
            | {self.namespace}
            | frozenset(self.excluded_namespaces),
        )
