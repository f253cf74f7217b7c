"""Keep the objects a binding's ``spec.intercept`` asks for (see controller.intercept_objects).

A thin edge: read each object by name, then create, update or delete it to match. Called on
every change of a binding (``prune``: also delete what is no longer wanted) and on every
reconcile pass for the objects that should exist, so a deleted or edited policy comes back
within a watchdog interval. An object under our name that we do not own is never touched; a
failure (the kind is not installed, a refusal) is said once on the binding as an Event.
"""

from __future__ import annotations

import asyncio
import json

import kopf
import kubernetes
import urllib3

from sidecar_operator import kube
from sidecar_operator.api.models import StateBinding
from sidecar_operator.controller.intercept_objects import (
    Desired,
    desired_objects,
    needs_update,
    owned_by,
)
from sidecar_operator.events import Event
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.handlers.index import binding_ref


def _detail(error: kubernetes.client.ApiException) -> str:
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"({error.status}) {message or error.reason}"


async def _sync_one(binding: StateBinding, desired: Desired) -> str | None:
    """Make one object match; return what was done (for the log), or ``None``."""
    kind = desired.kind
    ident = (kind.group, kind.version, kind.plural)
    where = f"{kind.kind} {binding.namespace}/{desired.name}"
    existing = await asyncio.to_thread(kube.read_object, *ident, desired.name, binding.namespace)
    if desired.body is None:
        if existing is not None and owned_by(existing, binding):
            await asyncio.to_thread(kube.delete_object, *ident, desired.name, binding.namespace)
            return f"deleted {where}"
        return None
    if existing is None:
        await asyncio.to_thread(kube.create_object, *ident, desired.body)
        return f"created {where}"
    if not owned_by(existing, binding):
        raise _NotOurs(
            f"{where} exists and is not managed by StateBinding {binding.name}; "
            "rename or delete it so that the operator can keep its own"
        )
    if needs_update(existing, desired.body):
        version = str((existing.get("metadata") or {}).get("resourceVersion") or "")
        await asyncio.to_thread(
            kube.replace_object_fields, *ident, desired.body, resource_version=version
        )
        return f"updated {where}"
    return None


class _NotOurs(Exception):
    """An object of that name exists and belongs to someone else."""


def _explain(error: Exception, desired: Desired) -> str:
    if isinstance(error, _NotOurs):
        return str(error)
    where = f"{desired.kind.kind} {desired.name} could not be written"
    if not isinstance(error, kubernetes.client.ApiException):
        return f"{where}: {error!r}; the next pass tries again"
    if error.status == 404:
        return f"{where}: {_detail(error)}; is the {desired.kind.group} API (its CRD) installed?"
    if error.status == 403:
        return f"{where}: {_detail(error)}; the chart grants it with its interceptor.* values"
    return f"{where}: {_detail(error)}"


async def sync_intercept_objects(
    binding: StateBinding, *, memo: OperatorContext, prune: bool, logger: kopf.Logger
) -> None:
    """Bring the binding's AuthorizationPolicy and NetworkPolicy (those the operator's settings
    enable) in line; never raises, so one binding's trouble does not stop a pass."""
    settings = memo.settings
    wanted = desired_objects(
        binding, istio_provider=settings.istio_provider, network_policies=settings.network_policies,
        operator_namespace=settings.namespace, metrics_port=settings.metrics_port,
    )  # fmt: skip
    for desired in wanted:
        if desired.body is None and not prune:
            continue  # nothing to make; deletion is checked when the binding changes
        try:
            done = await _sync_one(binding, desired)
        except (_NotOurs, kubernetes.client.ApiException, urllib3.exceptions.HTTPError,
                OSError) as error:  # fmt: skip
            message = _explain(error, desired)
            logger.warning(f"StateBinding {binding.name}: {message}")
            _warn_once(memo, binding, message)
            continue
        if done:
            logger.info(f"StateBinding {binding.name}: {done}")


def _warn_once(memo: OperatorContext, binding: StateBinding, message: str) -> None:
    warned = memo.controller_state.warned
    marker = (binding.namespace, binding.name, str(binding.metadata.get("uid")), message)
    if marker in warned:
        return
    warned.add(marker)
    memo.events.record(
        Event(target=binding_ref(binding), type="Warning", reason="InterceptObjectNotWritten",
              message=message)
    )  # fmt: skip
