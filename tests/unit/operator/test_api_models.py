"""The StateBinding models: what parses, and how every refusal names its field."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from sidecar_operator.api.models import StateBinding, parse_binding
from sidecar_operator.handlers.webhook import AdmissionRefused, statebinding_validate
from sidecar_operator.settings import OperatorSettings

MISSING = ...  # binding_doc(patch={path: MISSING}) removes the field


def refusal(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Parse ``doc``, expect a refusal, and return its problems as ``(path, message)`` pairs."""
    with pytest.raises(ValueError) as caught:
        parse_binding(doc)
    problems = (problem.partition(": ") for problem in str(caught.value).split("; "))
    return [(where, message) for where, _, message in problems]


def assert_refused(doc: dict[str, Any], path: str, fragment: str) -> None:
    problems = refusal(doc)
    assert any(where.startswith(path) and fragment in message for where, message in problems), (
        f"no problem at {path!r} mentioning {fragment!r} in {problems}"
    )


# --- what parses -----------------------------------------------------------------------------


def test_seed_binding_parses_into_typed_fields(binding_doc):
    binding = parse_binding(binding_doc())

    assert isinstance(binding, StateBinding)
    assert (binding.name, binding.namespace) == ("feature-flags", "shop")
    assert binding.spec.selector.match_labels == {"app": "checkout"}
    assert binding.spec.source.kafka.topics == ("feature-flags",)
    assert binding.spec.keys.prefix == "flag:"
    assert binding.spec.keys.key_field == "id"
    assert binding.spec.keys.value_field == "enabled"
    assert binding.spec.store.max_memory == "64Mi"


def test_omitted_fields_get_the_documented_defaults(binding_doc):
    binding = parse_binding(
        binding_doc(max_memory=None, patch={"spec.keys": MISSING, "spec.store": MISSING})
    )

    kafka = binding.spec.source.kafka
    assert kafka.bootstrap_servers is None  # the operator's default applies
    assert (kafka.start_from, kafka.format, kafka.auth) == ("earliest", "json", None)
    assert binding.spec.store.max_memory is None
    assert binding.spec.store.eviction_policy == "noeviction"
    assert binding.spec.keys.prefix == ""


@pytest.mark.parametrize(
    "servers",
    [
        ["kafka.data.svc:9092"],
        ["kafka-0.kafka.data.svc.cluster.local:9093", "10.0.0.7:9092"],
        ["[::1]:9092"],
        ["localhost:1", "localhost:65535"],
    ],
)
def test_valid_bootstrap_servers_are_accepted(binding_doc, servers):
    binding = parse_binding(binding_doc(bootstrap_servers=servers))

    assert binding.spec.source.kafka.bootstrap_servers == tuple(servers)


@pytest.mark.parametrize("topic", ["feature-flags", "a", "orders.v1_2", "x" * 249, "..."])
def test_valid_topic_names_are_accepted(binding_doc, topic):
    assert parse_binding(binding_doc(topics=[topic])).spec.source.kafka.topics == (topic,)


def test_selector_by_expressions_only_is_accepted(binding_doc):
    expressions = [
        {"key": "app", "operator": "In", "values": ["checkout", "cart"]},
        {"key": "sidecarstate.dev/tier", "operator": "Exists"},
    ]
    selector = parse_binding(binding_doc(match_expressions=expressions)).spec.selector

    assert selector.match_labels == {}
    assert [(t.key, t.operator, t.values) for t in selector.match_expressions] == [
        ("app", "In", ("checkout", "cart")),
        ("sidecarstate.dev/tier", "Exists", ()),
    ]


def test_auth_secret_reference_is_accepted(binding_doc):
    auth = {"secretRef": {"name": "kafka-creds"}, "mechanism": "SCRAM-SHA-512", "tls": True}
    parsed = parse_binding(binding_doc(auth=auth)).spec.source.kafka.auth

    assert parsed is not None
    assert (parsed.secret_ref.name, parsed.mechanism, parsed.tls) == (
        "kafka-creds",
        "SCRAM-SHA-512",
        True,
    )


