"""The injection engine: Pod (or pod template) + bindings + defaults -> injected Pod.

Two pure steps, as Dapr's injector splits ``NeedsPatching`` from ``GetPatch``:
:func:`decide` says whether and with what a Pod is injected (the selected bindings, a
:class:`SkipReason`, the plan), and :func:`render` builds the injected Pod from that decision.
The admission webhook, ``sidecar-state inject``, the controller's status and its roll-out
hash all read the same decision, so they agree by construction; only the webhook and the CLI
pay for rendering. Neither step mutates its input or does I/O.
"""

from __future__ import annotations

import copy
import enum
import functools
import hashlib
import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import StateBinding
from sidecar_operator.injection.app_containers import wire_app_container
from sidecar_operator.injection.authorizer_container import build_authorizer_container
from sidecar_operator.injection.credentials_container import build_credentials_container
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.envoy_container import build_envoy_container
from sidecar_operator.injection.hydrator_container import build_hydrator_container
from sidecar_operator.injection.intercept_plan import InterceptError, InterceptPlan, plan_intercept
from sidecar_operator.injection.names import CONTAINER_NAMES, CREDENTIALS_DIR, VOLUME_NAMES
from sidecar_operator.injection.overrides import (
    METRICS_PORT,
    InvalidOverride,
    effective_defaults,
    port_conflict,
)
from sidecar_operator.injection.placement import place
from sidecar_operator.injection.plan import (
    MixedEngines,
    OverlappingPrefixes,
    SidecarPlan,
    plan_sidecars,
)
from sidecar_operator.injection.redis_container import build_redis_container
from sidecar_operator.injection.selector import selector_matches
from sidecar_operator.injection.service_account import mount_service_account_token
from sidecar_operator.injection.volumes import build_volumes

WINDOWS_SKIP = (
    "Windows Pods are never injected: the sidecars are Linux containers with Linux-only "
    "security settings"
)


class InjectionConflict(ValueError):
    """The Pod already uses one of our names for something else; injecting would clobber it."""


class InvalidPod(ValueError):
    """The Pod (template) is not shaped like one; the message names the field."""


class UnknownBinding(ValueError):
    """The Pod names a StateBinding (``sidecarstate.dev/bindings``) that does not exist."""


@dataclass(frozen=True, kw_only=True)
class Injected:
    pod: dict[str, Any]
    bindings: tuple[str, ...]
    config_hash: str
    bindings_hash: str
    missing: tuple[str, ...] = ()
    """Bindings the Pod names that do not exist (only with ``admit_missing``)."""


class SkipReason(enum.Enum):
    """Why a Pod gets no sidecars. The values are bounded: they label metrics."""

    EXCLUDED_NAMESPACE = "excluded_namespace"
    OPTED_OUT = "opted_out"
    ALREADY_INJECTED = "already_injected"
    HOST_NETWORK = "host_network"
    WINDOWS = "windows"
    BINDINGS_MISSING = "bindings_missing"
    NOT_SELECTED = "not_selected"

    @property
    def rules_out_pod(self) -> bool:
        """Whether the Pod itself rules injection out, whatever binds it (as opposed to no
        existing binding applying to it)."""
        return self not in {SkipReason.BINDINGS_MISSING, SkipReason.NOT_SELECTED}


def describe_skip(reason: SkipReason, *, namespace: str, missing: Sequence[str] = ()) -> str:
    """The sentence Events and logs show for a skip."""
    match reason:
        case SkipReason.EXCLUDED_NAMESPACE:
            return f"namespace {namespace} is excluded"
        case SkipReason.OPTED_OUT:
            return f"opted out with {ann.INJECT}: false"
        case SkipReason.ALREADY_INJECTED:
            return "already injected"
        case SkipReason.HOST_NETWORK:
            return "hostNetwork Pods are never injected"
        case SkipReason.WINDOWS:
            return WINDOWS_SKIP
        case SkipReason.BINDINGS_MISSING:
            return f"the StateBinding(s) it names ({', '.join(missing)}) do not exist"
        case SkipReason.NOT_SELECTED:
            return "no StateBinding selects this Pod"


@dataclass(frozen=True, kw_only=True)
class Skipped:
    skip: SkipReason
    reason: str
    """:func:`describe_skip` of ``skip``."""
    missing: tuple[str, ...] = ()


