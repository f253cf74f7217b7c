"""Admission: inject Pods on CREATE, validate StateBindings.

Both handlers are pure over their input and the in-memory index: no network I/O happens on
the admission path (Events are queued and posted by kopf afterwards).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf

from sidecar_operator import metrics
from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding, parse_binding
from sidecar_operator.events import Event, EventRecorder
from sidecar_operator.handlers.index import binding_ref, bindings_in
from sidecar_operator.injection import (
    Injected,
    InjectionConflict,
    InjectionDefaults,
    InvalidPod,
    UnknownBinding,
    inject_pod,
    select_bindings,
)
from sidecar_operator.webhook_config import MUTATE_PODS, VALIDATE_BINDINGS

# The index fills within moments of start; a Pod arriving before waits this long, not forever.
INDEX_WAIT_SECONDS = 3.0


def _pod_label(body: kopf.Body) -> str:
    name = body.metadata.get("name") or f"{body.metadata.get('generateName', '')}<generated>"
    return f"Pod {name}"


async def _wait_for_index(memo: Any) -> None:
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
    memo: Any, bindings: list[StateBinding], *, reason: str, message: str, dryrun: bool
) -> None:
    if dryrun:
        return
    recorder: EventRecorder = memo.events
    for binding in bindings:
        recorder.record(
            Event(target=binding_ref(binding), type="Normal", reason=reason, message=message)
        )


@kopf.on.mutate("", "v1", "pods", id=MUTATE_PODS, operations=["CREATE"])
async def pod_mutate(
    body: kopf.Body,
    patch: kopf.Patch,
    dryrun: bool,
    warnings: list[str],
    memo: Any,
    bindings_by_namespace: kopf.Index[str, StateBinding],
    **_: Any,
) -> None:
    started = time.perf_counter()
    await _wait_for_index(memo)
    defaults: InjectionDefaults = memo.injection_defaults
    namespace = body.metadata.get("namespace") or ""
    candidates = bindings_in(bindings_by_namespace, namespace)
    pod = {"metadata": dict(body.metadata), "spec": dict(body.spec)}
    try:
        outcome = inject_pod(pod, bindings=candidates, namespace=namespace, defaults=defaults)
    except (InjectionConflict, UnknownBinding, InvalidPod) as error:
        metrics.ADMISSIONS.labels("refused", type(error).__name__).inc()
        raise kopf.AdmissionError(f"sidecar-state cannot inject this Pod: {error}") from None

    if not isinstance(outcome, Injected):
        metrics.ADMISSIONS.labels("skipped", outcome.reason).inc()
        if outcome.reason not in {"no StateBinding selects this Pod", "already injected"}:
            try:
                selected = select_bindings(pod, candidates)
            except UnknownBinding:
                selected = []
            _explain(memo, selected, reason="Skipped",
                     message=f"{_pod_label(body)}: {outcome.reason}", dryrun=dryrun)  # fmt: skip
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
    selected = [b for b in candidates if b.name in outcome.bindings]
    _explain(memo, selected, reason="Injected",
             message=f"{_pod_label(body)}: sidecars injected (config {outcome.config_hash})",
             dryrun=dryrun)  # fmt: skip


@kopf.on.validate(GROUP, VERSION, PLURAL, id=VALIDATE_BINDINGS, operations=["CREATE", "UPDATE"])
async def statebinding_validate(body: kopf.Body, **_: Any) -> None:
    try:
        parse_binding(dict(body))
    except ValueError as error:
        raise kopf.AdmissionError(f"invalid StateBinding: {error}", code=422) from None
