"""What every handler shares: one frozen, typed object, built only in :mod:`sidecar_operator.run`
and handed to kopf as its ``memo``.

kopf gives each object's handlers a *shallow copy* of the memo. A frozen object makes that
harmless: nothing can be set on one copy and be missing from another, and every copy refers
to the same recorder, state and readiness event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar_operator.controller.rollout import RolloutThrottle
from sidecar_operator.events import EventRecorder
from sidecar_operator.handlers.passes import ControllerState
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_tls.reconcile import WebhookTLS


@dataclass(frozen=True, kw_only=True)
class OperatorContext:
    settings: OperatorSettings
    injection_defaults: InjectionDefaults
    """The operator's defaults for injection (the sidecar mode detected at start)."""
    webhook_tls: WebhookTLS | None
    """Set when the operator manages the webhook's certificates (``tls_secret``)."""
    controller_state: ControllerState = field(default_factory=ControllerState)
    rollout_throttle: RolloutThrottle
    index_ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once every StateBinding that existed at start is in the index."""
    events: EventRecorder = field(default_factory=EventRecorder)
    background_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    """Started by the start-up handler, cancelled by the clean-up handler."""
