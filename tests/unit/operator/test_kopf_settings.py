"""kopf's settings: no essence (two deep copies and a diff per event) for the kinds whose
handlers never read it, and the full one for the rest."""

from __future__ import annotations

import importlib

import kopf
import pytest
from kopf._cogs.structs.references import Resource

from sidecar_operator.run import ESSENCE_UNREAD, ROLE_MODULES, DiffBaseOnlyWhereRead

PLURALS = {
    "Pod": "pods",
    "Deployment": "deployments",
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}


def _resource(api_version: str, kind: str) -> Resource:
    group, _, version = api_version.rpartition("/")
    return Resource(group=group, version=version, plural=PLURALS[kind], kind=kind,
                    namespaced=kind in {"Pod", "Deployment"})  # fmt: skip


@pytest.mark.parametrize("api_version, kind", sorted(ESSENCE_UNREAD))
def test_no_handler_reads_the_essence_of_the_kinds_that_get_none(api_version, kind):
    """Only change handlers (kopf.on.create/update/delete/resume/field) and daemons or timers
    are given the diff that the essence is built for: none may exist for these kinds."""
    for module in [*ROLE_MODULES["all"], "sidecar_operator.handlers.lifecycle",
                   "sidecar_operator.handlers.ca_bundle"]:  # fmt: skip
        importlib.import_module(module)
    registry = kopf.get_default_registry()
    resource = _resource(api_version, kind)

    assert not registry._changing.has_handlers(resource=resource)
    assert not registry._spawning.has_handlers(resource=resource)
    # ... and kopf does watch them (an index, or on.event): the shortcut is not dead code.
    assert registry._indexing.has_handlers(resource=resource) or registry._watching.has_handlers(
        resource=resource
    )


def test_pods_get_an_empty_essence_and_bindings_the_full_one():
    storage = DiffBaseOnlyWhereRead(prefix="sidecarstate.dev", key="last-handled-configuration")
    pod = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "app"}]}})  # fmt: skip
    binding = kopf.Body({"apiVersion": "sidecarstate.dev/v1alpha1", "kind": "StateBinding",
                         "metadata": {"name": "b", "labels": {"x": "y"}},
                         "spec": {"selector": {}}, "status": {"phase": "Ready"}})  # fmt: skip

    assert storage.build(body=pod) == {}
    assert storage.build(body=binding) == {"spec": {"selector": {}},
                                           "metadata": {"labels": {"x": "y"}}}  # fmt: skip
