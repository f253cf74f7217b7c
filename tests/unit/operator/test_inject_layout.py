"""The shape of the injected Pod: socket volume, native sidecars and their order, probes,
groups and marker annotations (DESIGN.md, "The injected Pod")."""

from __future__ import annotations

from sidecar_operator.api.quantity import quantity_bytes
from sidecar_operator.injection import InjectionDefaults
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    CREDENTIALS_VOLUME,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
    SOCKET_VOLUME,
)

SOCKET_DIR = "/var/run/sidecar-state"
SOCKET = f"{SOCKET_DIR}/redis.sock"
SIDECARS = [REDIS_CONTAINER, HYDRATOR_CONTAINER]


# --- the socket volume -----------------------------------------------------------------------


def test_socket_volume_is_a_memory_backed_empty_dir(seed_injected):
    volume = seed_injected.volume(SOCKET_VOLUME)

    assert volume["emptyDir"]["medium"] == "Memory"


def test_socket_volume_has_a_small_positive_size_limit(seed_injected):
    limit = seed_injected.volume(SOCKET_VOLUME)["emptyDir"]["sizeLimit"]

    # Memory-backed: anything written there counts against the Pod's memory; only a socket
    # lives there.
    assert 0 < quantity_bytes(limit) <= 16 * 2**20


def test_socket_volume_is_mounted_in_both_sidecars(seed_injected):
    for name in SIDECARS:
        mounts = seed_injected.container(name)["volumeMounts"]
        assert {"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR} in mounts, name


def test_user_volumes_are_kept_before_ours(make_pod, make_binding, injected):
    config = {"name": "config", "configMap": {"name": "checkout"}}

    result = injected(make_pod(volumes=[config]), make_binding())

    assert result.spec["volumes"][0] == config
    assert [v["name"] for v in result.spec["volumes"]] == [
        "config",
        SOCKET_VOLUME,
        CREDENTIALS_VOLUME,
    ]


# --- native sidecars -------------------------------------------------------------------------


def test_sidecars_are_native_init_containers_redis_first(seed_injected):
    # The credentials step first: Redis loads the ACL file it writes when it starts.
    assert seed_injected.init_names == [CREDENTIALS_CONTAINER, *SIDECARS]
    assert seed_injected.container_names == ["app"]


def test_native_sidecars_restart_always(seed_injected):
    for name in SIDECARS:
        assert seed_injected.container(name)["restartPolicy"] == "Always", name


def test_app_containers_get_no_restart_policy(seed_injected):
    assert "restartPolicy" not in seed_injected.container("app")


def test_sidecars_come_before_user_init_containers(
    make_pod, make_container, make_binding, injected
):
    migrate = make_container("migrate", image="shop/migrate:1")

    result = injected(make_pod(init_containers=[migrate]), make_binding())

    assert result.init_names == [CREDENTIALS_CONTAINER, *SIDECARS, "migrate"]
    assert "restartPolicy" not in result.container("migrate")


def test_containers_mode_appends_sidecars_to_containers(
    make_pod, make_container, make_binding, injected
):
    pod = make_pod(init_containers=[make_container("migrate")])

    result = injected(pod, make_binding(), defaults=InjectionDefaults(sidecar_mode="containers"))

    assert result.container_names == ["app", *SIDECARS]
    assert result.init_names == [CREDENTIALS_CONTAINER, "migrate"]
    for name in SIDECARS:
        assert "restartPolicy" not in result.container(name), name


def test_containers_mode_adds_only_the_credentials_step_to_init_containers(
    make_pod, make_binding, injected
):
    result = injected(
        make_pod(), make_binding(), defaults=InjectionDefaults(sidecar_mode="containers")
    )

    assert result.init_names == [CREDENTIALS_CONTAINER]
    assert "restartPolicy" not in result.container(CREDENTIALS_CONTAINER)


# --- startup probes --------------------------------------------------------------------------


def test_redis_startup_probe_pings_over_the_socket(seed_injected):
    probe = seed_injected.redis["startupProbe"]

    assert probe["exec"]["command"] == ["redis-cli", "-s", SOCKET, "ping"]


def test_hydrator_startup_probe_means_hydrated(seed_injected):
    probe = seed_injected.hydrator["startupProbe"]

    assert probe["httpGet"] == {"path": "/startupz", "port": 9464}
    assert probe["httpGet"]["port"] == seed_injected.hydrator_config.http_port


def test_hydrator_startup_probe_waits_for_the_hydration_timeout(make_pod, make_binding, injected):
    defaults = InjectionDefaults(hydration_timeout_seconds=900)

    probe = injected(make_pod(), make_binding(), defaults=defaults).hydrator["startupProbe"]

    assert probe["periodSeconds"] * probe["failureThreshold"] >= 900


def test_hydrator_exposes_its_metrics_port(seed_injected):
    (port,) = seed_injected.hydrator["ports"]

    assert port["containerPort"] == 9464 and port["name"] == "state-metrics"


# --- Pod-level fields ------------------------------------------------------------------------


def test_socket_group_is_added_to_supplemental_groups(seed_injected):
    assert seed_injected.spec["securityContext"]["supplementalGroups"] == [7379]


def test_existing_supplemental_groups_and_pod_security_are_kept(make_pod, make_binding, injected):
    context = {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000, 4000]}

    result = injected(make_pod(securityContext=context), make_binding())

    assert result.spec["securityContext"] == {**context, "supplementalGroups": [3000, 4000, 7379]}


