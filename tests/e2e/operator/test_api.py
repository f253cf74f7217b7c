"""Scenario 1: the CRD is served and explained; invalid bindings are refused, naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from localkube.access import ClusterAccess
from sidecar_state_stack.objects import binding, wait_for


def test_kubectl_explain_describes_the_spec(cluster: ClusterAccess, crd_installed: None) -> None:
    # The apiserver publishes a new CRD's OpenAPI a few seconds after it is Established.
    explained = wait_for(
        lambda: cluster.kubectl_run("explain", "statebinding.spec", check=False).stdout,
        what="kubectl explain statebinding.spec",
    )
    text = explained
    for field in ("selector", "source", "keys", "store", "hydrator"):
        assert field in text, text
    kafka = cluster.kubectl_run("explain", "statebinding.spec.source.kafka").stdout
    assert "bootstrapServers" in kafka and "topics" in kafka


def _with(path: str, value: Any, name: str) -> dict[str, Any]:
    obj = copy.deepcopy(binding(name, "default"))
    node = obj["spec"]
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return obj


INVALID = [
    ("source.kafka.topics", [], "spec.source.kafka.topics"),
    ("source.kafka.topics", ["feature flags"], "spec.source.kafka.topics"),
    ("store.maxMemory", "lots", "spec.store.maxMemory"),
    ("store.evictionPolicy", "sometimes", "spec.store.evictionPolicy"),
    (
        "selector",
        {"matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]},
        "spec.selector.matchExpressions[0].operator",
    ),
    (
        "selector",
        {"matchExpressions": [{"key": "app", "operator": "In"}]},
        "spec.selector.matchExpressions[0]",
    ),
    ("source.kafka.bootstrapServers", ["kafka-without-port"], "spec.source.kafka.bootstrapServers"),
    ("source.kafka.format", "xml", "spec.source.kafka.format"),
    ("selector", {}, "spec.selector"),
    ("source.nats", {"kv": {"bucket": "flags"}}, "give exactly one of kafka and nats"),
    (
        "source",
        {"nats": {"kv": {"bucket": "flags"}, "stream": {"name": "FLAGS"}}},
        "give exactly one of kv (a bucket) and stream",
    ),
    ("source", {"nats": {"kv": {"bucket": "a.b"}}}, "spec.source.nats.kv.bucket"),
    (
        "source",
        {"nats": {"kv": {"bucket": "f"}, "auth": {"secretRef": {"name": "n"}, "method": "token"}}},
        "NATS credentials without tls go over the network unencrypted",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "field"), INVALID, ids=[i[0] + "=" + json.dumps(i[1])[:30] for i in INVALID]
)
def test_invalid_binding_is_refused_naming_the_field(
    cluster: ClusterAccess, operator: object, path: str, value: Any, field: str
) -> None:
    obj = _with(path, value, "invalid")
    proc = cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert proc.returncode != 0, f"accepted an invalid binding: {obj['spec']}"
    assert field in proc.stderr, proc.stderr
    assert cluster.kubectl_run("get", "sb", "invalid", "-n", "default", check=False).returncode != 0


def test_valid_binding_is_accepted(cluster: ClusterAccess, operator: object) -> None:
    obj = binding("valid-example", "default")
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj))
    try:
        got = cluster.kubectl_json("get", "sb", "valid-example", "-n", "default")
        assert got["spec"]["source"]["kafka"]["topics"] == ["feature-flags"]
        assert got["spec"]["source"]["kafka"]["startFrom"] == "earliest"  # schema default
    finally:
        cluster.kubectl_run("delete", "sb", "valid-example", "-n", "default")


@pytest.mark.parametrize(
    ("auth", "says"),
    [
        ({"secretRef": {"name": "kafka-creds"}, "mechanism": "PLAIN"}, "allowPlaintext: true"),
        ({"secretRef": {"name": "kafka-creds"}, "mechanism": "SCRAM-SHA-512", "tls": False},
         "allowPlaintext: true"),
        ({"secretRef": {"name": "kafka-creds"}}, "mechanism"),
    ],
    ids=["PLAIN without tls", "SCRAM without tls", "neither mechanism nor tls"],
)  # fmt: skip
def test_credentials_that_would_go_out_in_clear_or_unused_are_refused(
    cluster: ClusterAccess, operator: object, auth: dict[str, Any], says: str
) -> None:
    obj = _with("source.kafka.auth", auth, "clear-creds")
    proc = cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert proc.returncode != 0, f"accepted {auth}"
    assert "spec.source.kafka.auth" in proc.stderr and says in proc.stderr, proc.stderr
    assert cluster.kubectl_run("get", "sb", "clear-creds", "-n", "default", check=False).returncode


def test_sasl_without_tls_is_accepted_with_the_explicit_opt_in(
    cluster: ClusterAccess, operator: object
) -> None:
    auth = {"secretRef": {"name": "kafka-creds"}, "mechanism": "PLAIN", "allowPlaintext": True}
    obj = _with("source.kafka.auth", auth, "opted-in-plaintext")
    # The Secret must exist and opt in to bindings, or the webhook refuses the binding.
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "kafka-creds", "namespace": "default",
                           "labels": {"sidecarstate.dev/allow-bindings": "true"}},
              "stringData": {"username": "app", "password": "s3cret"}}  # fmt: skip
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(secret))
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj))
    try:
        got = cluster.kubectl_json("get", "sb", "opted-in-plaintext", "-n", "default")
        assert got["spec"]["source"]["kafka"]["auth"]["allowPlaintext"] is True
        assert got["spec"]["source"]["kafka"]["auth"]["tls"] is False  # schema default
    finally:
        cluster.kubectl_run("delete", "sb", "opted-in-plaintext", "-n", "default")
        cluster.kubectl_run("delete", "secret", "kafka-creds", "-n", "default")


@pytest.mark.parametrize(
    ("auth", "rule_says"),
    [
        ({"secretRef": {"name": "kafka-creds"}, "mechanism": "PLAIN"},
         "SASL credentials without tls go over the network unencrypted"),
        ({"secretRef": {"name": "kafka-creds"}}, "uses nothing of the Secret"),
    ],
    ids=["SASL without tls", "neither mechanism nor tls"],
)  # fmt: skip
def test_the_crd_itself_refuses_unprotected_or_unused_credentials(
    cluster: ClusterAccess, crd_installed: None, auth: dict[str, Any], rule_says: str
) -> None:
    """The apiserver's own validation (the CRD's CEL rules) runs before any admission webhook:
    its message shows that the rule holds even when the webhook is not there."""
    obj = _with("source.kafka.auth", auth, "crd-rule")
    proc = cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert proc.returncode != 0, f"accepted {auth}"
    assert "spec.source.kafka.auth" in proc.stderr and rule_says in proc.stderr, proc.stderr


def test_valid_nats_binding_is_accepted(cluster: ClusterAccess, operator: object) -> None:
    obj = _with("source", {"nats": {"kv": {"bucket": "feature-flags"}}}, "valid-nats")
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj))
    try:
        got = cluster.kubectl_json("get", "sb", "valid-nats", "-n", "default")
        assert got["spec"]["source"]["nats"]["kv"]["bucket"] == "feature-flags"
        assert got["spec"]["source"]["nats"]["startFrom"] == "earliest"  # schema default
        assert "kafka" not in got["spec"]["source"]
    finally:
        cluster.kubectl_run("delete", "sb", "valid-nats", "-n", "default")