def test_unknown_top_level_fields_are_ignored_like_the_apiserver_does(binding_doc):
    doc = binding_doc(patch={"status": {"matchedPods": 3, "someFutureField": 1}})

    assert parse_binding(doc).status is not None


def test_to_api_round_trips_in_camel_case(binding_doc):
    binding = parse_binding(binding_doc(eviction_policy="allkeys-lru"))
    api = binding.to_api()

    assert api["spec"]["store"] == {
        "engine": "redis",
        "maxMemory": "64Mi",
        "evictionPolicy": "allkeys-lru",
    }
    assert api["spec"]["keys"]["keyField"] == "id"
    assert parse_binding(api) == binding


# --- what is refused, and where --------------------------------------------------------------

TOPICS = "spec.source.kafka.topics"
SERVERS = "spec.source.kafka.bootstrapServers"
SELECTOR = "spec.selector"
EXPRESSION = "spec.selector.matchExpressions[0]"


def expressions(**term: Any) -> list[dict[str, Any]]:
    return [{"key": "app", **term}]


INVALID = [
    pytest.param({TOPICS: []}, TOPICS, "at least one topic", id="empty topics"),
    pytest.param({TOPICS: MISSING}, TOPICS, "Field required", id="topics missing"),
    pytest.param({TOPICS: ["feature flags"]}, f"{TOPICS}[0]", "'feature flags' is invalid",
                 id="topic with a space"),
    pytest.param({TOPICS: ["."]}, f"{TOPICS}[0]", "reserved by Kafka", id="reserved topic ."),
    pytest.param({TOPICS: [".."]}, f"{TOPICS}[0]", "reserved by Kafka", id="reserved topic .."),
    pytest.param({TOPICS: ["x" * 250]}, f"{TOPICS}[0]", "1-249 characters", id="topic too long"),
    pytest.param({TOPICS: ["flags/eu"]}, f"{TOPICS}[0]", "is invalid", id="topic with slash"),
    pytest.param({TOPICS: ["flags\n"]}, f"{TOPICS}[0]", "is invalid",
                 id="topic with a trailing newline"),
    pytest.param({TOPICS: ["a", "b", "a"]}, TOPICS, "listed twice: a", id="duplicate topics"),
    pytest.param({TOPICS: [f"t{i}" for i in range(65)]}, TOPICS, "at most 64",
                 id="too many topics"),
    pytest.param({"spec.keys.prefix": "sidecar-state:x:"}, "spec.keys.prefix",
                 "inside 'sidecar-state:'", id="prefix in the hydrator's namespace"),
    pytest.param({"spec.store.maxMemory": "lots"}, "spec.store.maxMemory",
                 "not a Kubernetes quantity", id="maxMemory lots"),
    pytest.param({"spec.store.maxMemory": "0"}, "spec.store.maxMemory",
                 "must be more than zero bytes", id="maxMemory 0"),
    pytest.param({"spec.store.maxMemory": "-64Mi"}, "spec.store.maxMemory",
                 "must be more than zero bytes", id="maxMemory negative"),
    pytest.param({"spec.store.maxMemory": "64MB"}, "spec.store.maxMemory",
                 "not a Kubernetes quantity", id="maxMemory MB suffix"),
    pytest.param({"spec.store.maxMemory": 67108864}, "spec.store.maxMemory", "valid string",
                 id="maxMemory as a YAML number"),
    pytest.param({"spec.store.evictionPolicy": "lru"}, "spec.store.evictionPolicy",
                 "'noeviction'", id="unknown eviction policy"),
    pytest.param({"spec.selector.matchExpressions": expressions(operator="Like", values=["x"])},
                 f"{EXPRESSION}.operator", "'In', 'NotIn', 'Exists' or 'DoesNotExist'",
                 id="bad selector operator"),
    pytest.param({"spec.selector.matchExpressions": expressions(operator="In")}, EXPRESSION,
                 "operator In needs at least one value", id="In without values"),
    pytest.param({"spec.selector.matchExpressions": expressions(operator="NotIn", values=[])},
                 EXPRESSION, "operator NotIn needs at least one value", id="NotIn without values"),
    pytest.param({"spec.selector.matchExpressions": expressions(operator="Exists", values=["x"])},
                 EXPRESSION, "operator Exists takes no values", id="Exists with values"),
    pytest.param(
        {"spec.selector.matchExpressions": expressions(operator="DoesNotExist", values=["x"])},
        EXPRESSION, "operator DoesNotExist takes no values", id="DoesNotExist with values"),
    pytest.param({SELECTOR: {}}, SELECTOR, "selector is empty", id="empty selector"),
    pytest.param({SELECTOR: {"matchLabels": {}, "matchExpressions": []}}, SELECTOR,
                 "selector is empty", id="selector with empty lists"),
    pytest.param({SELECTOR: MISSING}, SELECTOR, "Field required", id="selector missing"),
    pytest.param({"spec.selector.matchLabels": {"-app": "checkout"}},
                 "spec.selector.matchLabels.-app", "should match pattern", id="bad label key"),
    pytest.param({"spec.selector.matchLabels": {"a/b/c": "checkout"}},
                 "spec.selector.matchLabels.a/b/c", "should match pattern",
                 id="label key with two slashes"),
    pytest.param({"spec.selector.matchExpressions": [{"key": "Bad_Prefix/app",
                                                      "operator": "Exists"}]},
                 f"{EXPRESSION}.key", "should match pattern", id="bad expression key"),
    pytest.param({"spec.selector.matchLabels": {"app": "-checkout"}},
                 "spec.selector.matchLabels.app", "should match pattern", id="bad label value"),
    pytest.param({SERVERS: ["kafka.data.svc"]}, f"{SERVERS}[0]", "is not host:port",
                 id="server without port"),
    pytest.param({SERVERS: ["kafka.data.svc:"]}, f"{SERVERS}[0]", "is not host:port",
                 id="server with empty port"),
    pytest.param({SERVERS: ["kafka.data.svc:70000"]}, f"{SERVERS}[0]", "is not host:port",
                 id="server port 70000"),
    pytest.param({SERVERS: ["kafka.data.svc:0"]}, f"{SERVERS}[0]", "is not host:port",
                 id="server port 0"),
    pytest.param({SERVERS: [":9092"]}, f"{SERVERS}[0]", "is not host:port",
                 id="server without host"),
    pytest.param({SERVERS: ["kafka_broker:9092"]}, f"{SERVERS}[0]", "invalid host name",
                 id="server with bad host"),
    pytest.param({SERVERS: ["kafka\n:9092"]}, f"{SERVERS}[0]", "invalid host name",
                 id="server host with a trailing newline"),
    pytest.param({SERVERS: []}, SERVERS, "at least 1 item", id="empty server list"),
    pytest.param({"spec.source.kafka.format": "avro"}, "spec.source.kafka.format",
                 "'raw', 'json' or 'debezium'", id="unknown format"),
    pytest.param({"spec.source.kafka.startFrom": "beginning"}, "spec.source.kafka.startFrom",
                 "'earliest' or 'latest'", id="unknown startFrom"),
    pytest.param({"spec.source.kafka.auth": {"secretRef": {"name": "Kafka_Creds"}}},
                 "spec.source.kafka.auth.secretRef.name", "should match pattern",
                 id="bad secret name"),
    pytest.param({"spec.source.kafka.auth": {"secretRef": {"name": "c"}, "mechanism": "GSSAPI"}},
                 "spec.source.kafka.auth.mechanism", "'PLAIN'", id="unknown SASL mechanism"),
    pytest.param({"spec.hydrator.resources.limits.memory": "lots"},
                 "spec.hydrator.resources.limits.memory", "not a Kubernetes quantity",
                 id="bad hydrator memory"),
    pytest.param({"spec.store.maxMem": "1Gi"}, "spec.store.maxMem", "unknown field",
                 id="unknown field"),
    pytest.param({"spec.source.kafka.topic": ["x"]}, "spec.source.kafka.topic", "unknown field",
                 id="misspelt field"),
    pytest.param({"spec.keys.key_field": "id"}, "spec.keys.key_field", "unknown field",
                 id="snake_case field"),
    pytest.param({"spec.source": {"nats": {"subjects": ["x"]}}}, "spec.source.nats",
                 "unknown field", id="unknown source kind"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "path", "fragment"), INVALID)
