"""The hydrator's Redis credentials in the injected Pod: written before Redis starts, mounted
into Redis and the hydrator only, never into the app (issue 19)."""

from __future__ import annotations

import pytest

from sidecar_hydrator.credentials import ACL_FILE, HYDRATOR_REDIS_USER, PASSWORD_FILE
from sidecar_operator.injection import InjectionDefaults
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    CREDENTIALS_DIR,
    CREDENTIALS_VOLUME,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
)
from sidecar_operator.injection.pod import InjectionConflict


def mounts_of(container):
    return {m["name"]: m for m in container.get("volumeMounts") or []}


def test_credentials_volume_is_memory_backed_and_small(seed_injected):
    empty_dir = seed_injected.volume(CREDENTIALS_VOLUME)["emptyDir"]

    assert empty_dir == {"medium": "Memory", "sizeLimit": "64Ki"}


def test_only_the_credentials_step_may_write_the_volume(seed_injected):
    assert mounts_of(seed_injected.container(CREDENTIALS_CONTAINER))[CREDENTIALS_VOLUME] == {
        "name": CREDENTIALS_VOLUME,
        "mountPath": CREDENTIALS_DIR,
    }
    for name in (REDIS_CONTAINER, HYDRATOR_CONTAINER):
        mount = mounts_of(seed_injected.container(name))[CREDENTIALS_VOLUME]
        assert mount == {"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True}


@pytest.mark.parametrize("mode", ["native", "containers"])
def test_app_containers_never_mount_the_credentials(
    make_pod, make_container, make_binding, injected, mode
):
    pod = make_pod(init_containers=[make_container("migrate")])

    result = injected(pod, make_binding(), defaults=InjectionDefaults(sidecar_mode=mode))

    for name in ("app", "migrate"):
        container = result.container(name)
        assert CREDENTIALS_VOLUME not in mounts_of(container), name
        assert all(m["mountPath"] != CREDENTIALS_DIR for m in container["volumeMounts"]), name


def test_credentials_step_runs_once_as_the_hydrator_before_redis(seed_injected):
    step = seed_injected.container(CREDENTIALS_CONTAINER)
    defaults = InjectionDefaults()

    assert seed_injected.init_names.index(CREDENTIALS_CONTAINER) == 0
    assert "restartPolicy" not in step
    assert step["image"] == defaults.hydrator_image
    assert step["command"] == ["sidecar-state-credentials", CREDENTIALS_DIR]
    # The password file is 0400 and owned by whoever writes it: that must be the hydrator.
    assert step["securityContext"]["runAsUser"] == defaults.hydrator_user
    assert seed_injected.hydrator["securityContext"]["runAsUser"] == defaults.hydrator_user
    assert seed_injected.redis["securityContext"]["runAsUser"] != defaults.hydrator_user


def test_redis_loads_the_acl_file_and_the_hydrator_reads_the_password(seed_injected):
    config = seed_injected.hydrator_config

    assert seed_injected.redis_args["--aclfile"] == f"{CREDENTIALS_DIR}/{ACL_FILE}"
    assert config.redis_user == HYDRATOR_REDIS_USER
    assert config.redis_password_file == f"{CREDENTIALS_DIR}/{PASSWORD_FILE}"
    # Still only the socket, with today's permissions and memory policy.
    assert seed_injected.redis_args["--port"] == "0"
    assert seed_injected.redis_args["--unixsocketperm"] == "770"
    assert seed_injected.redis_args["--maxmemory-policy"] == "noeviction"


def test_a_user_volume_named_like_ours_conflicts(make_pod, make_binding, inject):
    pod = make_pod(volumes=[{"name": CREDENTIALS_VOLUME, "emptyDir": {}}])

    with pytest.raises(InjectionConflict, match=CREDENTIALS_VOLUME):
        inject(pod, make_binding())


def test_a_user_mount_at_our_credentials_dir_conflicts(
    make_pod, make_container, make_binding, inject
):
    app = make_container(volumeMounts=[{"name": "x", "mountPath": CREDENTIALS_DIR}])

    with pytest.raises(InjectionConflict, match=CREDENTIALS_DIR):
        inject(make_pod(containers=[app]), make_binding())


def test_a_user_container_named_like_the_credentials_step_conflicts(
    make_pod, make_container, make_binding, inject
):
    with pytest.raises(InjectionConflict, match=CREDENTIALS_CONTAINER):
        inject(make_pod(containers=[make_container(CREDENTIALS_CONTAINER)]), make_binding())
