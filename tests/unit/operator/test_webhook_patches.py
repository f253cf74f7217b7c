"""The webhook's JSON patches do what kopf's admission path did, Pod for Pod.

The reference below is what the handler did under kopf: it appended functions to a
``kopf.Patch`` that set the injected spec, annotations and labels (or moved our init
containers), and kopf's ``Patch.as_json_patch`` deep-copied the whole object, applied them
and diffed (jsonpatch). The server now reads the operations off the rendered Pod, without a
diff of the whole objects and without copies: for every Pod of the corpus, applying them must
give what applying kopf's gave (equal in effect; the form may differ: a list the engine
reorders is replaced whole), and the engine's Pod.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonpatch
import kopf
import orjson
import pytest

from sidecar_operator.handlers.webhook import pod_mutate
from sidecar_operator.injection import Injected, InjectionDefaults, SkipReason, decide, inject_pod
from sidecar_operator.injection import render as render_pod
from sidecar_operator.injection.placement import reposition
from tests.unit.operator.support import webhook_context

NAMESPACE = "shop"
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def kopf_reference(obj: dict[str, Any], bindings: list[Any], defaults: InjectionDefaults) -> Any:
    """The operations kopf sent for this Pod (the handler as it was, through kopf.Patch)."""
    body = kopf.Body(copy.deepcopy(obj))
    patch = kopf.Patch(body=body)
    pod = {"metadata": dict(body.metadata), "spec": dict(body.spec)}
    decision = decide(pod, bindings=bindings, namespace=NAMESPACE, defaults=defaults,
                      admit_missing=True)  # fmt: skip
    if decision.skip is SkipReason.ALREADY_INJECTED:
        moved = reposition(list(body.spec.get("initContainers") or []))
        if moved is not None:
            patch.fns.append(
                lambda t: t.setdefault("spec", {}).__setitem__("initContainers", moved)
            )
    elif decision.skip is None:
        injected = copy.deepcopy(render_pod(decision).pod)

        def apply(target: Any) -> None:
            target["spec"] = injected["spec"]
            target.setdefault("metadata", {})["annotations"] = injected["metadata"]["annotations"]
            target["metadata"]["labels"] = injected["metadata"]["labels"]

        patch.fns.append(apply)
    return patch.as_json_patch()


def _as_sent(pod: dict[str, Any]) -> dict[str, Any]:
    """A Pod as the apiserver puts it in an AdmissionReview: with kind, namespace and status."""
    obj = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(pod)}
    obj["metadata"]["namespace"] = NAMESPACE
    obj["spec"].setdefault("restartPolicy", "Always")
    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    return obj


def _already_injected(make_pod: Callable[..., Any], binding: Any) -> dict[str, Any]:
    """An injected Pod to which a later webhook (a mesh's) appended its init container."""
    outcome = inject_pod(make_pod(), bindings=[binding], namespace=NAMESPACE,
                         defaults=InjectionDefaults())  # fmt: skip
    assert isinstance(outcome, Injected)
    pod = copy.deepcopy(outcome.pod)
    pod["spec"]["initContainers"].append({"name": "istio-init", "image": "istio/proxyv2:1"})
    return pod


CORPUS: dict[str, Callable[[Any, Any], tuple[dict[str, Any], list[Any], InjectionDefaults]]] = {
    "seed": lambda pod, b: (pod(), [b()], InjectionDefaults()),
    "sidecars as containers": lambda pod, b: (
        pod(), [b()], InjectionDefaults(sidecar_mode="containers")
    ),
    "own init containers": lambda pod, b: (
        pod(init_containers=[{"name": "migrate", "image": "shop/migrate:1"}]), [b()],
        InjectionDefaults(),
    ),
    "behind a mesh": lambda pod, b: (
        pod(init_containers=[{"name": "istio-init", "image": "istio/proxyv2:1"},
                             {"name": "istio-proxy", "image": "istio/proxyv2:1",
                              "restartPolicy": "Always"},
                             {"name": "migrate", "image": "shop/migrate:1"}]),
        [b()], InjectionDefaults(),
    ),
    "annotations, env, mounts, volumes": lambda pod, b: (
        pod(annotations={"team": "shop", "prometheus.io/scrape": "true"},
            labels={"app": "checkout", "tier": "web"},
            containers=[{"name": "app", "image": "shop/checkout:1",
                         "env": [{"name": "MODE", "value": "prod"}],
                         "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
                        {"name": "sidecar", "image": "shop/log:1"}],
            volumes=[{"name": "cache", "emptyDir": {}}]),
        [b()], InjectionDefaults(prometheus_annotations=True),
    ),
    "pull secrets and security context": lambda pod, b: (
        pod(imagePullSecrets=[{"name": "shop-registry"}],
            securityContext={"runAsNonRoot": True, "supplementalGroups": [5]}),
        [b()], InjectionDefaults(image_pull_secrets=("ops-registry", "shop-registry")),
    ),
    "two bindings by annotation, one missing": lambda pod, b: (
        pod(annotations={"sidecarstate.dev/bindings": "feature-flags,prices,gone"}),
        [b(), b("prices", prefix="price:", topics=("prices",))], InjectionDefaults(),
    ),
    "lmdb": lambda pod, b: (
        pod(), [b(patch={"spec.store.engine": "lmdb"})], InjectionDefaults(),
    ),
    "the service-account token the apiserver mounted": lambda pod, b: (
        pod(containers=[{"name": "app", "image": "shop/checkout:1",
                         "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": True,
                                           "mountPath": SA_TOKEN_PATH}]}],
            volumes=[{"name": "kube-api-access-x7k2p", "projected": {"sources": []}}],
            serviceAccountName="default"),
        [b()], InjectionDefaults(),
    ),
    "already injected, a mesh init container behind ours": lambda pod, b: (
        _already_injected(pod, b()), [b()], InjectionDefaults(),
    ),
    "not selected": lambda pod, b: (pod(labels={"app": "other"}), [b()], InjectionDefaults()),
    "opted out": lambda pod, b: (
        pod(annotations={"sidecarstate.dev/inject": "false"}), [b()], InjectionDefaults(),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORPUS))
