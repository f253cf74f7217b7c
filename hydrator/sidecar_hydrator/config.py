"""The hydrator's configuration: the contract between the operator and the sidecar.

The operator renders one :class:`HydratorConfig` per Pod (however many StateBindings match it)
into the ``SIDECAR_STATE_HYDRATOR_CONFIG`` environment variable of the hydrator container, as
JSON. Keeping the contract in the hydrator package, and having the operator import it, means
that what the webhook injects is exactly what the hydrator parses: a field renamed on one side
breaks the type checker and the unit tests, not a running Pod.

Secrets never appear in the rendered JSON: the config names the *environment variables* (filled
by the kubelet from ``secretKeyRef``) and the *files* (a mounted Secret) that hold them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_ENV = "SIDECAR_STATE_HYDRATOR_CONFIG"

#: The hydrator's own keys (offsets, metadata, sentinel) live under this prefix in database 0.
#: No binding may write there: records whose key falls in it are bad records (``reserved_key``)
#: and a key prefix inside it is refused.
RESERVED_PREFIX = "sidecar-state:"

RecordFormat = Literal["raw", "json", "debezium"]
StartFrom = Literal["earliest", "latest"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
NatsAuthMethod = Literal["creds", "nkey", "token", "userPassword"]
NatsDeliver = Literal["all", "lastPerSubject"]
SourceKind = Literal["kafka", "nats"]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class KafkaConnection(_Contract):
    """How to reach one Kafka cluster; credentials are referenced, never inlined."""

    bootstrap_servers: tuple[str, ...] = Field(min_length=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    username_env: str | None = None
    password_env: str | None = None
    #: The same credentials as files of the mounted Secret, read at every connection attempt
    #: (a Secret corrected in place reaches a running hydrator); the env vars are the fallback.
    username_file: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    #: Client certificate and key (PEM files from a mounted Secret) for TLS client auth (mTLS).
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _credentials_go_where_they_are_used(self) -> KafkaConnection:
        """Credentials are used exactly when SASL is on: never silently dropped, never made
        up (a SASL protocol without a mechanism would otherwise fall back to PLAIN)."""
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        given = [n for n in ("sasl_mechanism", "username_env", "password_env") if getattr(self, n)]
        files = [n for n in ("username_file", "password_file") if getattr(self, n)]
        if sasl and len(given) < 3:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "username_env and password_env"
            )
        if not sasl and (given or files):
            raise ValueError(
                f"{', '.join(given + files)} given with security_protocol "
                f"{self.security_protocol}, which sends no credentials"
            )
        return self

    def username(self) -> str | None:
        return _read_secret(self.username_file) or (
            os.environ.get(self.username_env) if self.username_env else None
        )

    def password(self) -> str | None:
        return _read_secret(self.password_file) or (
            os.environ.get(self.password_env) if self.password_env else None
        )


def _read_secret(path: str | None) -> str | None:
    """A mounted Secret key's value (``None`` when not configured or not readable)."""
    if path is None:
        return None
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


class NatsConnection(_Contract):
    """How to reach one NATS system; like Kafka's, credentials are referenced, never inlined.

    ``creds`` and ``nkey`` read files of a mounted Secret (a ``.creds`` file, an nkey seed);
    ``token`` and ``userPassword`` read environment variables the kubelet fills from it.
    """

    servers: tuple[str, ...] = Field(min_length=1)
    auth_method: NatsAuthMethod | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    token_env: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _auth_complete(self) -> NatsConnection:
        needs = {
            "creds": ("creds_file",),
            "nkey": ("nkey_seed_file",),
            "token": ("token_env",),
            "userPassword": ("username_env", "password_env"),
        }
        for field in needs.get(self.auth_method or "", ()):
            if not getattr(self, field):
                raise ValueError(f"auth_method {self.auth_method!r} needs {field}")
        return self

    def env(self, name: str | None) -> str | None:
        return os.environ.get(name) if name else None


class NatsKv(_Contract):
    """A KV bucket: its keys are the Redis keys (before the prefix), deletes remove them."""

    bucket: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    #: Key filters in NATS subject syntax (``*`` one token, ``>`` the rest).
    keys: tuple[str, ...] = Field(default=(">",), min_length=1)


class NatsStream(_Contract):
    """A stream: the message subject is the key; ``lastPerSubject`` reads only each
    subject's newest message at bootstrap, ``all`` replays every one."""

    name: str = Field(min_length=1, pattern=r"^[^.*> ]+$")
    #: Subject filters; empty reads every subject of the stream.
    subjects: tuple[str, ...] = ()
    deliver: NatsDeliver = "all"


