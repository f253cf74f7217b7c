"""Start-up and clean-up: the health server, the admission server, index readiness, the
watchdog."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import kopf
import kubernetes
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar_operator import kube, webhook_tls
from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.handlers.index import bindings_index
from sidecar_operator.settings import OperatorSettings


def _listed_bindings(namespaces: tuple[str, ...]) -> set[tuple[str, str]]:
    """Every StateBinding served: cluster-wide, or those of the watched namespaces (a
    namespaced install may not list across the cluster)."""
    api = kubernetes.client.CustomObjectsApi(kube.client())
    items: list[dict[str, Any]] = []
    if namespaces:
        for namespace in namespaces:
            listed = kube.custom_objects(
                api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            )
            items += listed["items"]
    else:
        everything = kube.custom_objects(api.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        items = everything["items"]
    return {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}


async def mark_ready_when_indexed(
    *, memo: OperatorContext, index: kopf.Index[str, StateBinding], logger: kopf.Logger
) -> None:
    """Ready means: every StateBinding that existed at start is in the in-memory index.

    Until then the webhook would decide without bindings it should know, and inject nothing.
    Bindings that fail validation never enter the index, so after a grace period we go ready
    anyway rather than never.
    """
    settings: OperatorSettings = memo.settings
    expected = await asyncio.to_thread(_listed_bindings, settings.watch_namespaces)
    for _ in range(300):
        indexed = {(ns, b.name) for ns in list(index) for b in index.get(ns, ())}
        if expected <= indexed:
            break
        await asyncio.sleep(0.1)
    else:
        logger.warning(f"Not indexed after 30 s: {sorted(expected - indexed)}; going ready")
    memo.index_ready.set()
    logger.info(f"Index ready with {len(expected)} StateBinding(s)")


async def serve_health(*, memo: OperatorContext, port: int) -> None:
    async def livez(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if memo.index_ready.is_set():
            return web.Response(text="ready")
        return web.Response(status=503, text="loading StateBindings")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/livez", livez), web.get("/readyz", readyz),
                    web.get("/metrics", metrics)])  # fmt: skip
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "0.0.0.0", port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@kopf.on.startup()
async def operator_startup(
    memo: OperatorContext,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    bindings_by_namespace = bindings_index(kwargs)
    settings: OperatorSettings = memo.settings
    tasks = [
        asyncio.create_task(memo.events.run()),
        asyncio.create_task(serve_health(memo=memo, port=settings.health_port)),
        asyncio.create_task(
            mark_ready_when_indexed(memo=memo, index=bindings_by_namespace, logger=logger)
        ),
    ]
    if settings.role in {"all", "webhook"}:
        from sidecar_operator.webhook_server import AdmissionServer

        server = AdmissionServer(
            memo=memo, index=bindings_by_namespace, host=settings.webhook_host,
            port=settings.webhook_port, cert_file=Path(settings.webhook_cert_file or ""),
            key_file=Path(settings.webhook_key_file or ""),
        )  # fmt: skip
        tasks.append(asyncio.create_task(server.serve()))
    if memo.webhook_tls is not None:
        # Renew the serving certificate before it expires; pick up another replica's renewal.
        tasks.append(asyncio.create_task(webhook_tls.keep_current(memo.webhook_tls, log=logger)))
    if settings.role in {"all", "controller"}:
        # Imported here: importing registers the controller's handlers, which the webhook
        # role must not run.
        from sidecar_operator.handlers.controller import pods_index, watchdog

        pods = pods_index(kwargs)  # the controller's own index, with its handlers
        tasks.append(
            asyncio.create_task(
                watchdog(memo=memo, index=bindings_by_namespace, pods=pods, logger=logger)
            )
        )
    memo.background_tasks.extend(tasks)


@kopf.on.cleanup()
async def operator_cleanup(memo: OperatorContext, **_: Any) -> None:
    for task in memo.background_tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
