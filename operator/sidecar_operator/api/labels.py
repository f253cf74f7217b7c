"""Every annotation and label sidecar-state reads or writes, in one place: part of the API.

Inputs are set by users on Pods, pod templates or Deployments; outputs are written by the
webhook and the controller and are what make injection idempotent and roll-outs deliberate.
The engine, the controller, the webhook's TLS and ``sidecar-state check`` all import them
from here, so that no copy can drift.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar_operator.api.models import GROUP

# Inputs (set by users).
INJECT = f"{GROUP}/inject"
"""``"false"`` opts a Pod out, whatever binding selects it."""
BINDINGS = f"{GROUP}/bindings"
"""Comma-separated StateBinding names that this Pod uses, instead of selector matching."""
TOPICS = f"{GROUP}/topics"
"""On a Deployment: topics to bind; the operator creates a StateBinding owned by it."""
MEMORY = f"{GROUP}/memory"
KEY_PREFIX = f"{GROUP}/key-prefix"
BOOTSTRAP_SERVERS = f"{GROUP}/bootstrap-servers"
FORMAT = f"{GROUP}/format"
NATS_KV = f"{GROUP}/nats-kv"
"""On a Deployment, instead of ``topics``: a NATS KV bucket to bind."""
NATS_STREAM = f"{GROUP}/nats-stream"
"""On a Deployment, instead of ``topics``: a NATS JetStream stream to bind."""
NATS_SERVERS = f"{GROUP}/nats-servers"
#: Any of these on a Deployment asks for an owned StateBinding.
SOURCE_ANNOTATIONS = (TOPICS, NATS_KV, NATS_STREAM)

SECRET_OPT_IN = f"{GROUP}/allow-bindings"
"""On a Secret: label ``"true"`` (any binding of its namespace) or annotation ``*`` or binding
names: which StateBindings may use it in ``auth.secretRef``. Without it, none may."""

# Outputs (written by sidecar-state).
INJECTED_BINDINGS = f"{GROUP}/injected-bindings"
"""The marker: a Pod that carries it has our sidecars and is never injected again."""
CONFIG_HASH = f"{GROUP}/config-hash"
"""Hash of what was injected: tells which configuration a running Pod has."""
BINDINGS_HASH = f"{GROUP}/bindings-hash"
"""Hash of the content of the bindings a Pod got (their names and specs, nothing of the
operator's own settings): what the controller compares to decide a roll-out. Pods injected by
versions before it have none."""
TEMPLATE_HASH = f"{GROUP}/template-hash"
"""On pod templates: the bindings' content hash; changing it rolls the workload."""
INJECTED_LABEL = f"{GROUP}/injected"
INJECTED_LABEL_VALUE = "true"
"""On injected Pods: what the chart's PodMonitor selects (annotations cannot be selected)."""
PROMETHEUS_SCRAPE = "prometheus.io/scrape"
PROMETHEUS_PORT = "prometheus.io/port"
PROMETHEUS_PATH = "prometheus.io/path"
"""Written on injected Pods when the operator is told to (Helm value
``monitoring.prometheusAnnotations``), and only when the Pod has none of its own."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "sidecar-state"
"""On StateBindings made from Deployment annotations (with :data:`OWNER_LABEL`)."""
TLS_SECRET_LABEL = f"{GROUP}/managed-by"
TLS_SECRET_LABEL_VALUE = "sidecar-state-operator"
"""On the webhook's TLS Secret when the operator writes it (``webhook.certificates: operator``).
A label of its own, not :data:`MANAGED_BY_LABEL`: Helm owns that one on the chart's objects."""
INJECTION_LABEL = f"{GROUP}/injection"
INJECTION_ENABLED = "enabled"
"""Namespace label kept by the controller on namespaces that hold StateBindings; the webhook's
namespaceSelector requires it, so other namespaces never depend on the webhook."""
INJECTION_PINNED = "always"
"""The same label set by a user (in a GitOps repository): the webhook serves the namespace
whether or not the controller runs, and the controller never changes it."""
INJECTION_LABEL_VALUES = (INJECTION_ENABLED, INJECTION_PINNED)
OWNER_LABEL = f"{GROUP}/owner"
"""On StateBindings made from Deployment annotations: the owning Deployment's name."""


def split_names(value: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the shape of every list-valued annotation."""
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def opted_out(annotations: Mapping[str, str]) -> bool:
    return annotations.get(INJECT, "").strip().lower() in {"false", "no", "0", "off"}


def already_injected(annotations: Mapping[str, str]) -> bool:
    return INJECTED_BINDINGS in annotations
