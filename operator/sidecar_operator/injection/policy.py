"""What a StateBinding may use: the platform's rules, checked when a binding is admitted.

Anyone who may create a StateBinding could otherwise point ``auth.secretRef`` at any Secret of
the namespace with ``username``/``password`` keys: the kubelet mounts it into the hydrator, and
the hydrator sends it over SASL to brokers of the author's choosing — reading Secrets without
``get secrets``. So a Secret must opt in (:data:`SECRET_OPT_IN`), and the operator may restrict
Kafka bootstrap servers and NATS servers to allow-lists of patterns. The decisions are pure;
the webhook fetches the Secret's metadata.
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
    """Servers of the binding not matched by any pattern (``*`` wildcards) of ``allowed``;
    an empty allow-list allows any. The operator's defaults are always allowed.

    Kafka's bootstrap servers are matched as written (``host:port``); a NATS server by its
    ``host:port``, the scheme dropped, so one pattern covers ``nats://`` and ``tls://``."""
    source = binding.spec.source
    if source.kafka is not None:
        servers = tuple(source.kafka.bootstrap_servers or ())
        address = list(servers)
    else:
        servers = tuple(source.nats.servers or ()) if source.nats is not None else ()
        address = [server.partition("://")[2] or server for server in servers]
    if not allowed:
        return []
    return [
        (index, server)
        for index, (server, host_port) in enumerate(zip(servers, address, strict=True))
        if not any(fnmatchcase(host_port.lower(), pattern.lower()) for pattern in allowed)
    ]


#: Per source: the field that names servers, the Helm value of its allow-list.
_SERVER_FIELDS = {
    "kafka": ("spec.source.kafka.bootstrapServers", "kafka.allowedBootstrapServers", "brokers"),
    "nats": ("spec.source.nats.servers", "nats.allowedServers", "NATS servers"),
}


def servers_refusal(
    disallowed: Sequence[tuple[int, str]], *, allowed: Sequence[str], source: str = "kafka"
) -> str:
    field, value, what = _SERVER_FIELDS[source]
    problems = "; ".join(
        f"{field}[{index}]: {server!r} is not allowed" for index, server in disallowed
    )
    omit = "bootstrapServers" if source == "kafka" else "servers"
    return (
        f"{problems}. The operator only lets bindings read from {what} matching "
        f"{', '.join(allowed)} (Helm value {value}); use one of those, "
        f"omit {omit} for the default, or ask the platform team to allow it"
    )
