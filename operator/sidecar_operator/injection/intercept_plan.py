"""What the interceptor of one Pod is, decided from its bindings and its containers.

A binding's ``spec.intercept`` says which app port Envoy fronts and how requests are checked.
Here it meets the Pod: a port given by name is resolved against the app's containers, Envoy's
own port must not collide with the app's, probes sent through Envoy skip the check, and the
rules become the authorizer's contract with every key carrying the binding's ``keys.prefix``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar_authz.config import AuthorizerConfig, Credential, Injection, Response, Rule
from sidecar_operator.api.models import (
    DenyResponse,
    Intercept,
    InterceptRule,
    StateBinding,
    duration_ms,
)
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.names import INTERCEPT_PORT_NAME

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


class InterceptError(ValueError):
    """The binding's ``spec.intercept`` does not fit this Pod; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class InterceptPlan:
    binding: str
    intercept: Intercept
    app_port: int
    bypass_paths: tuple[str, ...]
    authorizer: AuthorizerConfig

    @property
    def timeout_ms(self) -> int:
        return duration_ms(self.intercept.timeout)

    @property
    def istio(self) -> bool:
        """Istio's sidecar calls the authorizer: no Envoy of ours is injected."""
        return self.intercept.mode == "istio"


def _response(deny: DenyResponse) -> Response:
    return Response(status=deny.status, headers=dict(deny.headers), body=deny.body)


def authorizer_rule(rule: InterceptRule, *, prefix: str) -> Rule:
    """One rule of the API as the authorizer reads it, keys prefixed as the hydrator wrote them."""
    credential = None
    if rule.credential is not None:
        given = rule.credential
        source, name = (
            ("header", given.header)
            if given.header is not None
            else ("cookie", given.cookie)
            if given.cookie is not None
            else ("query", given.query)
        )
        assert name is not None  # the model allows exactly one
        credential = Credential(source=source, name=name, prefix=given.prefix)  # type: ignore[arg-type]
    return Rule(
        name=rule.name,
        path_prefix=rule.match.path_prefix,
        methods=rule.match.methods,
        credential=credential,
        key=None if rule.key is None else prefix + rule.key,
        on_missing_credential=_response(rule.on_missing_credential),
        on_missing_key=rule.on_missing_key.action,
        missing_key_response=_response(rule.on_missing_key),
        inject=tuple(
            Injection(
                header=item.header,
                source=item.from_,
                key=None if item.key is None else prefix + item.key,
            )
            for item in rule.inject
        ),
        strip_upstream=rule.strip_upstream,
    )


def _app_ports(spec: Mapping[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if isinstance(number, int):
                ports[number] = number
                if port.get("name"):
                    ports[str(port["name"])] = number
    return ports


def _probe_paths_through_envoy(spec: Mapping[str, Any], listen_port: int) -> tuple[str, ...]:
    """Paths of the app's HTTP probes aimed at Envoy's port: the kubelet has no credential."""
    paths = set()
    for container in spec.get("containers") or []:
        for probe_name in PROBES:
            http_get = (container.get(probe_name) or {}).get("httpGet") or {}
            if http_get.get("port") in {listen_port, INTERCEPT_PORT_NAME}:
                paths.add(str(http_get.get("path") or "/").split("?", 1)[0])
    return tuple(sorted(paths))


def plan_intercept(
    bindings: Sequence[StateBinding], *, spec: Mapping[str, Any], defaults: InjectionDefaults
) -> InterceptPlan | None:
    """The Pod's interceptor, or ``None`` when no selected binding asks for one."""
    intercepting = sorted((b for b in bindings if b.spec.intercept), key=lambda b: b.name)
    if not intercepting:
        return None
    if len(intercepting) > 1:
        names = ", ".join(b.name for b in intercepting)
        raise InterceptError(
            f"StateBindings {names} all set spec.intercept for this Pod; a Pod has one "
            "interceptor: keep spec.intercept on one binding"
        )
    binding = intercepting[0]
    intercept = binding.spec.intercept
    assert intercept is not None
    ports = _app_ports(spec)
    where = f"StateBinding {binding.name}: spec.intercept"
    if isinstance(intercept.port, str) and intercept.port not in ports:
        named = ", ".join(sorted(str(p) for p in ports if isinstance(p, str))) or "none"
        raise InterceptError(
            f"{where}.port {intercept.port!r} is not a named containerPort of the Pod's "
            f"containers (named: {named})"
        )
    app_port = ports[intercept.port] if isinstance(intercept.port, str) else intercept.port
    istio = intercept.mode == "istio"
    if istio:
        # No Envoy of ours, so no listenPort; the loopback listener must be free instead.
        if defaults.authz_loopback_port in ports.values():
            raise InterceptError(
                f"{where}.mode istio: the authorizer's loopback port "
                f"{defaults.authz_loopback_port} (the operator's interceptor.istio."
                "authorizerPort) is a containerPort of the Pod; change one of them"
            )
    else:
        if intercept.listen_port in ports.values() or intercept.listen_port == app_port:
            raise InterceptError(
                f"{where}.listenPort {intercept.listen_port} is already a containerPort of the "
                "Pod; pick a free one"
            )
        reserved = {defaults.hydrator_port, defaults.authz_health_port}
        if intercept.listen_port in reserved:
            raise InterceptError(
                f"{where}.listenPort {intercept.listen_port} is used by sidecar-state"
            )
    prefix = binding.spec.keys.prefix
    authorizer = AuthorizerConfig(
        redis_socket=defaults.socket_path,
        listen_socket=defaults.authz_socket_path,
        health_port=defaults.authz_health_port,
        loopback_port=defaults.authz_loopback_port if istio else None,
        # Istio's Envoy has no filter of ours that drops forged headers before the check: the
        # authorizer names every injectable header it did not set, for Envoy to remove.
        remove_unset_headers=istio,
        rules=tuple(authorizer_rule(rule, prefix=prefix) for rule in intercept.rules),
    )
    return InterceptPlan(
        binding=binding.name,
        intercept=intercept,
        app_port=app_port,
        bypass_paths=() if istio else _probe_paths_through_envoy(spec, intercept.listen_port),
        authorizer=authorizer,
    )
