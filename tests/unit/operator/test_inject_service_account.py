"""Our containers mount the Pod's service-account token as the apiserver would mount it.

The apiserver's ServiceAccount plugin runs again after a webhook changed the Pod; if it then
changes the Pod, the webhook is called a second time (``reinvocationPolicy: IfNeeded``). The
injected Pod must therefore be a fixed point of that plugin. ``service_account_plugin`` below
is its mount rule (``mountServiceAccountToken`` of Kubernetes' ServiceAccount admission
plugin) written out, applied to the patched Pods the webhook's answer produces; the e2e
scenario (tests/e2e/operator/test_injection.py) checks the same on the real apiserver.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from sidecar_operator.handlers.webhook import pod_mutate
from sidecar_operator.injection import Injected, InjectionDefaults, inject_pod
from sidecar_operator.injection.service_account import TOKEN_MOUNT_PATH
from tests.unit.operator.support import webhook_context

NAMESPACE = "shop"
TOKEN_VOLUME = "kube-api-access-x7k2p"
TOKEN_MOUNT = {"name": TOKEN_VOLUME, "readOnly": True, "mountPath": TOKEN_MOUNT_PATH}


def service_account_plugin(pod: dict[str, Any]) -> dict[str, Any]:
    """The Pod after the ServiceAccount plugin's mount step, for a ServiceAccount that
    automounts: every container without a mount at the token path gets the token volume's
    (the first ``kube-api-access-*`` volume; a new one if there is none and one is needed)."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is False:
        return pod
    volumes = spec.get("volumes") or []
    name = next((v["name"] for v in volumes if v["name"].startswith("kube-api-access-")), None)
    needs_volume = False
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            mounts = container.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == TOKEN_MOUNT_PATH for m in mounts):
                mounts.append({"name": name or "kube-api-access-new", "readOnly": True,
                               "mountPath": TOKEN_MOUNT_PATH})  # fmt: skip
                needs_volume = True
    if name is None and needs_volume:
        spec["volumes"] = [*volumes, {"name": "kube-api-access-new", "projected": {}}]
    return pod


def _as_admitted(pod: dict[str, Any]) -> dict[str, Any]:
    """A Pod as the webhook receives it: the plugin has run (its volume, its mounts)."""
    obj = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(pod)}
    obj["metadata"]["namespace"] = NAMESPACE
    obj["spec"]["serviceAccountName"] = "default"
    obj["spec"].setdefault("volumes", []).append(
        {"name": TOKEN_VOLUME, "projected": {"defaultMode": 420, "sources": []}}
    )
    return service_account_plugin(obj)


def _patched(obj: dict[str, Any], bindings: list[Any], defaults: InjectionDefaults) -> Any:
    verdict = pod_mutate(obj, namespace=NAMESPACE, dryrun=True, bindings=bindings,
                         memo=webhook_context(defaults))  # fmt: skip
    return jsonpatch.apply_patch(obj, verdict.patch)


def test_the_injected_pod_is_left_alone_by_the_service_account_plugin(make_pod, make_binding):
    obj = _as_admitted(
        make_pod(init_containers=[{"name": "migrate", "image": "shop/migrate:1"}],
                 containers=[{"name": "app", "image": "shop/checkout:1"},
                             {"name": "log", "image": "shop/log:1"}])
    )  # fmt: skip

    for mode in ("native", "containers"):
        patched = _patched(obj, [make_binding()], InjectionDefaults(sidecar_mode=mode))

        assert service_account_plugin(patched) == patched, mode
        spec = patched["spec"]
        for container in [*spec["initContainers"], *spec["containers"]]:
            mounts = container["volumeMounts"]
            assert mounts.count(TOKEN_MOUNT) == 1, (mode, container["name"])
        ours = [c for c in [*spec["initContainers"], *spec["containers"]]
                if c["name"].startswith("sidecar-state-")]  # fmt: skip
        assert len(ours) == 3
        for container in ours:  # appended last, as the plugin appends it
            assert container["volumeMounts"][-1] == TOKEN_MOUNT
        assert [v["name"] for v in spec["volumes"]].count(TOKEN_VOLUME) == 1


def test_the_config_hash_does_not_depend_on_the_token_mount(make_pod, make_binding):
    """The token is the Pod's own: a Pod with it and a template without it get the same
    sidecars by the hash, so no workload rolls for it."""
    bare = inject_pod(make_pod(), bindings=[make_binding()], namespace=NAMESPACE,
                      defaults=InjectionDefaults())  # fmt: skip
    admitted = inject_pod(_as_admitted(make_pod()), bindings=[make_binding()],
                          namespace=NAMESPACE, defaults=InjectionDefaults())  # fmt: skip
    assert isinstance(bare, Injected) and isinstance(admitted, Injected)
    assert admitted.config_hash == bare.config_hash
    bare_mounts = [m for c in bare.pod["spec"]["initContainers"] for m in c["volumeMounts"]]
    assert all(m["mountPath"] != TOKEN_MOUNT_PATH for m in bare_mounts)


def test_a_pod_that_opts_out_of_the_token_gets_none_added(make_pod, make_binding):
    obj = _as_admitted(make_pod())
    obj["spec"]["automountServiceAccountToken"] = False

    outcome = inject_pod(obj, bindings=[make_binding()], namespace=NAMESPACE,
                         defaults=InjectionDefaults())  # fmt: skip

    assert isinstance(outcome, Injected)
    mounts = [m for c in outcome.pod["spec"]["initContainers"] for m in c["volumeMounts"]]
    assert all(m["mountPath"] != TOKEN_MOUNT_PATH for m in mounts)


def test_a_container_that_mounts_its_own_token_keeps_it(make_pod, make_binding):
    """The plugin skips a container with any mount at the path; so do we, and ours still get
    the Pod's token volume, as the plugin would give it to them."""
    obj = _as_admitted(make_pod())
    own_mount = {"name": "my-token", "mountPath": TOKEN_MOUNT_PATH}
    obj["spec"]["containers"][0]["volumeMounts"] = [own_mount]

    patched = _patched(obj, [make_binding()], InjectionDefaults())

    assert service_account_plugin(patched) == patched
    app_mounts = patched["spec"]["containers"][0]["volumeMounts"]
    assert [m for m in app_mounts if m["mountPath"] == TOKEN_MOUNT_PATH] == [own_mount]
    for container in patched["spec"]["initContainers"]:
        assert container["volumeMounts"][-1] == TOKEN_MOUNT


def test_the_request_object_is_not_changed(make_pod, make_binding):
    obj = _as_admitted(make_pod())
    sent = copy.deepcopy(obj)
    _patched(obj, [make_binding()], InjectionDefaults())
    assert obj == sent
