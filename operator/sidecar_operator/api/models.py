"""The ``StateBinding`` API (``sidecarstate.dev/v1alpha1``), modelled once.

These models are the single source of truth: the CRD's OpenAPI schema is generated from them
(:mod:`sidecar_operator.api.crd`), the validating webhook and the CLI validate with them, and
the injection engine reads them. Validation that a structural schema cannot express (label
selector operators and their values, host:port pairs, quantities that must be positive) lives
in validators here, so the webhook and ``sidecar-state inject`` reject the same things with the
same messages.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import WithJsonSchema

from sidecar_hydrator.config import RESERVED_PREFIX
from sidecar_operator.api.quantity import QUANTITY_PATTERN, quantity_bytes

GROUP = "sidecarstate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StateBinding"
PLURAL = "statebindings"
SINGULAR = "statebinding"
SHORT_NAMES = ("sb",)

MAX_TOPICS = 64
# Kafka's own rule for topic names (kafka.common.internals.Topic).
TOPIC_PATTERN = r"^[a-zA-Z0-9._-]{1,249}$"
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_DNS_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({_DNS_PREFIX}/)?{_LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^({_LABEL_NAME})?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_HOST = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*)$"
)


def _check_topic(name: str) -> str:
    if name in {".", ".."}:
        raise ValueError(f"topic name {name!r} is reserved by Kafka")
    if not re.fullmatch(TOPIC_PATTERN, name):
        raise ValueError(
            f"topic name {name!r} is invalid: use 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
        )
    return name


def _check_topic_list(topics: tuple[str, ...]) -> tuple[str, ...]:
    # Checked here rather than with min_length: pydantic would also report "0 items" when
    # the only topic is invalid.
    if not topics:
        raise ValueError("give at least one topic")
    if len(topics) > MAX_TOPICS:
        raise ValueError(f"at most {MAX_TOPICS} topics per binding")
    duplicates = sorted({t for t in topics if topics.count(t) > 1})
    if duplicates:
        raise ValueError(f"topics are listed twice: {', '.join(duplicates)}")
    return topics


def _check_host_port(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"bootstrap server {address!r} is not host:port (example: kafka.data.svc:9092)"
        )
    if not _HOST.fullmatch(host):
        raise ValueError(f"bootstrap server {address!r} has an invalid host name {host!r}")
    return address


def _check_positive_quantity(text: str) -> str:
    if quantity_bytes(text) <= 0:  # raises ValueError with examples for a malformed one
        raise ValueError(f"{text!r} must be more than zero bytes")
    return text


# The schema carries the pattern too, so the apiserver refuses what the webhook would.
TopicName = Annotated[
    str,
    AfterValidator(_check_topic),
    WithJsonSchema({"type": "string", "pattern": TOPIC_PATTERN}),
]
HostPort = Annotated[
    str,
    AfterValidator(_check_host_port),
    WithJsonSchema({"type": "string", "pattern": r"^.+:[0-9]{1,5}$"}),
]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
Quantity = Annotated[
    str,
    AfterValidator(_check_positive_quantity),
    WithJsonSchema({"type": "string", "pattern": QUANTITY_PATTERN}),
]
ObjectName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
EvictionPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not silence."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LabelSelectorRequirement(ApiModel):
    """One term of ``matchExpressions``: a label key, an operator and the values it takes."""

    key: LabelKey = Field(
        description="The Pod label the term tests. Required. Example: app.kubernetes.io/name"
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description=(
            "How the label is tested: In, NotIn (against values), Exists, DoesNotExist "
            "(values must be empty). Required. Example: In"
        )
    )
    values: tuple[LabelValue, ...] = Field(
        default=(),
        description=(
            "The label values for In and NotIn; empty for Exists and DoesNotExist. "
            "Default: []. Example: [checkout, cart]"
        ),
    )

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in {"In", "NotIn"} and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in {"Exists", "DoesNotExist"} and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(ApiModel):
    """A Kubernetes LabelSelector; the terms are ANDed, as in every Kubernetes selector."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description=(
            "Labels a Pod must carry, each with exactly this value. Default: {}. "
            "Example: {app: checkout}"
        ),
    )
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(
        default=(),
        description=(
            "Terms a Pod's labels must all satisfy. Default: []. "
            "Example: [{key: tier, operator: In, values: [web]}]"
        ),
    )

    @model_validator(mode="after")
    def _not_empty(self) -> LabelSelector:
        # An empty selector would inject every Pod of the namespace; make that explicit.
        if not self.match_labels and not self.match_expressions:
            raise ValueError(
                "selector is empty: give matchLabels or matchExpressions "
                "(an empty selector would inject every Pod in the namespace)"
            )
        return self


