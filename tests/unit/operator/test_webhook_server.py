"""The admission server over real TLS on loopback: what it answers, and that one connection
carries many admissions (each connection it accepts is one handshake, and counted)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from localkube.ports import free_port
from sidecar_operator.controller.rollout import RolloutThrottle
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.injection import InjectionDefaults
from sidecar_operator.injection.names import SOCKET_VOLUME
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_server import AdmissionServer
from sidecar_operator.webhook_tls.x509 import write_webhook_certs


def _review(obj: dict[str, Any], *, uid: str = "u-1", operation: str = "CREATE") -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "operation": operation, "namespace": "shop", "object": obj,
                    "dryRun": True, "userInfo": {"username": "test"}},
    }).encode()  # fmt: skip


def _connections() -> float:
    return REGISTRY.get_sample_value("sidecar_state_webhook_connections_total") or 0.0


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, bindings: list[Any]) -> AsyncIterator[tuple[str, Any]]:
    certs = write_webhook_certs(tmp_path / "certs", hosts=["127.0.0.1"])
    memo = OperatorContext(
        settings=OperatorSettings(), injection_defaults=InjectionDefaults(), webhook_tls=None,
        rollout_throttle=RolloutThrottle(per_minute=6, per_namespace=1, now=time.monotonic()),
    )  # fmt: skip
    memo.index_ready.set()
    port = free_port()
    server = AdmissionServer(memo=memo, index={"shop": bindings}, host="127.0.0.1", port=port,
                             cert_file=certs.cert_file, key_file=certs.key_file)  # fmt: skip
    task = asyncio.create_task(server.serve())
    trust = ssl.create_default_context(cafile=str(certs.ca_file))
    connector = aiohttp.TCPConnector(ssl=trust, limit=1)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    await asyncio.open_connection("127.0.0.1", port)
                    break
                await asyncio.sleep(0.05)
            yield f"https://127.0.0.1:{port}", session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_pods_are_patched_over_one_kept_alive_connection(tmp_path, make_pod, make_binding):
    async with _serving(tmp_path, [make_binding()]) as (url, session):
        before = _connections()
        answers = []
        for i in range(5):
            review = _review(make_pod(), uid=f"u-{i}")
            async with session.post(f"{url}/inject-pods", data=review) as reply:
                assert reply.status == 200
                answers.append(await reply.json())

    assert [a["response"]["uid"] for a in answers] == [f"u-{i}" for i in range(5)]
    first = answers[0]
    assert first["apiVersion"] == "admission.k8s.io/v1" and first["kind"] == "AdmissionReview"
    assert first["response"]["allowed"] is True and first["response"]["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(first["response"]["patch"]))
    assert any(op["path"].startswith("/metadata/annotations") for op in ops)
    assert any(op["path"].startswith("/spec/initContainers") for op in ops)
    # The 1 connection the probe opened, and 1 for all five admissions.
    assert _connections() - before <= 2


async def test_a_refusal_carries_its_message_and_code(tmp_path, make_pod, make_binding):
    pod = make_pod(volumes=[{"name": SOCKET_VOLUME, "emptyDir": {}}])
    async with (
        _serving(tmp_path, [make_binding()]) as (url, session),
        session.post(f"{url}/inject-pods", data=_review(pod)) as reply,
    ):
        answer = await reply.json()

    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    assert "reserved by sidecar-state" in response["status"]["message"]


async def test_an_invalid_binding_is_refused_naming_the_field(tmp_path, binding_doc):
    doc = binding_doc(patch={"spec.store.maxMemory": "lots"})
    async with (
        _serving(tmp_path, []) as (url, session),
        session.post(f"{url}/validate-statebindings", data=_review(doc)) as reply,
    ):
        answer = await reply.json()

    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 422
    assert "maxMemory" in answer["response"]["status"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("/inject-pod", b"{}", 404), ("/inject-pods", b"not json", 400),
     ("/inject-pods", b'{"request": {"uid": "x"}}', 400)],
)  # fmt: skip
async def test_a_wrong_path_or_body_is_an_http_error(tmp_path, path, body, status):
    async with (
        _serving(tmp_path, []) as (url, session),
        session.post(f"{url}{path}", data=body) as reply,
    ):
        text = await reply.text()

    assert reply.status == status
    assert ("/inject-pods" in text) if status == 404 else ("not an AdmissionReview" in text)
