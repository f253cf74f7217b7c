"""Label selector matching, as the apiserver does it, without the apiserver.

The webhook must decide on the admission path without network I/O, so it evaluates
StateBinding selectors itself; the semantics follow ``k8s.io/apimachinery/pkg/labels``.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar_operator.api.models import LabelSelector, LabelSelectorRequirement


def requirement_matches(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    match requirement.operator:
        case "In":
            return present and labels[requirement.key] in requirement.values
        case "NotIn":
            return not present or labels[requirement.key] not in requirement.values
        case "Exists":
            return present
        case "DoesNotExist":
            return not present
    raise AssertionError(requirement.operator)  # pragma: no cover - the model forbids it


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when every matchLabels pair and every matchExpressions term holds."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    return all(requirement_matches(term, labels) for term in selector.match_expressions)