class SecretReference(ApiModel):
    """A Secret in the binding's own namespace."""

    name: ObjectName = Field(
        description="Name of the Secret in the binding's namespace. Required. Example: kafka-creds"
    )


#: What the apiserver checks of ``auth`` itself (the webhook's messages are more precise), so a
#: binding written while the webhook is away is held to the same rule.
_AUTH_RULES: list[JsonValue] = [
    {
        "rule": "has(self.mechanism) || self.tls",
        "message": "auth without mechanism and without tls uses nothing of the Secret: set "
        "mechanism (SASL), or tls: true (TLS with the Secret's ca.crt)",
    },
    {
        "rule": "!has(self.mechanism) || self.tls || self.allowPlaintext",
        "message": "SASL credentials without tls go over the network unencrypted: set "
        "tls: true, or allowPlaintext: true to accept that",
    },
]


class KafkaAuth(ApiModel):
    """Credentials from a Secret in the binding's own namespace (keys ``username``,
    ``password`` and optionally ``ca.crt``).

    ``mechanism`` turns SASL on (username and password); ``tls`` encrypts the connection and
    verifies the broker with ``ca.crt``. SASL without TLS is refused unless ``allowPlaintext``
    says so: PLAIN sends the password in clear text, and SCRAM leaves the exchange and every
    record readable on the wire. Without a mechanism only ``ca.crt`` is used, so ``auth``
    without both would silently use nothing.
    """

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _AUTH_RULES})

    secret_ref: SecretReference = Field(
        description=(
            "The Secret with keys username, password and optionally ca.crt (a PEM CA that "
            "verifies the brokers). Required. Example: {name: kafka-creds}"
        )
    )
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None,
        description=(
            "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; the Secret's username and "
            "password are sent only with one. Default: none (no SASL, TLS client only when tls "
            "is true). Example: SCRAM-SHA-512"
        ),
    )
    tls: bool = Field(
        default=False,
        description=(
            "Connect to the brokers over TLS, verified against ca.crt when the Secret has one. "
            "Default: false. Example: true"
        ),
    )
    allow_plaintext: bool = Field(
        default=False,
        description=(
            "Accept SASL without tls: credentials and records cross the network unencrypted "
            "(PLAIN sends the password in clear text). Default: false. Example: true"
        ),
    )

    @model_validator(mode="after")
    def _credentials_are_used_and_protected(self) -> KafkaAuth:
        if self.mechanism is None and not self.tls:
            raise ValueError(
                "mechanism is missing and tls is false, so nothing of the Secret would be used "
                "(its username and password are sent only with a SASL mechanism): set "
                "mechanism to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, or tls: true to use only "
                "its ca.crt"
            )
        if self.mechanism is not None and not self.tls and not self.allow_plaintext:
            sent = (
                "the password in clear text"
                if self.mechanism == "PLAIN"
                else "the SCRAM exchange and every record unencrypted"
            )
            raise ValueError(
                f"tls is false, so SASL {self.mechanism} would send {sent}: set tls: true, or "
                "allowPlaintext: true to accept a connection without TLS"
            )
        return self


class KafkaSource(ApiModel):
    """Kafka topics whose records make up the view."""

    bootstrap_servers: tuple[HostPort, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "host:port of Kafka brokers. Default: the operator's (Helm value "
            "kafka.bootstrapServers). Example: [kafka.data.svc:9092]"
        ),
    )
    topics: Annotated[
        tuple[TopicName, ...],
        AfterValidator(_check_topic_list),
        Field(
            json_schema_extra={"minItems": 1, "maxItems": MAX_TOPICS},
            description=(
                f"1-{MAX_TOPICS} Kafka topics (compacted, ideally) read into the store; their "
                "records are applied in order per partition. Required. "
                "Example: [feature-flags, prices]"
            ),
        ),
    ]
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description=(
            "Where a new Pod starts reading: earliest (the whole compacted state) or latest "
            "(only records from now on). Default: earliest. Example: latest"
        ),
    )
    format: Literal["raw", "json", "debezium"] = Field(
        default="json",
        description=(
            "How records map to keys: raw (record key to key, bytes as they are), json (key "
            "and value from fields of the JSON value), debezium (change events: c/u/r set "
            "after, d deletes). Default: json. Example: debezium"
        ),
    )
    auth: KafkaAuth | None = Field(
        default=None,
        description=(
            "SASL credentials and TLS for the brokers. Default: none (plaintext, no "
            "authentication). Example: {secretRef: {name: kafka-creds}, mechanism: PLAIN, "
            "tls: true}"
        ),
    )


