"""Admission: inject Pods on CREATE, validate StateBindings.

Both handlers take the object of one AdmissionReview, parsed once by the webhook server
(:mod:`sidecar_operator.webhook_server`), and return a :class:`Verdict`: whether it is allowed,
the JSON patch, warnings. They are pure over their input and the in-memory index: no network
I/O happens on the Pod admission path (Events are queued and posted afterwards). Neither goes
through kopf: its admission machinery (Body wrappers, a deep copy and a diff of the whole
object, handler bookkeeping) cost more than deciding and rendering the Pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar_operator import kube, metrics
from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import KafkaAuth, NatsAuth, StateBinding, parse_binding
from sidecar_operator.events import Event, ObjectRef
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.handlers.index import binding_ref
from sidecar_operator.injection import (
    InjectionConflict,
    InvalidPod,
    SkipReason,
    decide,
    policy,
    render,
)
from sidecar_operator.injection.placement import reposition

# The index fills within moments of start; a Pod arriving before waits this long, not forever.
INDEX_WAIT_SECONDS = 3.0


class AdmissionRefused(Exception):
    """The object is refused; ``message`` reaches the user who created it, ``code`` is the
    HTTP-like code of the AdmissionReview's ``status``."""

    def __init__(self, message: str, *, code: int = 500) -> None:
        super().__init__(message)
        self.code = code


