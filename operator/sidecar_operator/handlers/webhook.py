"""Admission: inject Pods on CREATE, validate StateBindings.

Both handlers are pure over their input and the in-memory index: no network I/O happens on
the admission path (Events are queued and posted by kopf afterwards).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf

from sidecar_operator import kube, metrics
from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import (
    GROUP,
    PLURAL,
    VERSION,
    KafkaAuth,
    NatsAuth,
    StateBinding,
    parse_binding,
)
from sidecar_operator.events import Event, EventRecorder, ObjectRef
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.handlers.index import binding_ref, bindings_in, bindings_index
from sidecar_operator.injection import (
    InjectionConflict,
    InjectionDefaults,
    InvalidPod,
    SkipReason,
    decide,
    policy,
    render,
)
from sidecar_operator.injection.placement import reposition
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_config import MUTATE_PODS, VALIDATE_BINDINGS

# The index fills within moments of start; a Pod arriving before waits this long, not forever.
INDEX_WAIT_SECONDS = 3.0


def _pod_label(body: kopf.Body) -> str:
    name = body.metadata.get("name") or f"{body.metadata.get('generateName', '')}<generated>"
    return f"Pod {name}"


async def _wait_for_index(memo: OperatorContext) -> None:
    ready: asyncio.Event = memo.index_ready
    if ready.is_set():
        return
    try:
        await asyncio.wait_for(ready.wait(), timeout=INDEX_WAIT_SECONDS)
    except TimeoutError:
        raise kopf.AdmissionError(
            "sidecar-state is starting and has not loaded its StateBindings yet; "
            "the Pod's controller will retry",
            code=503,
        ) from None


def _explain(
    memo: OperatorContext, bindings: list[StateBinding], *, reason: str, message: str, dryrun: bool
) -> None:
    if dryrun:
        return
    recorder: EventRecorder = memo.events
    for binding in bindings:
        recorder.record(
            Event(target=binding_ref(binding), type="Normal", reason=reason, message=message)
        )


def _event_target(body: kopf.Body, namespace: str) -> ObjectRef:
    """What an Event about a Pod under admission points at: its controller, which has a uid
    (the Pod has none yet, often not even a name), or else the Pod by name."""
    owners = body.metadata.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner:
        return ObjectRef(api_version=owner["apiVersion"], kind=owner["kind"],
                         name=owner["name"], namespace=namespace, uid=owner.get("uid"))  # fmt: skip
    name = body.metadata.get("name") or body.metadata.get("generateName") or "<unnamed>"
    return ObjectRef(api_version="v1", kind="Pod", name=name, namespace=namespace)


def _warn_missing(
    memo: OperatorContext,
    body: kopf.Body,
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
        f"{_pod_label(body)} names StateBinding(s) {names} ({ann.BINDINGS}) that do not exist "
        f"in namespace {namespace}; it was admitted {effect}. Create the binding(s) or fix the "
        "annotation, then roll the workload."
    )
    warnings.append(message)
    metrics.ADMISSIONS.labels("admitted", "missing binding").inc()
    if not dryrun:
        recorder: EventRecorder = memo.events
        recorder.record(Event(target=_event_target(body, namespace), type="Warning",
                              reason="BindingMissing", message=message))  # fmt: skip


@kopf.on.mutate("", "v1", "pods", id=MUTATE_PODS, operations=["CREATE"])
async def pod_mutate(
    body: kopf.Body,
    patch: kopf.Patch,
    dryrun: bool,
    warnings: list[str],
    memo: OperatorContext,
    **kwargs: Any,
) -> None:
    started = time.perf_counter()
    bindings_by_namespace = bindings_index(kwargs)
    await _wait_for_index(memo)
    defaults: InjectionDefaults = memo.injection_defaults
    namespace = body.metadata.get("namespace") or ""
    candidates = bindings_in(bindings_by_namespace, namespace)
    pod = {"metadata": dict(body.metadata), "spec": dict(body.spec)}
    try:
        decision = decide(
            pod, bindings=candidates, namespace=namespace, defaults=defaults, admit_missing=True
        )
        outcome = render(decision) if decision.skip is None else None
    except (InjectionConflict, InvalidPod) as error:
        metrics.ADMISSIONS.labels("refused", type(error).__name__).inc()
        raise kopf.AdmissionError(f"sidecar-state cannot inject this Pod: {error}") from None
    if decision.missing:
        _warn_missing(memo, body, namespace=namespace, missing=decision.missing,
                      injected=outcome is not None, warnings=warnings, dryrun=dryrun)  # fmt: skip

    if decision.skip is SkipReason.ALREADY_INJECTED:
        # A re-invocation (reinvocationPolicy: IfNeeded) after a later webhook, perhaps a
        # mesh's, added init containers behind ours: move ours behind them.
        moved = reposition(list(body.spec.get("initContainers") or []))
        if moved is not None:
            metrics.ADMISSIONS.labels("repositioned", "").inc()

            def move(target: kopf.RawBody) -> None:
                target.setdefault("spec", {})["initContainers"] = moved

            patch.fns.append(move)
            return

    if outcome is None:
        skip = decision.skip
        assert skip is not None
        metrics.ADMISSIONS.labels("skipped", skip.value).inc()
        if skip not in {SkipReason.NOT_SELECTED, SkipReason.ALREADY_INJECTED}:
            if decision.selected and skip is SkipReason.WINDOWS:
                warnings.append(f"sidecar-state: {decision.reason}")
            _explain(memo, list(decision.selected), reason="Skipped",
                     message=f"{_pod_label(body)}: {decision.reason}", dryrun=dryrun)  # fmt: skip
        return

    injected_spec = outcome.pod["spec"]
    injected_annotations = outcome.pod["metadata"]["annotations"]
    injected_labels = outcome.pod["metadata"]["labels"]

    def apply(target: kopf.RawBody) -> None:
        target["spec"] = injected_spec
        target.setdefault("metadata", {})["annotations"] = injected_annotations
        target["metadata"]["labels"] = injected_labels

    patch.fns.append(apply)
    metrics.ADMISSIONS.labels("injected", "").inc()
    metrics.ADMISSION_SECONDS.observe(time.perf_counter() - started)
    names = {b.name for b in decision.selected}
    _explain(memo, [b for b in candidates if b.name in names], reason="Injected",
             message=f"{_pod_label(body)}: sidecars injected (config {outcome.config_hash})",
             dryrun=dryrun)  # fmt: skip


@kopf.on.validate(GROUP, VERSION, PLURAL, id=VALIDATE_BINDINGS, operations=["CREATE", "UPDATE"])
async def statebinding_validate(body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    """Refuse invalid bindings, and bindings that would use what the platform does not allow:
    brokers outside the allow-list, Secrets that have not opted in (see injection.policy)."""
    try:
        binding = parse_binding(dict(body))
    except ValueError as error:
        raise kopf.AdmissionError(f"invalid StateBinding: {error}", code=422) from None
    settings: OperatorSettings = memo.settings
    source = binding.spec.source
    kind = "kafka" if source.kafka is not None else "nats"
    allowed = (
        settings.allowed_bootstrap_servers if kind == "kafka" else settings.allowed_nats_servers
    )
    disallowed = policy.disallowed_servers(binding, allowed=allowed)
    if disallowed:
        message = policy.servers_refusal(disallowed, allowed=allowed, source=kind)
        raise kopf.AdmissionError(f"StateBinding not allowed: {message}", code=403)
    # Kafka's and NATS's credentials alike come from a Secret that must have opted in.
    auth: KafkaAuth | NatsAuth | None = (
        source.kafka.auth if source.kafka is not None else source.nats.auth if source.nats else None
    )
    if auth is None:
        return
    namespace = binding.namespace or str(body.metadata.get("namespace") or "")
    secret = auth.secret_ref.name
    # The only API call on an admission path: bindings are few and rarely written.
    metadata = await asyncio.to_thread(kube.read_secret_metadata, secret, namespace)
    if metadata is None or not policy.secret_allows(metadata, binding=binding.name):
        message = policy.secret_refusal(binding, secret=secret, exists=metadata is not None)
        raise kopf.AdmissionError(f"StateBinding not allowed: {message}", code=403)