def _check_nats_url(address: str) -> str:
    scheme, sep, rest = address.partition("://")
    host_port = rest if sep else address
    if sep and scheme not in ("nats", "tls"):
        raise ValueError(
            f"NATS server {address!r}: the scheme must be nats:// or tls:// "
            "(example: nats://nats.data.svc:4222)"
        )
    host, colon, port = host_port.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"NATS server {address!r} is not [nats://]host:port (example: nats://nats.data.svc:4222)"
        )
    if not _HOST.fullmatch(host):
        raise ValueError(f"NATS server {address!r} has an invalid host name {host!r}")
    return address


NatsUrl = Annotated[
    str,
    AfterValidator(_check_nats_url),
    WithJsonSchema({"type": "string", "pattern": r"^((nats|tls)://)?.+:[0-9]{1,5}$"}),
]
#: JetStream names: no whitespace, dots or wildcards (nats-server refuses them).
NatsName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=255)]
NatsSubject = Annotated[str, StringConstraints(pattern=r"^[^\s]+$", min_length=1, max_length=255)]


_NATS_AUTH_RULES: list[JsonValue] = [
    {
        "rule": "self.tls || self.allowPlaintext",
        "message": "NATS credentials without tls go over the network unencrypted: set "
        "tls: true, or allowPlaintext: true to accept that",
    },
]


class NatsAuth(ApiModel):
    """Credentials from a Secret in the binding's own namespace; which keys it needs depends
    on ``method`` (``user.creds``; ``user.nk``; ``token``; ``username`` and ``password``),
    optionally with ``ca.crt``, ``tls.crt`` and ``tls.key`` for TLS.

    As for Kafka, credentials without TLS are refused unless ``allowPlaintext`` says so: a
    token or a password would cross the network in clear text, and with creds or an nkey every
    message would still be readable on the wire.
    """

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={"x-kubernetes-validations": _NATS_AUTH_RULES}
    )

    secret_ref: SecretReference = Field(
        description=(
            "The Secret with the method's keys: user.creds (creds), user.nk (nkey seed), "
            "token (token), username and password (userPassword); optionally ca.crt. "
            "Required. Example: {name: nats-auth}"
        )
    )
    method: Literal["creds", "nkey", "token", "userPassword"] = Field(
        description="How the hydrator authenticates. Required. Example: creds"
    )
    tls: bool = Field(
        default=False,
        description=(
            "Connect over TLS, verified against ca.crt when the Secret has one (tls.crt and "
            "tls.key, when present, are the client certificate). Default: false. Example: true"
        ),
    )
    allow_plaintext: bool = Field(
        default=False,
        description=(
            "Accept credentials without tls: they and every message cross the network "
            "unencrypted (a token or password in clear text). Default: false. Example: true"
        ),
    )

    @model_validator(mode="after")
    def _credentials_are_protected(self) -> NatsAuth:
        if not self.tls and not self.allow_plaintext:
            sent = (
                f"send the {'token' if self.method == 'token' else 'password'} in clear text"
                if self.method in ("token", "userPassword")
                else "leave every message unencrypted"
            )
            raise ValueError(
                f"tls is false, so auth method {self.method} would {sent}: set tls: true, or "
                "allowPlaintext: true to accept a connection without TLS"
            )
        return self


class NatsKvSource(ApiModel):
    """A JetStream KV bucket: each KV key is a key of the view; deletes and purges remove it."""

    bucket: NatsName = Field(description="The KV bucket. Required. Example: feature-flags")
    keys: tuple[NatsSubject, ...] = Field(
        default=(">",),
        min_length=1,
        description=(
            'Key filters in subject syntax (* one token, > the rest). Default: [">"] (every '
            'key). Example: ["app.>"]'
        ),
    )


class NatsStreamSource(ApiModel):
    """A JetStream stream: each message's subject is its key."""

    name: NatsName = Field(description="The stream. Required. Example: FLAGS")
    subjects: tuple[NatsSubject, ...] = Field(
        default=(),
        description="Subject filters. Default: every subject of the stream. Example: [flags.>]",
    )
    deliver: Literal["all", "lastPerSubject"] = Field(
        default="all",
        description=(
            "At bootstrap, replay every message (all) or only each subject's newest one "
            "(lastPerSubject). Default: all. Example: lastPerSubject"
        ),
    )


