"""``spec.source.nats``: validated as an alternative to ``spec.source.kafka``, rendered into
the hydrator's config and the Pod (Secret keys as env vars or files), and reachable from
Deployment annotations and ``sidecar-state inject``."""

from __future__ import annotations

import json

import pytest

from sidecar_hydrator.config import BindingSource, HydratorConfig
from sidecar_operator.api.crd import build_crd
from sidecar_operator.api.models import parse_binding
from sidecar_operator.controller.owned import owned_binding
from sidecar_operator.injection import InjectionDefaults
from sidecar_operator.injection.names import HYDRATOR_CONTAINER

KV = {"kv": {"bucket": "feature-flags"}}


def nats_doc(binding_doc, nats):
    return binding_doc(patch={"spec.source.kafka": ..., "spec.source.nats": nats})


def only_binding(result) -> BindingSource:
    (binding,) = result.hydrator_config.bindings
    return binding


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({}, "spec.source: give exactly one of kafka and nats"),
        (
            {"kafka": {"topics": ["t"]}, "nats": KV},
            "spec.source: give exactly one of kafka and nats (both are set)",
        ),
        ({"nats": {}}, "source.nats: give exactly one of kv (a bucket) and stream"),
        (
            {"nats": {**KV, "stream": {"name": "FLAGS"}}},
            "source.nats: give exactly one of kv (a bucket) and stream",
        ),
        ({"nats": {"kv": {"bucket": "a.b"}}}, "nats.kv.bucket"),
        ({"nats": {"stream": {"name": "S", "deliver": "last"}}}, "nats.stream.deliver"),
        (
            {"nats": {**KV, "servers": ["http://nats:4222"]}},
            "the scheme must be nats:// or tls://",
        ),
        ({"nats": {**KV, "servers": ["nats://nats"]}}, "is not [nats://]host:port"),
        ({"nats": {**KV, "auth": {"secretRef": {"name": "a"}, "method": "x509"}}}, "method"),
        (
            {"nats": {**KV, "auth": {"secretRef": {"name": "a"}, "method": "token"}}},
            "tls is false, so auth method token would send the token in clear text",
        ),
        (
            {"nats": {**KV, "auth": {"secretRef": {"name": "a"}, "method": "creds"}}},
            "auth method creds would leave every message unencrypted",
        ),
    ],
)
def test_invalid_sources_are_refused_naming_the_field(binding_doc, source, message):
    doc = binding_doc(patch={"spec.source": source})

    with pytest.raises(ValueError) as error:
        parse_binding(doc)

    assert "spec.source" in str(error.value)
    assert message in str(error.value)


def test_the_crd_refuses_both_sources_too():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    source = schema["properties"]["spec"]["properties"]["source"]
    assert source["x-kubernetes-validations"] == [
        {
            "rule": "has(self.kafka) != has(self.nats)",
            "message": "spec.source: give exactly one of kafka and nats",
        }
    ]
    assert "required" not in source
    assert source["properties"]["nats"]["x-kubernetes-validations"][0]["rule"] == (
        "has(self.kv) != has(self.stream)"
    )


def test_credentials_without_tls_need_the_explicit_opt_in(binding_doc):
    auth = {"secretRef": {"name": "a"}, "method": "userPassword", "allowPlaintext": True}

    binding = parse_binding(nats_doc(binding_doc, {**KV, "auth": auth}))

    assert binding.spec.source.nats is not None and binding.spec.source.nats.auth is not None
    assert binding.spec.source.nats.auth.allow_plaintext is True


# --- rendering -------------------------------------------------------------------------------


def test_kv_binding_renders_with_the_operator_default_servers(make_pod, binding_doc, injected):
    binding = parse_binding(nats_doc(binding_doc, {**KV, "format": "raw"}))

    result = injected(make_pod(), binding)

    rendered = only_binding(result)
    assert rendered.kafka is None and rendered.topics == ()
    assert rendered.nats is not None
    assert rendered.nats.connection.servers == InjectionDefaults().nats_servers
    assert rendered.nats.kv is not None and rendered.nats.kv.bucket == "feature-flags"
    assert rendered.nats.kv.keys == (">",)
    assert rendered.nats.stream_name == "KV_feature-flags"
    assert rendered.format == "raw"
    assert rendered.keys.prefix == "flag:"


def test_stream_binding_renders_its_servers_subjects_and_deliver(make_pod, binding_doc, injected):
    nats = {
        "servers": ["nats://a.data:4222", "b.data:4222"],
        "stream": {"name": "FLAGS", "subjects": ["flags.>"], "deliver": "lastPerSubject"},
        "startFrom": "latest",
    }
    defaults = InjectionDefaults(nats_servers=("nats://elsewhere:4222",))

    result = injected(make_pod(), parse_binding(nats_doc(binding_doc, nats)), defaults=defaults)

    rendered = only_binding(result)
    assert rendered.nats is not None and rendered.nats.stream is not None
    assert rendered.nats.connection.servers == ("nats://a.data:4222", "b.data:4222")
    assert (rendered.nats.stream.subjects, rendered.nats.stream.deliver) == (
        ("flags.>",),
        "lastPerSubject",
    )
    assert rendered.nats.last_per_subject
    assert rendered.start_from == "latest"


