"""What each container gets: the Redis command line and limits, the hydrator's config, the
app's mount and env, and the hardened securityContext of everything we add."""

from __future__ import annotations

import pytest

from sidecar_hydrator.config import HydratorConfig
from sidecar_operator.api.quantity import parse_quantity, quantity_bytes
from sidecar_operator.injection import InjectionDefaults
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
    SOCKET_VOLUME,
)

SOCKET_DIR = "/var/run/sidecar-state"
SOCKET = f"{SOCKET_DIR}/redis.sock"
MI = 2**20


# --- Redis -----------------------------------------------------------------------------------


def test_redis_has_no_tcp_listener(seed_injected):
    assert seed_injected.redis_args["--port"] == "0"
    assert "ports" not in seed_injected.redis


def test_redis_listens_on_the_unix_socket_for_the_group(seed_injected):
    assert seed_injected.redis_args["--unixsocket"] == SOCKET
    assert seed_injected.redis_args["--unixsocketperm"] == "770"


def test_redis_persists_nothing(seed_injected):
    assert seed_injected.redis_args["--save"] == ""
    assert seed_injected.redis_args["--appendonly"] == "no"


def test_redis_maxmemory_is_the_bindings_size_in_bytes(seed_injected):
    assert seed_injected.redis_args["--maxmemory"] == str(64 * MI)


def test_redis_never_evicts_by_default(seed_injected):
    assert seed_injected.redis_args["--maxmemory-policy"] == "noeviction"


def test_redis_uses_the_bindings_eviction_policy(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding(eviction_policy="allkeys-lru"))

    assert result.redis_args["--maxmemory-policy"] == "allkeys-lru"


def test_redis_maxmemory_falls_back_to_the_default(make_pod, make_binding, injected):
    result = injected(
        make_pod(), make_binding(max_memory=None), defaults=InjectionDefaults(max_memory="1Gi")
    )

    assert result.redis_args["--maxmemory"] == str(2**30)


@pytest.mark.parametrize("size", ["1", "100m", "64Mi", "1G", "1.5Gi", "8Gi"])
def test_redis_memory_limit_leaves_room_above_maxmemory(make_pod, make_binding, injected, size):
    result = injected(make_pod(), make_binding(max_memory=size))
    limit = quantity_bytes(result.redis["resources"]["limits"]["memory"])

    # Room above maxmemory for Redis's own overhead, or the kernel kills it before Redis
    # can refuse a write.
    assert limit > int(result.redis_args["--maxmemory"]) >= quantity_bytes(size)


def test_redis_memory_request_equals_its_limit(seed_injected):
    resources = seed_injected.redis["resources"]

    assert resources["requests"]["memory"] == resources["limits"]["memory"]


# --- the hydrator ----------------------------------------------------------------------------


def test_hydrator_config_is_valid_json_for_the_hydrator(seed_injected):
    config = HydratorConfig.from_json(seed_injected.hydrator_config_json)

    assert config.redis_socket == SOCKET


def test_hydrator_config_names_topic_prefix_and_fields(seed_injected):
    (source,) = seed_injected.hydrator_config.bindings

    assert source.name == "feature-flags"
    assert source.topics == ("feature-flags",)
    assert (source.keys.prefix, source.keys.key_field, source.keys.value_field) == (
        "flag:",
        "id",
        "enabled",
    )
    assert (source.start_from, source.format) == ("earliest", "json")


def test_hydrator_config_carries_start_from_and_format(make_pod, make_binding, injected):
    binding = make_binding(
        patch={"spec.source.kafka.startFrom": "latest", "spec.source.kafka.format": "debezium"}
    )

    (source,) = injected(make_pod(), binding).hydrator_config.bindings

    assert (source.start_from, source.format) == ("latest", "debezium")


def test_hydrator_uses_the_bindings_bootstrap_servers(make_pod, make_binding, injected):
    binding = make_binding(bootstrap_servers=["kafka-0.data.svc:9092", "kafka-1.data.svc:9092"])

    (source,) = injected(make_pod(), binding).hydrator_config.bindings

    assert source.kafka.bootstrap_servers == ("kafka-0.data.svc:9092", "kafka-1.data.svc:9092")