def test_invalid_binding_is_refused_naming_the_field(binding_doc, changes, path, fragment):
    assert_refused(binding_doc(patch=changes), path, fragment)


def test_duplicate_topics_are_refused(binding_doc):
    problems = refusal(binding_doc(topics=["a", "b", "a"]))

    assert problems == [("spec.source.kafka.topics", "topics are listed twice: a")]


def test_refusal_is_one_line_listing_every_problem_without_pydantic_noise(binding_doc):
    doc = binding_doc(topics=[], patch={"spec.store.maxMemory": "0", "spec.store.extra": 1})
    with pytest.raises(ValueError) as caught:
        parse_binding(doc)
    message = str(caught.value)

    assert "\n" not in message
    assert "pydantic" not in message and "Value error," not in message
    assert [problem.split(":")[0] for problem in message.split("; ")] == [
        "spec.source.kafka.topics",
        "spec.store.maxMemory",
        "spec.store.extra",
    ]


def test_refusal_is_a_plain_value_error_not_a_validation_error(binding_doc):
    with pytest.raises(ValueError) as caught:
        parse_binding(binding_doc(topics=[]))

    assert type(caught.value) is ValueError
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_one_bad_topic_is_reported_once(binding_doc):
    problems = refusal(binding_doc(topics=["feature flags"]))

    assert [where for where, _ in problems] == ["spec.source.kafka.topics[0]"]


