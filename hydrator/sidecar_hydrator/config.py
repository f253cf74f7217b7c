"""The hydrator's configuration: the contract between the operator and the sidecar.

The operator renders one :class:`HydratorConfig` per Pod (however many StateBindings match it)
into the ``SIDECAR_STATE_HYDRATOR_CONFIG`` environment variable of the hydrator container, as
JSON. Keeping the contract in the hydrator package, and having the operator import it, means
that what the webhook injects is exactly what the hydrator parses: a field renamed on one side
breaks the type checker and the unit tests, not a running Pod.

Secrets never appear in the rendered JSON: the config names the *environment variables* (filled
by the kubelet from ``secretKeyRef``) and the *files* (a mounted Secret) that hold them.

The contract is defined once, here, as frozen standard-library dataclasses: their annotations
are the types, their ``__post_init__`` the constraints. The sidecar parses the rendered JSON
with :func:`parse` (the standard library only: pydantic and its compiled schemas cost the
sidecar about 13 MiB of resident memory, a third of its idle footprint); the operator
validates the same classes with pydantic before it renders them
(:mod:`sidecar_hydrator.config_pydantic`). ``tests/unit/hydrator/test_hydrator_config_parity.py``
proves both accept and refuse the same documents and yield equal values.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

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
#: Where the view lives: the Pod's Redis (default), or an LMDB environment the app maps.
StoreEngine = Literal["redis", "lmdb"]
#: LMDB's largest key (a compile-time constant of the library, 511 bytes).
LMDB_MAX_KEY_BYTES = 511
SourceKind = Literal["kafka", "nats"]


class ConfigError(ValueError):
    """The rendered config does not fit the contract; the message names the field."""


#: What pydantic makes of these dataclasses when the operator validates them: unknown fields
#: refused, and no coercion (``"5"`` is not an int), which is what :func:`parse` does.
_PYDANTIC_CONFIG: dict[str, Any] = {"extra": "forbid", "strict": True}

_C = TypeVar("_C")


@typing.dataclass_transform(frozen_default=True, kw_only_default=True)
def _contract(cls: type[_C]) -> type[_C]:
    """A frozen dataclass of the contract (hashable, immutable like the view it configures)."""
    cls.__pydantic_config__ = _PYDANTIC_CONFIG  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)


def _at_least(owner: object, name: str, low: int, high: int | None = None) -> None:
    value = getattr(owner, name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}: {value} must be {bound}")


def _not_empty(owner: object, name: str) -> None:
    if len(getattr(owner, name)) < 1:
        raise ConfigError(f"{name}: needs at least 1 item")


def _matches(owner: object, name: str, pattern: str) -> None:
    value = getattr(owner, name)
    if not re.search(pattern, value):
        raise ConfigError(f"{name}: {value!r} does not match {pattern}")


@_contract
class KafkaConnection:
    """How to reach one Kafka cluster; credentials are referenced, never inlined."""

    bootstrap_servers: tuple[str, ...]
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

    def __post_init__(self) -> None:
        """Credentials are used exactly when SASL is on: never silently dropped, never made
        up (a SASL protocol without a mechanism would otherwise fall back to PLAIN)."""
        _not_empty(self, "bootstrap_servers")
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        given = [n for n in ("sasl_mechanism", "username_env", "password_env") if getattr(self, n)]
        files = [n for n in ("username_file", "password_file") if getattr(self, n)]
        if sasl and len(given) < 3:
            raise ConfigError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "username_env and password_env"
            )
        if not sasl and (given or files):
            raise ConfigError(
                f"{', '.join(given + files)} given with security_protocol "
                f"{self.security_protocol}, which sends no credentials"
            )

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


@_contract
class NatsConnection:
    """How to reach one NATS system; like Kafka's, credentials are referenced, never inlined.

    ``creds`` and ``nkey`` read files of a mounted Secret (a ``.creds`` file, an nkey seed);
    ``token`` and ``userPassword`` read environment variables the kubelet fills from it.
    """

    servers: tuple[str, ...]
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

    def __post_init__(self) -> None:
        _not_empty(self, "servers")
        needs = {
            "creds": ("creds_file",),
            "nkey": ("nkey_seed_file",),
            "token": ("token_env",),
            "userPassword": ("username_env", "password_env"),
        }
        for field in needs.get(self.auth_method or "", ()):
            if not getattr(self, field):
                raise ConfigError(f"auth_method {self.auth_method!r} needs {field}")

    def env(self, name: str | None) -> str | None:
        return os.environ.get(name) if name else None


@_contract
class NatsKv:
    """A KV bucket: its keys are the Redis keys (before the prefix), deletes remove them."""

    bucket: str
    #: Key filters in NATS subject syntax (``*`` one token, ``>`` the rest).
    keys: tuple[str, ...] = (">",)

    def __post_init__(self) -> None:
        _matches(self, "bucket", r"^[A-Za-z0-9_-]+$")
        _not_empty(self, "keys")


@_contract
class NatsStream:
    """A stream: the message subject is the key; ``lastPerSubject`` reads only each
    subject's newest message at bootstrap, ``all`` replays every one."""

    name: str
    #: Subject filters; empty reads every subject of the stream.
    subjects: tuple[str, ...] = ()
    deliver: NatsDeliver = "all"

    def __post_init__(self) -> None:
        _matches(self, "name", r"^[^.*> ]+$")


