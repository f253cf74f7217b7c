"""Which bindings a Pod gets, how several merge into one Redis and one hydrator, credentials,
and the config hash that tells configurations apart."""

from __future__ import annotations

import json

import pytest

from sidecar_operator.injection import (
    Injected,
    InjectionConflict,
    InjectionDefaults,
    Skipped,
    UnknownBinding,
    bindings_hash,
    inject_pod,
)
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
)

MI = 2**20
BINDINGS = "sidecarstate.dev/bindings"


# --- named bindings --------------------------------------------------------------------------


def test_named_binding_is_used_even_if_its_selector_does_not_match(
    make_pod, make_binding, injected
):
    other = make_binding("orders", match_labels={"app": "orders"}, topics=["orders"])
    pod = make_pod(annotations={BINDINGS: "orders"})

    result = injected(pod, make_binding(), other)

    assert result.outcome.bindings == ("orders",)
    assert [s.topics for s in result.hydrator_config.bindings] == [("orders",)]


def test_named_bindings_tolerate_spaces_and_empty_items(make_pod, make_binding, injected):
    pod = make_pod(annotations={BINDINGS: " orders , ,feature-flags,"})

    orders = make_binding("orders", topics=["orders"], prefix="order:")
    result = injected(pod, make_binding(), orders)

    assert result.outcome.bindings == ("feature-flags", "orders")


def test_unknown_named_binding_is_refused(make_pod, make_binding, inject):
    pod = make_pod(annotations={BINDINGS: "feature-flags,prices"})

    with pytest.raises(UnknownBinding, match="StateBinding\\(s\\) prices that do not exist"):
        inject(pod, make_binding())


def test_admission_admits_a_pod_whose_named_binding_is_gone_with_the_others(make_pod, make_binding):
    pod = make_pod(annotations={BINDINGS: "feature-flags,prices"})

    outcome = inject_pod(pod, bindings=[make_binding()], namespace="shop",
                         defaults=InjectionDefaults(), admit_missing=True)  # fmt: skip

    assert isinstance(outcome, Injected)
    assert outcome.bindings == ("feature-flags",) and outcome.missing == ("prices",)


def test_admission_admits_a_pod_whose_only_named_binding_is_gone_without_sidecars(make_pod):
    pod = make_pod(annotations={BINDINGS: "prices"})

    outcome = inject_pod(pod, bindings=[], namespace="shop", defaults=InjectionDefaults(),
                         admit_missing=True)  # fmt: skip

    assert isinstance(outcome, Skipped) and outcome.missing == ("prices",)
    assert "prices" in outcome.reason and "do not exist" in outcome.reason


def test_binding_named_twice_is_used_once(make_pod, make_binding, injected):
    pod = make_pod(annotations={BINDINGS: "feature-flags,feature-flags"})

    result = injected(pod, make_binding())

    assert result.outcome.bindings == ("feature-flags",)
    assert result.redis_args["--maxmemory"] == str(64 * MI)
    assert len(result.hydrator_config.bindings) == 1


# --- several bindings, one Redis, one hydrator -----------------------------------------------


@pytest.fixture
def two_bindings(make_binding):
    return (
        make_binding("feature-flags", max_memory="64Mi"),
        make_binding("prices", topics=["prices", "discounts"], prefix="price:", max_memory="32Mi"),
    )


def test_two_bindings_give_one_redis_and_one_hydrator(make_pod, two_bindings, injected):
    result = injected(make_pod(), *two_bindings)

    assert result.init_names == [CREDENTIALS_CONTAINER, REDIS_CONTAINER, HYDRATOR_CONTAINER]


def test_memory_of_several_bindings_adds_up(make_pod, two_bindings, injected):
    result = injected(make_pod(), *two_bindings)

    assert result.redis_args["--maxmemory"] == str(96 * MI)