def test_the_patch_does_what_kopfs_did(case, make_pod, make_binding):
    pod, bindings, defaults = CORPUS[case](make_pod, make_binding)
    obj = _as_sent(pod)
    sent = copy.deepcopy(obj)

    verdict = pod_mutate(obj, namespace=NAMESPACE, dryrun=True, bindings=bindings,
                         memo=webhook_context(defaults))  # fmt: skip

    reference = kopf_reference(obj, bindings, defaults)
    assert jsonpatch.apply_patch(sent, verdict.patch) == jsonpatch.apply_patch(sent, reference)
    assert obj == sent, "the request's object is not changed"
    # Serialised as the server sends it: plain JSON values, no objects of the engine's.
    assert orjson.loads(orjson.dumps(verdict.patch)) == verdict.patch
    if case in {"not selected", "opted out"}:
        assert verdict.patch == []
    else:
        assert verdict.patch, case


@pytest.mark.parametrize(
    "case",
    ["seed", "behind a mesh", "lmdb", "annotations, env, mounts, volumes",
     "the service-account token the apiserver mounted"],
)  # fmt: skip
def test_applying_the_patch_gives_the_engines_pod(case, make_pod, make_binding):
    pod, bindings, defaults = CORPUS[case](make_pod, make_binding)
    obj = _as_sent(pod)

    verdict = pod_mutate(obj, namespace=NAMESPACE, dryrun=True, bindings=bindings,
                         memo=webhook_context(defaults))  # fmt: skip

    expected = inject_pod(obj, bindings=bindings, namespace=NAMESPACE, defaults=defaults)
    assert isinstance(expected, Injected)
    assert jsonpatch.apply_patch(obj, verdict.patch) == expected.pod


PAIRS = {
    "members added, changed and removed": (
        {"a": 1, "b": {"c": [1, 2]}, "gone": True},
        {"a": 2, "b": {"c": [1, 2], "d": None}, "new": {"x": []}},
    ),
    "items appended and changed in place": (
        {"volumes": [{"name": "a", "emptyDir": {}}], "env": [{"name": "X", "value": "1"}]},
        {"volumes": [{"name": "a", "emptyDir": {"medium": "Memory"}}, {"name": "b"}],
         "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]},
    ),
    "an item inserted before others": (
        {"initContainers": [{"name": "mesh"}, {"name": "migrate"}]},
        {"initContainers": [{"name": "mesh"}, {"name": "ours"}, {"name": "migrate"}]},
    ),
    "items removed, scalars retyped": ({"l": [1, 2, 3], "n": 1, "s": "1"},
                                      {"l": [1, 2], "n": 1.0, "s": 1}),
    "keys that need escaping": ({"annotations": {"a/b": "1"}},
                                {"annotations": {"a/b": "2", "c~d/e": "3"}}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PAIRS))
def test_the_patch_turns_the_original_into_the_changed_object(case):
    from sidecar_operator.handlers.webhook import _json_patch

    src, dst = PAIRS[case]
    original = copy.deepcopy(src)

    ops = _json_patch(src, dst)

    assert jsonpatch.apply_patch(src, ops) == dst
    assert src == original
    if case == "an item inserted before others":
        assert ops == [{"op": "replace", "path": "/initContainers", "value": dst["initContainers"]}]
    if case == "items appended and changed in place":
        assert {"op": "add", "path": "/volumes/1", "value": {"name": "b"}} in ops
        assert {"op": "add", "path": "/volumes/0/emptyDir/medium", "value": "Memory"} in ops
    if case == "keys that need escaping":
        assert {op["path"] for op in ops} == {"/annotations/a~1b", "/annotations/c~0d~1e"}


def test_shared_members_are_not_looked_into():
    """What the engine did not change is the request's own object: no operation, and its
    contents are never compared (a Pod's large unchanged fields cost nothing)."""
    from sidecar_operator.handlers.webhook import _json_patch

    class Untouchable(dict):  # type: ignore[type-arg]
        def __eq__(self, other: object) -> bool:
            raise AssertionError("compared")

        def items(self):  # type: ignore[no-untyped-def]
            raise AssertionError("walked")

    shared = Untouchable(big="x" * 1000)
    assert _json_patch({"spec": {"affinity": shared, "a": 1}},
                       {"spec": {"affinity": shared, "a": 2}}) == [
        {"op": "replace", "path": "/spec/a", "value": 2}
    ]  # fmt: skip
