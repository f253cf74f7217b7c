"""The session demo's manifest (demo/session.yaml) is a binding the webhook accepts for its app."""

from __future__ import annotations

import yaml

from demo.session import MANIFEST, PORT, manifest
from images.build import image_refs
from sidecar_operator.api.models import parse_binding
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.injection.intercept_plan import plan_intercept


def test_the_session_binding_intercepts_the_demo_apps_port() -> None:
    binding_doc, deployment = yaml.safe_load_all(MANIFEST.read_text())
    binding = parse_binding(binding_doc)
    pod_spec = deployment["spec"]["template"]["spec"]
    plan = plan_intercept([binding], spec=pod_spec, defaults=InjectionDefaults())
    assert plan is not None and plan.app_port == 8080
    assert plan.intercept.listen_port == PORT
    # The kubelet's probe goes through Envoy without a token: it must skip the check.
    assert "/healthz" in plan.bypass_paths
    (rule,) = plan.authorizer.rules
    assert rule.key == "session:{credential}"  # keys.prefix + the rule's key


def test_the_demo_app_image_is_the_one_built_here() -> None:
    _, deployment = yaml.safe_load_all(manifest())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == image_refs()["demo-app"]