def test_hydrator_uses_the_default_bootstrap_servers_when_omitted(make_pod, make_binding, injected):
    defaults = InjectionDefaults(bootstrap_servers=("kafka.platform.svc:9092",))

    (source,) = injected(make_pod(), make_binding(), defaults=defaults).hydrator_config.bindings

    assert source.kafka.bootstrap_servers == ("kafka.platform.svc:9092",)
    assert source.kafka.security_protocol == "PLAINTEXT"


def test_hydrator_without_auth_has_only_the_config_env(seed_injected):
    assert list(seed_injected.env(HYDRATOR_CONTAINER)) == ["SIDECAR_STATE_HYDRATOR_CONFIG"]


def test_hydrator_image_comes_from_the_defaults(make_pod, make_binding, injected):
    defaults = InjectionDefaults(hydrator_image="registry.local/hydrator:dev",
                                 redis_image="registry.local/redis:7")  # fmt: skip

    result = injected(make_pod(), make_binding(), defaults=defaults)

    assert result.hydrator["image"] == "registry.local/hydrator:dev"
    assert result.redis["image"] == "registry.local/redis:7"


def test_bindings_hydrator_resources_reach_the_hydrator(make_pod, make_binding, injected):
    binding = make_binding(patch={"spec.hydrator.resources": {"limits": {"memory": "512Mi"}}})

    result = injected(make_pod(), binding)

    assert result.hydrator["resources"]["limits"]["memory"] == "512Mi"


# --- the app's containers --------------------------------------------------------------------


