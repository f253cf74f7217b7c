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

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_ENV = "SIDECAR_STATE_HYDRATOR_CONFIG"

RecordFormat = Literal["raw", "json", "debezium"]
StartFrom = Literal["earliest", "latest"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class KafkaConnection(_Contract):
    """How to reach one Kafka cluster; credentials are referenced, never inlined."""

    bootstrap_servers: tuple[str, ...] = Field(min_length=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    username_env: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    #: Client certificate and key (PEM files from a mounted Secret) for TLS client auth (mTLS).
    cert_file: str | None = None
    key_file: str | None = None

    def username(self) -> str | None:
        return os.environ.get(self.username_env) if self.username_env else None

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


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
    """One StateBinding as the hydrator sees it: topics to read and how to map their records."""

    name: str
    kafka: KafkaConnection
    topics: tuple[str, ...] = Field(min_length=1)
    start_from: StartFrom = "earliest"
    format: RecordFormat = "json"
    keys: KeyMapping = KeyMapping()


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
    #: The database a rebuild is written into before ``SWAPDB`` makes it the served one (0).
    spare_db: int = Field(default=1, ge=1, le=15)
    #: Bounds both the wait after a seek and how long a shutdown waits for a parked fetch.
    fetch_max_wait_ms: int = Field(default=100, ge=1, le=5000)
    #: Per-partition fetch size while catching up; live fetches fall back to 1 MiB.
    catchup_fetch_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: How often topic metadata is refreshed, i.e. how soon added partitions are picked up.
    metadata_refresh_ms: int = Field(default=30_000, ge=100)

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
