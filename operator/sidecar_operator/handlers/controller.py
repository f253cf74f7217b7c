"""The controller: status, roll-outs, Deployment annotations, and the missed-injection watchdog.

Every handler is level-triggered — it recomputes what should be from the index and the API,
and writes the difference — so a missed event or an operator restart costs nothing. Blocking
API calls run in threads (:mod:`sidecar_operator.kube`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
import kubernetes

from sidecar_operator import kube, metrics
from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding, parse_binding
from sidecar_operator.controller.health import (
    HydratorHealth,
    needs_detail,
    parse_metrics,
    scrape_targets,
    unreachable,
    with_detail,
)
from sidecar_operator.controller.owned import owned_binding
from sidecar_operator.controller.rollout import RolloutThrottle, plan_rollouts, pods_may_be_stale
from sidecar_operator.controller.status import build_status, hydration_event, survey_pods
from sidecar_operator.events import Event, EventRecorder
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.handlers.index import (
    binding_ref,
    bindings_in,
    bindings_index,
    index_argument,
    namespace_of,
)
from sidecar_operator.handlers.passes import ControllerState, NamespacePasses
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.settings import OperatorSettings

SCRAPE_TIMEOUT_SECONDS = 1.0
SCRAPE_CONCURRENCY = 16
#: A whole namespace's scrape never takes longer; hydrators not reached by then are unknown.
SCRAPE_BUDGET_SECONDS = 5.0
#: Watchdog passes are spread by up to this fraction of the interval, so that many
#: namespaces (and controller restarts) do not scrape and list in lockstep.
WATCHDOG_JITTER = 0.2


@dataclass(frozen=True, kw_only=True)
class BindingHealth:
    health: HydratorHealth
    bindings: tuple[str, ...]


async def scrape_hydrators(
    pods: list[dict[str, Any]], *, port: int, logger: kopf.Logger
) -> list[BindingHealth]:
    """Read every running injected Pod's hydrator metrics; an unreachable one is reported as
    such (its health is unknown, not good)."""
    targets = scrape_targets(pods, port=port)
    owners = {
        str(p["metadata"]["name"]): ann.split_names(
            (p["metadata"].get("annotations") or {}).get(ann.INJECTED_BINDINGS)
        )
        for p in pods
    }
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
    limit = asyncio.Semaphore(SCRAPE_CONCURRENCY)

    async def scrape(session: aiohttp.ClientSession, pod: str, url: str) -> BindingHealth:
        async with limit:
            try:
                async with session.get(url) as response:
                    response.raise_for_status()
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError) as error:
                logger.debug(f"Hydrator of Pod {pod} did not answer: {error!r}")
                return BindingHealth(health=unreachable(pod), bindings=owners.get(pod, ()))
            health = parse_metrics(pod, text)
            if needs_detail(health):
                # What exactly ("topic x does not exist on k:9092") is the failing probe's
                # body: free text has no place in a metric label.
                try:
                    async with session.get(url.rsplit("/", 1)[0] + "/readyz") as response:
                        health = with_detail(health, await response.text())
                except (aiohttp.ClientError, TimeoutError) as error:
                    logger.debug(f"Hydrator of Pod {pod}: no /readyz body: {error!r}")
        return BindingHealth(health=health, bindings=owners.get(pod, ()))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = {asyncio.create_task(scrape(session, p, u)): p for p, u in targets.items()}
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, timeout=SCRAPE_BUDGET_SECONDS)
        for task in pending:
            task.cancel()
        late = [
            BindingHealth(health=unreachable(tasks[t]), bindings=owners.get(tasks[t], ()))
            for t in pending
        ]
        return [t.result() for t in done] + late


async def roll_workloads(
    namespace: str,
    *,
    bindings: list[StateBinding],
    pods: list[dict[str, Any]],
    memo: OperatorContext,
    roll_missed: bool,
    logger: kopf.Logger,
) -> None:
    """Roll the workloads whose Pods lack their bindings' current content, throttled."""
    defaults: InjectionDefaults = memo.injection_defaults
    throttle: RolloutThrottle = memo.rollout_throttle
    state: ControllerState = memo.controller_state
    deferred = state.deferred.setdefault(namespace, set())
    if not roll_missed and not deferred and not pods_may_be_stale(pods, bindings):
        return  # a quiet watchdog pass: no LIST of the namespace's workloads
    workloads = await asyncio.to_thread(kube.list_workloads, namespace)
    plan = plan_rollouts(
        workloads=workloads, pods=pods, bindings=bindings, namespace=namespace,
        defaults=defaults, changed=changed_bindings(memo, namespace),
        roll_missed=roll_missed, deferred=deferred,
    )  # fmt: skip
    started = throttle.allow(plan, now=time.monotonic())
    deferred.clear()
    deferred.update(f"{r.kind}/{r.name}" for r in plan.due if r not in started)
    for rollout in started:
        logger.info(f"Rolling {rollout.kind} {rollout.name}: {rollout.reason}")
        await asyncio.to_thread(
            kube.patch_workload, rollout.kind, rollout.name, namespace, rollout.patch()
        )
    if len(started) < len(plan.due):
        logger.info(
            f"Namespace {namespace}: {len(plan.due) - len(started)} roll-out(s) deferred "
            f"({plan.in_progress} in progress, at most {throttle.per_namespace} per namespace "
            f"and {throttle.per_minute:g} per minute); the next pass starts them"
        )