Outcome = Injected | Skipped


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def named_bindings(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """The bindings a Pod names by annotation, in order, each once."""
    return tuple(
        dict.fromkeys(ann.split_names((_meta(pod).get("annotations") or {}).get(ann.BINDINGS)))
    )


def missing_bindings(pod: Mapping[str, Any], bindings: Iterable[StateBinding]) -> tuple[str, ...]:
    """Bindings the Pod names that are not among ``bindings``."""
    available = {b.name for b in bindings}
    return tuple(name for name in named_bindings(pod) if name not in available)


def select_bindings(
    pod: Mapping[str, Any], bindings: Iterable[StateBinding], *, missing_ok: bool = False
) -> list[StateBinding]:
    """The bindings this Pod uses: those it names, or else those whose selector matches.

    Bindings must already be those of the Pod's namespace: a selector never reaches across.
    A named binding that does not exist raises :class:`UnknownBinding`, or with ``missing_ok``
    is left out (the admission webhook: a deleted binding must never stop a workload).
    """
    meta = _meta(pod)
    available = {b.name: b for b in bindings}
    named = named_bindings(pod)
    if named:
        missing = [name for name in named if name not in available]
        if missing and not missing_ok:
            raise UnknownBinding(
                f"annotation {ann.BINDINGS} names StateBinding(s) {', '.join(missing)} "
                "that do not exist in this namespace; create them or fix the annotation"
            )
        return [available[name] for name in named if name in available]
    labels = meta.get("labels") or {}
    return [b for b in available.values() if selector_matches(b.spec.selector, labels)]


def runs_on_windows(spec: Mapping[str, Any]) -> bool:
    """Whether the Pod asks for Windows nodes: ``spec.os.name``, the ``kubernetes.io/os`` node
    selector, or a required node affinity that only allows Windows."""
    if ((spec.get("os") or {}).get("name") or "").lower() == "windows":
        return True
    if ((spec.get("nodeSelector") or {}).get("kubernetes.io/os") or "").lower() == "windows":
        return True
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}).get("nodeSelectorTerms") or []  # fmt: skip
    terms_allowing = []
    for term in required:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == "kubernetes.io/os" and expression.get("operator") == "In":
                terms_allowing.append({v.lower() for v in expression.get("values") or []})
    return bool(terms_allowing) and all(values == {"windows"} for values in terms_allowing)


def skip_reason(
    pod: Mapping[str, Any], *, namespace: str, defaults: InjectionDefaults
) -> SkipReason | None:
    """Why this Pod is never injected, whatever binds it; ``None`` when it may be."""
    annotations = _meta(pod).get("annotations") or {}
    spec = pod.get("spec") or {}
    if namespace in defaults.excluded_namespaces:
        return SkipReason.EXCLUDED_NAMESPACE
    if ann.opted_out(annotations):
        return SkipReason.OPTED_OUT
    if ann.already_injected(annotations):
        return SkipReason.ALREADY_INJECTED
    if spec.get("hostNetwork"):
        return SkipReason.HOST_NETWORK
    if isinstance(spec, Mapping) and runs_on_windows(spec):
        return SkipReason.WINDOWS
    return None


def _check_shape(spec: Any) -> None:
    """Refuse, with a field path, the shapes the engine cannot read (manifests from files)."""
    if not isinstance(spec, Mapping):
        raise InvalidPod("spec: must be a mapping")
    for field in ("containers", "initContainers", "volumes"):
        items = spec.get(field) or []
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise InvalidPod(f"spec.{field}: must be a list of mappings")
    for field in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(field) or []):
            for key in ("env", "volumeMounts"):
                items = container.get(key) or []
                if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
                    raise InvalidPod(f"spec.{field}[{index}].{key}: must be a list of mappings")


def _check_conflicts(spec: Mapping[str, Any], *, defaults: InjectionDefaults) -> None:
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        if container.get("name") in CONTAINER_NAMES:
            raise InjectionConflict(
                f"container name {container['name']!r} is reserved by sidecar-state; rename "
                f'the container or opt the Pod out with {ann.INJECT}: "false"'
            )
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath") in (defaults.socket_dir, CREDENTIALS_DIR, defaults.lmdb_dir):
                raise InjectionConflict(
                    f"container {container.get('name')!r} already mounts "
                    f"{mount['mountPath']}, where sidecar-state puts its socket and credentials"
                )
    taken_by = port_conflict(spec, port=defaults.hydrator_port)
    if taken_by is not None:
        raise InjectionConflict(
            f"container {taken_by!r} already uses port {defaults.hydrator_port}, the hydrator's "
            f"metrics port; move the hydrator with the annotation {METRICS_PORT} (or the "
            "binding's spec.hydrator.metricsPort)"
        )
    for volume in spec.get("volumes") or []:
        if volume.get("name") in VOLUME_NAMES:
            raise InjectionConflict(
                f"volume name {volume['name']!r} is reserved by sidecar-state; rename the volume"
            )