class NatsSourceConfig(_Contract):
    """One binding's NATS JetStream source: exactly one of ``kv`` and ``stream``."""

    connection: NatsConnection
    kv: NatsKv | None = None
    stream: NatsStream | None = None

    @model_validator(mode="after")
    def _one_of_kv_or_stream(self) -> NatsSourceConfig:
        if (self.kv is None) == (self.stream is None):
            raise ValueError("a NATS source reads exactly one of kv (a bucket) or stream")
        return self

    @property
    def stream_name(self) -> str:
        """The JetStream stream behind it (a bucket ``B`` is stored in stream ``KV_B``)."""
        if self.kv is not None:
            return f"KV_{self.kv.bucket}"
        assert self.stream is not None
        return self.stream.name

    @property
    def filter_subjects(self) -> tuple[str, ...]:
        if self.kv is not None:
            return tuple(f"$KV.{self.kv.bucket}.{key}" for key in self.kv.keys)
        assert self.stream is not None
        return self.stream.subjects

    @property
    def subject_prefix(self) -> str:
        """What is cut from a subject to get the record key (a KV key is the subject's tail)."""
        return f"$KV.{self.kv.bucket}." if self.kv is not None else ""

    @property
    def last_per_subject(self) -> bool:
        """Only the newest message per subject matters: a KV bucket, or ``lastPerSubject``."""
        return self.kv is not None or (
            self.stream is not None and self.stream.deliver == "lastPerSubject"
        )


class KeyMapping(_Contract):
    """How a record becomes a Redis key and value.

    ``raw``: the record key is the Redis key, the value bytes are stored as they are.
    ``json``: key from ``key_field`` of the JSON value (else the record key), value from
    ``value_field`` (else the whole JSON document). ``debezium``: key from the key payload's
    fields (or ``key_field`` of ``after``/``before``), value from ``after``.
    """

    prefix: str = ""
    key_field: str | None = None
    value_field: str | None = None


class BindingSource(_Contract):
    """One StateBinding as the hydrator sees it: what to read and how to map its records.

    Exactly one source: ``kafka`` with its ``topics``, or ``nats``.
    """

    name: str
    kafka: KafkaConnection | None = None
    topics: tuple[str, ...] = ()
    nats: NatsSourceConfig | None = None
    start_from: StartFrom = "earliest"
    format: RecordFormat = "json"
    keys: KeyMapping = KeyMapping()

    @model_validator(mode="after")
    def _one_source(self) -> BindingSource:
        if (self.kafka is None) == (self.nats is None):
            raise ValueError(f"binding {self.name}: exactly one of kafka and nats is needed")
        if self.kafka is not None and not self.topics:
            raise ValueError(f"binding {self.name}: a Kafka source needs at least one topic")
        if self.nats is not None and self.topics:
            raise ValueError(f"binding {self.name}: topics are for Kafka; NATS names its stream")
        return self

    @property
    def source_kind(self) -> SourceKind:
        """Which source it reads: the ``source`` label of its metrics (two values, bounded)."""
        return "kafka" if self.kafka is not None else "nats"


def prefix_overlaps(prefixes: Mapping[str, str]) -> tuple[str, str] | None:
    """Two bindings (by name) whose key prefixes overlap, or ``None`` when all are disjoint.

    One binding's keys must be told apart from another's by prefix alone: a rebuild of one
    binding carries the others' keys over by prefix, and a tombstone of one must never delete
    a key another one wrote. Two prefixes overlap when one starts with the other (``""``
    overlaps everything).
    """
    ordered = sorted(prefixes.items(), key=lambda item: (item[1], item[0]))
    for (first, first_prefix), (second, second_prefix) in itertools.pairwise(ordered):
        if second_prefix.startswith(first_prefix):
            return first, second
    return None


#: The hydrator's Prometheus metrics: their common prefix, and the names the operator reads
#: back from each Pod's ``/metrics`` (``controller.health``) to fill a binding's status. Part
#: of the same contract: renaming one here renames it on both sides.
METRICS_NAMESPACE = "sidecar_state_hydrator"
HYDRATED_METRIC = f"{METRICS_NAMESPACE}_hydrated"
STALENESS_METRIC = f"{METRICS_NAMESPACE}_staleness_seconds"
OOM_REJECTIONS_METRIC = f"{METRICS_NAMESPACE}_redis_oom_rejections"
#: 1 for the hydrator's current state, 0 for the others: label ``reason``, one of
#: :class:`sidecar_hydrator.reasons.Reason`.
STATE_METRIC = f"{METRICS_NAMESPACE}_state"
#: Records read so far, and to be read, by the hydration (bootstrap or rebuild) under way.
HYDRATION_READ_METRIC = f"{METRICS_NAMESPACE}_hydration_read_records"
HYDRATION_TARGET_METRIC = f"{METRICS_NAMESPACE}_hydration_target_records"


