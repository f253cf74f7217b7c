"""What one Pod gets, decided from all the StateBindings that select it.

Several bindings may select one Pod; it still gets one Redis and one hydrator. This module
merges them: memory limits add up, each binding keeps its topics, format and key prefix in the
hydrator's config, and credentials become references to Secrets in the Pod's namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sidecar_hydrator.config import (
    LMDB_MAX_KEY_BYTES,
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    NatsConnection,
    NatsKv,
    NatsSourceConfig,
    NatsStream,
    parse,
    prefix_overlaps,
)
from sidecar_operator.api.models import NatsSource, StateBinding
from sidecar_operator.api.quantity import parse_quantity, quantity_bytes
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import HYDRATOR_ACL_USER, HYDRATOR_PASSWORD_PATH

SECRETS_DIR = "/var/run/sidecar-state-secrets"


class OverlappingPrefixes(ValueError):
    """Two bindings that select one Pod have key prefixes that overlap."""


class MixedEngines(ValueError):
    """Bindings that select one Pod ask for different store engines (one store per Pod)."""


MIB = 2**20


#: The Secret keys a NATS auth method reads as files (the rest are env vars, see below).
NATS_FILE_KEYS = {"creds": ("user.creds",), "nkey": ("user.nk",)}
NATS_TLS_FILE_KEYS = ("ca.crt", "tls.crt", "tls.key")


@dataclass(frozen=True, kw_only=True)
class SecretUse:
    """A Secret the hydrator reads: some keys as env vars, some as files in ``mount_path``."""

    secret_name: str
    #: ``(env var, Secret key)`` pairs, filled by the kubelet (``secretKeyRef``).
    env: tuple[tuple[str, str], ...]
    #: Secret keys mounted as files of the same name (``ca.crt``, ``user.creds``, ...).
    files: tuple[str, ...]
    volume_name: str
    mount_path: str

    def env_var(self, key: str) -> str | None:
        return next((var for var, k in self.env if k == key), None)


@dataclass(frozen=True, kw_only=True)
class SidecarPlan:
    binding_names: tuple[str, ...]
    max_memory_bytes: int
    eviction_policy: str
    #: ``redis`` (a Redis sidecar) or ``lmdb`` (an LMDB environment, no Redis).
    engine: str
    hydrator_config: HydratorConfig
    secrets: tuple[SecretUse, ...]


def _secret_use(binding: StateBinding, *, position: int) -> SecretUse | None:
    """Names by position in the sorted bindings: binding names such as ``a.b`` and ``a-b``
    would collide once made into env var or volume names."""
    source = binding.spec.source
    env_prefix = f"SIDECAR_STATE_AUTH_{position}"
    names = {
        "volume_name": f"sidecar-state-auth-{position}",
        "mount_path": f"{SECRETS_DIR}/{position}",
    }
    if source.kafka is not None and source.kafka.auth is not None:
        auth = source.kafka.auth
        # SASL credentials are mounted as files too, which the hydrator reads at every
        # connection attempt: a corrected Secret reaches a running Pod without a restart
        # (the env vars are fixed when the container starts, and remain the fallback).
        sasl_files = ("username", "password") if auth.mechanism is not None else ()
        return SecretUse(
            secret_name=auth.secret_ref.name,
            env=((f"{env_prefix}_USERNAME", "username"), (f"{env_prefix}_PASSWORD", "password")),
            files=sasl_files + (("ca.crt",) if auth.tls else ()),
            **names,
        )
    if source.nats is not None and source.nats.auth is not None:
        nats_auth = source.nats.auth
        env = {
            "token": ((f"{env_prefix}_TOKEN", "token"),),
            "userPassword": (
                (f"{env_prefix}_USERNAME", "username"),
                (f"{env_prefix}_PASSWORD", "password"),
            ),
        }.get(nats_auth.method, ())
        files = NATS_FILE_KEYS.get(nats_auth.method, ()) + (
            NATS_TLS_FILE_KEYS if nats_auth.tls else ()
        )
        return SecretUse(secret_name=nats_auth.secret_ref.name, env=env, files=files, **names)
    return None


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
    assert kafka is not None
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
        username_env=secret.env_var("username") if sasl else None,
        password_env=secret.env_var("password") if sasl else None,
        username_file=f"{secret.mount_path}/username" if sasl else None,
        password_file=f"{secret.mount_path}/password" if sasl else None,
        ca_file=f"{secret.mount_path}/ca.crt" if kafka.auth.tls else None,
    )


def _nats_source(
    nats: NatsSource, secret: SecretUse | None, defaults: InjectionDefaults
) -> NatsSourceConfig:
    """The hydrator's view of ``spec.source.nats``: servers (or the operator's default),
    the bucket or stream, and where the Secret's keys will be (env vars, mounted files)."""
    auth: dict[str, object] = {}
    if nats.auth is not None and secret is not None:
        mounted = {key: f"{secret.mount_path}/{key}" for key in secret.files}
        auth = {
            "auth_method": nats.auth.method,
            "creds_file": mounted.get("user.creds"),
            "nkey_seed_file": mounted.get("user.nk"),
            "token_env": secret.env_var("token"),
            "username_env": secret.env_var("username"),
            "password_env": secret.env_var("password"),
            "tls": nats.auth.tls,
            "ca_file": mounted.get("ca.crt"),
            "cert_file": mounted.get("tls.crt"),
            "key_file": mounted.get("tls.key"),
        }
    elif any(server.startswith("tls://") for server in nats.servers or ()):
        auth = {"tls": True}
    return NatsSourceConfig(
        connection=parse(
            NatsConnection, {"servers": list(nats.servers or defaults.nats_servers), **auth}
        ),
        kv=None if nats.kv is None else NatsKv(bucket=nats.kv.bucket, keys=nats.kv.keys),
        stream=None
        if nats.stream is None
        else NatsStream(
            name=nats.stream.name, subjects=nats.stream.subjects, deliver=nats.stream.deliver
        ),
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
    engines = {b.spec.store.engine: b.name for b in ordered}
    if len(engines) > 1:
        named = ", ".join(f"{name} ({engine})" for engine, name in sorted(engines.items()))
        raise MixedEngines(
            f"StateBindings that select this Pod ask for different spec.store.engine values "
            f"({named}): a Pod has one store; give them the same engine"
        )
    engine = next(iter(engines))
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
        keys = KeyMapping(
            prefix=spec.keys.prefix,
            key_field=spec.keys.key_field,
            value_field=spec.keys.value_field,
        )
        if spec.source.nats is not None:
            nats = spec.source.nats
            source = BindingSource(
                name=binding.name,
                nats=_nats_source(nats, secret, defaults),
                start_from=nats.start_from,
                format=nats.format,
                keys=keys,
            )
        else:
            kafka = spec.source.kafka
            assert kafka is not None  # the API model requires exactly one source
            source = BindingSource(
                name=binding.name,
                kafka=_connection(binding, secret, defaults),
                topics=kafka.topics,
                start_from=kafka.start_from,
                format=kafka.format,
                keys=keys,
            )
        sources.append(source)
    # One Redis serves every binding: if they disagree, never evict (the safe reading).
    eviction = policies.pop() if len(policies) == 1 else "noeviction"
    if engine == "lmdb":
        config = HydratorConfig(
            store_engine="lmdb",
            lmdb_path=defaults.lmdb_dir,
            lmdb_map_size=memory,
            lmdb_max_readers=defaults.lmdb_max_readers,
            max_key_bytes=LMDB_MAX_KEY_BYTES,
            http_port=defaults.hydrator_port,
            bindings=tuple(sources),
        )
    else:
        config = HydratorConfig(
            redis_socket=defaults.socket_path,
            redis_user=HYDRATOR_ACL_USER,
            redis_password_file=HYDRATOR_PASSWORD_PATH,
            http_port=defaults.hydrator_port,
            bindings=tuple(sources),
        )
    return SidecarPlan(
        binding_names=tuple(b.name for b in ordered),
        max_memory_bytes=memory,
        eviction_policy=eviction,
        engine=engine,
        hydrator_config=config,
        secrets=tuple(secrets),
    )


def lmdb_volume_bytes(max_memory_bytes: int) -> int:
    """The LMDB volume's ``sizeLimit``: two environments of ``map_size`` (the served one and
    a rebuild or compacted copy), and room for their lock files. Every map stays below it,
    so a full view is a refused write (``MDB_MAP_FULL``), never a full tmpfs."""
    return 2 * max_memory_bytes + MIB