@_contract
class NatsSourceConfig:
    """One binding's NATS JetStream source: exactly one of ``kv`` and ``stream``."""

    connection: NatsConnection
    kv: NatsKv | None = None
    stream: NatsStream | None = None

    def __post_init__(self) -> None:
        if (self.kv is None) == (self.stream is None):
            raise ConfigError("a NATS source reads exactly one of kv (a bucket) or stream")

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


@_contract
class KeyMapping:
    """How a record becomes a Redis key and value.

    ``raw``: the record key is the Redis key, the value bytes are stored as they are.
    ``json``: key from ``key_field`` of the JSON value (else the record key), value from
    ``value_field`` (else the whole JSON document). ``debezium``: key from the key payload's
    fields (or ``key_field`` of ``after``/``before``), value from ``after``.
    """

    prefix: str = ""
    key_field: str | None = None
    value_field: str | None = None


@_contract
class BindingSource:
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

    def __post_init__(self) -> None:
        if (self.kafka is None) == (self.nats is None):
            raise ConfigError(f"binding {self.name}: exactly one of kafka and nats is needed")
        if self.kafka is not None and not self.topics:
            raise ConfigError(f"binding {self.name}: a Kafka source needs at least one topic")
        if self.nats is not None and self.topics:
            raise ConfigError(f"binding {self.name}: topics are for Kafka; NATS names its stream")

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


