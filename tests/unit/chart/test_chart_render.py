"""The Helm chart, rendered with ``helm template`` and checked object by object.

Why render rather than read the templates: what the apiserver gets is the rendered YAML, and
that is where a wrong path, selector or verb would hide. The most important check is the first
one: the admission server serves two paths and answers 404 on any other, so a chart whose path
drifts from the code would refuse (or, with failurePolicy Ignore, skip) every Pod it selects.

helm is found through ``$HELM``, then ``PATH``, then the project's cache
(``${SIDECAR_STATE_CACHE:-~/.cache/sidecar-state}/k8s/<version>/bin/helm``, built by the e2e
cluster script); without any, these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import sidecar_operator.handlers.webhook  # noqa: F401  (registers the admission handlers)
from localkube.cache import cache_root
from sidecar_operator import __version__
from sidecar_operator.api import labels as ann
from sidecar_operator.api.models import GROUP, PLURAL, VERSION
from sidecar_operator.injection.defaults import SYSTEM_NAMESPACES, InjectionDefaults
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_config import (
    MUTATE_PODS,
    VALIDATE_BINDINGS,
    build_mutating_configuration,
    build_validating_configuration,
)
from sidecar_operator.webhook_server import ROUTES
from sidecar_operator.webhook_tls.x509 import service_hosts

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "sidecar-state"
RELEASE = "demo"
NAMESPACE = "sidecar-state-system"
FULLNAME = f"{RELEASE}-sidecar-state"
KUBE_VERSION = "1.34.0"  # explicit: a helm built from Go modules may report an old default

#: Settings the chart sets that settings.py gains with the certificates change (issue 5).
PENDING_SETTINGS = {"tls_secret", "webhook_service", "webhook_configuration"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"certManager": {"enabled": True}},
    "ignore": {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 10}},
    "custom": {
        "images": {
            "operator": {
                "repository": "registry.example/ops/operator",
                "tag": "9.9.9",
                "pullPolicy": "Always",
            },
            "hydrator": {"repository": "registry.example/ops/hydrator", "tag": "1.2.3"},
            "redis": {"repository": "registry.example/redis", "tag": "7.4.1"},
            "sidecarPullPolicy": "Always",
            "sidecarPullSecrets": ["registry-example", "mirror"],
        },
        "excludedNamespaces": ["monitoring", "istio-system"],
        "kafka": {"bootstrapServers": ["k1.data:9092", "k2.data:9092"]},
        "sidecars": {"mode": "containers", "maxMemory": "128Mi"},
        "webhook": {"replicas": 3},
    },
    "single": {"webhook": {"replicas": 1}, "controller": {"replicas": 0}},
    "no-rollouts": {"controller": {"rolloutWorkloads": False}},
    "namespaced": {"watchNamespaces": ["shop", "cart"]},
    "interceptor": {
        "interceptor": {
            "networkPolicies": True,
            "istio": {"provider": "sidecar-state-authz", "authorizerPort": 9477},
        }
    },
}


def find_helm() -> Path | None:
    """``$HELM``, then ``PATH``, then the newest helm in the project's cache."""
    configured = os.environ.get("HELM")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"HELM={configured} is not an executable file")
        return Path(configured)
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    built = sorted(cache_root().glob("k8s/*/bin/helm"), reverse=True)
    return next((path for path in built if os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def helm() -> Path:
    found = find_helm()
    if found is None:
        message = (
            "no helm: set $HELM, put helm on PATH, or build it with "
            "`scripts/setup.sh helm` (into ~/.cache/sidecar-state/k8s/*/bin/)"
        )
        if os.environ.get("CI"):  # setup must have built it
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None = None,
             tmp: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    extra: list[str] = []
    if values is not None and tmp is not None:
        values_file = tmp / "values.json"  # JSON is YAML: no quoting surprises
        values_file.write_text(json.dumps(values))
        extra = ["--values", str(values_file)]
    return subprocess.run(
        [str(helm), *args, *extra], capture_output=True, text=True, timeout=120, check=False
    )


Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Objects]:
    cache: dict[str, Objects] = {}

    def _render(name: str) -> Objects:
        if name not in cache:
            proc = run_helm(
                helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--kube-version", KUBE_VERSION, "--include-crds",
                values=VALUE_SETS[name], tmp=tmp_path_factory.mktemp(name),
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            cache[name] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        return cache[name]

    return _render


def of_kind(objects: Objects, kind: str) -> Objects:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(objects: Objects, role: str) -> dict[str, Any]:
    return one(objects, "Deployment", f"{FULLNAME}-{role}")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<ref>") for e in container.get("env", [])}


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def excluded(values: dict[str, Any]) -> list[str]:
    return [NAMESPACE, *values.get("excludedNamespaces", [])]


# --- the path is the handler id --------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_webhook_paths_equal_the_handler_ids(render: Callable[[str], Objects], values: str) -> None:
    objects = render(values)
    mutating = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    validating = one(objects, "ValidatingWebhookConfiguration")["webhooks"]
    assert [w["clientConfig"]["service"]["path"] for w in mutating] == [f"/{MUTATE_PODS}"]
    assert [w["clientConfig"]["service"]["path"] for w in validating] == [f"/{VALIDATE_BINDINGS}"]


def test_the_server_routes_are_the_path_constants() -> None:
    """Needs no helm: the admission server serves exactly the paths webhook_config builds."""
    assert set(ROUTES) == {f"/{MUTATE_PODS}", f"/{VALIDATE_BINDINGS}"}
    for config in (
        build_mutating_configuration(base_url="https://x", ca_bundle=b""),
        build_validating_configuration(base_url="https://x", ca_bundle=b""),
    ):
        (hook,) = config["webhooks"]
        assert hook["clientConfig"]["url"].removeprefix("https://x") in ROUTES


def test_the_server_routes_what_the_chart_calls(render: Callable[[str], Objects]) -> None:
    """The paths, operations and resources the admission server routes equal the chart's
    webhooks: a renamed path or a changed rule fails here, not in production."""
    objects = render("default")
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (webhook,) = one(objects, kind)["webhooks"]
        route = ROUTES[webhook["clientConfig"]["service"]["path"]]
        (rule,) = webhook["rules"]
        assert rule["operations"] == list(route.operations)
        assert rule["apiGroups"] == [route.group]
        assert rule["apiVersions"] == [route.version]
        assert rule["resources"] == [route.resource]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_webhooks_mirror_the_code_builders(render: Callable[[str], Objects], values: str) -> None:
    """The chart's webhooks are webhook_config's (used out of the cluster), bar clientConfig."""
    given = VALUE_SETS[values]
    policy = given.get("webhook", {}).get("failurePolicy", "Fail")
    timeout = given.get("webhook", {}).get("timeoutSeconds", 5)
    expected_mutating = build_mutating_configuration(
        base_url="https://unused", ca_bundle=b"", excluded_namespaces=excluded(given),
        served_namespaces=given.get("watchNamespaces", ()),
        failure_policy=policy, timeout_seconds=timeout, name=FULLNAME,
    )  # fmt: skip
    expected_validating = build_validating_configuration(
        base_url="https://unused", ca_bundle=b"", failure_policy=policy,
        timeout_seconds=timeout, name=FULLNAME,
    )  # fmt: skip
    objects = render(values)
    for expected in (expected_mutating, expected_validating):
        rendered = one(objects, expected["kind"], FULLNAME)

        def without_client_config(webhooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in hook.items() if k != "clientConfig"} for hook in webhooks]

        assert without_client_config(rendered["webhooks"]) == without_client_config(
            expected["webhooks"])  # fmt: skip


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_webhooks_call_the_service(render: Callable[[str], Objects], values: str) -> None:
    objects = render(values)
    service = one(objects, "Service")
    assert service["metadata"]["name"] == f"{FULLNAME}-webhook"
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (443, "webhook")
    webhook = deployment(objects, "webhook")
    assert service["spec"]["selector"] == webhook["spec"]["selector"]["matchLabels"]
    (container,) = webhook["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["webhook"] == int(env_of(container)["SIDECAR_STATE_WEBHOOK_PORT"]) == 8443
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in one(objects, kind)["webhooks"]:
            ref = hook["clientConfig"]["service"]
            assert (ref["name"], ref["namespace"], ref["port"]) == (
                service["metadata"]["name"], NAMESPACE, 443)  # fmt: skip
            assert "caBundle" not in hook["clientConfig"]  # injected, and kept by upgrades


# --- selectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_namespace_and_object_selectors(render: Callable[[str], Objects], values: str) -> None:
    (hook,) = one(render(values), "MutatingWebhookConfiguration")["webhooks"]
    opt_in, expression, *served = hook["namespaceSelector"]["matchExpressions"]
    assert len(served) == (1 if VALUE_SETS[values].get("watchNamespaces") else 0)
    assert opt_in == {"key": ann.INJECTION_LABEL, "operator": "In",
                      "values": ["enabled", "always"]}  # fmt: skip
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert expression["operator"] == "NotIn"
    assert expression["values"] == sorted({*SYSTEM_NAMESPACES, *excluded(VALUE_SETS[values])})
    assert hook["objectSelector"] == {"matchExpressions": [
        {"key": f"{GROUP}/inject", "operator": "NotIn", "values": ["false"]}]}  # fmt: skip
    assert (hook["sideEffects"], hook["reinvocationPolicy"]) == ("None", "IfNeeded")
    assert hook["rules"][0]["operations"] == ["CREATE"]


def test_failure_policy_and_timeout_come_from_values(render: Callable[[str], Objects]) -> None:
    for values, policy, timeout in (("default", "Fail", 5), ("ignore", "Ignore", 10)):
        objects = render(values)
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            (hook,) = one(objects, kind)["webhooks"]
            assert (hook["failurePolicy"], hook["timeoutSeconds"]) == (policy, timeout)


# --- Deployments -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_pods_are_hardened(render: Callable[[str], Objects], values: str) -> None:
    deployments = of_kind(render(values), "Deployment")
    assert deployments
    for item in deployments:
        pod = item["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID")
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"] and container["resources"]["limits"]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert container[probe]["httpGet"]["port"] == "health"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts  # the only writable places are volumes


def test_webhook_role_is_replicated_and_spread(render: Callable[[str], Objects]) -> None:
    objects = render("default")
    webhook = deployment(objects, "webhook")
    assert webhook["spec"]["replicas"] == 2
    assert webhook["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = webhook["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == (
        webhook["spec"]["selector"]["matchLabels"])  # fmt: skip
    (container,) = webhook["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["SIDECAR_STATE_ROLE"] == "webhook"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == webhook["spec"]["selector"]["matchLabels"]
    assert deployment(render("custom"), "webhook")["spec"]["replicas"] == 3


def test_controller_is_a_singleton_replaced_not_rolled(render: Callable[[str], Objects]) -> None:
    controller = deployment(render("default"), "controller")
    assert controller["spec"]["replicas"] == 1
    assert controller["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = controller["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["SIDECAR_STATE_ROLE"] == "controller"
    assert not any(name.startswith("SIDECAR_STATE_WEBHOOK") for name in env)
    selectors = {json.dumps(d["spec"]["selector"], sort_keys=True)
                 for d in of_kind(render("default"), "Deployment")}  # fmt: skip
    assert len(selectors) == 2  # the Service and the PDB never select the controller


def test_one_replica_gets_no_pdb_and_the_controller_can_be_off(
    render: Callable[[str], Objects],
) -> None:
    objects = render("single")
    assert not of_kind(objects, "PodDisruptionBudget")  # it would block every node drain
    assert [d["metadata"]["name"] for d in of_kind(objects, "Deployment")] == [
        f"{FULLNAME}-webhook"]  # fmt: skip


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_environment_is_what_the_operator_reads(
    render: Callable[[str], Objects], values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every SIDECAR_STATE_* variable is a settings field, and parses to what values asked."""
    given = VALUE_SETS[values]
    fields = set(OperatorSettings.model_fields)
    for item in of_kind(render(values), "Deployment"):
        (container,) = item["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        names = {name.removeprefix("SIDECAR_STATE_").lower() for name in env}
        assert names - fields - PENDING_SETTINGS == set(), "variables settings.py does not read"
        for name in list(os.environ):
            if name.startswith("SIDECAR_STATE_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            if value != "<ref>":
                monkeypatch.setenv(name, value)
        settings = OperatorSettings()
        images = given.get("images", {})
        hydrator = images.get("hydrator", {})
        redis = images.get("redis", {})
        assert settings.hydrator_image == (
            f"{hydrator.get('repository', 'ghcr.io/sidecar-state/hydrator')}:"
            f"{hydrator.get('tag', __version__)}")  # fmt: skip
        assert settings.redis_image == (
            f"{redis.get('repository', 'ghcr.io/sidecar-state/redis')}:"
            f"{redis.get('tag', '7.0-bookworm')}"
        )
        assert settings.image_pull_policy == images.get("sidecarPullPolicy", "IfNotPresent")
        assert settings.image_pull_secrets == tuple(images.get("sidecarPullSecrets", []))
        assert settings.bootstrap_servers == tuple(
            given.get("kafka", {}).get("bootstrapServers", ["kafka.kafka.svc:9092"])
        )
        assert settings.excluded_namespaces == tuple(given.get("excludedNamespaces", []))
        assert settings.sidecar_mode == given.get("sidecars", {}).get("mode", "auto")
        assert settings.max_memory == given.get("sidecars", {}).get("maxMemory", "64Mi")
        namespace_ref = next(e for e in container["env"] if e["name"] == "SIDECAR_STATE_NAMESPACE")
        assert namespace_ref["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_chart_defaults_equal_the_code_defaults(render: Callable[[str], Objects]) -> None:
    """A plain install injects what the operator's own defaults say (images, Kafka, memory)."""
    (container,) = deployment(render("default"), "webhook")["spec"]["template"]["spec"][
        "containers"]  # fmt: skip
    env = env_of(container)
    code = InjectionDefaults()
    assert env["SIDECAR_STATE_HYDRATOR_IMAGE"] == code.hydrator_image
    assert env["SIDECAR_STATE_REDIS_IMAGE"] == code.redis_image
    assert env["SIDECAR_STATE_ENVOY_IMAGE"] == code.envoy_image
    assert env["SIDECAR_STATE_BOOTSTRAP_SERVERS"] == ",".join(code.bootstrap_servers)
    assert env["SIDECAR_STATE_MAX_MEMORY"] == code.max_memory
    assert container["image"] == f"ghcr.io/sidecar-state/operator:{__version__}"


def test_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == chart["version"] == project["version"] == __version__
    for dockerfile in (ROOT / "operator" / "Dockerfile", ROOT / "hydrator" / "Dockerfile"):
        text = dockerfile.read_text()
        assert f"ARG VERSION={__version__}" in text
        assert re.search(r"^USER [0-9]+:[0-9]+$", text, re.MULTILINE), dockerfile
        assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text


# --- TLS --------------------------------------------------------------------------------------


def test_operator_managed_tls_is_wired_consistently(render: Callable[[str], Objects]) -> None:
    objects = render("default")
    (container,) = deployment(objects, "webhook")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    secret = env["SIDECAR_STATE_TLS_SECRET"]
    assert secret == f"{FULLNAME}-webhook-tls"
    assert env["SIDECAR_STATE_WEBHOOK_SERVICE"] == one(objects, "Service")["metadata"]["name"]
    assert env["SIDECAR_STATE_WEBHOOK_CONFIGURATION"] == FULLNAME
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert not mount["readOnly"]
    for name in ("SIDECAR_STATE_WEBHOOK_CERT_FILE", "SIDECAR_STATE_WEBHOOK_KEY_FILE"):
        assert Path(env[name]).parent == Path(mount["mountPath"])
    volumes = deployment(objects, "webhook")["spec"]["template"]["spec"]["volumes"]
    tls_volume = next(v for v in volumes if v["name"] == "tls")
    assert tls_volume["emptyDir"]["medium"] == "Memory"  # the key never touches a disk
    role = one(objects, "Role")
    by_verb = {verb: rule.get("resourceNames") for rule in role["rules"] for verb in rule["verbs"]}
    assert by_verb == {"create": None, "get": [secret], "update": [secret]}
    (role_binding,) = of_kind(objects, "RoleBinding")
    assert role_binding["subjects"][0]["name"] == f"{FULLNAME}-webhook"
    webhook_role = one(objects, "ClusterRole", f"{FULLNAME}-webhook")
    config_rule = next(r for r in webhook_role["rules"]
                       if r["apiGroups"] == ["admissionregistration.k8s.io"])  # fmt: skip
    assert config_rule["resourceNames"] == [FULLNAME]
    assert config_rule["verbs"] == ["get", "patch"]
    assert not of_kind(objects, "Certificate")


def test_cert_manager_issues_and_injects(render: Callable[[str], Objects]) -> None:
    objects = render("cert-manager")
    certificate = one(objects, "Certificate", f"{FULLNAME}-webhook")
    service = one(objects, "Service")["metadata"]["name"]
    assert certificate["spec"]["dnsNames"] == service_hosts(service=service, namespace=NAMESPACE)
    assert certificate["spec"]["secretName"] == f"{FULLNAME}-webhook-tls"
    issuer = one(objects, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == one(objects, "Certificate", f"{FULLNAME}-ca")[
        "spec"]["secretName"]  # fmt: skip
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = one(objects, kind)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-webhook"
    pod = deployment(objects, "webhook")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "SIDECAR_STATE_TLS_SECRET" not in env_of(container)
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert not of_kind(objects, "Role")  # no Secret access at all
    webhook_role = one(objects, "ClusterRole", f"{FULLNAME}-webhook")
    assert all(r["apiGroups"] != ["admissionregistration.k8s.io"] for r in webhook_role["rules"])


# --- RBAC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(render: Callable[[str], Objects], values: str) -> None:
    objects = render(values)
    roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            if "secrets" in rule["resources"] and role["kind"] == "ClusterRole":
                # Only the webhook's check of a binding's Secret opt-in label (metadata only).
                assert role["metadata"]["name"] == f"{FULLNAME}-webhook", role
                assert rule["verbs"] == ["get"] and rule["resources"] == ["secrets"], rule
    webhook_roles = [r for r in roles if r["metadata"]["name"] == f"{FULLNAME}-webhook"]
    rules = [rule for role in webhook_roles for rule in role["rules"]]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert (GROUP, PLURAL, "list") in granted and (GROUP, PLURAL, "watch") in granted
    assert not {v for g, r, v in granted if r == PLURAL} - {"list", "watch"}
    assert not {r for g, r, v in granted} & {"pods", "deployments", "namespaces"}
    assert {v for g, r, v in granted if r == "secrets"} == {"get"}
    for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "namespace": NAMESPACE,
                           "name": binding["roleRef"]["name"].removesuffix("-tls")}  # fmt: skip
    accounts = {sa["metadata"]["name"] for sa in of_kind(objects, "ServiceAccount")}
    for item in of_kind(objects, "Deployment"):
        assert item["spec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_controller_rbac_covers_the_calls_it_makes(render: Callable[[str], Objects]) -> None:
    controller = one(render("default"), "ClusterRole", f"{FULLNAME}-controller")
    granted = {(g, r, v) for rule in controller["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    needed = {
        (GROUP, PLURAL, verb) for verb in ("list", "watch", "create", "patch", "delete")
    } | {
        (GROUP, f"{PLURAL}/status", "patch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "namespaces", "get"),
        ("", "namespaces", "patch"),
        ("apps", "deployments", "watch"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    } | {("apps", kind, verb) for kind in ("deployments", "statefulsets", "daemonsets")
         for verb in ("list", "patch")}  # fmt: skip
    assert needed <= granted
    without_rollouts = one(render("no-rollouts"), "ClusterRole", f"{FULLNAME}-controller")
    writes = {(g, r, v) for rule in without_rollouts["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"] if g == "apps"}  # fmt: skip
    assert writes == {("apps", "deployments", "list"), ("apps", "deployments", "watch")}
    assert not {r for g, r, v in granted} & {"secrets", "configmaps", "serviceaccounts"}
    assert {v for g, r, v in granted if r == "namespaces"} == {"get", "patch"}


def test_interceptor_rights_are_granted_only_when_their_objects_are_enabled(
    render: Callable[[str], Objects],
) -> None:
    def granted(values: str) -> set[tuple[str, str, str]]:
        role = one(render(values), "ClusterRole", f"{FULLNAME}-controller")
        return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
                for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip

    kinds = {
        ("networking.k8s.io", "networkpolicies"),
        ("security.istio.io", "authorizationpolicies"),
    }
    assert not {(g, r) for g, r, _ in granted("default")} & kinds
    enabled = {(g, r, v) for g, r, v in granted("interceptor") if (g, r) in kinds}
    assert enabled == {(g, r, v) for g, r in kinds for v in ("get", "create", "patch", "delete")}
    objects = render("interceptor")
    env = {e["name"]: e.get("value") for e in one(objects, "Deployment", f"{FULLNAME}-controller")[
        "spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert env["SIDECAR_STATE_ISTIO_PROVIDER"] == "sidecar-state-authz"
    assert env["SIDECAR_STATE_NETWORK_POLICIES"] == "true"
    settings = OperatorSettings(**{k.removeprefix("SIDECAR_STATE_").lower(): v
                                   for k, v in env.items() if v is not None and k in {
                                       "SIDECAR_STATE_ISTIO_PROVIDER",
                                       "SIDECAR_STATE_ISTIO_AUTHORIZER_PORT",
                                       "SIDECAR_STATE_NETWORK_POLICIES"}})  # fmt: skip
    assert settings.injection_defaults().authz_loopback_port == 9477
    assert settings.network_policies and settings.istio_provider == "sidecar-state-authz"


def test_a_namespaced_install_holds_namespaced_rights_only_in_its_namespaces(
    render: Callable[[str], Objects],
) -> None:
    objects = render("namespaced")
    for role in ("webhook", "controller"):
        cluster_role = one(objects, "ClusterRole", f"{FULLNAME}-{role}")
        cluster_wide = {r for rule in cluster_role["rules"] for r in rule["resources"]}
        assert not cluster_wide & {"pods", PLURAL, "secrets", "deployments", "events"}, role
        roles = [
            r for r in of_kind(objects, "Role") if r["metadata"]["name"] == f"{FULLNAME}-{role}"
        ]
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["cart", "shop"]
    controller = one(objects, "ClusterRole", f"{FULLNAME}-controller")
    (namespaces,) = [rule for rule in controller["rules"] if "namespaces" in rule["resources"]]
    assert namespaces["resourceNames"] == ["shop", "cart"]
    (hook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    served = hook["namespaceSelector"]["matchExpressions"][-1]
    assert served == {"key": "kubernetes.io/metadata.name", "operator": "In",
                      "values": ["shop", "cart"]}  # fmt: skip
    env = {e["name"]: e.get("value") for e in one(objects, "Deployment", f"{FULLNAME}-controller")[
        "spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert env["SIDECAR_STATE_WATCH_NAMESPACES"] == "shop,cart"


def test_every_rbac_rule_is_justified_in_a_comment() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[number - 1].strip().startswith("#"), f"rbac.yaml:{number + 1}"


# --- what the chart must never contain -------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_nothing_redis_has_a_tcp_port(render: Callable[[str], Objects], values: str) -> None:
    """Redis is reached over the Unix socket only: no Service, port or probe on 6379."""
    for obj in render(values):
        for node in walk(obj):
            if not isinstance(node, dict):
                continue
            for key in ("port", "containerPort", "targetPort"):
                if key in node:
                    assert node[key] != 6379 and "redis" not in str(node[key]).lower(), obj
            if "name" in node and ("port" in node or "containerPort" in node):
                assert "redis" not in str(node["name"]).lower(), obj


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_kinds_and_crd(render: Callable[[str], Objects], values: str) -> None:
    objects = render(values)
    kinds = {obj["kind"] for obj in objects}
    expected = {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                "Deployment", "Service", "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration"}  # fmt: skip
    assert expected <= kinds
    crd = one(objects, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert [v["name"] for v in crd["spec"]["versions"]] == [VERSION]
    for obj in objects:
        cluster_scoped = obj["kind"] in {"CustomResourceDefinition", "ClusterRole",
                                         "ClusterRoleBinding", "MutatingWebhookConfiguration",
                                         "ValidatingWebhookConfiguration"}  # fmt: skip
        assert (obj["metadata"].get("namespace") is None) == cluster_scoped, obj["metadata"]
        if obj["kind"] != "CustomResourceDefinition":
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert len(obj["metadata"]["name"]) <= 63


# --- helm lint and the values schema ---------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint(helm: Path, values: str, tmp_path: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART),
                    values=VALUE_SETS[values], tmp=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"webhook": {"failurePolicy": "Maybe"}}, "failurePolicy"),
        ({"webhook": {"timeoutSeconds": 31}}, "timeoutSeconds"),
        ({"controller": {"replicas": 2}}, "replicas"),
        ({"excludedNamespaces": ["Not_A_Namespace"]}, "excludedNamespaces"),
        ({"kafka": {"bootstrapServers": []}}, "bootstrapServers"),
        ({"sidecars": {"mode": "sidecar"}}, "mode"),
        ({"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}, "name"),
        ({"imagesTypo": {}}, "imagesTypo"),
        # A foreign server's tag never falls back to the chart's appVersion.
        ({"images": {"redis": {"repository": "valkey/valkey", "tag": ""}}}, "tag"),
    ],
)
def test_schema_rejects_wrong_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION,
                    values=values, tmp=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert complaint in proc.stderr, proc.stderr
