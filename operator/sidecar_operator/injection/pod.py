"""The injection engine: Pod (or pod template) + bindings + defaults -> injected Pod.

A pure function, shared by the admission webhook, ``sidecar-state inject`` and the
controller's hash computation, so that all three agree by construction. It never mutates its
input and never does I/O.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar_operator.api.models import StateBinding
from sidecar_operator.injection import annotations as ann
from sidecar_operator.injection.app_containers import wire_app_container
from sidecar_operator.injection.authorizer_container import build_authorizer_container
from sidecar_operator.injection.credentials_container import build_credentials_container
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.envoy_container import build_envoy_container
from sidecar_operator.injection.hydrator_container import build_hydrator_container
from sidecar_operator.injection.intercept_plan import InterceptError, InterceptPlan, plan_intercept
from sidecar_operator.injection.names import CONTAINER_NAMES, CREDENTIALS_DIR, VOLUME_NAMES
from sidecar_operator.injection.plan import OverlappingPrefixes, SidecarPlan, plan_sidecars
from sidecar_operator.injection.redis_container import build_redis_container
from sidecar_operator.injection.selector import selector_matches
from sidecar_operator.injection.volumes import build_volumes


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


@dataclass(frozen=True, kw_only=True)
class Skipped:
    reason: str


Outcome = Injected | Skipped


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def select_bindings(pod: Mapping[str, Any], bindings: Iterable[StateBinding]) -> list[StateBinding]:
    """The bindings this Pod uses: those it names, or else those whose selector matches.

    Bindings must already be those of the Pod's namespace: a selector never reaches across.
    """
    meta = _meta(pod)
    available = {b.name: b for b in bindings}
    named = tuple(dict.fromkeys(ann.split_names((meta.get("annotations") or {}).get(ann.BINDINGS))))
    if named:
        missing = [name for name in named if name not in available]
        if missing:
            raise UnknownBinding(
                f"annotation {ann.BINDINGS} names StateBinding(s) {', '.join(missing)} "
                "that do not exist in this namespace; create them or fix the annotation"
            )
        return [available[name] for name in named]
    labels = meta.get("labels") or {}
    return [b for b in available.values() if selector_matches(b.spec.selector, labels)]


def skip_reason(
    pod: Mapping[str, Any], *, namespace: str, defaults: InjectionDefaults
) -> str | None:
    """Why this Pod is never injected, whatever binds it; ``None`` when it may be."""
    annotations = _meta(pod).get("annotations") or {}
    spec = pod.get("spec") or {}
    if namespace in defaults.excluded_namespaces:
        return f"namespace {namespace} is excluded"
    if ann.opted_out(annotations):
        return f"opted out with {ann.INJECT}: false"
    if ann.already_injected(annotations):
        return "already injected"
    if spec.get("hostNetwork"):
        return "hostNetwork Pods are never injected"
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
            if mount.get("mountPath") in (defaults.socket_dir, CREDENTIALS_DIR):
                raise InjectionConflict(
                    f"container {container.get('name')!r} already mounts "
                    f"{mount['mountPath']}, where sidecar-state puts its socket and credentials"
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
    running = [
        build_redis_container(plan=plan, defaults=defaults),
        build_hydrator_container(plan=plan, defaults=defaults),
    ]
    if intercept is not None:
        running.append(build_authorizer_container(plan=intercept, defaults=defaults))
        running.append(build_envoy_container(plan=intercept, defaults=defaults))
    return Sidecars(
        setup=[build_credentials_container(defaults=defaults)],
        running=running,
        volumes=build_volumes(plan=plan),
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


def inject_pod(
    pod: Mapping[str, Any],
    *,
    bindings: Iterable[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
) -> Outcome:
    """Inject one Pod or pod template (``{"metadata": ..., "spec": ...}``).

    ``bindings`` are the StateBindings of ``namespace``; which of them apply is decided here.
    Raises :class:`InjectionConflict` or :class:`UnknownBinding` when the Pod cannot be
    injected as asked; returns :class:`Skipped` when it should not be.
    """
    reason = skip_reason(pod, namespace=namespace, defaults=defaults)
    if reason is not None:
        return Skipped(reason=reason)
    selected = select_bindings(pod, bindings)
    if not selected:
        return Skipped(reason="no StateBinding selects this Pod")
    spec = pod.get("spec") or {}
    _check_shape(spec)
    _check_conflicts(spec, defaults=defaults)

    try:
        plan = plan_sidecars(selected, defaults=defaults)
    except OverlappingPrefixes as error:
        raise InjectionConflict(str(error)) from None
    try:
        intercept = plan_intercept(selected, spec=spec, defaults=defaults)
    except InterceptError as exc:
        raise InjectionConflict(str(exc)) from None
    ours = build_sidecars(plan=plan, defaults=defaults, intercept=intercept)
    digest = config_hash([*ours.setup, *ours.running], ours.volumes)

    injected = copy.deepcopy(dict(pod))
    new_spec = injected.setdefault("spec", {})
    app_inits = [
        wire_app_container(c, defaults=defaults) for c in new_spec.get("initContainers") or []
    ]
    apps = [wire_app_container(c, defaults=defaults) for c in new_spec.get("containers") or []]
    if defaults.sidecar_mode == "native":
        # Native sidecars (restartPolicy: Always) first: later init containers and the app
        # start only after Redis answers and the hydrator reports the state hydrated.
        native = [{**c, "restartPolicy": "Always"} for c in ours.running]
        new_spec["initContainers"] = ours.setup + native + app_inits
        new_spec["containers"] = apps
    else:
        new_spec["initContainers"] = ours.setup + app_inits
        new_spec["containers"] = apps + ours.running
    new_spec["volumes"] = [*(new_spec.get("volumes") or []), *ours.volumes]
    _add_supplemental_group(new_spec, defaults.socket_group)
    _add_pull_secrets(new_spec, defaults.image_pull_secrets)

    metadata = injected.setdefault("metadata", {})
    annotations = {
        **(metadata.get("annotations") or {}),
        ann.INJECTED_BINDINGS: ",".join(plan.binding_names),
        ann.CONFIG_HASH: digest,
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
    return Injected(pod=injected, bindings=plan.binding_names, config_hash=digest)


def bindings_hash(
    pod: Mapping[str, Any],
    *,
    bindings: Iterable[StateBinding],
    namespace: str,
    defaults: InjectionDefaults,
) -> str | None:
    """The config hash a Pod from this template would get now; ``None`` if not injected.

    The controller writes it on pod templates (``template-hash``): when a binding changes,
    the hash changes, and the workload rolls so that new Pods get the new sidecars.
    """
    try:
        outcome = inject_pod(pod, bindings=bindings, namespace=namespace, defaults=defaults)
    except (InjectionConflict, UnknownBinding, InvalidPod):
        return None
    return outcome.config_hash if isinstance(outcome, Injected) else None