def changed_bindings(memo: OperatorContext, namespace: str) -> set[str]:
    """Bindings whose spec changed while this controller ran (see controller.rollout)."""
    state: ControllerState = memo.controller_state
    return state.changed_bindings.setdefault(namespace, set())


async def reconcile_namespace(
    namespace: str,
    *,
    index: kopf.Index[str, StateBinding],
    memo: OperatorContext,
    roll: bool,
    roll_missed: bool,
    logger: kopf.Logger,
) -> None:
    """Bring every binding's status, and every workload's roll-out, in line for a namespace."""
    defaults: InjectionDefaults = memo.injection_defaults
    events: EventRecorder = memo.events
    bindings = bindings_in(index, namespace)
    # Label first: Pods created from now on reach the webhook. Those created before it are
    # found below, by the roll-out planning and the watchdog.
    wanted = bindings and namespace not in defaults.excluded_namespaces
    label = ann.INJECTION_ENABLED if wanted else None
    if await asyncio.to_thread(kube.set_namespace_label, namespace, ann.INJECTION_LABEL, label):
        logger.info(f"Namespace {namespace}: label {ann.INJECTION_LABEL}={label}")
    state: ControllerState = memo.controller_state
    cache = state.pods
    pods = [dict(p) for p in cache.get(namespace, ())] if cache is not None else []
    if roll:
        await roll_workloads(
            namespace, bindings=bindings, pods=pods, memo=memo, roll_missed=roll_missed,
            logger=logger,
        )  # fmt: skip
    health = await scrape_hydrators(pods, port=defaults.hydrator_port, logger=logger)
    # One LIST for the whole namespace: the index's copies may lag a generation behind, and a
    # GET per binding made a pass cost one call per binding.
    listed = {
        str(item["metadata"]["name"]): item
        for item in await asyncio.to_thread(kube.list_bindings, namespace)
    }
    # Each Pod is read (and selected) once per pass, not once per binding.
    survey = survey_pods(pods, bindings=bindings, defaults=defaults, namespace=namespace)
    for binding in bindings:
        current = listed.get(binding.name)
        if current is None:
            continue
        previous = current.get("status") or {}
        try:
            live = parse_binding(current)
        except ValueError:
            continue  # invalid bindings are never indexed; the validate webhook says why
        status = build_status(
            live, pods=pods, bindings=bindings, defaults=defaults, previous=previous,
            health=[h.health for h in health if binding.name in h.bindings], survey=survey,
        )  # fmt: skip
        metrics.UNINJECTED_PODS.labels(namespace, binding.name).set(len(status["uninjectedPods"]))
        if status["uninjectedPods"] and status["uninjectedPods"] != previous.get("uninjectedPods"):
            condition = next(c for c in status["conditions"] if c["type"] == "PodsInjected")
            message = condition["message"]
            events.record(Event(target=binding_ref(binding), type="Warning",
                                reason="MissedInjection", message=message))  # fmt: skip
        noteworthy = hydration_event(status, previous)
        if noteworthy is not None:
            kind, reason, message = noteworthy
            events.record(Event(target=binding_ref(binding), type=kind,
                                reason=reason, message=message))  # fmt: skip
        if {k: previous.get(k) for k in status} != status:
            await asyncio.to_thread(kube.patch_binding_status, binding.name, namespace, status)