def test_binding_without_max_memory_counts_the_default(make_pod, make_binding, injected):
    result = injected(
        make_pod(),
        make_binding("a", max_memory="64Mi", prefix="a:"),
        make_binding("b", max_memory=None, prefix="b:"),
        defaults=InjectionDefaults(max_memory="16Mi"),
    )

    assert result.redis_args["--maxmemory"] == str(80 * MI)


def test_hydrator_config_holds_every_binding_with_its_own_topics_and_prefix(
    make_pod, two_bindings, injected
):
    sources = injected(make_pod(), *two_bindings).hydrator_config.bindings

    assert [(s.name, s.topics, s.keys.prefix) for s in sources] == [
        ("feature-flags", ("feature-flags",), "flag:"),
        ("prices", ("prices", "discounts"), "price:"),
    ]


def test_marker_lists_every_binding_sorted(make_pod, two_bindings, injected):
    result = injected(make_pod(), *reversed(two_bindings))

    assert result.annotations["sidecarstate.dev/injected-bindings"] == "feature-flags,prices"
    assert result.outcome.bindings == ("feature-flags", "prices")


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        (("allkeys-lru", "allkeys-lru"), "allkeys-lru"),
        (("allkeys-lru", "noeviction"), "noeviction"),
        (("allkeys-lru", "volatile-ttl"), "noeviction"),
        ((None, None), "noeviction"),
    ],
    ids=["agree", "one says noeviction", "disagree", "both default"],
)
def test_eviction_policy_of_several_bindings(make_pod, make_binding, injected, policies, expected):
    a, b = (make_binding(name, eviction_policy=policy, prefix=f"{name}:")
            for name, policy in zip(("a", "b"), policies, strict=True))  # fmt: skip

    assert injected(make_pod(), a, b).redis_args["--maxmemory-policy"] == expected


@pytest.mark.parametrize(("first", "second"), [("flag:", "flag:"), ("", "price:"), ("f", "flag:")])
def test_bindings_of_one_pod_with_overlapping_prefixes_are_refused(
    make_pod, make_binding, inject, first, second
):
    a = make_binding("a", prefix=first)
    b = make_binding("b", prefix=second)

    with pytest.raises(InjectionConflict, match=r"StateBindings a and b .* overlap"):
        inject(make_pod(), a, b)


def test_only_the_bindings_that_select_the_pod_are_used(make_pod, make_binding, injected):
    result = injected(
        make_pod(),
        make_binding("feature-flags"),
        make_binding("orders", match_labels={"app": "orders"}, max_memory="1Gi"),
    )

    assert result.outcome.bindings == ("feature-flags",)
    assert result.redis_args["--maxmemory"] == str(64 * MI)


# --- credentials -----------------------------------------------------------------------------

SASL = {"secretRef": {"name": "kafka-creds"}, "mechanism": "SCRAM-SHA-512", "allowPlaintext": True}
SASL_TLS = {"secretRef": {"name": "kafka-creds"}, "mechanism": "SCRAM-SHA-512", "tls": True}


def test_sasl_credentials_come_from_secret_key_refs(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding(auth=SASL))
    env = result.env(HYDRATOR_CONTAINER)
    kafka = result.hydrator_config.bindings[0].kafka

    for variable, key in ((kafka.username_env, "username"), (kafka.password_env, "password")):
        assert variable is not None
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"] == {
            "name": "kafka-creds",
            "key": key,
            "optional": True,
        }


def test_sasl_without_tls_opted_in_uses_sasl_plaintext(make_pod, make_binding, injected):
    kafka = injected(make_pod(), make_binding(auth=SASL)).hydrator_config.bindings[0].kafka

    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert kafka.ca_file is None


def test_sasl_with_tls_uses_sasl_ssl(make_pod, make_binding, injected):
    kafka = injected(make_pod(), make_binding(auth=SASL_TLS)).hydrator_config.bindings[0].kafka

    assert kafka.security_protocol == "SASL_SSL"


