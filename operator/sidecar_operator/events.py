"""Kubernetes Events on StateBindings, posted off the admission path.

The webhook explains each decision ("injected", "skipped: opted out") on the bindings
involved — a Pod under admission has no uid yet, so the binding is where a user looks. Handlers
only put an Event on an in-memory queue; a background task posts them, so admission never
waits on the API. When the queue is full, Events are dropped (and counted), never blocking.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter

logger = logging.getLogger(__name__)

DROPPED = Counter(
    "sidecar_state_events_dropped_total", "Events not posted: queue full or API error"
)
COMPONENT = "sidecar-state"
COALESCE_SECONDS = 1.0


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str | None = None


@dataclass(frozen=True, kw_only=True)
class Event:
    target: ObjectRef
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def build_event(event: Event, *, now: dt.datetime, host: str) -> dict[str, Any]:
    """The core/v1 Event object for one Event."""
    target = event.target
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {
        "apiVersion": target.api_version,
        "kind": target.kind,
        "name": target.name,
        "namespace": target.namespace,
    }
    if target.uid:
        involved["uid"] = target.uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{target.name}.", "namespace": target.namespace},
        "involvedObject": involved,
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": COMPONENT, "host": host},
        "reportingComponent": COMPONENT,
        "reportingInstance": host,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    def __init__(self, *, capacity: int = 1000) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=capacity)

    def record(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            DROPPED.inc()

    async def run(self) -> None:
        """Post queued Events until cancelled, one per binding and reason per window."""
        from sidecar_operator import kube  # the client is only needed by the posting task

        host = os.environ.get("HOSTNAME") or socket.gethostname()
        api = None  # made on the first post, kept while posts succeed (kube.events_api)
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(COALESCE_SECONDS)  # fifty Pods at once make one API call
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for event in coalesce(batch):
                body = build_event(event, now=dt.datetime.now(dt.UTC), host=host)
                try:
                    if api is None:
                        api = await asyncio.to_thread(kube.events_api)
                    await asyncio.to_thread(
                        functools.partial(kube.create_event, event.target.namespace, body, api=api)
                    )
                except Exception as error:  # an Event is worth a log line, not a crash
                    api = None  # a new client (connection, credentials) for the next one
                    DROPPED.inc()
                    where = f"{event.target.namespace}/{event.target.name}"
                    logger.warning(f"Could not post Event {event.reason} on {where}: {error}")


def coalesce(events: list[Event], *, shown: int = 5) -> list[Event]:
    """One Event per target, type and reason; its message counts and samples the others."""
    groups: dict[tuple[ObjectRef, str, str], list[str]] = {}
    for event in events:
        groups.setdefault((event.target, event.type, event.reason), []).append(event.message)
    merged = []
    for (target, kind, reason), messages in groups.items():
        if len(messages) == 1:
            message = messages[0]
        else:
            more = f"; and {len(messages) - shown} more" if len(messages) > shown else ""
            message = f"{len(messages)} Pods: " + "; ".join(messages[:shown]) + more
        merged.append(Event(target=target, type=kind, reason=reason, message=message))  # type: ignore[arg-type]
    return merged
