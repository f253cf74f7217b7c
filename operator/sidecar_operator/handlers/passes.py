"""One reconcile pass per namespace at a time, however many changes ask for one.

Every StateBinding handler (and the watchdog) needs its namespace reconciled: statuses,
roll-outs, the namespace label. Run naively, 20 bindings created together make 20 passes,
each reading and writing everything (400 workload PATCHes, 400 binding GETs). Here a request
while a pass runs joins the *next* pass, which starts once the current one ends; so a burst of
changes costs at most two passes. Each requester still waits for a pass that began after its
request, and gets that pass's error, so kopf's retries keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import Counter

PASSES = Counter(
    "sidecar_state_controller_passes_total", "Reconcile passes of a namespace, all namespaces"
)


@dataclass
class _Namespace:
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    running: bool = False
    roll_missed: bool = False
    task: asyncio.Task[None] | None = None


class NamespacePasses:
    def __init__(self, run: Callable[[str, bool], Awaitable[None]]) -> None:
        self._run = run
        self._namespaces: dict[str, _Namespace] = {}
        self.passes = 0
        """Passes run so far (all namespaces): what a burst of changes cost."""

    async def request(self, namespace: str, *, roll_missed: bool) -> None:
        """Reconcile ``namespace`` in a pass that starts after this call; raise its error.

        ``roll_missed`` (see controller.rollout.plan_rollouts) holds for the next pass if any
        request that joins it asks for it.
        """
        state = self._namespaces.setdefault(namespace, _Namespace())
        state.roll_missed = state.roll_missed or roll_missed
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiting.append(done)
        if not state.running:
            state.running = True
            state.task = asyncio.create_task(self._drain(namespace, state))
        await done

    async def _drain(self, namespace: str, state: _Namespace) -> None:
        try:
            while state.waiting:
                served, state.waiting = state.waiting, []
                roll_missed, state.roll_missed = state.roll_missed, False
                self.passes += 1
                PASSES.inc()
                try:
                    await self._run(namespace, roll_missed)
                except Exception as error:
                    for future in served:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for future in served:
                        if not future.done():
                            future.set_result(None)
        finally:
            state.running = False


@dataclass
class ControllerState:
    """What the controller's handlers share across objects.

    kopf gives each object's handlers a *shallow copy* of the operator's memo, so anything
    set on it inside a handler stays with that object. This one instance is put on the memo
    before kopf starts; every copy then refers to it.
    """

    passes: NamespacePasses | None = None
    changed_bindings: dict[str, set[str]] = field(default_factory=dict)
    """Per namespace: bindings whose spec changed since start (see controller.rollout)."""
    warned: set[tuple[str, ...]] = field(default_factory=set)
    """Warnings already posted on Deployments, so each is posted once."""
    deferred: dict[str, set[str]] = field(default_factory=dict)
    """Per namespace: ``Kind/name`` of roll-outs the throttle left for a later pass."""
    follow_ups: set[asyncio.Task[None]] = field(default_factory=set)
    """Delayed passes after binding changes (handlers.controller.follow_up), kept alive."""
    pods: kopf.Index[str, dict[str, Any]] | None = None
    """The watch-fed cache of trimmed Pods (handlers.controller.pods_by_namespace)."""
