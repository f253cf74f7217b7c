"""What a binding may use: opted-in Secrets and allowed brokers (issue item 12)."""

from __future__ import annotations

import pytest

from sidecar_operator.injection.policy import (
    disallowed_servers,
    secret_allows,
    secret_refusal,
    servers_refusal,
)

OPT_IN = "sidecarstate.dev/allow-bindings"


@pytest.mark.parametrize(
    ("metadata", "allowed"),
    [
        ({}, False),
        ({"labels": {"app": "kafka"}}, False),
        ({"labels": {OPT_IN: "true"}}, True),
        ({"labels": {OPT_IN: "false"}}, False),
        ({"annotations": {OPT_IN: "*"}}, True),
        ({"annotations": {OPT_IN: "orders, feature-flags"}}, True),
        ({"annotations": {OPT_IN: "orders"}}, False),
    ],
)
def test_a_secret_must_opt_in_for_the_binding(metadata, allowed):
    assert secret_allows(metadata, binding="feature-flags") is allowed


def test_the_refusal_says_how_to_opt_in(make_binding):
    binding = make_binding()

    refused = secret_refusal(binding, secret="kafka-creds", exists=True)
    missing = secret_refusal(binding, secret="kafka-creds", exists=False)

    assert refused.startswith("spec.source.kafka.auth.secretRef.name: Secret 'kafka-creds'")
    assert f"kubectl label secret kafka-creds -n shop {OPT_IN}=true" in refused
    assert f"{OPT_IN}=feature-flags" in refused
    assert "does not exist in namespace shop" in missing


def test_bootstrap_servers_outside_the_allow_list_are_named(make_binding):
    binding = make_binding(bootstrap_servers=["kafka.data.svc:9092", "evil.example.com:9092"])

    assert disallowed_servers(binding, allowed=()) == []  # empty allows any
    assert disallowed_servers(binding, allowed=["*.svc:9092"]) == [(1, "evil.example.com:9092")]
    assert disallowed_servers(make_binding(), allowed=["none:1"]) == []  # operator default

    message = servers_refusal([(1, "evil.example.com:9092")], allowed=["*.svc:9092"])
    assert (
        "spec.source.kafka.bootstrapServers[1]: 'evil.example.com:9092' is not allowed" in message
    )
    assert "kafka.allowedBootstrapServers" in message


def test_a_nats_binding_refusal_names_its_own_field(binding_doc):
    from sidecar_operator.api.models import parse_binding

    auth = {"secretRef": {"name": "nats-auth"}, "method": "token", "tls": True}
    doc = binding_doc(
        patch={"spec.source.kafka": ..., "spec.source.nats": {"kv": {"bucket": "f"}, "auth": auth}}
    )

    refused = secret_refusal(parse_binding(doc), secret="nats-auth", exists=True)

    assert refused.startswith("spec.source.nats.auth.secretRef.name: Secret 'nats-auth'")
    assert f"kubectl label secret nats-auth -n shop {OPT_IN}=true" in refused


def test_nats_servers_outside_the_allow_list_are_named_by_host_and_port(binding_doc):
    from sidecar_operator.api.models import parse_binding

    servers = [
        "nats://flags.nats.svc:4222",
        "tls://flags.nats.svc:4222",
        "nats://evil.example:4222",
    ]
    doc = binding_doc(
        patch={"spec.source.kafka": ..., "spec.source.nats": {"kv": {"bucket": "f"},
               "servers": servers}}
    )  # fmt: skip
    binding = parse_binding(doc)
    default = parse_binding(
        binding_doc(patch={"spec.source.kafka": ..., "spec.source.nats": {"kv": {"bucket": "f"}}})
    )

    assert disallowed_servers(binding, allowed=()) == []  # empty allows any
    # One pattern covers both schemes: it is matched against host:port.
    assert disallowed_servers(binding, allowed=["*.nats.svc:4222"]) == [
        (2, "nats://evil.example:4222")
    ]
    assert disallowed_servers(binding, allowed=["nats://*"]) == [(0, servers[0]), (1, servers[1]),
                                                                  (2, servers[2])]  # fmt: skip
    assert disallowed_servers(default, allowed=["none:1"]) == []  # the operator's default

    message = servers_refusal([(2, servers[2])], allowed=["*.nats.svc:4222"], source="nats")
    assert "spec.source.nats.servers[2]: 'nats://evil.example:4222' is not allowed" in message
    assert "nats.allowedServers" in message and "omit servers for the default" in message