class NatsSource(ApiModel):
    """A NATS JetStream KV bucket or stream whose messages make up the view."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.kv) != has(self.stream)",
                    "message": "source.nats: give exactly one of kv (a bucket) and stream",
                }
            ]
        }
    )

    servers: tuple[NatsUrl, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "NATS server URLs. Default: the operator's (Helm value nats.servers). "
            "Example: [nats://nats.data.svc:4222]"
        ),
    )
    kv: NatsKvSource | None = Field(
        default=None,
        description=(
            "A KV bucket (exactly one of kv and stream). Default: none. Example: {bucket: flags}"
        ),
    )
    stream: NatsStreamSource | None = Field(
        default=None,
        description=(
            "A stream (exactly one of kv and stream). Default: none. "
            "Example: {name: FLAGS, deliver: all}"
        ),
    )
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description=(
            "Where a new Pod starts reading: earliest (the whole state) or latest (only "
            "messages from now on). Default: earliest. Example: latest"
        ),
    )
    format: Literal["raw", "json", "debezium"] = Field(
        default="json",
        description=(
            "How messages map to keys, as for Kafka; the key is the KV key or the subject. "
            "Default: json. Example: raw"
        ),
    )
    auth: NatsAuth | None = Field(
        default=None,
        description=(
            "Credentials and TLS. Default: none. Example: {secretRef: {name: nats-auth}, "
            "method: creds}"
        ),
    )

    @model_validator(mode="after")
    def _kv_or_stream(self) -> NatsSource:
        if (self.kv is None) == (self.stream is None):
            raise ValueError(
                "source.nats: give exactly one of kv (a bucket) and stream"
                + (" (both are set)" if self.kv is not None else "")
            )
        return self


class Source(ApiModel):
    """Where the view's records come from: exactly one of ``kafka`` and ``nats``."""

    # The apiserver refuses what the webhook would, with the same message.
    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.kafka) != has(self.nats)",
                    "message": "spec.source: give exactly one of kafka and nats",
                }
            ]
        }
    )

    kafka: KafkaSource | None = Field(
        default=None,
        description=(
            "Kafka topics and how to reach them (exactly one of kafka and nats). Default: none. "
            "Example: {topics: [feature-flags]}"
        ),
    )
    nats: NatsSource | None = Field(
        default=None,
        description=(
            "A NATS JetStream KV bucket or stream (exactly one of kafka and nats). Default: "
            "none. Example: {kv: {bucket: flags}}"
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.kafka is None) == (self.nats is None):
            raise ValueError(
                "spec.source: give exactly one of kafka and nats"
                + (" (both are set)" if self.kafka is not None else "")
            )
        return self

    @property
    def read(self) -> tuple[str, ...]:
        """What the binding reads, for status and messages: Kafka topics, or
        ``kv:<bucket>`` / ``stream:<name>`` for NATS."""
        if self.kafka is not None:
            return self.kafka.topics
        assert self.nats is not None
        if self.nats.kv is not None:
            return (f"kv:{self.nats.kv.bucket}",)
        assert self.nats.stream is not None
        return (f"stream:{self.nats.stream.name}",)


class Keys(ApiModel):
    """How a record becomes a Redis key: ``prefix`` + the key, value from ``valueField``."""

    prefix: str = Field(
        default="",
        max_length=256,
        description=(
            "Prepended to every key; keeps bindings apart in one Redis. Must not start with "
            f"{RESERVED_PREFIX!r} (the hydrator's own keys), nor overlap the prefix of another "
            "binding of the same Pod (none the start of another). Default: empty. "
            "Example: 'flag:'"
        ),
    )
    key_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "JSON field of the record value that gives the key (json format). Default: the "
            "record's Kafka key. Example: id"
        ),
    )
    value_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "JSON field of the record value stored as the value (json format). Default: the "
            "whole JSON document. Example: enabled"
        ),
    )

    @field_validator("prefix")
    @classmethod
    def _outside_reserved_namespace(cls, prefix: str) -> str:
        if prefix.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"prefix {prefix!r} is inside {RESERVED_PREFIX!r}, the namespace of the "
                "hydrator's offsets and metadata"
            )
        return prefix


