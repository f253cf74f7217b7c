"""StateBinding manifests for tests and benchmarks, as a user writes them in YAML (camelCase).

One builder, so that a field renamed in the API is renamed here once: the unit tests' seed
binding, the e2e suites' and the node suite's bindings are all calls of :func:`binding_doc`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

API_VERSION = "sidecarstate.dev/v1alpha1"


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:  # patch={path: ...} removes the field
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)


def binding_doc(
    name: str,
    *,
    namespace: str | None,
    match_labels: Mapping[str, str] | None = None,
    match_expressions: Sequence[Mapping[str, Any]] | None = None,
    topics: Sequence[str] = ("feature-flags",),
    bootstrap_servers: Sequence[str] | None = None,
    record_format: str | None = None,
    auth: Mapping[str, Any] | None = None,
    prefix: str = "flag:",
    value_field: str | None = "enabled",
    max_memory: str | None = "64Mi",
    eviction_policy: str | None = None,
    patch: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Kafka-sourced binding keyed by the records' ``id``. The selector is ``match_labels``
    and ``match_expressions``, or ``app: <name>`` without either. ``patch`` sets fields by
    dotted path (``{"spec.store.maxMemory": "lots"}``) after the rest is built, or removes
    them when the value is ``...``."""
    selector: dict[str, Any] = {}
    if match_labels is None and match_expressions is None:
        match_labels = {"app": name}
    if match_labels is not None:
        selector["matchLabels"] = dict(match_labels)
    if match_expressions is not None:
        selector["matchExpressions"] = copy.deepcopy(list(match_expressions))
    kafka: dict[str, Any] = {}
    if bootstrap_servers is not None:
        kafka["bootstrapServers"] = list(bootstrap_servers)
    kafka["topics"] = list(topics)
    if record_format is not None:
        kafka["format"] = record_format
    if auth is not None:
        kafka["auth"] = copy.deepcopy(dict(auth))
    keys: dict[str, Any] = {"prefix": prefix, "keyField": "id"}
    if value_field is not None:
        keys["valueField"] = value_field
    store: dict[str, Any] = {}
    if max_memory is not None:
        store["maxMemory"] = max_memory
    if eviction_policy is not None:
        store["evictionPolicy"] = eviction_policy
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "StateBinding",
        "metadata": metadata,
        "spec": {"selector": selector, "source": {"kafka": kafka}, "keys": keys, "store": store},
    }
    for dotted, value in (patch or {}).items():
        _set_path(doc, dotted, value)
    return doc