def config_hash(sidecars: Sequence[Mapping[str, Any]], volumes: Sequence[Any]) -> str:
    """A short, stable digest of what we inject: equal hashes mean equal sidecars."""
    text = json.dumps([sidecars, volumes], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def binding_content_hash(bindings: Iterable[StateBinding]) -> str:
    """A digest of what the bindings ask for, and nothing else.

    Image tags, pull policies and the operator's defaults are left out on purpose: an operator
    upgrade or a chart value change must restart no workload by itself (new Pods pick up the
    new sidecars). Fields at their defaults are left out too, so that a new optional field in
    a later API version does not change the digest of every binding.
    """
    content = [
        [b.name, b.spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")]
        for b in sorted(bindings, key=lambda b: b.name)
    ]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Sidecars:
    """What we add: a one-shot init container that must finish before Redis starts, the
    long-running sidecars in start order (Redis first: the hydrator needs it; with an
    interceptor then the authorizer, which reads the hydrated Redis, and Envoy, which calls
    it), and our volumes."""

    setup: list[dict[str, Any]]
    running: list[dict[str, Any]]
    volumes: list[dict[str, Any]]


def build_sidecars(
    *, plan: SidecarPlan, defaults: InjectionDefaults, intercept: InterceptPlan | None = None
) -> Sidecars:
    if plan.engine == "lmdb":
        # No Redis and no Redis credentials: the hydrator writes the LMDB environment.
        return Sidecars(
            setup=[],
            running=[build_hydrator_container(plan=plan, defaults=defaults)],
            volumes=build_volumes(plan=plan),
        )
    running = [
        build_redis_container(plan=plan, defaults=defaults),
        build_hydrator_container(plan=plan, defaults=defaults),
    ]
    if intercept is not None:
        running.append(build_authorizer_container(plan=intercept, defaults=defaults))
        if not intercept.istio:  # Istio's own sidecar fronts the app
            running.append(build_envoy_container(plan=intercept, defaults=defaults))
    return Sidecars(
        setup=[build_credentials_container(defaults=defaults)],
        running=running,
        volumes=build_volumes(plan=plan),
    )


@dataclass(frozen=True)
class _BuiltSidecars:
    """:func:`build_sidecars`'s result as JSON (a fresh copy is read off it for each Pod), and
    its :func:`config_hash`."""

    sidecars: bytes
    digest: str


@functools.lru_cache(maxsize=64)
def _built_sidecars(
    plan: SidecarPlan, defaults: InjectionDefaults, intercept: InterceptPlan | None
) -> _BuiltSidecars:
    ours = build_sidecars(plan=plan, defaults=defaults, intercept=intercept)
    return _BuiltSidecars(
        sidecars=orjson.dumps([ours.setup, ours.running, ours.volumes]),
        digest=config_hash([*ours.setup, *ours.running], ours.volumes),
    )


def sidecars_and_digest(
    *, plan: SidecarPlan, defaults: InjectionDefaults, intercept: InterceptPlan | None
) -> tuple[Sidecars, str]:
    """:func:`build_sidecars` and its :func:`config_hash`, built once per distinct plan.

    Every Pod of a workload has the same plan, and building the containers (the hydrator's
    configuration rendered and checked by pydantic, the digest's sorted JSON) was most of
    the webhook's CPU per Pod. The plan's parts are immutable and compared by value, so equal
    plans get equal sidecars; each call gets objects of its own (read off the cached JSON),
    which the caller may change. A plan with a part that cannot be hashed (an interceptor's
    API model) is built each time.
    """
    try:
        hash((plan, defaults, intercept))
    except TypeError:
        ours = build_sidecars(plan=plan, defaults=defaults, intercept=intercept)
        return ours, config_hash([*ours.setup, *ours.running], ours.volumes)
    built = _built_sidecars(plan, defaults, intercept)
    setup, running, volumes = orjson.loads(built.sidecars)
    return Sidecars(setup=setup, running=running, volumes=volumes), built.digest


def _check_shared_process_namespace(spec: Mapping[str, Any]) -> None:
    """LMDB's reader table is keyed by PID: in separate PID namespaces every container's
    process is PID 1 and their read transactions collide, so an LMDB Pod shares one. A Pod
    that said ``false`` keeps its choice and is refused (never overridden silently)."""
    if spec.get("shareProcessNamespace") is False:
        raise InjectionConflict(
            "spec.shareProcessNamespace is false, but spec.store.engine: lmdb needs it true "
            "(LMDB's reader table is keyed by PID); remove the field, or use engine: redis"
        )


def _add_supplemental_group(spec: dict[str, Any], group: int) -> None:
    context = dict(spec.get("securityContext") or {})
    groups = list(context.get("supplementalGroups") or [])
    if group not in groups:
        groups.append(group)
    context["supplementalGroups"] = groups
    spec["securityContext"] = context


def _add_pull_secrets(spec: dict[str, Any], names: Sequence[str]) -> None:
    """Our sidecars' images may live in a private registry the app's own images do not: the
    operator's pull secrets join the Pod's, never replacing or duplicating one it has."""
    if not names:
        return
    secrets = list(spec.get("imagePullSecrets") or [])
    present = {s.get("name") for s in secrets if isinstance(s, Mapping)}
    secrets += [{"name": name} for name in names if name not in present]
    spec["imagePullSecrets"] = secrets


@dataclass(frozen=True, kw_only=True)
class PodPlan:
    """What an injected Pod gets, before any container is built: the effective defaults
    (operator settings, binding and Pod overrides merged), the merged bindings and the
    interceptor, if any."""

    defaults: InjectionDefaults
    sidecars: SidecarPlan
    intercept: InterceptPlan | None
    bindings_hash: str
    """:func:`binding_content_hash` of the selected bindings: what roll-outs compare."""


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which bindings apply to a Pod, and whether the Pod rules injection out: the cheap
    first half of :func:`decide`, without validating the Pod (the controller's status reads
    only this)."""

    pod: Mapping[str, Any]
    namespace: str
    selected: tuple[StateBinding, ...]
    """The existing bindings it names, or else those whose selector matches it."""
    missing: tuple[str, ...]
    """The bindings it names that do not exist."""
    skip: SkipReason | None
    """Why it gets no sidecars; ``None`` when it gets them."""


@dataclass(frozen=True, kw_only=True)
class Decision(Selection):
    """A Pod's full decision: with ``skip`` ``None``, ``plan`` says what it gets."""

    plan: PodPlan | None

    @property
    def reason(self) -> str | None:
        """:func:`describe_skip` of ``skip``, or ``None`` when the Pod is injected."""
        if self.skip is None:
            return None
        return describe_skip(self.skip, namespace=self.namespace, missing=self.missing)


def select(
    pod: Mapping[str, Any],
    *,
    bindings: Iterable[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
) -> Selection:
    """Which of ``namespace``'s ``bindings`` this Pod uses, and whether it is skipped.

    Never raises: a named binding that does not exist is in ``missing``, and a Pod that
    selects nothing (or only names missing bindings) is skipped with the reason why.
    """
    bindings = list(bindings)
    reason = skip_reason(pod, namespace=namespace, defaults=defaults)
    selected = tuple(select_bindings(pod, bindings, missing_ok=True))
    missing = missing_bindings(pod, bindings)
    if reason is None and not selected:
        reason = SkipReason.BINDINGS_MISSING if missing else SkipReason.NOT_SELECTED
    return Selection(pod=pod, namespace=namespace, selected=selected, missing=missing, skip=reason)


@dataclass(frozen=True)
class _Planned:
    bindings: tuple[StateBinding, ...]
    """The very objects planned for: held, so that no other object gets their ids."""
    plan: SidecarPlan
    bindings_hash: str


#: Plans by the ids of the bindings they were made for and the effective defaults.
_PLANNED: dict[tuple[tuple[int, ...], InjectionDefaults], _Planned] = {}
_PLANNED_MAX: int = 64


def _planned(
    selected: Sequence[StateBinding], *, defaults: InjectionDefaults
) -> tuple[SidecarPlan, str]:
    """:func:`plan_sidecars` and :func:`binding_content_hash` of ``selected``, made once per
    set of binding objects and defaults.

    Bindings are frozen models, and a changed binding is a new object (the index parses
    every version anew), so the objects themselves are the key: the Pods a binding selects
    share one plan until it changes. Raises what :func:`plan_sidecars` raises (not kept).
    """
    key = (tuple(map(id, selected)), defaults)
    known = _PLANNED.get(key)
    if known is not None and all(map(operator.is_, known.bindings, selected)):
        return known.plan, known.bindings_hash
    planned = _Planned(bindings=tuple(selected), plan=plan_sidecars(selected, defaults=defaults),
                       bindings_hash=binding_content_hash(selected))  # fmt: skip
    if len(_PLANNED) >= _PLANNED_MAX:
        _PLANNED.clear()  # bindings come and go: the plans of the ones in use are made again
    _PLANNED[key] = planned
    return planned.plan, planned.bindings_hash


def decide(
    pod: Mapping[str, Any],
    *,
    bindings: Iterable[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
    admit_missing: bool = False,
) -> Decision:
    """Whether and with what this Pod (or pod template) is injected; nothing is built yet.

    ``bindings`` are the StateBindings of ``namespace``; which of them apply is decided here.
    Raises :class:`InjectionConflict`, :class:`InvalidPod` or :class:`UnknownBinding` when the
    Pod cannot be injected as asked. Without ``admit_missing`` a named binding that does not
    exist raises :class:`UnknownBinding` (unless the Pod is ruled out anyway); with it, it is
    left out and reported in ``missing``: refusing would stop the workload's Pods.
    """
    selection = select(pod, bindings=bindings, namespace=namespace, defaults=defaults)
    skip = selection.skip
    if skip is not None and skip.rules_out_pod:
        # Whatever it names, it is not injected: nothing is missing for it.
        return Decision(pod=pod, namespace=namespace, selected=selection.selected, missing=(),
                        skip=skip, plan=None)  # fmt: skip
    if selection.missing and not admit_missing:
        raise UnknownBinding(
            f"annotation {ann.BINDINGS} names StateBinding(s) {', '.join(selection.missing)} "
            "that do not exist in this namespace; create them or fix the annotation"
        )
    if skip is not None:
        return Decision(pod=pod, namespace=namespace, selected=(), missing=selection.missing,
                        skip=skip, plan=None)  # fmt: skip
    selected = list(selection.selected)
    spec = pod.get("spec") or {}
    _check_shape(spec)
    try:
        effective = effective_defaults(pod, bindings=selected, defaults=defaults)
    except InvalidOverride as error:
        raise InvalidPod(str(error)) from None
    _check_conflicts(spec, defaults=effective)
    try:
        sidecars, selected_hash = _planned(selected, defaults=effective)
    except (OverlappingPrefixes, MixedEngines) as error:
        raise InjectionConflict(str(error)) from None
    try:
        intercept = plan_intercept(selected, spec=spec, defaults=effective)
    except InterceptError as exc:
        raise InjectionConflict(str(exc)) from None
    if sidecars.engine == "lmdb":
        if intercept is not None:
            raise InjectionConflict(
                "spec.intercept needs the Redis engine (its authorizer reads Redis); "
                "use spec.store.engine: redis for bindings with an intercept"
            )
        _check_shared_process_namespace(spec)
    plan = PodPlan(defaults=effective, sidecars=sidecars, intercept=intercept,
                   bindings_hash=selected_hash)  # fmt: skip
    return Decision(pod=pod, namespace=namespace, selected=selection.selected,
                    missing=selection.missing, skip=None, plan=plan)  # fmt: skip


def render(decision: Decision, *, share: bool = False) -> Injected:
    """The injected Pod of a decision that injects (``skip`` is ``None``); the decision's Pod
    is left as it was.

    The result is a deep copy: it shares no mutable object with the decision's Pod. With
    ``share`` only the levels that change (the Pod, its spec and metadata, the lists and
    containers we add to) are new objects, and the rest is shared with the decision's Pod:
    for the webhook, which renders once per Pod created and only serialises the result.
    """
    if decision.plan is None:
        raise ValueError(f"a skipped Pod is not rendered: {decision.reason}")
    plan = decision.plan
    defaults = plan.defaults
    ours, digest = sidecars_and_digest(plan=plan.sidecars, defaults=defaults,
                                       intercept=plan.intercept)  # fmt: skip

    original = decision.pod if share else copy.deepcopy(dict(decision.pod))
    injected = {**original, "spec": dict(original.get("spec") or {}),
                "metadata": dict(original.get("metadata") or {})}  # fmt: skip
    new_spec = injected["spec"]
    lmdb = plan.sidecars.engine == "lmdb"
    if lmdb:
        new_spec["shareProcessNamespace"] = True  # refused in decide() when set false
    app_inits = [
        wire_app_container(c, defaults=defaults, lmdb=lmdb)
        for c in new_spec.get("initContainers") or []
    ]
    apps = [
        wire_app_container(c, defaults=defaults, lmdb=lmdb)
        for c in new_spec.get("containers") or []
    ]
    if defaults.sidecar_mode == "native":
        # Native sidecars (restartPolicy: Always) after a mesh's, before the app's own init
        # containers: those and the app start only after Redis answers and the hydrator
        # reports the state hydrated. The one-shot credentials step goes right before them.
        native = [{**c, "restartPolicy": "Always"} for c in ours.running]
        new_spec["initContainers"] = place(app_inits, ours.setup + native)
        new_spec["containers"] = apps
    else:
        new_spec["initContainers"] = place(app_inits, ours.setup)
        new_spec["containers"] = apps + ours.running
    # What the apiserver's ServiceAccount plugin would add to our containers after this
    # webhook, and call the webhook again for (see injection.service_account). Not in the
    # config hash: it is the Pod's own token, not part of what we inject.
    mount_service_account_token(new_spec)
    new_spec["volumes"] = [*(new_spec.get("volumes") or []), *ours.volumes]
    if defaults.user_ids == "fixed":
        _add_supplemental_group(new_spec, defaults.socket_group)
    _add_pull_secrets(new_spec, defaults.image_pull_secrets)

    metadata = injected["metadata"]
    annotations = {
        **(metadata.get("annotations") or {}),
        ann.INJECTED_BINDINGS: ",".join(plan.sidecars.binding_names),
        ann.CONFIG_HASH: digest,
        ann.BINDINGS_HASH: plan.bindings_hash,
    }
    if defaults.prometheus_annotations and not any(
        key.startswith("prometheus.io/") for key in annotations
    ):
        # A Pod that already has prometheus.io annotations points them at its own metrics;
        # taking them over would silently stop that scrape.
        annotations[ann.PROMETHEUS_SCRAPE] = "true"
        annotations[ann.PROMETHEUS_PORT] = str(defaults.hydrator_port)
        annotations[ann.PROMETHEUS_PATH] = "/metrics"
    metadata["annotations"] = annotations
    metadata["labels"] = {
        **(metadata.get("labels") or {}),
        ann.INJECTED_LABEL: ann.INJECTED_LABEL_VALUE,
    }
    return Injected(
        pod=injected,
        bindings=plan.sidecars.binding_names,
        config_hash=digest,
        bindings_hash=plan.bindings_hash,
        missing=decision.missing,
    )


def inject_pod(
    pod: Mapping[str, Any],
    *,
    bindings: Iterable[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
    admit_missing: bool = False,
) -> Outcome:
    """:func:`decide`, then :func:`render` if the Pod is injected: the whole engine in one
    call, for callers that want the injected Pod (``sidecar-state inject``, tests)."""
    decision = decide(pod, bindings=bindings, namespace=namespace, defaults=defaults,
                      admit_missing=admit_missing)  # fmt: skip
    if decision.reason is not None:
        assert decision.skip is not None
        return Skipped(skip=decision.skip, reason=decision.reason, missing=decision.missing)
    return render(decision)


def bindings_hash(
    pod: Mapping[str, Any],
    *,
    bindings: Iterable[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
) -> str | None:
    """The bindings' content hash a Pod from this template would get now; ``None`` if it
    would not be injected.

    The controller writes it on pod templates (``template-hash``): when a binding changes,
    the hash changes, and the workload rolls so that new Pods get the new sidecars. It does
    not change with the operator's settings (see :func:`binding_content_hash`). It comes from
    the plan: no container is built and the template is not copied.
    """
    try:
        decision = decide(pod, bindings=bindings, namespace=namespace, defaults=defaults)
    except (InjectionConflict, UnknownBinding, InvalidPod):
        return None
    return decision.plan.bindings_hash if decision.plan is not None else None
