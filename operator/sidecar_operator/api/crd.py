"""Generate the StateBinding CustomResourceDefinition from the pydantic models.

The CRD in ``crds/`` and in the chart is written by ``make crds`` from this module and never
edited by hand; a unit test regenerates it and fails on drift. Pydantic emits JSON Schema, the
apiserver wants a *structural* OpenAPI v3 schema: no ``$ref``, no ``anyOf`` with ``null``,
no ``additionalProperties: false``, no ``patternProperties``, no ``title``.
:func:`structural` does that translation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sidecar_operator.api.models import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    StateBindingSpec,
    StateBindingStatus,
)

CRD_FILE_NAME = "sidecarstate.dev_statebindings.yaml"

_DROPPED_KEYS = {"title", "propertyNames", "$defs"}

PRINTER_COLUMNS = (
    {"name": "Topics", "type": "string", "jsonPath": ".status.topics"},
    {"name": "Memory", "type": "string", "jsonPath": ".status.memory"},
    {"name": "Matched", "type": "integer", "jsonPath": ".status.matchedPods"},
    {"name": "Injected", "type": "integer", "jsonPath": ".status.injectedPods"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": ".status.reason",
        "description": "Why the binding is (not) Ready; the Ready condition's message says more",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # priority 1: shown by `kubectl get -o wide` only.
    {
        "name": "Source",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.source",
        "description": "Where the records come from",
    },
    {
        "name": "Hydrated",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.hydratedPods",
        "description": "Pods whose hydrator reports a complete view",
    },
    {
        "name": "Worst-Staleness",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.worstStalenessSeconds",
        "description": "Seconds: the largest staleness among the binding's hydrators",
    },
)


def structural(schema: dict[str, Any], *, defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate one pydantic JSON Schema node into a structural OpenAPI v3 node."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs=defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {schema['anyOf']} structurally")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return structural({**options[0], **rest}, defs=defs)

    node: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and (value is None or isinstance(value, dict | list)):
            continue
        if key == "additionalProperties":
            if isinstance(value, dict):
                node[key] = structural(value, defs=defs)
            continue
        if key == "patternProperties":
            # Structural schemas forbid patternProperties: keep the value schema, and leave the
            # key pattern to the webhook's validation.
            (value_schema,) = value.values()
            node["additionalProperties"] = structural(value_schema, defs=defs)
            continue
        if key == "properties":
            node[key] = {name: structural(sub, defs=defs) for name, sub in value.items()}
        elif key == "items":
            node[key] = structural(value, defs=defs)
        elif key == "description":
            node[key] = " ".join(value.replace("``", "").split())
        else:
            node[key] = value
    return node


def openapi_schema() -> dict[str, Any]:
    spec = structural(StateBindingSpec.model_json_schema(by_alias=True, mode="validation"))
    status = structural(StateBindingStatus.model_json_schema(by_alias=True, mode="serialization"))
    return {
        "type": "object",
        "description": (
            "StateBinding gives the Pods it selects a local Redis over a Unix socket, "
            "kept current from Kafka topics by a hydrator sidecar."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": f"{GROUP}/{VERSION}. Example: {GROUP}/{VERSION}",
            },
            "kind": {"type": "string", "description": f"{KIND}. Example: {KIND}"},
            # The apiserver refuses anything but type on metadata (even a description).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    """The StateBinding CRD as a plain dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "sidecar-state"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["sidecar-state"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(PRINTER_COLUMNS),
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated from sidecar_operator.api.models by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def write_crds(*targets: Path) -> list[Path]:
    """Write the CRD into each target folder; return the files written."""
    text = render_crd()
    written = []
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CRD_FILE_NAME
        path.write_text(text)
        written.append(path)
    return written
