"""What a StateBinding may use: the platform's rules, checked when a binding is admitted.

Anyone who may create a StateBinding could otherwise point ``auth.secretRef`` at any Secret of
the namespace with ``username``/``password`` keys: the kubelet mounts it into the hydrator, and
the hydrator sends it over SASL to brokers of the author's choosing — reading Secrets without
``get secrets``. So a Secret must opt in (:data:`SECRET_OPT_IN`), and the operator may restrict
bootstrap servers to an allow-list of patterns. The decisions are pure; the webhook fetches
the Secret's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import StateBinding

SECRET_OPT_IN = ann.SECRET_OPT_IN


def secret_allows(metadata: Mapping[str, Any], *, binding: str) -> bool:
    """Whether a Secret (its metadata) lets the binding named ``binding`` use it.

    The label ``sidecarstate.dev/allow-bindings: "true"`` allows every binding of its
    namespace; the annotation of the same name allows ``*``/``true`` or a comma-separated
    list of binding names.
    """
    labels = metadata.get("labels") or {}
    if str(labels.get(SECRET_OPT_IN, "")).strip().lower() == "true":
        return True
    allowed = ann.split_names((metadata.get("annotations") or {}).get(SECRET_OPT_IN))
    return any(name in {"*", "true", binding} for name in allowed)


def secret_refusal(binding: StateBinding, *, secret: str, exists: bool) -> str:
    """The message that tells the author (and the Secret's owner) what to do."""
    kind = "kafka" if binding.spec.source.kafka is not None else "nats"
    where = f"spec.source.{kind}.auth.secretRef.name: Secret {secret!r}"
    label = f"kubectl label secret {secret} -n {binding.namespace} {SECRET_OPT_IN}=true"
    if not exists:
        return (
            f"{where} does not exist in namespace {binding.namespace}; create it first and "
            f"let it opt in to StateBindings ({label})"
        )
    return (
        f"{where} has not opted in to StateBindings, so no binding may send its credentials "
        f"to a server. Its owner can allow it: {label} (every binding of the namespace), or "
        f"annotate it {SECRET_OPT_IN}={binding.name} (this binding only)"
    )


def disallowed_servers(binding: StateBinding, *, allowed: Sequence[str]) -> list[tuple[int, str]]:
    """Bootstrap servers of the binding not matched by any pattern (``*`` wildcards) of
    ``allowed``; an empty allow-list allows any. The operator's defaults are always allowed."""
    kafka = binding.spec.source.kafka
    servers = (kafka.bootstrap_servers or ()) if kafka is not None else ()
    if not allowed:
        return []
    return [
        (index, server)
        for index, server in enumerate(servers)
        if not any(fnmatchcase(server.lower(), pattern.lower()) for pattern in allowed)
    ]


def servers_refusal(disallowed: Sequence[tuple[int, str]], *, allowed: Sequence[str]) -> str:
    problems = "; ".join(
        f"spec.source.kafka.bootstrapServers[{index}]: {server!r} is not allowed"
        for index, server in disallowed
    )
    return (
        f"{problems}. The operator only lets bindings read from brokers matching "
        f"{', '.join(allowed)} (Helm value kafka.allowedBootstrapServers); use one of those, "
        "omit bootstrapServers for the default, or ask the platform team to allow it"
    )