def test_creds_auth_mounts_the_creds_file_and_names_it_in_the_config(
    make_pod, binding_doc, injected
):
    auth = {"secretRef": {"name": "nats-auth"}, "method": "creds", "tls": True}
    result = injected(make_pod(), parse_binding(nats_doc(binding_doc, {**KV, "auth": auth})))

    connection = only_binding(result).nats.connection
    mount = next(
        m
        for m in result.hydrator["volumeMounts"]
        if m["mountPath"].startswith("/var/run/sidecar-state-secrets")
    )
    volume = result.volume(mount["name"])
    assert volume["secret"]["secretName"] == "nats-auth"
    assert [item["key"] for item in volume["secret"]["items"]] == [
        "user.creds",
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]
    assert connection.auth_method == "creds"
    assert connection.creds_file == f"{mount['mountPath']}/user.creds"
    assert connection.ca_file == f"{mount['mountPath']}/ca.crt"
    assert connection.tls is True
    # No secret value is in the rendered config, only where to find it.
    assert "nats-auth" not in result.hydrator_config_json


@pytest.mark.parametrize(
    ("method", "keys"), [("token", ["token"]), ("userPassword", ["username", "password"])]
)
def test_token_and_password_come_from_secret_key_refs(
    make_pod, binding_doc, injected, method, keys
):
    auth = {"secretRef": {"name": "nats-auth"}, "method": method, "tls": True}
    result = injected(make_pod(), parse_binding(nats_doc(binding_doc, {**KV, "auth": auth})))

    connection = only_binding(result).nats.connection
    env = result.env(HYDRATOR_CONTAINER)
    named = (
        [connection.token_env]
        if method == "token"
        else [
            connection.username_env,
            connection.password_env,
        ]
    )
    assert [env[var]["valueFrom"]["secretKeyRef"]["key"] for var in named] == keys
    assert {env[var]["valueFrom"]["secretKeyRef"]["name"] for var in named} == {"nats-auth"}
    (volume,) = [v for v in result.spec["volumes"] if v["name"].startswith("sidecar-state-auth")]
    # Only the TLS files are mounted: the token and the password are env vars.
    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]


def test_hydrator_config_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of kafka and nats"):
        BindingSource(name="b")
    with pytest.raises(ValueError, match="needs creds_file"):
        HydratorConfig.parse(
            {
                "bindings": [
                    {
                        "name": "b",
                        "nats": {
                            "connection": {"servers": ["nats://x:4222"], "auth_method": "creds"},
                            "kv": {"bucket": "f"},
                        },
                    }
                ]
            }
        )


# --- Deployment annotations and the CLI --------------------------------------------------------


def deployment(annotations):
    return {
        "metadata": {
            "name": "checkout",
            "namespace": "shop",
            "uid": "u",
            "annotations": annotations,
        },
        "spec": {"selector": {"matchLabels": {"app": "checkout"}}},
    }


def test_nats_kv_annotation_makes_a_nats_binding():
    binding = owned_binding(
        deployment(
            {
                "sidecarstate.dev/nats-kv": "feature-flags",
                "sidecarstate.dev/nats-servers": "nats://n1:4222,nats://n2:4222",
                "sidecarstate.dev/format": "raw",
            }
        )
    )

    assert binding is not None
    assert binding["spec"]["source"] == {
        "nats": {
            "kv": {"bucket": "feature-flags"},
            "servers": ["nats://n1:4222", "nats://n2:4222"],
            "format": "raw",
        }
    }


def test_nats_stream_annotation_makes_a_stream_binding():
    binding = owned_binding(deployment({"sidecarstate.dev/nats-stream": "FLAGS"}))

    assert binding is not None
    assert binding["spec"]["source"] == {"nats": {"stream": {"name": "FLAGS"}}}


def test_topics_and_a_nats_annotation_together_are_refused():
    with pytest.raises(ValueError, match="more than one source") as error:
        owned_binding(
            deployment({"sidecarstate.dev/topics": "t", "sidecarstate.dev/nats-kv": "flags"})
        )

    assert "sidecarstate.dev/topics" in str(error.value)
    assert "sidecarstate.dev/nats-kv" in str(error.value)


def test_cli_inject_renders_a_nats_binding_with_its_default_servers(
    cli, write_yaml, make_workload, binding_doc
):
    manifest = write_yaml(make_workload("Deployment"))
    binding = write_yaml(nats_doc(binding_doc, KV))

    result = cli("inject", "-f", manifest, "-b", binding, "--nats-servers", "nats://mine:4222")

    assert (result.code, result.err) == (0, "")
    (document,) = result.documents
    hydrator = next(
        c
        for c in document["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == HYDRATOR_CONTAINER
    )
    config = json.loads(hydrator["env"][0]["value"])
    assert config["bindings"][0]["nats"]["connection"]["servers"] == ["nats://mine:4222"]
    assert config["bindings"][0]["nats"]["kv"]["bucket"] == "feature-flags"