#: After a binding is created or changed, one more pass this much later may roll what it
#: newly selects: Pods admitted while the namespace's new label was still reaching the
#: apiserver's webhook selector, or not yet in the Pod cache when the first pass ran.
FOLLOW_UP_SECONDS = 3.0


def follow_up(memo: OperatorContext, passes: NamespacePasses, namespace: str) -> None:
    state: ControllerState = memo.controller_state

    async def later() -> None:
        await asyncio.sleep(FOLLOW_UP_SECONDS)
        try:
            await passes.request(namespace, roll_missed=True)
        except Exception as error:  # the watchdog's next pass tries again
            logging.getLogger(__name__).warning(f"Follow-up pass of {namespace}: {error}")

    task = asyncio.create_task(later())
    state.follow_ups.add(task)
    task.add_done_callback(state.follow_ups.discard)


def namespace_passes(
    memo: OperatorContext, index: kopf.Index[str, StateBinding], logger: kopf.Logger
) -> NamespacePasses:
    """The controller's one :class:`NamespacePasses`, made on first use."""
    state: ControllerState = memo.controller_state
    if state.passes is None:
        settings: OperatorSettings = memo.settings

        async def run(namespace: str, roll_missed: bool) -> None:
            await reconcile_namespace(
                namespace, index=index, memo=memo, roll=settings.rollout_workloads,
                roll_missed=roll_missed or settings.rollout_missed_injections, logger=logger,
            )  # fmt: skip

        state.passes = NamespacePasses(run)
    return state.passes


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def statebinding_reconcile(
    name: str,
    namespace: str | None,
    reason: str,
    memo: OperatorContext,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    namespace = namespace_of(namespace)
    bindings_by_namespace = bindings_index(kwargs)
    memo.controller_state.pods = pods_index(kwargs)
    if reason == kopf.Reason.UPDATE:
        changed_bindings(memo, namespace).add(name)
    # A created or changed binding rolls the workloads it now selects; a resume (an operator
    # restart) rolls only content changes, not Pods that an outage left without sidecars.
    passes = namespace_passes(memo, bindings_by_namespace, logger)
    if reason != kopf.Reason.RESUME:
        follow_up(memo, passes, namespace)
    await passes.request(namespace, roll_missed=reason != kopf.Reason.RESUME)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def statebinding_event(
    type: str | None,
    namespace: str | None,
    memo: OperatorContext,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A deleted binding: roll its workloads back to no sidecars, and maybe unlabel."""
    memo.controller_state.pods = pods_index(kwargs)
    if type != "DELETED":
        return  # creation and changes go through statebinding_reconcile
    passes = namespace_passes(memo, bindings_index(kwargs), logger)
    await passes.request(namespace_of(namespace), roll_missed=True)


_POD_SPEC_KEPT = ("hostNetwork", "os", "nodeSelector", "affinity")


def trimmed_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass reads of a Pod, and nothing more: the cache holds every Pod's, so each
    one costs a few hundred bytes instead of its whole object."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    containers = {
        field: [
            {"name": c.get("name"), "ports": c.get("ports") or []} for c in spec.get(field) or []
        ]
        for field in ("initContainers", "containers")
    }
    return {
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "labels", "annotations", "deletionTimestamp")
            if key in meta
        },
        "spec": {**{k: spec[k] for k in _POD_SPEC_KEPT if k in spec}, **containers},
        "status": {k: status[k] for k in ("phase", "podIP") if k in status},
    }


@kopf.index("", "v1", "pods")
def pods_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, dict[str, Any]]:
    """A watch-fed cache of every Pod, trimmed: a pass reads its namespace's Pods from here
    instead of a full LIST every watchdog interval."""
    return {namespace_of(namespace): trimmed_pod(body)}


def pods_index(kwargs: Mapping[str, Any]) -> kopf.Index[str, dict[str, Any]]:
    """The :func:`pods_by_namespace` index among a handler's keyword arguments."""
    return index_argument(kwargs, "pods_by_namespace")


def _owned_by(binding: StateBinding, deployment: str) -> bool:
    labels = binding.metadata.get("labels") or {}
    return labels.get(ann.OWNER_LABEL) == deployment


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(
    body: kopf.Body,
    type: str | None,
    namespace: str | None,
    name: str,
    memo: OperatorContext,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Keep the StateBinding that a Deployment's annotations ask for, and only that one.

    Deployments change often (every status update is an event), so this handler writes only
    when the binding differs and warns about a clash once per clash, not once per event.
    """
    if type == "DELETED":
        return  # the owner reference lets the garbage collector delete the binding
    namespace = namespace_of(namespace)
    bindings_by_namespace = bindings_index(kwargs)
    existing = next(
        (b for b in bindings_in(bindings_by_namespace, namespace) if b.name == name), None
    )
    wants_binding = any(a in body.metadata.annotations for a in ann.SOURCE_ANNOTATIONS)
    if not wants_binding:
        if existing is not None and _owned_by(existing, name):
            logger.info(
                f"Annotations {', '.join(ann.SOURCE_ANNOTATIONS)} removed: deleting "
                f"StateBinding {name}"
            )
            await asyncio.to_thread(kube.delete_binding, name, namespace)
        return
    warned = memo.controller_state.warned

    def warn_once(reason: str, message: str, *key: str) -> None:
        marker = (namespace, name, str(body.metadata.get("uid")), reason, *key)
        if marker not in warned:
            warned.add(marker)
            kopf.warn(body, reason=reason, message=message)

    try:
        desired = owned_binding(body)
    except ValueError as error:
        warn_once("InvalidAnnotations", str(error), str(body.metadata.annotations))
        return
    if desired is None:
        return
    try:
        if existing is None:
            logger.info(f"Creating StateBinding {name} from the Deployment's annotations")
            await asyncio.to_thread(kube.create_binding, desired)
            kopf.info(body, reason="BindingCreated", message=f"StateBinding {name} created")
        elif not _owned_by(existing, name):
            warn_once("BindingExists",
                      f"StateBinding {name} exists and is not managed by this Deployment; "
                      "rename one of them", str(existing.metadata.get("uid")))  # fmt: skip
        elif existing.spec.to_api() != parse_binding(desired).spec.to_api():
            logger.info(f"Updating StateBinding {name} from the Deployment's annotations")
            await asyncio.to_thread(kube.replace_binding_spec, name, namespace, desired["spec"])
            kopf.info(body, reason="BindingUpdated", message=f"StateBinding {name} updated")
    except kubernetes.client.ApiException as error:
        # Refused (the validating webhook, a policy) or still failing after retries: say so on
        # the Deployment, where its owner looks; the next change of the Deployment tries again.
        detail = _api_message(error)
        warn_once("BindingNotWritten", f"StateBinding {name} could not be written: {detail}",
                  str(body.metadata.annotations), detail)  # fmt: skip
        logger.warning(f"StateBinding {name} could not be written: {detail}")


def _api_message(error: kubernetes.client.ApiException) -> str:
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"({error.status}) {message or error.reason}"


async def watchdog(
    *,
    memo: OperatorContext,
    index: kopf.Index[str, StateBinding],
    pods: kopf.Index[str, dict[str, Any]],
    logger: kopf.Logger,
) -> None:
    """Find Pods that should carry the sidecars but do not, on every binding's status, and
    start the roll-outs that the throttle deferred. Workloads whose Pods an outage left
    without sidecars are rolled only with ``rollout_missed_injections`` (opt-in); otherwise
    the status reports them (MissedInjection).

    A loop of our own rather than a kopf timer: timers put a finalizer on every binding, which
    would block deleting bindings once the operator is uninstalled.
    """
    settings: OperatorSettings = memo.settings
    memo.controller_state.pods = pods
    passes = namespace_passes(memo, index, logger)
    while True:
        spread = 1 + random.uniform(-WATCHDOG_JITTER, WATCHDOG_JITTER)
        await asyncio.sleep(settings.watchdog_interval_seconds * spread)
        state: ControllerState = memo.controller_state
        # Also namespaces whose last binding is gone but whose roll-out back to no sidecars
        # the throttle deferred.
        pending = {ns for ns, deferred in state.deferred.items() if deferred}
        for namespace in sorted(set(index) | pending):
            try:
                await passes.request(namespace, roll_missed=False)
            except Exception as error:  # keep watching the other namespaces
                logger.warning(f"Watchdog could not check namespace {namespace}: {error}")