def test_tls_only_uses_ssl_without_credentials(make_pod, make_binding, injected):
    auth = {"secretRef": {"name": "kafka-ca"}, "tls": True}

    kafka = injected(make_pod(), make_binding(auth=auth)).hydrator_config.bindings[0].kafka

    assert kafka.security_protocol == "SSL"
    assert (kafka.username_env, kafka.password_env) == (None, None)


def test_tls_mounts_the_ca_from_the_secret_into_the_hydrator_only(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding(auth=SASL_TLS))
    ca_file = result.hydrator_config.bindings[0].kafka.ca_file
    secret_volumes = [v for v in result.spec["volumes"] if "secret" in v]

    assert len(secret_volumes) == 1
    (volume,) = secret_volumes
    assert volume["secret"]["secretName"] == "kafka-creds"
    assert volume["secret"]["items"] == [
        {"key": key, "path": key} for key in ("username", "password", "ca.crt")
    ]
    (mount,) = [m for m in result.hydrator["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert ca_file == f"{mount['mountPath']}/ca.crt"
    for name in ("app", REDIS_CONTAINER):
        assert volume["name"] not in [m["name"] for m in result.container(name)["volumeMounts"]]


def test_sasl_credentials_are_also_files_a_corrected_secret_updates_in_place(
    make_pod, make_binding, injected
):
    result = injected(make_pod(), make_binding(auth=SASL))
    kafka = result.hydrator_config.bindings[0].kafka

    (volume,) = [v for v in result.spec["volumes"] if "secret" in v]
    assert volume["secret"]["items"] == [
        {"key": "username", "path": "username"}, {"key": "password", "path": "password"}
    ]  # fmt: skip
    (mount,) = [m for m in result.hydrator["volumeMounts"] if m["name"] == volume["name"]]
    assert kafka.username_file == f"{mount['mountPath']}/username"
    assert kafka.password_file == f"{mount['mountPath']}/password"
    for name in ("app", REDIS_CONTAINER):
        assert volume["name"] not in [m["name"] for m in result.container(name)["volumeMounts"]]


def test_tls_only_mounts_no_credential_files(make_pod, make_binding, injected):
    auth = {"secretRef": {"name": "kafka-ca"}, "tls": True}
    result = injected(make_pod(), make_binding(auth=auth))

    (volume,) = [v for v in result.spec["volumes"] if "secret" in v]
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_config_references_credentials_by_env_name_and_file_only(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding(auth=SASL_TLS))
    kafka = json.loads(result.hydrator_config_json)["bindings"][0]["kafka"]
    from_secrets = {
        name for name, entry in result.env(HYDRATOR_CONTAINER).items()
        if "secretKeyRef" in entry.get("valueFrom", {})
    }  # fmt: skip

    assert set(kafka) <= {
        "bootstrap_servers", "security_protocol", "sasl_mechanism",
        "username_env", "password_env", "username_file", "password_file", "ca_file",
        "cert_file", "key_file",
    }  # fmt: skip
    assert {kafka["username_env"], kafka["password_env"]} == from_secrets


def test_credentials_of_similar_binding_names_do_not_collide(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding("orders.v1", auth=SASL_TLS, prefix="o1:"),
                      make_binding("orders-v1", auth=SASL_TLS, prefix="o2:"))  # fmt: skip

    env_names = [e["name"] for e in result.hydrator["env"]]
    volume_names = [v["name"] for v in result.spec["volumes"]]
    assert len(env_names) == len(set(env_names))
    assert len(volume_names) == len(set(volume_names))


# --- the config hash -------------------------------------------------------------------------


def test_config_hash_is_stable_across_calls(make_pod, make_binding, injected):
    first = injected(make_pod(), make_binding()).outcome.config_hash
    second = injected(make_pod(), make_binding()).outcome.config_hash

    assert first == second
    assert len(first) == 16 and int(first, 16) >= 0


def test_config_hash_does_not_depend_on_binding_order(make_pod, two_bindings, injected):
    forward = injected(make_pod(), *two_bindings).outcome.config_hash
    backward = injected(make_pod(), *reversed(two_bindings)).outcome.config_hash

    assert forward == backward


def test_config_hash_does_not_depend_on_the_apps_containers(
    make_pod, make_container, make_binding, injected
):
    one = injected(make_pod(), make_binding()).outcome.config_hash
    other = injected(make_pod(containers=[make_container("api", image="shop/api:2")]),
                     make_binding()).outcome.config_hash  # fmt: skip

    assert one == other


@pytest.mark.parametrize(
    "change",
    [
        {"topics": ["feature-flags", "experiments"]},
        {"max_memory": "128Mi"},
        {"prefix": "ff:"},
        {"eviction_policy": "allkeys-lru"},
        {"bootstrap_servers": ["kafka.other.svc:9092"]},
        {"auth": SASL},
    ],
    ids=lambda change: next(iter(change)),
)
def test_config_hash_changes_when_the_binding_changes(make_pod, make_binding, injected, change):
    before = injected(make_pod(), make_binding()).outcome.config_hash
    after = injected(make_pod(), make_binding(**change)).outcome.config_hash

    assert before != after


def test_config_hash_changes_with_the_operator_defaults(make_pod, make_binding, injected):
    before = injected(make_pod(), make_binding()).outcome.config_hash
    other_redis = InjectionDefaults(redis_image="redis:8")
    after = injected(make_pod(), make_binding(), defaults=other_redis).outcome.config_hash

    assert before != after


# --- bindings_hash, for pod templates --------------------------------------------------------


def template_hash(template, *bindings, namespace="shop"):
    return bindings_hash(
        template, bindings=bindings, namespace=namespace, defaults=InjectionDefaults()
    )


def test_bindings_hash_is_the_content_hash_a_pod_would_get(make_pod, make_binding, injected):
    outcome = injected(make_pod(), make_binding()).outcome

    assert template_hash(make_pod(), make_binding()) == outcome.bindings_hash
    assert outcome.pod["metadata"]["annotations"]["sidecarstate.dev/bindings-hash"] == (
        outcome.bindings_hash
    )


def test_bindings_hash_ignores_the_operator_settings_and_spelled_out_defaults(
    make_pod, make_binding
):
    plain = make_binding()
    spelled = make_binding(patch={"spec.source.kafka.startFrom": "earliest"})
    upgraded = InjectionDefaults(hydrator_image="hydrator:9", image_pull_policy="Always")

    assert bindings_hash(make_pod(), bindings=[plain], namespace="shop",
                         defaults=upgraded) == template_hash(make_pod(), spelled)  # fmt: skip


def test_bindings_hash_follows_binding_changes(make_pod, make_binding):
    assert template_hash(make_pod(), make_binding()) != template_hash(
        make_pod(), make_binding(max_memory="1Gi")
    )


def test_bindings_hash_is_none_when_nothing_selects_the_template(make_pod, make_binding):
    assert template_hash(make_pod(labels={"app": "cart"}), make_binding()) is None


def test_bindings_hash_is_none_for_excluded_templates(make_pod, make_binding):
    opted_out = make_pod(annotations={"sidecarstate.dev/inject": "false"})

    assert template_hash(opted_out, make_binding()) is None
    assert template_hash(make_pod(), make_binding(), namespace="kube-system") is None


def test_bindings_hash_is_none_when_injection_would_be_refused(
    make_pod, make_container, make_binding, inject
):
    conflicting = make_pod(containers=[make_container("sidecar-state-redis")])
    unknown = make_pod(annotations={BINDINGS: "prices"})

    with pytest.raises(InjectionConflict):
        inject(conflicting, make_binding())
    assert template_hash(conflicting, make_binding()) is None
    assert template_hash(unknown, make_binding()) is None


def test_skipped_outcome_carries_no_hash(make_pod, inject):
    outcome = inject(make_pod())

    assert isinstance(outcome, Skipped)
    assert not hasattr(outcome, "config_hash")
