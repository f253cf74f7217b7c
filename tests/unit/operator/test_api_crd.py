"""The StateBinding CRD: generated from the models, structural, and committed without drift."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar_operator.api.crd import CRD_FILE_NAME, build_crd, render_crd, structural
from sidecar_operator.api.models import TOPIC_PATTERN

REPO = Path(__file__).resolve().parents[3]
COMMITTED_CRDS = [
    REPO / "crds" / CRD_FILE_NAME,
    REPO / "charts" / "sidecar-state" / "crds" / CRD_FILE_NAME,
]
FORBIDDEN_IN_STRUCTURAL = ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "patternProperties")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def version(crd) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def root_schema(version) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def rendered() -> str:
    return render_crd()


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under ``node`` with its path (``.spec.source.kafka.topics[]``)."""
    yield path or ".", node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{*}}")


def test_schema_walk_reaches_deep_nodes(root_schema):
    # Guards the walker itself: the structural checks below are only as good as it is.
    paths = {path for path, _ in schema_nodes(root_schema)}

    assert ".spec.source.kafka.topics[]" in paths
    assert ".spec.selector.matchLabels{*}" in paths
    assert ".spec.selector.matchExpressions[].values[]" in paths
    assert ".status.conditions[].status" in paths


@pytest.mark.parametrize("key", FORBIDDEN_IN_STRUCTURAL)
def test_schema_has_no_non_structural_keyword(key, root_schema):
    offenders = [path for path, node in schema_nodes(root_schema) if key in node]

    assert offenders == [], f"{key} is not allowed in a structural schema: {offenders}"


def test_schema_never_says_additional_properties_false(root_schema):
    offenders = [
        path
        for path, node in schema_nodes(root_schema)
        if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict)
    ]

    assert offenders == []


def test_every_node_with_properties_is_an_object(root_schema):
    offenders = [
        path
        for path, node in schema_nodes(root_schema)
        if "properties" in node and node.get("type") != "object"
    ]

    assert offenders == []


def test_every_node_has_a_type(root_schema):
    # x-kubernetes-int-or-string is the one structural node without a type (ports by name).
    offenders = [
        path
        for path, node in schema_nodes(root_schema)
        if "type" not in node and not node.get("x-kubernetes-int-or-string")
    ]

    assert offenders == []


def test_defaults_are_only_scalars(root_schema):
    # Defaults of objects and lists would be applied by the apiserver and change stored objects.
    offenders = [
        path
        for path, node in schema_nodes(root_schema)
        if "default" in node and not isinstance(node["default"], str | int | float | bool)
    ]

    assert offenders == []


def test_schema_carries_the_validation_the_apiserver_can_do(root_schema):
    spec = root_schema["properties"]["spec"]
    kafka = spec["properties"]["source"]["properties"]["kafka"]
    store = spec["properties"]["store"]["properties"]

    assert root_schema["required"] == ["spec"]
    assert set(spec["required"]) == {"selector", "source"}
    assert kafka["required"] == ["topics"]
    assert kafka["properties"]["topics"]["minItems"] == 1
    assert kafka["properties"]["topics"]["items"]["pattern"] == TOPIC_PATTERN
    assert kafka["properties"]["format"]["enum"] == ["raw", "json", "debezium"]
    assert "noeviction" in store["evictionPolicy"]["enum"]
    assert store["evictionPolicy"]["default"] == "noeviction"
    assert "pattern" in store["maxMemory"]


def test_crd_identity(crd, version):
    names = crd["spec"]["names"]

    assert crd["metadata"]["name"] == "statebindings.sidecarstate.dev"
    assert crd["spec"]["group"] == "sidecarstate.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert (names["kind"], names["plural"], names["singular"]) == (
        "StateBinding",
        "statebindings",
        "statebinding",
    )
    assert names["shortNames"] == ["sb"]
    assert (version["name"], version["served"], version["storage"]) == (
        "v1alpha1",
        True,
        True,
    )


def test_crd_has_the_status_subresource(version, root_schema):
    assert version["subresources"] == {"status": {}}
    assert root_schema["properties"]["status"]["type"] == "object"


def test_printer_columns_include_topics_memory_injected_ready_age_in_that_order(version):
    names = [column["name"] for column in version["additionalPrinterColumns"]]
    wanted = ["Topics", "Memory", "Injected", "Ready", "Age"]

    assert [name for name in names if name in wanted] == wanted


