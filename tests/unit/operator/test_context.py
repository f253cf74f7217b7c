"""The handlers' shared context survives kopf's per-object shallow copies of the memo."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest

from sidecar_operator.controller.rollout import RolloutThrottle
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.settings import OperatorSettings


def test_copies_share_state_and_none_can_be_changed():
    settings = OperatorSettings()
    context = OperatorContext(
        settings=settings, injection_defaults=settings.injection_defaults(), webhook_tls=None,
        rollout_throttle=RolloutThrottle(per_minute=6, per_namespace=1, now=time.monotonic()),
    )  # fmt: skip

    per_object = copy.copy(context)  # what kopf hands each object's handlers

    assert per_object.controller_state is context.controller_state
    assert per_object.events is context.events and per_object.index_ready is context.index_ready
    context.index_ready.set()
    assert per_object.index_ready.is_set()
    with pytest.raises(dataclasses.FrozenInstanceError):
        per_object.webhook_tls = None  # type: ignore[misc]
