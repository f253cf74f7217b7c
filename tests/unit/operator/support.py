"""What the operator's unit tests share: a handler context as the webhook role builds it."""

from __future__ import annotations

import time

from sidecar_operator.controller.rollout import RolloutThrottle
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.settings import OperatorSettings


def webhook_context(defaults: InjectionDefaults) -> OperatorContext:
    """A context whose index is ready, so admission handlers decide instead of waiting."""
    context = OperatorContext(
        settings=OperatorSettings(), injection_defaults=defaults, webhook_tls=None,
        rollout_throttle=RolloutThrottle(per_minute=6, per_namespace=1, now=time.monotonic()),
    )  # fmt: skip
    context.index_ready.set()
    return context
