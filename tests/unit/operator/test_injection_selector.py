"""Label selectors, evaluated like k8s.io/apimachinery/pkg/labels, without an apiserver."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar_operator.api.models import LabelSelector
from sidecar_operator.injection.selector import selector_matches


def selector(**fields: Any) -> LabelSelector:
    return LabelSelector.model_validate(fields)


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    term: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        term["values"] = list(values)
    return term


CHECKOUT = {"app": "checkout", "tier": "web"}


@pytest.mark.parametrize(
    ("match_labels", "labels", "matches"),
    [
        pytest.param({"app": "checkout"}, CHECKOUT, True, id="equal value, extra labels ignored"),
        pytest.param({"app": "checkout", "tier": "web"}, CHECKOUT, True, id="all pairs equal"),
        pytest.param({"app": "cart"}, CHECKOUT, False, id="different value"),
        pytest.param({"app": "checkout", "tier": "db"}, CHECKOUT, False, id="one pair differs"),
        pytest.param({"team": "payments"}, CHECKOUT, False, id="label missing"),
        pytest.param({"app": "checkout"}, {}, False, id="pod without labels"),
        pytest.param({"app": ""}, {"app": ""}, True, id="empty value equals empty value"),
    ],
)
def test_match_labels(match_labels, labels, matches):
    assert selector_matches(selector(matchLabels=match_labels), labels) is matches


@pytest.mark.parametrize(
    ("term", "labels", "matches"),
    [
        pytest.param(expression("app", "In", "checkout", "cart"), CHECKOUT, True, id="In, listed"),
        pytest.param(expression("app", "In", "cart"), CHECKOUT, False, id="In, not listed"),
        pytest.param(expression("team", "In", "x"), CHECKOUT, False, id="In, label missing"),
        pytest.param(expression("app", "NotIn", "cart"), CHECKOUT, True, id="NotIn, not listed"),
        pytest.param(expression("app", "NotIn", "checkout"), CHECKOUT, False, id="NotIn, listed"),
        pytest.param(expression("team", "NotIn", "x"), CHECKOUT, True,
                     id="NotIn, label missing matches"),
        pytest.param(expression("tier", "Exists"), CHECKOUT, True, id="Exists, present"),
        pytest.param(expression("tier", "Exists"), {"tier": ""}, True,
                     id="Exists, present with empty value"),
        pytest.param(expression("team", "Exists"), CHECKOUT, False, id="Exists, missing"),
        pytest.param(expression("team", "DoesNotExist"), CHECKOUT, True,
                     id="DoesNotExist, missing"),
        pytest.param(expression("tier", "DoesNotExist"), CHECKOUT, False,
                     id="DoesNotExist, present"),
    ],
)  # fmt: skip
def test_match_expressions(term, labels, matches):
    assert selector_matches(selector(matchExpressions=[term]), labels) is matches


def test_expressions_are_anded():
    both = selector(
        matchExpressions=[expression("app", "In", "checkout"), expression("tier", "Exists")]
    )

    assert selector_matches(both, {"app": "checkout", "tier": "web"})
    assert not selector_matches(both, {"app": "checkout"})
    assert not selector_matches(both, {"tier": "web"})


def test_match_labels_and_expressions_are_anded():
    both = selector(
        matchLabels={"app": "checkout"}, matchExpressions=[expression("canary", "DoesNotExist")]
    )

    assert selector_matches(both, {"app": "checkout"})
    assert not selector_matches(both, {"app": "checkout", "canary": "true"})
    assert not selector_matches(both, {"app": "cart"})


def test_prefixed_label_keys_match_exactly():
    prefixed = selector(matchLabels={"sidecarstate.dev/tier": "gold"})

    assert selector_matches(prefixed, {"sidecarstate.dev/tier": "gold"})
    assert not selector_matches(prefixed, {"tier": "gold"})
