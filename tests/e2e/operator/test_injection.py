"""Scenarios 2 and 7: Pods are injected exactly as the engine specifies, and only those."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from localkube.access import ClusterAccess
from sidecar_operator.api.models import parse_binding
from sidecar_operator.injection import Injected, inject_pod
from sidecar_operator.injection.service_account import TOKEN_MOUNT_PATH
from sidecar_operator.webhook_config import MUTATE_PODS
from sidecar_state_stack.objects import (
    binding,
    container_names,
    deployment,
    is_injected,
    pod,
    pods_of,
    wait_for,
    wait_reconciled,
)
from sidecar_state_stack.operator_process import OperatorHandle

SIDECARS = ["sidecar-state-credentials", "sidecar-state-redis", "sidecar-state-hydrator"]


def test_deployment_pods_are_injected_exactly_as_the_engine_says(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    sb = binding("checkout", namespace)
    cluster.apply(sb)
    wait_reconciled(cluster, "checkout", namespace)
    dep = deployment("checkout", namespace, replicas=2)
    cluster.apply(dep)

    pods = wait_for(
        lambda: (p := pods_of(cluster, namespace, "app=checkout")) and len(p) == 2 and p,
        what="2 Pods of the Deployment",
    )
    stored = parse_binding({**sb, "metadata": {**sb["metadata"]}})
    expected = inject_pod(
        dep["spec"]["template"],
        bindings=[stored],
        namespace=namespace,
        defaults=operator.injection_defaults(),
    )
    assert isinstance(expected, Injected)
    for got in pods:
        inits, containers = container_names(got)
        assert inits == SIDECARS and containers == ["app"]
        annotations = got["metadata"]["annotations"]
        assert annotations["sidecarstate.dev/injected-bindings"] == "checkout"
        assert annotations["sidecarstate.dev/config-hash"] == expected.config_hash
        restart_policies = [c.get("restartPolicy") for c in got["spec"]["initContainers"]]
        assert restart_policies == [None, "Always", "Always"]
        for want in expected.pod["spec"]["initContainers"]:
            have = next(c for c in got["spec"]["initContainers"] if c["name"] == want["name"])
            assert have["command" if "command" in want else "args"] == want.get(
                "command", want.get("args")
            )
            # The credentials step is a one-shot init container; the others are sidecars.
            assert have.get("restartPolicy") == want.get("restartPolicy")
            assert have["securityContext"]["readOnlyRootFilesystem"] is True
            assert have["resources"]["limits"]["memory"] == want["resources"]["limits"]["memory"]
        app = got["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in app["env"]}
        assert env["SIDECAR_STATE_REDIS_URL"] == "unix:///var/run/sidecar-state/redis.sock"
        assert {"name": "sidecar-state-socket", "mountPath": "/var/run/sidecar-state",
                "readOnly": True} in app["volumeMounts"]  # fmt: skip
        socket_volume = next(
            v for v in got["spec"]["volumes"] if v["name"] == "sidecar-state-socket"
        )
        assert socket_volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
        redis = next(c for c in got["spec"]["initContainers"] if c["name"] == "sidecar-state-redis")
        assert (
            "ports" not in redis and redis["command"][redis["command"].index("--port") + 1] == "0"
        )


def test_unselected_opted_out_and_excluded_pods_are_untouched(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.apply(binding("flags", namespace, labels={"tier": "web"}))
    wait_reconciled(cluster, "flags", namespace)
    cluster.apply(
        pod("selected", namespace, labels={"tier": "web"}),
        pod("other-labels", namespace, labels={"tier": "db"}),
        pod("opted-out", namespace, labels={"tier": "web"},
            annotations={"sidecarstate.dev/inject": "false"}),
    )  # fmt: skip
    pods = {p["metadata"]["name"]: p for p in pods_of(cluster, namespace, "tier")}
    assert is_injected(pods["selected"])
    assert not is_injected(pods["other-labels"])
    assert container_names(pods["other-labels"]) == ([], ["app"])
    assert not is_injected(pods["opted-out"])
    assert container_names(pods["opted-out"]) == ([], ["app"])

    # kube-system is never injected, even by a binding that selects its Pods.
    cluster.apply(binding("system-flags", "kube-system", labels={"e2e-probe": namespace}))
    try:
        cluster.apply(pod(f"probe-{namespace}", "kube-system", labels={"e2e-probe": namespace}))
        got = cluster.kubectl_json("get", "pod", f"probe-{namespace}", "-n", "kube-system")
        assert not is_injected(got) and container_names(got) == ([], ["app"])
    finally:
        cluster.kubectl_run("delete", "pod", f"probe-{namespace}", "-n", "kube-system",
                            "--wait=false", check=False)  # fmt: skip
        cluster.kubectl_run("delete", "sb", "system-flags", "-n", "kube-system", check=False)


def test_fifty_pods_created_at_once_are_each_injected_once(
    cluster: ClusterAccess, namespace: str, operator: OperatorHandle
) -> None:
    cluster.apply(binding("burst", namespace))
    wait_reconciled(cluster, "burst", namespace)

    def create(index: int) -> int:
        manifest = json.dumps(pod(f"burst-{index}", namespace, labels={"app": "burst"}))
        return cluster.kubectl_run("create", "-f", "-", input=manifest, check=False).returncode

    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(create, range(50)))
    assert codes == [0] * 50
    pods = pods_of(cluster, namespace, "app=burst")
    assert len(pods) == 50
    for got in pods:
        inits, containers = container_names(got)
        assert inits == SIDECARS, got["metadata"]["name"]
        assert containers == ["app"]
        assert [v["name"] for v in got["spec"]["volumes"]].count("sidecar-state-socket") == 1


def _webhook_calls(cluster: ClusterAccess) -> float:
    """Calls of the Pod webhook the apiserver made (its own admission metric), all Pods."""
    total = 0.0
    prefix = "apiserver_admission_webhook_admission_duration_seconds_count{"
    for line in cluster.kubectl_run("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith(prefix):
            labels = line[len(prefix) : line.index("}")]
            if f'name="{MUTATE_PODS}.' in labels and 'type="admit"' in labels:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_pod_is_admitted_with_one_webhook_call_and_its_sidecars_mount_its_token(
    cluster: ClusterAccess, namespace: str
) -> None:
    """The apiserver's ServiceAccount plugin runs again after our webhook changed the Pod; if it
    then mounted the token into our sidecars, the apiserver would call the webhook a second
    time (reinvocationPolicy: IfNeeded). The webhook mounts it as the plugin would: one call.
    Pods created elsewhere at the same moment would add calls, so the least of a few tries
    counts."""
    cluster.apply(binding("token", namespace))
    wait_reconciled(cluster, "token", namespace)

    calls = []
    for index in range(3):
        before = _webhook_calls(cluster)
        cluster.apply(pod(f"token-{index}", namespace, labels={"app": "token"}))
        calls.append(_webhook_calls(cluster) - before)
    assert min(calls) == 1, calls

    got = cluster.kubectl_json("get", "pod", "token-0", "-n", namespace)
    volumes = [v["name"] for v in got["spec"]["volumes"]]
    (token,) = [name for name in volumes if name.startswith("kube-api-access-")]
    mount = {"name": token, "readOnly": True, "mountPath": TOKEN_MOUNT_PATH}
    for container in [*got["spec"]["initContainers"], *got["spec"]["containers"]]:
        assert container["volumeMounts"].count(mount) == 1, container["name"]