def test_app_container_gets_the_socket_mounted(seed_injected):
    mounts = seed_injected.container("app")["volumeMounts"]

    assert [m for m in mounts if m["name"] == SOCKET_VOLUME] == [
        {"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR, "readOnly": True}
    ]


def test_app_container_gets_the_socket_path_and_a_unix_url(seed_injected):
    env = seed_injected.env("app")

    assert env["SIDECAR_STATE_SOCKET"] == {"name": "SIDECAR_STATE_SOCKET", "value": SOCKET}
    assert env["SIDECAR_STATE_REDIS_URL"]["value"] == f"unix://{SOCKET}"


def test_every_app_container_and_user_init_container_is_wired(
    make_pod, make_container, make_binding, injected
):
    pod = make_pod(
        containers=[make_container("app"), make_container("worker")],
        init_containers=[make_container("migrate")],
    )

    result = injected(pod, make_binding())

    for name in ["app", "worker", "migrate"]:
        assert set(result.env(name)) >= {"SIDECAR_STATE_SOCKET", "SIDECAR_STATE_REDIS_URL"}, name
        assert SOCKET_DIR in [m["mountPath"] for m in result.container(name)["volumeMounts"]]


def test_user_env_is_never_overwritten(make_pod, make_container, make_binding, injected):
    app = make_container(env={"SIDECAR_STATE_REDIS_URL": "redis://central:6379", "MODE": "x"})

    env_list = injected(make_pod(containers=[app]), make_binding()).container("app")["env"]

    assert [e for e in env_list if e["name"] == "SIDECAR_STATE_REDIS_URL"] == [
        {"name": "SIDECAR_STATE_REDIS_URL", "value": "redis://central:6379"}
    ]
    assert env_list[:2] == app["env"], "user env must stay first and unchanged"
    assert {"name": "SIDECAR_STATE_SOCKET", "value": SOCKET} in env_list


def test_user_env_from_a_secret_is_not_overwritten(
    make_pod, make_container, make_binding, injected
):
    app = make_container()
    app["env"] = [{"name": "SIDECAR_STATE_SOCKET",
                   "valueFrom": {"configMapKeyRef": {"name": "c", "key": "socket"}}}]  # fmt: skip

    env = injected(make_pod(containers=[app]), make_binding()).env("app")

    assert env["SIDECAR_STATE_SOCKET"] == app["env"][0]


def test_user_container_fields_and_mounts_are_kept(
    make_pod, make_container, make_binding, injected
):
    app = make_container(
        mounts=[{"name": "config", "mountPath": "/etc/checkout"}],
        args=["--port", "8080"],
        resources={"limits": {"memory": "256Mi"}},
    )

    wired = injected(make_pod(containers=[app]), make_binding()).container("app")

    assert {k: wired[k] for k in ("image", "args", "resources")} == {
        k: app[k] for k in ("image", "args", "resources")
    }
    assert wired["volumeMounts"][0] == {"name": "config", "mountPath": "/etc/checkout"}


# --- resources and security of what we add ---------------------------------------------------


@pytest.mark.parametrize("name", [CREDENTIALS_CONTAINER, REDIS_CONTAINER, HYDRATOR_CONTAINER])
def test_sidecars_set_requests_and_limits(seed_injected, name):
    resources = seed_injected.container(name)["resources"]

    for kind in ("cpu", "memory"):
        request = parse_quantity(resources["requests"][kind])
        limit = parse_quantity(resources["limits"][kind])
        assert 0 < request <= limit, f"{name} {kind}: request {request}, limit {limit}"


def test_redis_has_a_cpu_request_and_a_limit_a_ratio_limit_range_admits(seed_injected):
    """A tight CFS quota would throttle Redis's one thread mid-burst while the hydrator writes
    at full speed; no limit at all would make Pods forbidden in a namespace whose LimitRange
    sets a CPU maxLimitRequestRatio (2 is the common choice)."""
    resources = seed_injected.container(REDIS_CONTAINER)["resources"]

    request = parse_quantity(resources["requests"]["cpu"])
    assert request >= parse_quantity("100m")
    assert parse_quantity(resources["limits"]["cpu"]) == 2 * request
    assert resources["limits"]["memory"] == resources["requests"]["memory"]


@pytest.mark.parametrize("name", [CREDENTIALS_CONTAINER, REDIS_CONTAINER, HYDRATOR_CONTAINER])
def test_sidecars_are_hardened(seed_injected, name):
    context = seed_injected.container(name)["securityContext"]

    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("name", [REDIS_CONTAINER, HYDRATOR_CONTAINER])
def test_sidecars_run_in_the_socket_group(seed_injected, name):
    group = seed_injected.container(name)["securityContext"]["runAsGroup"]

    assert group in seed_injected.spec["securityContext"]["supplementalGroups"]


def test_app_security_context_is_left_to_the_user(make_pod, make_container, make_binding, injected):
    app = make_container(securityContext={"runAsUser": 1000})

    wired = injected(make_pod(containers=[app]), make_binding()).container("app")

    assert wired["securityContext"] == {"runAsUser": 1000}


# --- image pull secrets ----------------------------------------------------------------------


def test_pull_secrets_from_the_defaults_join_the_pods_own(make_pod, make_binding, injected):
    defaults = InjectionDefaults(image_pull_secrets=("sidecar-registry", "shared"))
    pod = make_pod(imagePullSecrets=[{"name": "app-registry"}, {"name": "shared"}])

    result = injected(pod, make_binding(), defaults=defaults)

    assert result.pod["spec"]["imagePullSecrets"] == [
        {"name": "app-registry"}, {"name": "shared"}, {"name": "sidecar-registry"},
    ]  # fmt: skip


def test_no_pull_secrets_configured_leaves_the_pod_without(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding())

    assert "imagePullSecrets" not in result.pod["spec"]


@pytest.mark.parametrize(("env", "limit"), [(None, "200m"), ("", None), ("500m", "500m")])
def test_the_redis_cpu_limit_setting_is_unset_empty_or_a_quantity(monkeypatch, env, limit):
    """Unset: the default limit; empty (the chart's ``limits.cpu: ""``): none."""
    from sidecar_operator.settings import OperatorSettings

    if env is None:
        monkeypatch.delenv("SIDECAR_STATE_REDIS_CPU_LIMIT", raising=False)
    else:
        monkeypatch.setenv("SIDECAR_STATE_REDIS_CPU_LIMIT", env)
    assert OperatorSettings().injection_defaults().redis_cpu_limit == limit
