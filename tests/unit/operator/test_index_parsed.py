"""The StateBinding index gives the same parsed object again while what it keeps of a binding
is unchanged (the controller's status writes change nothing it keeps)."""

from __future__ import annotations

import copy

import pytest

from sidecar_operator.handlers.index import ParsedBindings


def _doc(binding_doc, **metadata):
    doc = binding_doc()
    doc["metadata"] = {"name": "feature-flags", "namespace": "shop", "uid": "u-1", **metadata}
    return {k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")}


def test_an_unchanged_binding_is_the_same_object(binding_doc):
    parsed = ParsedBindings()

    first = parsed.parse(_doc(binding_doc, generation=1))
    again = parsed.parse(copy.deepcopy(_doc(binding_doc, generation=1)))

    assert again is first


def test_a_changed_spec_or_label_is_parsed_anew(binding_doc):
    parsed = ParsedBindings()
    first = parsed.parse(_doc(binding_doc, generation=1))
    changed = _doc(binding_doc, generation=2)
    changed["spec"]["keys"] = {**changed["spec"]["keys"], "prefix": "feature:"}

    second = parsed.parse(changed)
    relabelled = parsed.parse(_doc(binding_doc, generation=2, labels={"team": "a"}))

    assert second is not first
    assert second.spec.keys.prefix == "feature:"
    assert relabelled is not second
    assert relabelled.metadata["labels"] == {"team": "a"}


def test_without_a_uid_every_event_is_parsed(binding_doc):
    parsed = ParsedBindings()
    doc = _doc(binding_doc)
    del doc["metadata"]["uid"]

    assert parsed.parse(doc) is not parsed.parse(copy.deepcopy(doc))


def test_an_invalid_binding_raises_every_time(binding_doc):
    parsed = ParsedBindings()
    doc = _doc(binding_doc)
    doc["spec"]["store"] = {"maxMemory": "a lot"}

    for _ in range(2):
        with pytest.raises(ValueError):
            parsed.parse(doc)


def test_past_its_capacity_it_forgets_and_parses_again(binding_doc):
    parsed = ParsedBindings(capacity=1)
    first = parsed.parse(_doc(binding_doc))
    parsed.parse(_doc(binding_doc, uid="u-2"))

    again = parsed.parse(_doc(binding_doc))

    assert again is not first
    assert again == first
