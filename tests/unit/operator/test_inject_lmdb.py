"""engine: lmdb — what an LMDB Pod gets, and what the engine refuses."""

from __future__ import annotations

import pytest

from sidecar_hydrator.config import (
    LMDB_MAX_KEY_BYTES,
    BindingSource,
    ConfigError,
    HydratorConfig,
    parse,
)
from sidecar_operator.api.models import parse_binding
from sidecar_operator.api.quantity import quantity_bytes
from sidecar_operator.injection import InjectionConflict
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    CREDENTIALS_VOLUME,
    HYDRATOR_CONTAINER,
    LMDB_PATH_ENV,
    LMDB_VOLUME,
    REDIS_CONTAINER,
    SOCKET_ENV,
)

MI = 2**20
LMDB = {"spec.store.engine": "lmdb"}


def test_an_lmdb_pod_has_no_redis_and_the_hydrator_writes_the_environment(
    make_pod, make_binding, injected
):
    result = injected(make_pod(), make_binding(max_memory="100Mi", patch=LMDB))

    names = result.init_names + result.container_names
    assert REDIS_CONTAINER not in names
    assert CREDENTIALS_CONTAINER not in names
    assert HYDRATOR_CONTAINER in names
    config = result.hydrator_config
    assert config.store_engine == "lmdb"
    assert config.lmdb_path == "/var/run/sidecar-state-lmdb"
    assert config.lmdb_map_size == 100 * MI
    assert config.max_key_bytes == LMDB_MAX_KEY_BYTES
    assert config.redis_user is None
    volume = result.volume(LMDB_VOLUME)
    assert volume["emptyDir"]["medium"] == "Memory"
    # Two environments (a rebuild or a compaction) fit, and every map stays below the limit.
    assert quantity_bytes(volume["emptyDir"]["sizeLimit"]) > 2 * config.lmdb_map_size
    assert not [v for v in result.spec["volumes"] if v["name"] == CREDENTIALS_VOLUME]
    mounts = {m["name"]: m for m in result.hydrator["volumeMounts"]}
    assert mounts[LMDB_VOLUME]["mountPath"] == "/var/run/sidecar-state-lmdb"


def test_the_hydrators_memory_limit_covers_a_rebuild(make_pod, make_binding, injected):
    redis = injected(make_pod(), make_binding(max_memory="100Mi"))
    lmdb = injected(make_pod(), make_binding(max_memory="100Mi", patch=LMDB))

    def limit(result) -> int:
        return quantity_bytes(result.hydrator["resources"]["limits"]["memory"])

    # The environment's tmpfs pages are charged to the hydrator that writes them.
    assert limit(lmdb) >= limit(redis) + 2 * 100 * MI


def test_the_app_gets_the_path_and_a_writable_mount_beside_the_socket_variables(
    make_pod, make_binding, injected
):
    result = injected(make_pod(), make_binding(patch=LMDB))

    env = result.env("app")
    assert env[LMDB_PATH_ENV]["value"] == "/var/run/sidecar-state-lmdb"
    assert SOCKET_ENV in env
    mounts = {m["name"]: m for m in result.container("app")["volumeMounts"]}
    # A read-only mount makes LMDB readers lockless; they crash during commits.
    assert not mounts[LMDB_VOLUME].get("readOnly", False)


def test_an_lmdb_pod_shares_its_process_namespace(make_pod, make_binding, injected):
    result = injected(make_pod(), make_binding(patch=LMDB))

    assert result.spec["shareProcessNamespace"] is True


def test_a_pod_that_refused_a_shared_process_namespace_is_refused_not_overridden(
    make_pod, make_binding, inject
):
    pod = make_pod()
    pod["spec"]["shareProcessNamespace"] = False

    with pytest.raises(InjectionConflict, match="shareProcessNamespace is false"):
        inject(pod, make_binding(patch=LMDB))


def test_a_redis_pod_is_unchanged_by_the_engine_field(make_pod, make_binding, injected):
    default = injected(make_pod(), make_binding())
    explicit = injected(make_pod(), make_binding(patch={"spec.store.engine": "redis"}))

    assert "shareProcessNamespace" not in default.spec
    assert LMDB_PATH_ENV not in default.env("app")
    assert REDIS_CONTAINER in default.init_names + default.container_names
    assert default.hydrator_config.store_engine == "redis"
    assert default.outcome.config_hash == explicit.outcome.config_hash


def test_bindings_that_mix_engines_on_one_pod_are_refused(make_pod, make_binding, inject):
    flags = make_binding(patch=LMDB)
    prices = make_binding("prices", topics=["prices"], prefix="price:")

    with pytest.raises(InjectionConflict, match=r"different spec.store.engine values.*lmdb"):
        inject(make_pod(), flags, prices)


def test_lmdb_with_an_eviction_policy_is_refused(binding_doc):
    doc = binding_doc(eviction_policy="allkeys-lru", patch=LMDB)

    with pytest.raises(ValueError, match=r"evictionPolicy allkeys-lru: the lmdb engine"):
        parse_binding(doc)


def test_the_hydrator_refuses_keys_lmdb_cannot_hold():
    binding = parse(
        BindingSource, {"name": "b", "kafka": {"bootstrap_servers": ["k:9092"]}, "topics": ["t"]}
    )
    with pytest.raises(ConfigError, match="LMDB keys are at most 511 bytes"):
        HydratorConfig(bindings=(binding,), store_engine="lmdb", max_key_bytes=16 * 1024)
