"""The hydrator scrape keeps to a time budget (issue item 10), against a real HTTP server."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from sidecar_operator.handlers import controller


def injected_pod(name: str, port: int) -> dict[str, object]:
    return {
        "metadata": {"name": name, "annotations": {"sidecarstate.dev/injected-bindings": "flags"}},
        "spec": {"initContainers": [{"name": "sidecar-state-hydrator",
                 "ports": [{"name": "state-metrics", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }  # fmt: skip


def test_hydrators_not_answering_within_the_budget_count_as_unknown(monkeypatch):
    monkeypatch.setattr(controller, "SCRAPE_BUDGET_SECONDS", 0.3)
    monkeypatch.setattr(controller, "SCRAPE_TIMEOUT_SECONDS", 10.0)

    async def scenario() -> tuple[list[controller.BindingHealth], float]:
        async def slow(_: web.Request) -> web.Response:
            await asyncio.sleep(3)
            return web.Response(text="")

        async def fast(_: web.Request) -> web.Response:
            return web.Response(text="sidecar_state_hydrator_hydrated 1\n")

        runners = []
        ports = []
        for handler in (slow, fast):
            app = web.Application()
            app.add_routes([web.get("/metrics", handler)])
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        pods = [injected_pod("slow", ports[0]), injected_pod("fast", ports[1])]
        started = time.monotonic()
        try:
            health = await controller.scrape_hydrators(
                pods,
                port=9464,
                logger=logging.getLogger("test"),  # type: ignore[arg-type]
            )
            took = time.monotonic() - started
        finally:
            for runner in runners:
                await runner.shutdown()
                await runner.cleanup()
        return health, took

    health, took = asyncio.run(scenario())

    assert took < 2
    by_pod = {h.health.pod: h.health for h in health}
    assert by_pod["slow"].reachable is False
    assert by_pod["fast"].reachable is True and by_pod["fast"].hydrated is True
