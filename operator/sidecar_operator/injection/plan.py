"""What one Pod gets, decided from all the StateBindings that select it.

Several bindings may select one Pod; it still gets one Redis and one hydrator. This module
merges them: memory limits add up, each binding keeps its topics, format and key prefix in the
hydrator's config, and credentials become references to Secrets in the Pod's namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    prefix_overlaps,
)
from sidecar_operator.api.models import StateBinding
from sidecar_operator.api.quantity import parse_quantity, quantity_bytes
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import HYDRATOR_ACL_USER, HYDRATOR_PASSWORD_PATH

SECRETS_DIR = "/var/run/sidecar-state-secrets"


class OverlappingPrefixes(ValueError):
    """Two bindings that select one Pod have key prefixes that overlap."""


@dataclass(frozen=True, kw_only=True)
class SecretUse:
    """A Secret the hydrator reads: its keys as env vars, and ``ca.crt`` as a file."""

    secret_name: str
    username_env: str
    password_env: str
    volume_name: str
    mount_path: str
    tls: bool


@dataclass(frozen=True, kw_only=True)
class SidecarPlan:
    binding_names: tuple[str, ...]
    max_memory_bytes: int
    eviction_policy: str
    hydrator_config: HydratorConfig
    secrets: tuple[SecretUse, ...]


def _secret_use(binding: StateBinding, *, position: int) -> SecretUse | None:
    """Names by position in the sorted bindings: binding names such as ``a.b`` and ``a-b``
    would collide once made into env var or volume names."""
    auth = binding.spec.source.kafka.auth
    if auth is None:
        return None
    return SecretUse(
        secret_name=auth.secret_ref.name,
        username_env=f"SIDECAR_STATE_AUTH_{position}_USERNAME",
        password_env=f"SIDECAR_STATE_AUTH_{position}_PASSWORD",
        volume_name=f"sidecar-state-auth-{position}",
        mount_path=f"{SECRETS_DIR}/{position}",
        tls=auth.tls,
    )


def _largest(values: Sequence[str | None]) -> str | None:
    present = [v for v in values if v is not None]
    return max(present, key=parse_quantity) if present else None


def merge_hydrator_resources(bindings: Sequence[StateBinding]) -> dict[str, dict[str, str]]:
    """One hydrator serves every binding: each resource is the largest any binding asks for."""
    merged: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            wanted = []
            for binding in bindings:
                asked = binding.spec.hydrator.resources
                lst = getattr(asked, section) if asked else None
                wanted.append(getattr(lst, resource) if lst else None)
            largest = _largest(wanted)
            if largest is not None:
                merged.setdefault(section, {})[resource] = largest
    return merged


def _connection(
    binding: StateBinding, secret: SecretUse | None, defaults: InjectionDefaults
) -> KafkaConnection:
    kafka = binding.spec.source.kafka
    servers = kafka.bootstrap_servers or defaults.bootstrap_servers
    if kafka.auth is None or secret is None:
        return KafkaConnection(bootstrap_servers=servers)
    sasl = kafka.auth.mechanism is not None
    protocol = {
        (False, False): "PLAINTEXT",
        (False, True): "SSL",
        (True, False): "SASL_PLAINTEXT",
        (True, True): "SASL_SSL",
    }[(sasl, kafka.auth.tls)]
    return KafkaConnection(
        bootstrap_servers=servers,
        security_protocol=protocol,  # type: ignore[arg-type]
        sasl_mechanism=kafka.auth.mechanism,
        username_env=secret.username_env if sasl else None,
        password_env=secret.password_env if sasl else None,
        ca_file=f"{secret.mount_path}/ca.crt" if kafka.auth.tls else None,
    )


def plan_sidecars(bindings: Sequence[StateBinding], *, defaults: InjectionDefaults) -> SidecarPlan:
    """Merge the bindings that select one Pod into what its sidecars need."""
    if not bindings:
        raise ValueError("a sidecar plan needs at least one StateBinding")
    ordered = sorted(bindings, key=lambda b: b.name)
    prefixes = {b.name: b.spec.keys.prefix for b in ordered}
    overlap = prefix_overlaps(prefixes)
    if overlap is not None:
        first, second = overlap
        raise OverlappingPrefixes(
            f"StateBindings {first} and {second} both select this Pod and their "
            f"spec.keys.prefix values {prefixes[first]!r} and {prefixes[second]!r} overlap: "
            "give each binding a prefix that is not the start of another's"
        )
    sources = []
    secrets = []
    memory = 0
    policies = set()
    for position, binding in enumerate(ordered):
        spec = binding.spec
        secret = _secret_use(binding, position=position)
        if secret is not None:
            secrets.append(secret)
        memory += quantity_bytes(spec.store.max_memory or defaults.max_memory)
        policies.add(spec.store.eviction_policy)
        sources.append(
            BindingSource(
                name=binding.name,
                kafka=_connection(binding, secret, defaults),
                topics=spec.source.kafka.topics,
                start_from=spec.source.kafka.start_from,
                format=spec.source.kafka.format,
                keys=KeyMapping(
                    prefix=spec.keys.prefix,
                    key_field=spec.keys.key_field,
                    value_field=spec.keys.value_field,
                ),
            )
        )
    # One Redis serves every binding: if they disagree, never evict (the safe reading).
    eviction = policies.pop() if len(policies) == 1 else "noeviction"
    return SidecarPlan(
        binding_names=tuple(b.name for b in ordered),
        max_memory_bytes=memory,
        eviction_policy=eviction,
        hydrator_config=HydratorConfig(
            redis_socket=defaults.socket_path,
            redis_user=HYDRATOR_ACL_USER,
            redis_password_file=HYDRATOR_PASSWORD_PATH,
            http_port=defaults.hydrator_port,
            bindings=tuple(sources),
        ),
        secrets=tuple(secrets),
    )
