"""A Pod bound to a NATS KV bucket really runs on a real node: it becomes Ready with the
bucket's state, and a KV put reaches the app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats

from sidecar_state_stack.nats_jwt import JwtChain
from sidecar_state_stack.nats_server import NatsServer
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import (
    bind,
    flag_binding,
    start_app_pod,
    wait_answer,
)


def _put(server: NatsServer, bucket: str, flag: str, enabled: bool, **auth: str) -> None:
    async def put() -> None:
        nc = await nats.connect(server.url, **auth)
        try:
            kv = await nc.jetstream().create_key_value(bucket=bucket)
            await kv.put(flag, json.dumps({"id": flag, "enabled": enabled}).encode())
        finally:
            await nc.close()

    asyncio.run(put())


def kv_binding(
    name: str, namespace: str, *, server: NatsServer, bucket: str, auth: Any = None
) -> dict[str, Any]:
    """The demo's flags binding (``flag:<id>`` from JSON ``{"id", "enabled"}``), read from
    the KV bucket ``bucket`` of ``server``; ``auth`` is the source's auth block."""
    source: dict[str, Any] = {"servers": [server.url], "kv": {"bucket": bucket}, "format": "json"}
    if auth is not None:
        source["auth"] = auth
    binding = flag_binding(name, namespace)
    binding["spec"]["source"] = {"nats": source}
    return binding


def test_pod_bound_to_a_kv_bucket_is_ready_with_its_state_and_sees_a_put(
    node_cluster: NodeCluster, node_nats: NatsServer, namespace: str
) -> None:
    cluster = node_cluster.cluster
    bucket = f"flags-{namespace}"
    _put(node_nats, bucket, "new-ui-layout", True)
    bind(cluster, kv_binding("shop", namespace, server=node_nats, bucket=bucket))
    ip: str = start_app_pod(cluster, "shop-1", namespace, app="shop")["status"]["podIP"]
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
        bind(cluster, kv_binding("signed", namespace, server=server, bucket="flags", auth=auth))
        pod = start_app_pod(cluster, "signed-1", namespace, app="signed")
        assert wait_answer(pod["status"]["podIP"], "Showing New Layout", timeout=5)