class HydratorConfig(_Contract):
    """Everything one hydrator needs; the operator renders it, the sidecar parses it."""

    redis_socket: str = "/var/run/sidecar-state/redis.sock"
    #: The Redis ACL user the hydrator writes as, and the file with its password (written at
    #: the Pod's start, readable by the hydrator's UID only; see ``credentials``). Unset: the
    #: ``default`` user, which on an injected Redis may only read.
    redis_user: str | None = None
    redis_password_file: str | None = None
    http_port: int = Field(default=9464, ge=1, le=65535)
    bindings: tuple[BindingSource, ...] = Field(min_length=1)
    live_batch_max_keys: int = Field(default=500, ge=1)
    bootstrap_batch_max_keys: int = Field(default=5000, ge=1)
    metadata_key: str = "sidecar-state:meta"
    offsets_key: str = "sidecar-state:offsets"
    #: Larger values are skipped as bad records: one oversized record must not push a small
    #: ``noeviction`` Redis into OOM rejections for every later write.
    max_value_bytes: int = Field(default=1024 * 1024, ge=1)
    #: Larger keys (prefix included) are skipped as bad records (``key_too_large``): Redis
    #: would take keys up to 512 MB, and each one is also read by every ``SCAN`` of the app.
    max_key_bytes: int = Field(default=16 * 1024, ge=1)
    #: The database a rebuild is written into before ``SWAPDB`` makes it the served one (0).
    spare_db: int = Field(default=1, ge=1, le=15)
    #: Bounds both the wait after a seek and how long a shutdown waits for a parked fetch.
    fetch_max_wait_ms: int = Field(default=100, ge=1, le=5000)
    #: Per-partition fetch size while catching up; live fetches fall back to 1 MiB.
    catchup_fetch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: How often topic metadata is refreshed, i.e. how soon added partitions are picked up.
    metadata_refresh_ms: int = Field(default=30_000, ge=100)

    @model_validator(mode="after")
    def _keyspaces_disjoint(self) -> HydratorConfig:
        for key_name in ("metadata_key", "offsets_key"):
            if not getattr(self, key_name).startswith(RESERVED_PREFIX):
                raise ValueError(f"{key_name} must start with {RESERVED_PREFIX!r}")
        for binding in self.bindings:
            if binding.keys.prefix.startswith(RESERVED_PREFIX):
                raise ValueError(
                    f"binding {binding.name}: key prefix {binding.keys.prefix!r} is inside the "
                    f"hydrator's reserved namespace {RESERVED_PREFIX!r}"
                )
        prefixes = {b.name: b.keys.prefix for b in self.bindings}
        overlap = prefix_overlaps(prefixes)
        if overlap is not None:
            first, second = overlap
            raise ValueError(
                f"bindings {first} and {second}: key prefixes {prefixes[first]!r} and "
                f"{prefixes[second]!r} overlap (each binding needs a prefix of its own)"
            )
        return self

    def to_env_value(self) -> str:
        # Every field, defaults included: an operator and a hydrator of different versions
        # must not silently disagree about a default.
        return self.model_dump_json()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> HydratorConfig:
        environ = dict(os.environ) if environ is None else environ
        try:
            raw = environ[CONFIG_ENV]
        except KeyError:
            raise SystemExit(
                f"{CONFIG_ENV} is not set: the hydrator is configured by the sidecar-state "
                "operator; run it through the webhook or `sidecar-state inject`."
            ) from None
        return cls.model_validate_json(raw)

    @model_validator(mode="after")
    def _user_with_password(self) -> HydratorConfig:
        if (self.redis_user is None) != (self.redis_password_file is None):
            raise ValueError("redis_user and redis_password_file: set both or neither")
        return self

    def redis_password(self) -> str | None:
        """The hydrator's Redis password, read from ``redis_password_file``."""
        if self.redis_password_file is None:
            return None
        try:
            with open(self.redis_password_file) as handle:
                return handle.read().strip()
        except OSError as error:
            raise SystemExit(
                f"redis_password_file {self.redis_password_file}: {error.strerror}; it is "
                "written by the sidecar-state-credentials init container before Redis starts"
            ) from None
