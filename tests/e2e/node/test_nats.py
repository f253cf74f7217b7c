"""A Pod bound to a NATS KV bucket really runs on a real node: it becomes Ready with the
bucket's state, and a KV put reaches the app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from sidecar_state_stack.nats_jwt import JwtChain
from sidecar_state_stack.nats_server import NatsServer
from sidecar_state_stack.objects import wait_reconciled
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import app_pod, wait_answer, wait_ready


def _put(server: NatsServer, bucket: str, flag: str, enabled: bool, **auth: str) -> None:
    async def put() -> None:
        nc = await nats.connect(server.url, **auth)
        try:
            kv = await nc.jetstream().create_key_value(bucket=bucket)
            await kv.put(flag, json.dumps({"id": flag, "enabled": enabled}).encode())
        finally:
            await nc.close()

    asyncio.run(put())


def test_pod_bound_to_a_kv_bucket_is_ready_with_its_state_and_sees_a_put(
    node_cluster: NodeCluster, node_nats: NatsServer, namespace: str
) -> None:
    cluster = node_cluster.cluster
    bucket = f"flags-{namespace}"
    _put(node_nats, bucket, "new-ui-layout", True)
    cluster.apply(
        {
            "apiVersion": "sidecarstate.dev/v1alpha1",
            "kind": "StateBinding",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "shop"}},
                "source": {
                    "nats": {"servers": [node_nats.url], "kv": {"bucket": bucket}, "format": "json"}
                },
                "keys": {"prefix": "flag:", "keyField": "id", "valueField": "enabled"},
                "store": {"maxMemory": "16Mi"},
            },
        }
    )
    wait_reconciled(cluster, "shop", namespace)
    cluster.apply(app_pod("shop-1", namespace, app="shop"))

    pod = wait_ready(cluster, "shop-1", namespace)
    ip: str = pod["status"]["podIP"]
    assert wait_answer(ip, "Showing New Layout", timeout=5)

    _put(node_nats, bucket, "new-ui-layout", False)
    assert wait_answer(ip, "Showing Old Layout", timeout=5)


def test_the_hydrator_image_signs_in_with_a_creds_file(
    node_cluster: NodeCluster, namespace: str, tmp_path: Path
) -> None:
    """creds (a user JWT and its nkey seed) against a server in operator mode: the image has no
    nkeys package, so this is the hydrator's own Ed25519 signing, in the shipped image."""
    cluster = node_cluster.cluster
    chain = JwtChain.create()
    creds = chain.user_creds()
    (tmp_path / "user.creds").write_text(creds)
    with NatsServer(host=node_cluster.broker.host, config=chain.server_config()) as server:
        _put(server, "flags", "new-ui-layout", True, user_credentials=str(tmp_path / "user.creds"))
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "nats-creds",
                    "namespace": namespace,
                    "labels": {"sidecarstate.dev/allow-bindings": "true"},
                },
                "stringData": {"user.creds": creds},
            }
        )
        auth = {"secretRef": {"name": "nats-creds"}, "method": "creds", "allowPlaintext": True}
        cluster.apply(
            {
                "apiVersion": "sidecarstate.dev/v1alpha1",
                "kind": "StateBinding",
                "metadata": {"name": "signed", "namespace": namespace},
                "spec": {
                    "selector": {"matchLabels": {"app": "signed"}},
                    "source": {
                        "nats": {
                            "servers": [server.url],
                            "kv": {"bucket": "flags"},
                            "format": "json",
                            "auth": auth,
                        }
                    },
                    "keys": {"prefix": "flag:", "keyField": "id", "valueField": "enabled"},
                    "store": {"maxMemory": "16Mi"},
                },
            }
        )
        wait_reconciled(cluster, "signed", namespace)
        cluster.apply(app_pod("signed-1", namespace, app="signed"))

        pod = wait_ready(cluster, "signed-1", namespace)
        assert wait_answer(pod["status"]["podIP"], "Showing New Layout", timeout=5)