@_contract
class HydratorConfig:
    """Everything one hydrator needs; the operator renders it, the sidecar parses it."""

    redis_socket: str = "/var/run/sidecar-state/redis.sock"
    #: The Redis ACL user the hydrator writes as, and the file with its password (written at
    #: the Pod's start, readable by the hydrator's UID only; see ``credentials``). Unset: the
    #: ``default`` user, which on an injected Redis may only read.
    redis_user: str | None = None
    redis_password_file: str | None = None
    http_port: int = 9464
    bindings: tuple[BindingSource, ...]
    live_batch_max_keys: int = 500
    bootstrap_batch_max_keys: int = 5000
    metadata_key: str = "sidecar-state:meta"
    offsets_key: str = "sidecar-state:offsets"
    #: Larger values are skipped as bad records: one oversized record must not push a small
    #: ``noeviction`` Redis into OOM rejections for every later write.
    max_value_bytes: int = 1024 * 1024
    #: Larger keys (prefix included) are skipped as bad records (``key_too_large``): Redis
    #: would take keys up to 512 MB, and each one is also read by every ``SCAN`` of the app.
    max_key_bytes: int = 16 * 1024
    #: The database a rebuild is written into before ``SWAPDB`` makes it the served one (0).
    spare_db: int = 1
    #: ``lmdb``: no Redis; the view is an LMDB environment under ``lmdb_path`` (see
    #: :mod:`sidecar_hydrator.store_lmdb`), which the app reads in its own process.
    store_engine: StoreEngine = "redis"
    lmdb_path: str = "/var/run/sidecar-state-lmdb"
    #: The map size of one environment: stays below the volume's ``sizeLimit``, which holds
    #: two of them during a rebuild. A write beyond it is refused like a full Redis's.
    lmdb_map_size: int = 64 * 1024 * 1024
    #: Reader slots in the lock file; the hydrator opens first, so its value is the one used.
    lmdb_max_readers: int = 126
    #: Bounds both the wait after a seek and how long a shutdown waits for a parked fetch.
    fetch_max_wait_ms: int = 100
    #: Per-partition fetch size while catching up; live fetches fall back to 1 MiB.
    catchup_fetch_bytes: int = 8 * 1024 * 1024
    #: How often topic metadata is refreshed, i.e. how soon added partitions are picked up.
    metadata_refresh_ms: int = 30_000

    #: The numeric fields' bounds: (low, high or None).
    _BOUNDS: ClassVar[dict[str, tuple[int, int | None]]] = {
        "http_port": (1, 65535),
        "live_batch_max_keys": (1, None),
        "bootstrap_batch_max_keys": (1, None),
        "max_value_bytes": (1, None),
        "max_key_bytes": (1, None),
        "spare_db": (1, 15),
        "lmdb_map_size": (1024 * 1024, None),
        "lmdb_max_readers": (1, 65536),
        "fetch_max_wait_ms": (1, 5000),
        "catchup_fetch_bytes": (1024, None),
        "metadata_refresh_ms": (100, None),
    }

    def __post_init__(self) -> None:
        for name, (low, high) in self._BOUNDS.items():
            _at_least(self, name, low, high)
        _not_empty(self, "bindings")
        self._keyspaces_disjoint()
        if self.store_engine == "lmdb" and self.max_key_bytes > LMDB_MAX_KEY_BYTES:
            raise ConfigError(
                f"max_key_bytes {self.max_key_bytes}: LMDB keys are at most "
                f"{LMDB_MAX_KEY_BYTES} bytes; set it to {LMDB_MAX_KEY_BYTES} or less"
            )
        if (self.redis_user is None) != (self.redis_password_file is None):
            raise ConfigError("redis_user and redis_password_file: set both or neither")

    def _keyspaces_disjoint(self) -> None:
        for key_name in ("metadata_key", "offsets_key"):
            if not getattr(self, key_name).startswith(RESERVED_PREFIX):
                raise ConfigError(f"{key_name} must start with {RESERVED_PREFIX!r}")
        for binding in self.bindings:
            if binding.keys.prefix.startswith(RESERVED_PREFIX):
                raise ConfigError(
                    f"binding {binding.name}: key prefix {binding.keys.prefix!r} is inside the "
                    f"hydrator's reserved namespace {RESERVED_PREFIX!r}"
                )
        prefixes = {b.name: b.keys.prefix for b in self.bindings}
        overlap = prefix_overlaps(prefixes)
        if overlap is not None:
            first, second = overlap
            raise ConfigError(
                f"bindings {first} and {second}: key prefixes {prefixes[first]!r} and "
                f"{prefixes[second]!r} overlap (each binding needs a prefix of its own)"
            )

    def to_env_value(self) -> str:
        """The rendered JSON: every field, defaults included (an operator and a hydrator of
        different versions must not silently disagree about a default), in field order and
        compact, byte for byte what pydantic's ``dump_json`` writes (a Pod's rendered env must
        not change, and roll it, because the renderer did)."""
        return json.dumps(_plain(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, data: object) -> HydratorConfig:
        """A config from its JSON-shaped document (:func:`parse`)."""
        return parse(cls, data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> HydratorConfig:
        """A config from its rendered JSON; :class:`ConfigError` names what does not fit."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        return parse(cls, data)

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
        return cls.from_json(raw)

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


# -- the standard-library parser --------------------------------------------------------------


def _plain(value: object) -> object:
    """A contract value as JSON-shaped data, fields in declaration order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of a contract class (what an unset field becomes)."""
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return field.default


def replace(config: _C, **changes: Any) -> _C:
    """A copy of a contract value with ``changes``; checked like a new one."""
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        module = sys.modules[cls.__module__]
        hints = _HINTS[cls] = typing.get_type_hints(cls, vars(module))
    return hints


def parse(cls: type[_C], data: object, *, at: str = "") -> _C:
    """``data`` (as ``json.loads`` returns it) as a ``cls`` of the contract, strictly.

    What pydantic's strict mode would accept, no more: JSON arrays for tuples, exact types
    (``true`` is not an int, ``"5"`` not a number), Literal values, ``null`` only where a field
    is optional, no unknown fields; then the class's own checks (``__post_init__``). Every
    error names the field's path, e.g. ``bindings[0].kafka.bootstrap_servers``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{at or 'config'}: expected an object, got {_kind(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(at, unknown[0])}: unknown field")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _value(hints[name], data[name], at=_join(at, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(at, name)}: field required")
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{at}: {exc}" if at else str(exc)) from None


def _value(hint: Any, data: object, *, at: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _value(inner, data, at=at)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(data, str) and data in allowed:
            return data
        raise ConfigError(f"{at}: expected one of {', '.join(map(repr, allowed))}, got {data!r}")
    if origin is tuple:
        if not isinstance(data, list):
            raise ConfigError(f"{at}: expected an array, got {_kind(data)}")
        item = typing.get_args(hint)[0]
        return tuple(_value(item, element, at=f"{at}[{i}]") for i, element in enumerate(data))
    if dataclasses.is_dataclass(hint):
        return parse(hint, data, at=at)  # type: ignore[arg-type]
    if hint is bool or hint is str or hint is int:
        if type(data) is hint:
            return data
        raise ConfigError(f"{at}: expected {_JSON_NAMES[hint]}, got {_kind(data)}")
    raise TypeError(f"{at}: the contract has a type the parser does not know: {hint!r}")


_JSON_NAMES: dict[object, str] = {bool: "a boolean", str: "a string", int: "an integer"}


def _kind(data: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(data), type(data).__name__)


def _join(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name
