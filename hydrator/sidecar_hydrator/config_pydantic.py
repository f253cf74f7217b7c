"""The hydrator's config contract as pydantic validates it: the operator's side.

The contract is :mod:`sidecar_hydrator.config` (standard-library dataclasses, which the sidecar
parses without pydantic). The operator checks what it renders with pydantic too, from the same
classes: a rendered config that pydantic refuses is a bug in the renderer, caught before any
Pod gets it. Never imported by the sidecar's process (it would cost the memory the stdlib parser
saves); ``tests/unit/hydrator/test_hydrator_config_parity.py`` keeps the two parsers agreeing.
"""

from __future__ import annotations

import functools

from pydantic import TypeAdapter

from sidecar_hydrator.config import HydratorConfig


@functools.cache
def adapter() -> TypeAdapter[HydratorConfig]:
    """Built once, on first use: compiling the schema takes a few milliseconds."""
    return TypeAdapter(HydratorConfig)


def validate_json(raw: str | bytes) -> HydratorConfig:
    """The config in ``raw``, as pydantic reads it (raises ``pydantic.ValidationError``)."""
    return adapter().validate_json(raw)


def rendered(config: HydratorConfig) -> str:
    """``config``'s env value, checked by pydantic: what the operator injects."""
    raw = config.to_env_value()
    validate_json(raw)
    return raw