class ResourceList(ApiModel):
    """CPU and memory quantities."""

    cpu: Quantity | None = Field(
        default=None, description="CPU quantity. Default: the operator's. Example: 100m"
    )
    memory: Quantity | None = Field(
        default=None, description="Memory quantity. Default: the operator's. Example: 128Mi"
    )


class ResourceRequirements(ApiModel):
    """Requests and limits of a container, as in a Pod spec."""

    requests: ResourceList | None = Field(
        default=None,
        description=(
            "Resources the scheduler reserves. Default: the operator's (cpu 50m, memory "
            "64Mi). Example: {cpu: 100m, memory: 96Mi}"
        ),
    )
    limits: ResourceList | None = Field(
        default=None,
        description=(
            "Resources the container may not exceed. Default: the operator's (cpu 500m, "
            "memory 128Mi). Example: {memory: 256Mi}"
        ),
    )


class RedisResourceList(ApiModel):
    """The Redis container's CPU (its memory follows maxMemory)."""

    cpu: Quantity | None = Field(
        default=None, description="CPU quantity. Default: the operator's. Example: 100m"
    )


class RedisResources(ApiModel):
    """CPU requests and limits of the Redis container."""

    requests: RedisResourceList | None = Field(
        default=None,
        description="CPU the scheduler reserves. Default: the operator's (50m). "
        "Example: {cpu: 100m}",
    )
    limits: RedisResourceList | None = Field(
        default=None,
        description="CPU the container may not exceed. Default: the operator's (100m). "
        "Example: {cpu: 200m}",
    )


class Store(ApiModel):
    """The Pod's Redis: how much it may hold and what it does when full."""

    max_memory: Quantity | None = Field(
        default=None,
        description=(
            "Redis maxmemory, a quantity; bindings on one Pod add up. Default: the "
            "operator's (Helm value sidecars.maxMemory, 64Mi). Example: 256Mi"
        ),
    )
    eviction_policy: EvictionPolicy = Field(
        default="noeviction",
        description=(
            "Redis maxmemory-policy. noeviction refuses writes when full (the binding turns "
            "Ready=False, reason StoreFull) instead of silently serving a partial view. "
            "Default: noeviction. Example: allkeys-lru"
        ),
    )
    resources: RedisResources | None = Field(
        default=None,
        description="CPU of the Redis container (its memory follows maxMemory); the largest "
        "of a Pod's bindings wins, a Pod annotation over both. Default: the operator's. "
        "Example: {limits: {cpu: 200m}}",
    )


class HydratorOptions(ApiModel):
    """Settings of the injected hydrator sidecar."""

    resources: ResourceRequirements | None = Field(
        default=None,
        description=(
            "Requests and limits of the hydrator container. Default: the operator's. "
            "Example: {limits: {memory: 256Mi}}"
        ),
    )
    hydration_timeout_seconds: int | None = Field(
        default=None, ge=10, le=86400,
        description="How long the hydrator may take to hydrate before its startup probe "
        "fails; the largest of a Pod's bindings wins. Default: the operator's (600). "
        "Example: 900",
    )  # fmt: skip
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port of the hydrator's /metrics and probes. Default: the operator's "
        "(9464). Example: 9465",
    )  # fmt: skip


# -- spec.intercept: Envoy in front of the app, enriching or refusing requests -------------------

#: RFC 9110 field names, lower case (Envoy compares them lower-cased; one spelling avoids doubt).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9a-z-]{1,256}$"
#: No control characters but tab, so no CR/LF can split a response the webhook configured.
#: Written for both Python's re and the apiserver's RE2 (no \u escapes, no repeat over 1000).
HEADER_VALUE_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
CREDENTIAL_PLACEHOLDER = "{credential}"
HeaderName = Annotated[str, StringConstraints(pattern=HEADER_NAME_PATTERN)]
HeaderValue = Annotated[str, StringConstraints(pattern=HEADER_VALUE_PATTERN, max_length=4096)]
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]
UrlPath = Annotated[str, StringConstraints(pattern=r"^/[^\s?#]*$", max_length=1024)]
Port = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]
Duration = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,6}(ms|s)$")]


def duration_ms(text: str) -> int:
    """``"100ms"`` -> 100, ``"2s"`` -> 2000 (the only two units a timeout needs)."""
    return int(text[:-2]) if text.endswith("ms") else int(text[:-1]) * 1000