@dataclass(kw_only=True)
class Verdict:
    """What a handler answers: allowed (with a JSON patch, perhaps), and warnings for the
    user. A refusal is raised as :class:`AdmissionRefused` instead."""

    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _pod_label(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName', '')}<generated>"
    return f"Pod {name}"


async def wait_for_index(memo: OperatorContext) -> None:
    """Until every StateBinding that existed at start is indexed, for a few seconds at most:
    deciding without them would admit Pods without the sidecars they should get."""
    ready: asyncio.Event = memo.index_ready
    if ready.is_set():
        return
    try:
        await asyncio.wait_for(ready.wait(), timeout=INDEX_WAIT_SECONDS)
    except TimeoutError:
        raise AdmissionRefused(
            "sidecar-state is starting and has not loaded its StateBindings yet; "
            "the Pod's controller will retry",
            code=503,
        ) from None


def _explain(
    memo: OperatorContext, bindings: Sequence[StateBinding], *, reason: str, message: str,
    dryrun: bool,
) -> None:  # fmt: skip
    if dryrun:
        return
    for binding in bindings:
        memo.events.record(
            Event(target=binding_ref(binding), type="Normal", reason=reason, message=message)
        )


def _event_target(obj: Mapping[str, Any], namespace: str) -> ObjectRef:
    """What an Event about a Pod under admission points at: its controller, which has a uid
    (the Pod has none yet, often not even a name), or else the Pod by name."""
    metadata = obj.get("metadata") or {}
    owners = metadata.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner:
        return ObjectRef(api_version=owner["apiVersion"], kind=owner["kind"],
                         name=owner["name"], namespace=namespace, uid=owner.get("uid"))  # fmt: skip
    name = metadata.get("name") or metadata.get("generateName") or "<unnamed>"
    return ObjectRef(api_version="v1", kind="Pod", name=name, namespace=namespace)


def _warn_missing(
    memo: OperatorContext,
    obj: Mapping[str, Any],
    *,
    namespace: str,
    missing: tuple[str, ...],
    injected: bool,
    warnings: list[str],
    dryrun: bool,
) -> None:
    """Admit a Pod that names deleted bindings, and say so where its owner looks.

    Refusing it would be an outage: a Recreate Deployment would lose every Pod, a rolling one
    would stall, and evicted Pods would never come back.
    """
    names = ", ".join(missing)
    effect = "without them" if injected else "without the sidecar-state sidecars"
    message = (
        f"{_pod_label(obj)} names StateBinding(s) {names} ({ann.BINDINGS}) that do not exist "
        f"in namespace {namespace}; it was admitted {effect}. Create the binding(s) or fix the "
        "annotation, then roll the workload."
    )
    warnings.append(message)
    metrics.ADMISSIONS.labels("admitted", "missing binding").inc()
    if not dryrun:
        memo.events.record(Event(target=_event_target(obj, namespace), type="Warning",
                                 reason="BindingMissing", message=message))  # fmt: skip


def _json_patch(original: Mapping[str, Any], changed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch from ``original`` to ``changed``, read off the way the engine renders.

    :func:`~sidecar_operator.injection.render` (``share=True``) builds new objects only where
    it changes something and shares the rest with the request's object, so members that are
    the very same object produce no operation and are never looked into. What it does change
    it changes in few ways: members added to objects, items appended to lists, items changed
    in place in lists of the same length; those become ``add`` operations at the deepest
    level where they differ, and any other change of a list (our init containers placed
    before the app's own) replaces that list. The operations are equal in effect to
    jsonpatch's diff, not always equal in form; their values are the rendered objects
    themselves (nothing is copied: they are only serialised).
    """
    ops: list[dict[str, Any]] = []
    _diff("", original, changed, ops)
    return ops


def _pointer(path: str, key: str | int) -> str:
    """``path`` extended by one member (RFC 6901: ``~`` and ``/`` escaped)."""
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _same_item(a: Any, b: Any) -> bool:
    """Whether list item ``b`` is ``a``, perhaps changed: the same object, equal values, or
    objects of the same ``name`` (containers, volumes, env, mounts are lists of named items)."""
    if a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return bool(a.get("name") == b.get("name"))
    if isinstance(a, list) and isinstance(b, list):
        return True
    return type(a) is type(b) and bool(a == b)


def _diff(path: str, src: Any, dst: Any, ops: list[dict[str, Any]]) -> None:
    if src is dst:
        return
    if isinstance(src, dict) and isinstance(dst, dict):
        for key in src:
            if key not in dst:
                ops.append({"op": "remove", "path": _pointer(path, key)})
        for key, value in dst.items():
            if key in src:
                _diff(_pointer(path, key), src[key], value, ops)
            else:
                ops.append({"op": "add", "path": _pointer(path, key), "value": value})
        return
    if isinstance(src, list) and isinstance(dst, list):
        kept = len(src)
        if len(dst) >= kept and all(map(_same_item, src, dst)):
            # The same length, or items appended: the kept items diffed in place.
            for index in range(kept):
                _diff(_pointer(path, index), src[index], dst[index], ops)
            for index in range(kept, len(dst)):
                ops.append({"op": "add", "path": _pointer(path, index), "value": dst[index]})
            return
        ops.append({"op": "replace", "path": path, "value": dst})
        return
    if type(src) is not type(dst) or src != dst:
        ops.append({"op": "replace", "path": path, "value": dst})


def pod_mutate(
    obj: Mapping[str, Any],
    *,
    namespace: str,
    dryrun: bool,
    bindings: Sequence[StateBinding],
    memo: OperatorContext,
) -> Verdict:
    """The sidecars for a Pod being created in ``namespace``, from its ``bindings`` (the
    index's for that namespace); ``obj`` has ``metadata.namespace`` set."""
    started = time.perf_counter()
    verdict = Verdict()
    metadata: Mapping[str, Any] = obj.get("metadata") or {}
    spec: Mapping[str, Any] = obj.get("spec") or {}
    pod = {"metadata": metadata, "spec": spec}
    try:
        decision = decide(
            pod, bindings=bindings, namespace=namespace, defaults=memo.injection_defaults,
            admit_missing=True,
        )  # fmt: skip
        outcome = render(decision, share=True) if decision.skip is None else None
    except (InjectionConflict, InvalidPod) as error:
        metrics.ADMISSIONS.labels("refused", type(error).__name__).inc()
        raise AdmissionRefused(f"sidecar-state cannot inject this Pod: {error}") from None
    if decision.missing:
        _warn_missing(memo, obj, namespace=namespace, missing=decision.missing,
                      injected=outcome is not None, warnings=verdict.warnings,
                      dryrun=dryrun)  # fmt: skip

    if decision.skip is SkipReason.ALREADY_INJECTED:
        # A re-invocation (reinvocationPolicy: IfNeeded) after a later webhook, perhaps a
        # mesh's, added init containers behind ours: move ours behind them.
        moved = reposition(list(spec.get("initContainers") or []))
        if moved is not None:
            metrics.ADMISSIONS.labels("repositioned", "").inc()
            verdict.patch = _json_patch(obj, {**obj, "spec": {**spec, "initContainers": moved}})
            return verdict

    if outcome is None:
        skip = decision.skip
        assert skip is not None
        metrics.ADMISSIONS.labels("skipped", skip.value).inc()
        if skip not in {SkipReason.NOT_SELECTED, SkipReason.ALREADY_INJECTED}:
            if decision.selected and skip is SkipReason.WINDOWS:
                verdict.warnings.append(f"sidecar-state: {decision.reason}")
            _explain(memo, decision.selected, reason="Skipped",
                     message=f"{_pod_label(obj)}: {decision.reason}", dryrun=dryrun)  # fmt: skip
        return verdict

    injected = outcome.pod["metadata"]
    changed = {
        **obj,
        "spec": outcome.pod["spec"],
        "metadata": {**metadata, "annotations": injected["annotations"],
                     "labels": injected["labels"]},
    }  # fmt: skip
    verdict.patch = _json_patch(obj, changed)
    metrics.ADMISSIONS.labels("injected", "").inc()
    metrics.ADMISSION_SECONDS.observe(time.perf_counter() - started)
    names = {b.name for b in decision.selected}
    _explain(memo, [b for b in bindings if b.name in names], reason="Injected",
             message=f"{_pod_label(obj)}: sidecars injected (config {outcome.config_hash})",
             dryrun=dryrun)  # fmt: skip
    return verdict


async def statebinding_validate(
    obj: Mapping[str, Any], *, namespace: str, memo: OperatorContext
) -> Verdict:
    """Refuse invalid bindings, and bindings that would use what the platform does not allow:
    brokers outside the allow-list, Secrets that have not opted in (see injection.policy)."""
    try:
        binding = parse_binding(dict(obj))
    except ValueError as error:
        raise AdmissionRefused(f"invalid StateBinding: {error}", code=422) from None
    settings = memo.settings
    refusal = policy.intercept_refusal(
        binding, istio_provider=settings.istio_provider,
        network_policies=settings.network_policies,
    )  # fmt: skip
    if refusal:
        raise AdmissionRefused(f"StateBinding not allowed: {refusal}", code=403)
    source = binding.spec.source
    kind = "kafka" if source.kafka is not None else "nats"
    allowed = (
        settings.allowed_bootstrap_servers if kind == "kafka" else settings.allowed_nats_servers
    )
    disallowed = policy.disallowed_servers(binding, allowed=allowed)
    if disallowed:
        message = policy.servers_refusal(disallowed, allowed=allowed, source=kind)
        raise AdmissionRefused(f"StateBinding not allowed: {message}", code=403)
    # Kafka's and NATS's credentials alike come from a Secret that must have opted in.
    auth: KafkaAuth | NatsAuth | None = (
        source.kafka.auth if source.kafka is not None else source.nats.auth if source.nats else None
    )
    if auth is None:
        return Verdict()
    namespace = binding.namespace or namespace
    secret = auth.secret_ref.name
    # The only API call on an admission path: bindings are few and rarely written.
    metadata = await asyncio.to_thread(kube.read_secret_metadata, secret, namespace)
    if metadata is None or not policy.secret_allows(metadata, binding=binding.name):
        message = policy.secret_refusal(binding, secret=secret, exists=metadata is not None)
        raise AdmissionRefused(f"StateBinding not allowed: {message}", code=403)
    return Verdict()
