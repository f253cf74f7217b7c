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
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import WithJsonSchema

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
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[LabelValue, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in {"In", "NotIn"} and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in {"Exists", "DoesNotExist"} and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(ApiModel):
    """A Kubernetes LabelSelector; the terms are ANDed, as in every Kubernetes selector."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

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
    name: ObjectName


class KafkaAuth(ApiModel):
    """Credentials from a Secret in the binding's own namespace (keys ``username``,
    ``password`` and optionally ``ca.crt``)."""

    secret_ref: SecretReference
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    tls: bool = False


class KafkaSource(ApiModel):
    bootstrap_servers: tuple[HostPort, ...] | None = Field(
        default=None,
        min_length=1,
        description="host:port of Kafka brokers; the operator's default when omitted",
    )
    topics: Annotated[
        tuple[TopicName, ...],
        AfterValidator(_check_topic_list),
        Field(json_schema_extra={"minItems": 1, "maxItems": MAX_TOPICS}),
    ]
    start_from: Literal["earliest", "latest"] = "earliest"
    format: Literal["raw", "json", "debezium"] = "json"
    auth: KafkaAuth | None = None


class Source(ApiModel):
    kafka: KafkaSource


class Keys(ApiModel):
    """How a record becomes a Redis key: ``prefix`` + the key, value from ``valueField``."""

    prefix: str = Field(default="", max_length=256)
    key_field: str | None = Field(default=None, min_length=1)
    value_field: str | None = Field(default=None, min_length=1)


class ResourceList(ApiModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class ResourceRequirements(ApiModel):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class RedisResourceList(ApiModel):
    cpu: Quantity | None = None


class RedisResources(ApiModel):
    requests: RedisResourceList | None = None
    limits: RedisResourceList | None = None


class Store(ApiModel):
    max_memory: Quantity | None = Field(
        default=None, description="Redis maxmemory; the operator's default when omitted"
    )
    eviction_policy: EvictionPolicy = "noeviction"
    resources: RedisResources | None = Field(
        default=None,
        description="CPU of the Redis container (its memory follows maxMemory); the largest of "
        "the Pod's bindings wins, a Pod annotation over both",
    )


class HydratorOptions(ApiModel):
    resources: ResourceRequirements | None = None
    hydration_timeout_seconds: int | None = Field(
        default=None, ge=10, le=86400,
        description="How long the hydrator may take to hydrate before its startup probe fails",
    )  # fmt: skip
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Port of the hydrator's /metrics and probes (default 9464)",
    )  # fmt: skip


class StateBindingSpec(ApiModel):
    selector: LabelSelector
    source: Source
    keys: Keys = Keys()
    store: Store = Store()
    hydrator: HydratorOptions = HydratorOptions()


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class StateBindingStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    conditions: tuple[Condition, ...] = ()
    matched_pods: int = 0
    injected_pods: int = 0
    uninjected_pods: tuple[str, ...] = Field(
        default=(), description="Matching Pods that run without the sidecars (watchdog)"
    )
    store_full_pods: tuple[str, ...] = Field(
        default=(), description="Pods whose Redis refused writes: maxMemory is too small"
    )
    unchecked_pods: int = Field(
        default=0,
        description="Injected Pods whose hydrator the controller could not reach: health unknown",
    )
    topics: str | None = Field(default=None, description="Topics, for kubectl get")
    memory: str | None = Field(default=None, description="Store memory, for kubectl get")
    ready: str | None = Field(default=None, description="Ready condition, for kubectl get")


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