# --- Kafka credentials: used, and protected ---------------------------------------------------

AUTH = "spec.source.kafka.auth"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_without_tls_is_refused_naming_tls_and_the_opt_in(binding_doc, mechanism):
    doc = binding_doc(auth={"secretRef": {"name": "c"}, "mechanism": mechanism})

    assert_refused(doc, AUTH, "tls is false")
    assert_refused(doc, AUTH, "allowPlaintext: true")


def test_plain_without_tls_says_the_password_goes_in_clear_text(binding_doc):
    doc = binding_doc(auth={"secretRef": {"name": "c"}, "mechanism": "PLAIN", "tls": False})

    assert_refused(doc, AUTH, "the password in clear text")


def test_sasl_without_tls_is_accepted_when_the_user_opts_in(binding_doc):
    auth = {"secretRef": {"name": "c"}, "mechanism": "PLAIN", "allowPlaintext": True}
    parsed = parse_binding(binding_doc(auth=auth)).spec.source.kafka.auth

    assert parsed is not None and (parsed.tls, parsed.allow_plaintext) == (False, True)


def test_auth_without_mechanism_nor_tls_is_refused_as_it_would_use_nothing(binding_doc):
    doc = binding_doc(auth={"secretRef": {"name": "c"}})

    assert_refused(doc, AUTH, "mechanism is missing and tls is false")


def test_tls_without_sasl_uses_only_the_ca_and_is_accepted(binding_doc):
    parsed = parse_binding(binding_doc(auth={"secretRef": {"name": "c"}, "tls": True}))

    assert parsed.spec.source.kafka.auth is not None
    assert parsed.spec.source.kafka.auth.mechanism is None


async def test_the_validating_webhook_refuses_sasl_without_tls_naming_the_field(binding_doc):
    doc = binding_doc(auth={"secretRef": {"name": "c"}, "mechanism": "SCRAM-SHA-512"})
    with pytest.raises(AdmissionRefused) as refused:
        await statebinding_validate(
            doc, namespace="shop", memo=kopf.Memo(settings=OperatorSettings())
        )

    assert refused.value.code == 422
    assert f"{AUTH}: tls is false" in str(refused.value)
    assert "allowPlaintext: true" in str(refused.value)