class InterceptMatch(ApiModel):
    """Which requests a rule applies to."""

    path_prefix: UrlPath = Field(
        default="/", description="Path prefix the request must have. Default: /. Example: /api/"
    )
    methods: tuple[HttpMethod, ...] = Field(
        default=(), description="HTTP methods. Default: any method. Example: [GET, POST]"
    )


class InterceptCredential(ApiModel):
    """Where requests carry the credential: exactly one of header, cookie or query."""

    header: HeaderName | None = Field(
        default=None,
        description="Request header (lower case). Default: none. Example: authorization",
    )
    cookie: (
        Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")] | None
    ) = Field(default=None, description="Cookie name. Default: none. Example: session")
    query: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="Query parameter. Default: none. Example: token"
    )
    prefix: HeaderValue = Field(
        default="",
        description=(
            "Must start the value (case-insensitive) and is removed. Default: none. "
            "Example: 'Bearer '"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> InterceptCredential:
        given = [s for s in ("header", "cookie", "query") if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of header, cookie or query")
        return self


class DenyResponse(ApiModel):
    """A refusal as the client sees it."""

    status: int = Field(
        default=401, ge=400, le=599, description="HTTP status. Default: 401. Example: 403"
    )
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict,
        description="Response headers. Default: none. Example: {www-authenticate: Bearer}",
    )
    body: str = Field(
        default="", max_length=4096, description="Response body. Default: empty. Example: denied"
    )


class OnMissingKey(DenyResponse):
    """What happens when the rule's key is not in the store."""

    action: Literal["deny", "allow"] = Field(
        default="deny",
        description=(
            "deny refuses with status, headers and body; allow passes the request on without "
            "the key's headers. Default: deny. Example: allow"
        ),
    )


class InjectHeader(ApiModel):
    """A header added to an allowed request, from the store."""

    header: HeaderName = Field(
        description="The header the app gets (lower case). Required. Example: x-user-plan"
    )
    from_: str = Field(
        default="value",
        alias="from",
        pattern=r"^(value|json:(/([^~/]|~[01])*)*)$",
        description=(
            "value (the stored value as it is) or json:/pointer (one field of a JSON value, "
            "RFC 6901). Default: value. Example: json:/plan"
        ),
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "A fixed key to read instead of the rule's (keys.prefix applies). Default: the "
            "rule's key. Example: flag:new-ui-layout"
        ),
    )


class InterceptRule(ApiModel):
    """One rule; the first rule whose match fits a request decides it."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")] = (
        Field(description="Unique name of the rule. Required. Example: session")
    )
    match: InterceptMatch = Field(
        default=InterceptMatch(),
        description="Which requests. Default: every path, any method. Example: {pathPrefix: /api/}",
    )
    credential: InterceptCredential | None = Field(
        default=None,
        description=(
            "Where the credential is. Default: none (the rule reads fixed keys only). "
            "Example: {header: authorization, prefix: 'Bearer '}"
        ),
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "Key template; {credential} is replaced and keys.prefix applies. Default: none. "
            "Example: session:{credential}"
        ),
    )
    on_missing_credential: DenyResponse = Field(
        default=DenyResponse(),
        description=(
            "The refusal when the credential is absent. Default: 401. "
            "Example: {status: 401, headers: {www-authenticate: Bearer}}"
        ),
    )
    on_missing_key: OnMissingKey = Field(
        default=OnMissingKey(),
        description=(
            "What a key that is not in the store does. Default: deny with 401. "
            "Example: {action: allow}"
        ),
    )
    inject: tuple[InjectHeader, ...] = Field(
        default=(),
        description=(
            "Headers added from the store. Default: none. "
            "Example: [{header: x-user-plan, from: 'json:/plan'}]"
        ),
    )
    strip_upstream: tuple[HeaderName, ...] = Field(
        default=(),
        description="Request headers the app must not see. Default: none. Example: [authorization]",
    )

    @model_validator(mode="after")
    def _consistent(self) -> InterceptRule:
        uses = self.key is not None and CREDENTIAL_PLACEHOLDER in self.key
        if self.credential is not None and not uses:
            raise ValueError(
                f"key must contain {CREDENTIAL_PLACEHOLDER} when a credential is given"
            )
        if self.credential is None and uses:
            raise ValueError(f"key uses {CREDENTIAL_PLACEHOLDER}: give a credential")
        for item in self.inject:
            if item.key is None and self.key is None:
                raise ValueError(
                    f"inject {item.header}: the rule has no key; give the injection a key"
                )
        return self


class InterceptFailure(ApiModel):
    """What a failed check (authorizer or Redis down, too slow, view not hydrated) does."""

    mode: Literal["closed", "open"] = Field(
        default="closed",
        description=(
            "closed refuses with status; open passes the request without identity headers, "
            "flagged x-envoy-auth-failure-mode-allowed. Default: closed. Example: open"
        ),
    )
    status: int = Field(
        default=503, ge=400, le=599, description="Status when closed. Default: 503. Example: 403"
    )


class InterceptBypass(ApiModel):
    """Requests that skip the check (probes, public assets): exactly one of the two."""

    path_prefix: UrlPath | None = Field(
        default=None, description="Path prefix. Default: none. Example: /healthz"
    )
    path: UrlPath | None = Field(
        default=None, description="Exact path. Default: none. Example: /ready"
    )

    @model_validator(mode="after")
    def _one(self) -> InterceptBypass:
        if (self.path_prefix is None) == (self.path is None):
            raise ValueError("give exactly one of pathPrefix or path")
        return self


class Intercept(ApiModel):
    """Envoy in front of the app's port: requests are checked against the Pod's state, then
    passed on with what was found as headers, or refused."""

    port: Port = Field(
        description="The app's containerPort Envoy fronts, by name or number. Required. "
        "Example: http"
    )
    listen_port: int = Field(
        default=15080,
        ge=1,
        le=65535,
        description="Where Envoy listens (point the Service here). Default: 15080. Example: 8000",
    )
    timeout: Duration = Field(
        default="100ms", description="Limit of one check. Default: 100ms. Example: 250ms"
    )
    failure: InterceptFailure = Field(
        default=InterceptFailure(),
        description="What a failed check does. Default: closed, 503. Example: {mode: open}",
    )
    bypass: tuple[InterceptBypass, ...] = Field(
        default=(),
        description="Paths that skip the check. Default: none. Example: [{pathPrefix: /healthz}]",
    )
    rules: tuple[InterceptRule, ...] = Field(
        default=(),
        description=(
            "The rules; the first match wins, no match passes with the staleness only. "
            "Default: none. Example: [{name: session, key: 'session:{credential}'}]"
        ),
    )

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Intercept:
        names = [rule.name for rule in self.rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"rule names are listed twice: {', '.join(twice)}")
        if isinstance(self.port, int) and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a port number")
        if duration_ms(self.timeout) <= 0:
            raise ValueError("timeout must be more than 0")
        return self


class StateBindingSpec(ApiModel):
    """What a binding asks for: which Pods, which topics, and how they become keys."""

    selector: LabelSelector = Field(
        description=(
            "Pods of the binding's namespace that get the sidecars; must not be empty. "
            "Required. Example: {matchLabels: {app: checkout}}"
        )
    )
    source: Source = Field(
        description=(
            "Where the records come from. Required. Example: {kafka: {topics: [feature-flags]}}"
        )
    )
    keys: Keys = Field(
        default=Keys(),
        description=(
            "How a record becomes a Redis key and value. Default: record key, whole value, "
            "no prefix. Example: {prefix: 'flag:', keyField: id, valueField: enabled}"
        ),
    )
    store: Store = Field(
        default=Store(),
        description=(
            "Size and eviction of the Pod's Redis. Default: the operator's maxMemory, "
            "noeviction. Example: {maxMemory: 64Mi}"
        ),
    )
    hydrator: HydratorOptions = Field(
        default=HydratorOptions(),
        description=(
            "Settings of the hydrator sidecar. Default: the operator's. "
            "Example: {resources: {limits: {memory: 256Mi}}}"
        ),
    )
    intercept: Intercept | None = Field(
        default=None,
        description=(
            "Envoy in front of the app: requests are checked against the Pod's store and "
            "passed on with what was found as headers, or refused. Default: none. "
            "Example: {port: http, rules: [{name: session, credential: {header: "
            "authorization, prefix: 'Bearer '}, key: 'session:{credential}'}]}"
        ),
    )


class Condition(ApiModel):
    """A Kubernetes condition: one aspect of the binding, True or False, with why."""

    type: str = Field(
        description="Ready, Accepted, PodsInjected, Hydrated or StoreHealthy. Example: Ready"
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="True, False or Unknown. Example: 'True'"
    )
    reason: str = Field(
        default="", description="A CamelCase reason. Default: empty. Example: StoreFull"
    )
    message: str = Field(
        default="",
        description="What is wrong and what to do, for people. Default: empty. "
        "Example: '2 selected Pod(s) run without the sidecars: ...'",
    )
    last_transition_time: str | None = Field(
        default=None,
        description="When status last changed (RFC 3339). Example: '2026-01-01T12:00:00Z'",
    )
    observed_generation: int | None = Field(
        default=None,
        description="The binding's metadata.generation this condition was computed for. Example: 3",
    )


class StateBindingStatus(ApiModel):
    """What the controller observed; written by it, never by users."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        default=None,
        description="The metadata.generation the controller last reconciled. Example: 3",
    )
    conditions: tuple[Condition, ...] = Field(
        default=(),
        description="Ready (all of the others), Accepted, PodsInjected, Hydrated and "
        "StoreHealthy. Default: []. Example: [{type: Ready, status: 'False', reason: "
        "TopicMissing, message: '1 of 1 Pods waiting: topic feature-flagz does not exist on "
        "kafka.data.svc:9092 (shop-1)'}]",
    )
    matched_pods: int = Field(
        default=0, description="Live Pods the binding selects. Default: 0. Example: 3"
    )
    injected_pods: int = Field(
        default=0,
        description="Selected Pods that carry the sidecars. Default: 0. Example: 3",
    )
    uninjected_pods: tuple[str, ...] = Field(
        default=(),
        description="Selected Pods that run without the sidecars, found by the watchdog "
        "(at most 20 listed). Default: []. Example: [checkout-7d9f-x2x4q]",
    )
    store_full_pods: tuple[str, ...] = Field(
        default=(),
        description="Pods whose Redis refused writes because maxMemory is too small (at most "
        "20 listed). Default: []. Example: [checkout-7d9f-x2x4q]",
    )
    hydrated_pods: int = Field(
        default=0,
        description="Pods whose hydrator answered the controller's scrape and reports a "
        "complete view. Default: 0. Example: 3",
    )
    unhydrated_pods: tuple[str, ...] = Field(
        default=(),
        description="Pods whose hydrator answered but has no complete view yet (at most 20 "
        "listed). Default: []. Example: [checkout-7d9f-x2x4q]",
    )
    worst_staleness_seconds: int | None = Field(
        default=None,
        description="The largest staleness among the hydrators that answered, in whole "
        "seconds: how old the stalest served view may be. Default: unset (no hydrator "
        "answered, or none was ever fresh). Example: 2",
    )
    source: str | None = Field(
        default=None,
        description="The source, for kubectl get -o wide. Example: kafka://kafka.data.svc:9092",
    )
    topics: str | None = Field(
        default=None,
        description="The topics, comma-separated, for kubectl get. Example: feature-flags",
    )
    memory: str | None = Field(
        default=None,
        description="The store's maxMemory in effect, for kubectl get. Example: 64Mi",
    )
    ready: str | None = Field(
        default=None,
        description="The Ready condition's status, for kubectl get. Example: 'True'",
    )
    reason: str | None = Field(
        default=None,
        description="The Ready condition's reason, for kubectl get: Ready, or what is wrong "
        "(TopicMissing, SourceUnreachable, AuthenticationFailed, AuthorizationFailed, "
        "StoreFull, Hydrating, ...; see the README's troubleshooting). Example: TopicMissing",
    )
    unchecked_pods: int = Field(
        default=0,
        description="Injected Pods whose hydrator the controller could not reach (a mesh's "
        "STRICT mTLS, a NetworkPolicy): their health is unknown. Default: 0. Example: 1",
    )


class StateBinding(ApiModel):
    """A namespaced request: Pods matching ``selector`` get a Redis hydrated from ``source``."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["sidecarstate.dev/v1alpha1"] = "sidecarstate.dev/v1alpha1"
    kind: Literal["StateBinding"] = "StateBinding"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: StateBindingSpec
    status: StateBindingStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))


def format_validation_error(error: ValidationError, *, root: str = "") -> str:
    """One line per problem, each naming the field path as a user writes it in YAML."""
    lines = []
    for problem in error.errors():
        path = root
        for part in problem["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{path or '<object>'}: {message}")
    return "; ".join(lines)


def parse_binding(obj: dict[str, Any]) -> StateBinding:
    """Validate a StateBinding object; raise ``ValueError`` naming every bad field."""
    try:
        return StateBinding.model_validate(obj)
    except ValidationError as error:
        raise ValueError(format_validation_error(error)) from None
