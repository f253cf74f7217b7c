"""Smoke tests of the e2e cluster itself: if these fail, no operator e2e result means anything.

They check what the operator relies on from a real control plane: the version we built, the
namespace lifecycle (needs the namespace controller), Deployment -> ReplicaSet -> Pods (needs the
deployment and replicaset controllers and ServiceAccount admission), and CRDs being served with
their OpenAPI schema enforced.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from localkube.access import ClusterAccess
from localkube.build import K8S_VERSION

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None], *, timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def namespace(cluster: ClusterAccess) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) afterwards."""
    name = f"e2e-smoke-{uuid.uuid4().hex[:8]}"
    cluster.kubectl_run("create", "namespace", name)
    yield name
    cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def test_server_and_client_versions(cluster: ClusterAccess) -> None:
    versions = cluster.kubectl_json("version")
    server = versions["serverVersion"]["gitVersion"]
    assert server.startswith("v1."), versions
    if cluster.existing:
        pytest.skip(f"existing cluster runs {server}; the version pin applies to the local one")
    assert server == K8S_VERSION
    assert versions["clientVersion"]["gitVersion"] == K8S_VERSION
    assert versions["serverVersion"]["minor"] == K8S_VERSION.split(".")[1]


def test_namespace_is_created_and_deleted(cluster: ClusterAccess) -> None:
    name = f"e2e-ns-{uuid.uuid4().hex[:8]}"
    cluster.kubectl_run("create", "namespace", name)
    assert cluster.kubectl_json("get", "namespace", name)["status"]["phase"] == "Active"
    # The namespace controller creates the default ServiceAccount in every namespace.
    eventually(
        "the default ServiceAccount in the new namespace",
        lambda: (
            cluster.kubectl_run(
                "get", "serviceaccount", "default", "-n", name, check=False
            ).returncode
            == 0
        ),
    )
    # Deletion only completes once the namespace controller has emptied it and removed the
    # finalizer, so this exercises kube-controller-manager too.
    cluster.kubectl_run("delete", "namespace", name, "--wait=true", "--timeout=90s")
    gone = cluster.kubectl_run("get", "namespace", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr


def test_deployment_gets_replicaset_and_pods(cluster: ClusterAccess, namespace: str) -> None:
    labels = {"app": "smoke"}
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "smoke", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]
                    },
                },
            },
        }
    )
    deployment = cluster.kubectl_json("get", "deployment", "smoke", "-n", namespace)

    def replicaset() -> dict[str, Any] | None:
        items = cluster.kubectl_json("get", "replicasets", "-n", namespace)["items"]
        owned = [
            rs
            for rs in items
            if any(
                o["uid"] == deployment["metadata"]["uid"]
                for o in rs["metadata"].get("ownerReferences", [])
            )
        ]
        return owned[0] if owned else None

    rs = eventually("a ReplicaSet owned by the Deployment", replicaset)
    assert rs["spec"]["replicas"] == 2

    def pods() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
        owned = [
            p
            for p in items
            if any(
                o["uid"] == rs["metadata"]["uid"] for o in p["metadata"].get("ownerReferences", [])
            )
        ]
        return owned if len(owned) == 2 else None

    created = eventually("two Pods owned by the ReplicaSet", pods)
    for pod in created:
        # Without a kubelet the Pods stay Pending; with kind they may start or fail to pull.
        assert pod["status"].get("phase") in ("Pending", "Running", None), pod["status"]
        # ServiceAccount admission ran: default account and a projected token volume.
        assert pod["spec"]["serviceAccountName"] == "default"
        assert any(
            v["name"].startswith("kube-api-access-") for v in pod["spec"].get("volumes", [])
        ), pod["spec"].get("volumes")


def test_crd_is_created_and_served(cluster: ClusterAccess, namespace: str) -> None:
    group = "e2e.sidecar-state.test"
    suffix = uuid.uuid4().hex[:6]
    plural, singular, kind = f"widgets{suffix}", f"widget{suffix}", f"Widget{suffix}"
    crd_name = f"{plural}.{group}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": singular, "kind": kind},
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.apply(crd)
    try:
        cluster.kubectl_run(
            "wait", "--for=condition=Established", f"crd/{crd_name}", "--timeout=60s"
        )

        def widget(size: object) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1alpha1",
                "kind": kind,
                "metadata": {"name": "w1", "namespace": namespace},
                "spec": {"size": size},
            }

        # Discovery can lag Established by a moment; retry until the resource is served.
        eventually(
            "the custom resource to be served",
            lambda: (
                cluster.kubectl_run("get", plural, "-n", namespace, check=False).returncode == 0
            ),
        )
        cluster.apply(widget(3))
        got = cluster.kubectl_json("get", f"{plural}.{group}", "w1", "-n", namespace)
        assert got["spec"] == {"size": 3}
        # The structural schema is enforced by the apiserver.
        bad = cluster.kubectl_run("apply", "-f", "-", input=json.dumps(widget(0)), check=False)
        assert bad.returncode != 0 and "spec.size" in bad.stderr, bad.stderr
    finally:
        cluster.kubectl_run("delete", "crd", crd_name, "--wait=false", check=False)