def test_age_column_is_the_creation_timestamp(version):
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}

    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


def test_every_status_column_points_at_a_status_field(version, root_schema):
    status_fields = root_schema["properties"]["status"]["properties"]
    columns = [
        c for c in version["additionalPrinterColumns"] if c["jsonPath"].startswith(".status.")
    ]

    assert columns, "expected columns read from .status"
    for column in columns:
        field = column["jsonPath"].removeprefix(".status.")
        assert field in status_fields, f"column {column['name']} reads a missing {field}"
        assert status_fields[field]["type"] == column["type"], column["name"]


def field_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every *field* (a property, also inside list items and map values) under ``node``."""
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from field_nodes(child, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{*}")):
        if isinstance(node.get(key), dict):
            yield from field_nodes(node[key], f"{path}{suffix}")


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_has_a_description_for_kubectl_explain(part, root_schema):
    fields = list(field_nodes(root_schema["properties"][part], f".{part}"))
    missing = [path for path, node in fields if not node.get("description", "").strip()]

    assert len(fields) > 10, "the walk found too few fields to be trusted"
    assert missing == [], f"fields without a description (add Field(description=...)): {missing}"


def test_user_fields_say_their_default_and_give_an_example(root_schema):
    # kubectl explain is read instead of the README: each spec field says what happens when it
    # is left out, and shows a value.
    spec_fields = list(field_nodes(root_schema["properties"]["spec"], ".spec"))
    vague = [
        path
        for path, node in spec_fields
        if "Example:" not in node["description"]
        or not ("Default:" in node["description"] or "Required." in node["description"])
    ]

    assert vague == []


def test_explain_of_topics_says_what_it_is(root_schema):
    kafka = root_schema["properties"]["spec"]["properties"]["source"]["properties"]["kafka"]

    assert "Kafka topics" in kafka["properties"]["topics"]["description"]
    assert "Default: earliest" in kafka["properties"]["startFrom"]["description"]


def test_wide_columns_show_source_hydrated_and_worst_staleness(version):
    wide = {c["name"]: c for c in version["additionalPrinterColumns"] if c.get("priority") == 1}

    assert wide["Source"]["jsonPath"] == ".status.source"
    assert wide["Worst-Staleness"]["jsonPath"] == ".status.worstStalenessSeconds"
    assert wide["Hydrated"]["jsonPath"] == ".status.hydratedPods"


def test_render_crd_is_the_crd_as_yaml_with_a_do_not_edit_header(crd, rendered):
    assert rendered.startswith("# Generated from sidecar_operator.api.models by `make crds`.")
    assert "Do not edit" in rendered.splitlines()[0]
    assert yaml.safe_load(rendered) == crd


@pytest.mark.parametrize("path", COMMITTED_CRDS, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_crd_matches_the_models(path, rendered):
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run `make crds`"
    assert path.read_text() == rendered, (
        f"{path.relative_to(REPO)} differs from the models: run `make crds` and commit the result"
    )


# --- the JSON Schema -> structural translation ------------------------------------------------


def test_structural_inlines_refs_and_keeps_sibling_keys():
    schema = {
        "$defs": {
            "Keys": {"title": "Keys", "type": "object", "properties": {"a": {"type": "string"}}}
        },
        "type": "object",
        "properties": {"keys": {"$ref": "#/$defs/Keys", "description": "how keys are made"}},
    }

    assert structural(schema) == {
        "type": "object",
        "properties": {
            "keys": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "description": "how keys are made",
            }
        },
    }


def test_structural_turns_optional_into_the_plain_type():
    node = {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "N"}

    assert structural(node) == {"type": "integer"}


def test_structural_refuses_a_real_union():
    with pytest.raises(ValueError, match="cannot express anyOf"):
        structural({"anyOf": [{"type": "integer"}, {"type": "string"}]})


def test_structural_drops_additional_properties_false_and_pattern_properties_keys():
    node = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "labels": {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        },
    }

    assert structural(node) == {
        "type": "object",
        "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
    }


def test_structural_flattens_descriptions_to_one_line_without_rst_quotes():
    node = {"type": "string", "description": "The ``prefix``\n    of every key."}

    assert structural(node)["description"] == "The prefix of every key."