def test_socket_group_is_not_added_twice(make_pod, make_binding, injected):
    pod = make_pod(securityContext={"supplementalGroups": [7379]})

    result = injected(pod, make_binding())

    assert result.spec["securityContext"]["supplementalGroups"] == [7379]


def test_other_pod_spec_fields_are_kept(make_pod, make_binding, injected):
    pod = make_pod(serviceAccountName="checkout", nodeSelector={"pool": "web"})

    result = injected(pod, make_binding())

    assert result.spec["serviceAccountName"] == "checkout"
    assert result.spec["nodeSelector"] == {"pool": "web"}


# --- marker annotations ----------------------------------------------------------------------


def test_marker_annotations_name_the_bindings_and_the_config_hash(seed_injected):
    assert seed_injected.annotations["sidecarstate.dev/injected-bindings"] == "feature-flags"
    assert seed_injected.annotations["sidecarstate.dev/config-hash"] == (
        seed_injected.outcome.config_hash
    )
    assert seed_injected.outcome.bindings == ("feature-flags",)


def test_user_annotations_and_labels_are_kept(make_pod, make_binding, injected):
    pod = make_pod(annotations={"team": "payments"}, labels={"app": "checkout", "v": "2"})

    result = injected(pod, make_binding())

    assert result.annotations["team"] == "payments"
    assert result.pod["metadata"]["labels"] == {
        "app": "checkout",
        "v": "2",
        "sidecarstate.dev/injected": "true",
    }


def test_injected_pods_carry_the_label_the_pod_monitor_selects(seed_injected):
    # Prometheus Operator selects Pods by label only; the chart's PodMonitor uses this one.
    assert seed_injected.pod["metadata"]["labels"]["sidecarstate.dev/injected"] == "true"


def test_prometheus_annotations_only_when_asked(make_pod, make_binding, injected, seed_injected):
    result = injected(
        make_pod(), make_binding(), defaults=InjectionDefaults(prometheus_annotations=True)
    )

    assert not any(k.startswith("prometheus.io/") for k in seed_injected.annotations)
    assert {k: v for k, v in result.annotations.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9464",
        "prometheus.io/path": "/metrics",
    }


def test_prometheus_annotations_never_take_over_the_apps_own(make_pod, make_binding, injected):
    own = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}
    result = injected(
        make_pod(annotations=own),
        make_binding(),
        defaults=InjectionDefaults(prometheus_annotations=True),
    )

    assert result.annotations["prometheus.io/port"] == "8000"
    assert "prometheus.io/path" not in result.annotations


# --- a different socket directory ------------------------------------------------------------


def test_custom_socket_dir_is_used_everywhere(make_pod, make_binding, injected):
    result = injected(
        make_pod(), make_binding(), defaults=InjectionDefaults(socket_dir="/run/state")
    )

    assert result.redis_args["--unixsocket"] == "/run/state/redis.sock"
    assert result.hydrator_config.redis_socket == "/run/state/redis.sock"
    assert result.env("app")["SIDECAR_STATE_REDIS_URL"]["value"] == "unix:///run/state/redis.sock"
    for name in [*SIDECARS, "app"]:
        paths = [m["mountPath"] for m in result.container(name)["volumeMounts"]]
        assert "/run/state" in paths, name
