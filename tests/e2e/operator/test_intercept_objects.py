"""The objects ``spec.intercept`` makes the controller keep, against the real apiserver.

- ``mode: istio``: an AuthorizationPolicy that Istio's own CRD schema (installed from Istio's
  published API module, sidecar_state_stack.istio_crds) accepts, owned by the binding, kept in line
  with it, restored when deleted, removed when the binding stops asking, and garbage-collected
  with the binding. The README's ServiceEntry of the mesh recipe passes Istio's schema too.
- ``networkPolicy: true``: a NetworkPolicy admitting ingress to Envoy's listenPort only.

Only on the suite's own control plane (``local_cluster``): on an existing cluster (kind) the
chart would have to be installed with the interceptor values for the controller to hold these
rights, and the suite does not install Istio's CRDs into a cluster it did not start.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from localkube.access import ClusterAccess
from sidecar_state_stack.istio_crds import CRD_NAMES, crd_file
from sidecar_state_stack.objects import binding, wait_for
from sidecar_state_stack.operator_process import (
    OPERATOR_NAMESPACE,
    REPO,
    LocalOperator,
    OperatorHandle,
)

PROVIDER = "sidecar-state-authz"
POLICY = ("authorizationpolicies.security.istio.io",)


@pytest.fixture(scope="module")
def istio_crds(cluster: ClusterAccess) -> None:
    path = crd_file()
    if not path.is_file():
        raise AssertionError(f"{path} is missing: run scripts/setup.sh cluster")
    cluster.kubectl_run("apply", "--server-side", "-f", str(path))
    for name in CRD_NAMES:
        cluster.kubectl_run("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


@pytest.fixture(scope="module")
def interceptor_operator(operator: OperatorHandle, istio_crds: None) -> Iterator[OperatorHandle]:
    assert isinstance(operator, LocalOperator)
    with operator.restart_with(
        {"SIDECAR_STATE_ISTIO_PROVIDER": PROVIDER, "SIDECAR_STATE_NETWORK_POLICIES": "true"}
    ):
        yield operator


def intercepting(name: str, namespace: str, **intercept: Any) -> dict[str, Any]:
    obj = binding(name, namespace, labels={"app": name, "tier": "web"})
    obj["spec"]["intercept"] = {
        "port": 8080,
        "bypass": [{"pathPrefix": "/healthz"}, {"path": "/ready"}],
        "rules": [
            {
                "name": "session",
                "credential": {"header": "authorization", "prefix": "Bearer "},
                "key": "session:{credential}",
                "inject": [{"header": "x-user-plan", "from": "json:/plan"}],
            }
        ],
        **intercept,
    }
    return obj


def read(cluster: ClusterAccess, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    proc = cluster.kubectl_run("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    found: dict[str, Any] = json.loads(proc.stdout)
    return found


def test_mode_istio_and_network_policy_are_refused_unless_the_operator_serves_them(
    cluster: ClusterAccess, operator: OperatorHandle, namespace: str
) -> None:
    for obj, named in (
        (intercepting("mesh", namespace, mode="istio"), "interceptor.istio.provider"),
        (intercepting("guarded", namespace, networkPolicy=True), "interceptor.networkPolicies"),
    ):
        proc = cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj), check=False)
        assert proc.returncode != 0 and named in proc.stderr, proc.stderr


@pytest.mark.local_cluster
def test_istio_mode_keeps_an_authorization_policy_istio_accepts(
    cluster: ClusterAccess, interceptor_operator: OperatorHandle, namespace: str
) -> None:
    obj = intercepting("shop", namespace, mode="istio")
    cluster.apply(obj)
    uid = cluster.kubectl_json("get", "statebinding", "shop", "-n", namespace)["metadata"]["uid"]
    policy = wait_for(
        lambda: read(cluster, *POLICY, "sidecar-state-shop", namespace),
        what="the binding's AuthorizationPolicy",
    )
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"] == {
        "selector": {"matchLabels": {"app": "shop", "tier": "web"}},
        "action": "CUSTOM",
        "provider": {"name": PROVIDER},
        "rules": [
            {"to": [{"operation": {"ports": ["8080"], "notPaths": ["/healthz*", "/ready"]}}]}
        ],
    }
    (owner,) = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "StateBinding", "shop", uid, True,
    )  # fmt: skip
    # Passes that find it as it should be leave it alone (no write per watchdog pass).
    version = policy["metadata"]["resourceVersion"]
    time.sleep(5)  # two watchdog intervals and more (2 s in the suite)
    again = read(cluster, *POLICY, "sidecar-state-shop", namespace)
    assert again is not None and again["metadata"]["resourceVersion"] == version

    # A changed binding changes the policy; a deleted policy comes back.
    obj["spec"]["intercept"]["bypass"] = []
    obj["spec"]["intercept"]["port"] = "http"
    cluster.apply(obj)
    wait_for(
        lambda: (
            (p := read(cluster, *POLICY, "sidecar-state-shop", namespace))
            and p["spec"]["rules"] == [{}]
        ),
        what="the policy to follow the binding (no bypass, a named port: every request)",
    )
    cluster.kubectl_run("delete", *POLICY, "sidecar-state-shop", "-n", namespace)
    wait_for(
        lambda: read(cluster, *POLICY, "sidecar-state-shop", namespace),
        what="the deleted policy to come back",
    )

    # Back to mode envoy: the policy goes.
    obj["spec"]["intercept"]["mode"] = "envoy"
    cluster.apply(obj)
    wait_for(
        lambda: read(cluster, *POLICY, "sidecar-state-shop", namespace) is None,
        what="the policy to be deleted with mode envoy",
    )


@pytest.mark.local_cluster
def test_an_object_of_that_name_that_is_not_ours_is_left_alone(
    cluster: ClusterAccess, interceptor_operator: OperatorHandle, namespace: str
) -> None:
    theirs = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "sidecar-state-cart", "namespace": namespace},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
    }
    cluster.apply(theirs)
    cluster.apply(intercepting("cart", namespace, mode="istio"))
    events = wait_for(
        lambda: [
            e
            for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]
            if e["reason"] == "InterceptObjectNotWritten"
        ],
        what="a Warning Event on the binding",
    )
    assert "not managed by StateBinding cart" in events[0]["message"]
    found = read(cluster, *POLICY, "sidecar-state-cart", namespace)
    assert found is not None and found["spec"]["action"] == "DENY"


@pytest.mark.local_cluster
def test_the_mesh_recipes_service_entry_passes_istios_schema(
    cluster: ClusterAccess, istio_crds: None, namespace: str
) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    (recipe,) = [b for b in blocks if "kind: ServiceEntry" in b]
    entry = next(d for d in yaml.safe_load_all(recipe) if d and d.get("kind") == "ServiceEntry")
    entry["metadata"]["namespace"] = namespace
    cluster.kubectl_run("apply", "--dry-run=server", "-f", "-", input=json.dumps(entry))
    provider = next(d for d in yaml.safe_load_all(recipe) if d and "meshConfig" in d)
    (http,) = [p["envoyExtAuthzHttp"] for p in provider["meshConfig"]["extensionProviders"]]
    assert http["service"] in entry["spec"]["hosts"]
    assert http["port"] == entry["spec"]["ports"][0]["number"] == 9466
    broken = json.loads(json.dumps(entry))
    broken["spec"]["resolution"] = "SOMETIMES"
    proc = cluster.kubectl_run(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(broken), check=False
    )
    assert proc.returncode != 0, "Istio's schema is not being enforced"


@pytest.mark.local_cluster
def test_network_policy_admits_envoys_port_only(
    cluster: ClusterAccess, interceptor_operator: OperatorHandle, namespace: str
) -> None:
    obj = intercepting("guarded", namespace, networkPolicy=True, listenPort=15080)
    cluster.apply(obj)
    policy = wait_for(
        lambda: read(cluster, "networkpolicy", "sidecar-state-guarded", namespace),
        what="the binding's NetworkPolicy",
    )
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "guarded", "tier": "web"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    anyone, operator_only = policy["spec"]["ingress"]
    assert anyone == {"ports": [{"protocol": "TCP", "port": 15080}]}
    assert operator_only["ports"] == [{"protocol": "TCP", "port": 9464}]
    assert operator_only["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}}
    ]
    assert policy["metadata"]["ownerReferences"][0]["name"] == "guarded"
    # The garbage collector deletes it with the binding.
    cluster.kubectl_run("delete", "statebinding", "guarded", "-n", namespace)
    wait_for(
        lambda: read(cluster, "networkpolicy", "sidecar-state-guarded", namespace) is None,
        timeout=60,
        what="the NetworkPolicy to be garbage-collected with its binding",
    )
