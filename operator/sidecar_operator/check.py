"""``sidecar-state check``: is this installation healthy, and if not, what to do.

Modelled on ``linkerd check``: a list of named checks, each ✓ or ✗, where every ✗ says what
to do. The checks are pure functions over what was read from the cluster (:class:`Facts`), so
they are tested without one; :func:`gather` is the thin edge that reads it, and the two probes
of the webhook's endpoint (:func:`probe_url`, :func:`probe_service`) are the only network calls
besides the API's.

What is checked, in order: the CRD is installed and is the one this CLI generates; both webhook
configurations exist, their caBundle verifies the serving certificate and the endpoint answers;
the controller is up; each namespace with bindings carries the injection label; every binding is
Ready; the Pods the bindings select carry the sidecars; their hydrators are hydrated and fresh
(as the controller recorded on the status).
"""

from __future__ import annotations

import base64
import binascii
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sidecar_operator import __version__
from sidecar_operator.api import labels as ann
from sidecar_operator.api.crd import build_crd
from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding, parse_binding
from sidecar_operator.controller.status import pod_counts, survey_pods
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.webhook_config import MUTATE_PODS, VALIDATE_BINDINGS

CRD_NAME = f"{PLURAL}.{GROUP}"
MUTATING_WEBHOOK = f"{MUTATE_PODS}.{GROUP}"
VALIDATING_WEBHOOK = f"{VALIDATE_BINDINGS}.{GROUP}"
DEFAULT_MAX_STALENESS_SECONDS = 300
PROBE_TIMEOUT_SECONDS = 5.0
OK = "\u2713"
FAILED = "\u2717"


@dataclass(frozen=True, kw_only=True)
class Result:
    """One line of the report: a check that passed, or failed with what to do about it."""

    group: str
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What calling the webhook's endpoint told: did TLS verify with the caBundle, did it
    answer. ``verified`` is None when the check could not tell (no serving certificate)."""

    answered: bool
    verified: bool | None
    detail: str


@dataclass(kw_only=True)
class Facts:
    """Everything the checks read, as plain API objects."""

    crd: dict[str, Any] | None
    mutating: list[dict[str, Any]]
    validating: list[dict[str, Any]]
    probes: dict[str, Probe]
    controllers: list[dict[str, Any]]
    namespaces: dict[str, dict[str, Any]]
    bindings: list[dict[str, Any]]
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# --- the checks: pure ------------------------------------------------------------------------


def _served_versions(crd: Mapping[str, Any]) -> dict[str, Any]:
    return {v["name"]: v for v in crd.get("spec", {}).get("versions", [])}


def check_crd(crd: Mapping[str, Any] | None) -> list[Result]:
    group = "CRD"
    apply = "kubectl apply --server-side -f crds/ (or `sidecar-state crd | kubectl apply -f -`)"
    if crd is None:
        return [Result(group=group, name=f"{CRD_NAME} is installed", ok=False,
                       fix=f"install it: {apply}, or `helm install` the chart")]  # fmt: skip
    results = [Result(group=group, name=f"{CRD_NAME} is installed", ok=True)]
    expected = _served_versions(build_crd())[VERSION]
    installed = _served_versions(crd).get(VERSION)
    if installed is None or not installed.get("served"):
        fix = f"this CLI ({__version__}) speaks {VERSION}: {apply}"
        results.append(Result(group=group, name=f"the CRD serves {VERSION}", ok=False, fix=fix))
        return results
    same = installed.get("schema") == expected["schema"] and installed.get(
        "additionalPrinterColumns"
    ) == expected.get("additionalPrinterColumns")
    results.append(Result(
        group=group, name=f"the CRD matches this CLI ({__version__}, {VERSION})", ok=same,
        detail="" if same else "the installed schema differs from the one this CLI generates",
        fix="" if same else f"upgrade the CRD with the operator: {apply} from release "
        f"{__version__}, or use the CLI of the installed release",
    ))  # fmt: skip
    return results


def _find_webhook(
    configurations: Sequence[Mapping[str, Any]], webhook: str
) -> tuple[str, dict[str, Any]] | None:
    for configuration in configurations:
        for hook in configuration.get("webhooks") or []:
            if hook.get("name") == webhook:
                return str(configuration["metadata"]["name"]), dict(hook)
    return None


def decode_ca_bundle(value: str | None) -> bytes | None:
    """The PEM a caBundle holds, or None when it is empty or not base64 PEM."""
    if not value:
        return None
    try:
        pem = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return pem if b"-----BEGIN CERTIFICATE-----" in pem else None


def verifies(ca_pem: bytes, serving_pem: bytes) -> bool:
    """True when one of the CAs in ``ca_pem`` signed the first certificate of ``serving_pem``."""
    try:
        serving = x509.load_pem_x509_certificates(serving_pem)[0]
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return False
    for ca in cas:
        try:
            serving.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def check_webhooks(
    mutating: Sequence[Mapping[str, Any]],
    validating: Sequence[Mapping[str, Any]],
    probes: Mapping[str, Probe],
) -> list[Result]:
    group = "admission webhooks"
    results = []
    for kind, configurations, webhook in (
        ("MutatingWebhookConfiguration", mutating, MUTATING_WEBHOOK),
        ("ValidatingWebhookConfiguration", validating, VALIDATING_WEBHOOK),
    ):
        found = _find_webhook(configurations, webhook)
        if found is None:
            results.append(Result(
                group=group, name=f"a {kind} has webhook {webhook}", ok=False,
                fix="install the chart (helm upgrade --install), or run "
                "`sidecar-state-operator register-webhooks` for an operator outside the cluster",
            ))  # fmt: skip
            continue
        name, hook = found
        results.append(Result(group=group, name=f"{kind} {name} has webhook {webhook}", ok=True))
        if decode_ca_bundle((hook.get("clientConfig") or {}).get("caBundle")) is None:
            results.append(Result(
                group=group, name=f"{webhook}: caBundle verifies the serving certificate",
                ok=False, detail="the caBundle is empty or not a PEM certificate",
                fix="restart the webhook Pods (kubectl -n <release namespace> rollout restart "
                "deployment/<release>-webhook): they write it back; with cert-manager, check "
                "that its CA injector runs",
            ))  # fmt: skip
            continue
        probe = probes.get(webhook)
        if probe is None or probe.verified is None:
            results.append(Result(
                group=group, name=f"{webhook}: caBundle verifies the serving certificate",
                ok=False, detail=probe.detail if probe else "the serving certificate was not found",
                fix="check the webhook's TLS Secret and the webhook Pods' logs",
            ))  # fmt: skip
        else:
            results.append(Result(
                group=group, name=f"{webhook}: caBundle verifies the serving certificate",
                ok=probe.verified, detail="" if probe.verified else probe.detail,
                fix="" if probe.verified else "the caBundle is not the CA that issued the "
                "serving certificate: restart the webhook Pods to re-sync it",
            ))  # fmt: skip
        if probe is not None:
            results.append(Result(
                group=group, name=f"{webhook}: the endpoint answers", ok=probe.answered,
                detail="" if probe.answered else probe.detail,
                fix="" if probe.answered else "the webhook is down or unreachable: check its "
                "Pods and Service (kubectl get pods,endpoints in the release namespace)",
            ))  # fmt: skip
    return results


def _generation_current(binding: Mapping[str, Any]) -> bool:
    status = binding.get("status") or {}
    generation = (binding.get("metadata") or {}).get("generation")
    return generation is not None and status.get("observedGeneration") == generation


def check_controller(
    controllers: Sequence[Mapping[str, Any]], bindings: Sequence[Mapping[str, Any]]
) -> list[Result]:
    group = "controller"
    if controllers:
        results = []
        for deployment in controllers:
            meta = deployment["metadata"]
            ready = (deployment.get("status") or {}).get("readyReplicas") or 0
            results.append(Result(
                group=group, name=f"Deployment {meta['namespace']}/{meta['name']} is up",
                ok=ready >= 1, detail=f"{ready} ready replica(s)",
                fix="" if ready else f"kubectl -n {meta['namespace']} describe deployment "
                f"{meta['name']}, and the logs of its Pod",
            ))  # fmt: skip
        return results
    # No Deployment (an operator run outside the cluster): judge by its work instead.
    behind = sorted(_ref(b) for b in bindings if not _generation_current(b))
    return [Result(
        group=group, name="the controller has reconciled every binding's spec",
        ok=not behind,
        detail="no controller Deployment found; judged by status.observedGeneration"
        + (f": behind on {', '.join(behind)}" if behind else ""),
        fix="" if not behind else "start the controller (chart value controller.replicas: 1)",
    )]  # fmt: skip


def _ref(binding: Mapping[str, Any]) -> str:
    meta = binding.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def check_namespaces(
    namespaces: Mapping[str, Mapping[str, Any]], bindings: Sequence[Mapping[str, Any]]
) -> list[Result]:
    group = "namespaces"
    results = []
    for namespace in sorted({(b.get("metadata") or {}).get("namespace", "") for b in bindings}):
        labels = ((namespaces.get(namespace) or {}).get("metadata") or {}).get("labels") or {}
        ok = labels.get(ann.INJECTION_LABEL) == ann.INJECTION_ENABLED
        results.append(Result(
            group=group, name=f"namespace {namespace} has {ann.INJECTION_LABEL}=enabled", ok=ok,
            detail="" if ok else "the webhook never sees Pods of this namespace",
            fix="" if ok else "the controller sets it; until it runs again: kubectl label "
            f"namespace {namespace} {ann.INJECTION_LABEL}={ann.INJECTION_ENABLED}",
        ))  # fmt: skip
    return results


def _condition(binding: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    conditions = (binding.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def check_bindings(bindings: Sequence[Mapping[str, Any]]) -> list[Result]:
    group = "bindings"
    results = []
    for binding in bindings:
        ready = _condition(binding, "Ready")
        ok = ready.get("status") == "True" and _generation_current(binding)
        if ok:
            detail = fix = ""
        elif not ready:
            detail, fix = "no status yet", "wait for the controller, or check that it runs"
        elif ready.get("status") == "True":
            detail, fix = "the status is of an older generation", "wait for the controller"
        else:
            detail = f"{ready.get('reason', '')}: {ready.get('message', '')}"
            fix = f"kubectl describe statebinding -n {_ref(binding).replace('/', ' ')}"
        results.append(Result(group=group, name=f"StateBinding {_ref(binding)} is Ready", ok=ok,
                              detail=detail, fix=fix))  # fmt: skip
    return results


def check_pods(
    bindings: Sequence[Mapping[str, Any]],
    pods: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    defaults: InjectionDefaults,
) -> list[Result]:
    """Whether the Pods each binding selects carry the sidecars, computed from the Pods
    themselves with the engine's own selection (not from the controller's status)."""
    group = "Pods"
    parsed: dict[str, list[StateBinding]] = {}
    for binding in bindings:
        try:
            model = parse_binding(dict(binding))
        except ValueError:
            continue
        parsed.setdefault(model.namespace, []).append(model)
    results = []
    for namespace, models in sorted(parsed.items()):
        survey = survey_pods(pods.get(namespace, []), bindings=models, defaults=defaults,
                             namespace=namespace)  # fmt: skip
        for model in models:
            matched, injected, missing = pod_counts(model, survey=survey)
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            results.append(Result(
                group=group, ok=not missing,
                name=f"Pods selected by {namespace}/{model.name} carry the sidecars",
                detail=f"{injected} of {matched}" + (f"; without: {shown}" if missing else ""),
                fix="" if not missing else f"re-create them with the webhook up: kubectl -n "
                f"{namespace} delete pod {' '.join(missing[:5])} (or roll their workload)",
            ))  # fmt: skip
    return results


def check_hydrators(
    bindings: Sequence[Mapping[str, Any]], *, max_staleness_seconds: float
) -> list[Result]:
    group = "hydrators"
    results = []
    for binding in bindings:
        status = binding.get("status") or {}
        injected = int(status.get("injectedPods") or 0)
        if not injected:
            continue
        unhydrated = list(status.get("unhydratedPods") or [])
        hydrated = int(status.get("hydratedPods") or 0)
        results.append(Result(
            group=group, name=f"hydrators of {_ref(binding)} are hydrated",
            ok=not unhydrated and hydrated >= injected,
            detail=f"{hydrated} of {injected} hydrated"
            + (f"; not yet: {', '.join(unhydrated[:5])}" if unhydrated else ""),
            fix="" if not unhydrated and hydrated >= injected else
            "the binding's Hydrated condition names the reason (kubectl describe statebinding; "
            "the README's Troubleshooting maps it to its fix)",
        ))  # fmt: skip
        staleness = status.get("worstStalenessSeconds")
        fresh = staleness is not None and staleness <= max_staleness_seconds
        results.append(Result(
            group=group, name=f"views of {_ref(binding)} are fresh", ok=fresh,
            detail="no hydrator reported a staleness" if staleness is None
            else f"worst staleness {staleness} s (limit {max_staleness_seconds:g} s)",
            fix="" if fresh else "the hydrators do not hear from Kafka, or fall behind: "
            "check the brokers and the hydrators' logs and lag (docs/runbooks.md)",
        ))  # fmt: skip
    return results


def run_checks(
    facts: Facts, *, defaults: InjectionDefaults, max_staleness_seconds: float
) -> list[Result]:
    results = check_crd(facts.crd)
    results += check_webhooks(facts.mutating, facts.validating, facts.probes)
    results += check_controller(facts.controllers, facts.bindings)
    results += check_namespaces(facts.namespaces, facts.bindings)
    results += check_bindings(facts.bindings)
    results += check_pods(facts.bindings, facts.pods, defaults=defaults)
    results += check_hydrators(facts.bindings, max_staleness_seconds=max_staleness_seconds)
    return results


def report(results: Sequence[Result], *, out: TextIO) -> int:
    """Print the ✓/✗ list by group; return the exit status (1 on any ✗)."""
    group = None
    for result in results:
        if result.group != group:
            group = result.group
            print(f"\n{group}\n{'-' * len(group)}", file=out)
        mark = OK if result.ok else FAILED
        detail = f" ({result.detail})" if result.detail else ""
        print(f"{mark} {result.name}{detail}", file=out)
        if not result.ok and result.fix:
            print(f"    -> {result.fix}", file=out)
    failed = sum(1 for r in results if not r.ok)
    status = f"{OK} all {len(results)} checks passed" if not failed else (
        f"{FAILED} {failed} of {len(results)} checks failed"
    )  # fmt: skip
    print(f"\nStatus check results are {status}", file=out)
    return 1 if failed else 0


# --- the edges: the API and the webhook's endpoint -------------------------------------------


def probe_url(url: str, *, ca_pem: bytes) -> Probe:
    """TLS to a ``url:`` webhook, trusting only the caBundle; any HTTP answer counts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    context = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        with (
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            line = tls.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
    except ssl.SSLCertVerificationError as error:
        return Probe(answered=True, verified=False, detail=f"TLS: {error.verify_message}")
    except (OSError, ssl.SSLError) as error:
        return Probe(answered=False, verified=None, detail=f"{url}: {error}")
    answered = line.startswith("HTTP/")
    return Probe(answered=answered, verified=True, detail=line if answered else "no HTTP answer")


def gather(
    *, namespace: str | None, probe: Callable[[dict[str, Any]], Probe] | None = None
) -> Facts:
    """Read what the checks need with the current kubeconfig (or in-cluster credentials)."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from sidecar_operator.kube import client

    api: Any = client()  # the kubernetes client is only partly annotated

    def plain(obj: Any) -> Any:
        return api.sanitize_for_serialization(obj)

    try:
        crd = plain(k8s.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAME))
    except ApiException as error:
        if error.status != 404:
            raise
        crd = None
    admission = k8s.AdmissionregistrationV1Api(api)
    mutating = plain(admission.list_mutating_webhook_configuration().items)
    validating = plain(admission.list_validating_webhook_configuration().items)
    probes = {}
    for configurations, webhook in ((mutating, MUTATING_WEBHOOK), (validating, VALIDATING_WEBHOOK)):
        found = _find_webhook(configurations, webhook)
        if found is not None:
            probes[webhook] = (probe or _probe_webhook(api))(found[1])
    apps = k8s.AppsV1Api(api)
    controllers = plain(apps.list_deployment_for_all_namespaces(
        label_selector="app.kubernetes.io/part-of=sidecar-state,"
        "app.kubernetes.io/component=controller").items)  # fmt: skip
    custom: Any = k8s.CustomObjectsApi(api)
    items: list[dict[str, Any]] = []
    if crd is not None and namespace:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    elif crd is not None:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    core = k8s.CoreV1Api(api)
    names = sorted({b["metadata"]["namespace"] for b in items})
    namespaces = {n: plain(core.read_namespace(n)) for n in names}
    pods = {n: plain(core.list_namespaced_pod(n).items) for n in names}
    return Facts(crd=crd, mutating=mutating, validating=validating, probes=probes,
                 controllers=controllers, namespaces=namespaces, bindings=items,
                 pods=pods)  # fmt: skip


def _probe_webhook(api: Any) -> Callable[[dict[str, Any]], Probe]:
    def probe(hook: dict[str, Any]) -> Probe:
        config = hook.get("clientConfig") or {}
        ca_pem = decode_ca_bundle(config.get("caBundle"))
        if ca_pem is None:
            return Probe(answered=False, verified=None, detail="caBundle is empty")
        if config.get("url"):
            return probe_url(str(config["url"]), ca_pem=ca_pem)
        return probe_service(api, dict(config.get("service") or {}), ca_pem=ca_pem)

    return probe


def probe_service(api: Any, service: dict[str, Any], *, ca_pem: bytes) -> Probe:
    """A ``service:`` webhook: the serving certificate from the TLS Secret its Pods mount or
    name, and an answer through the apiserver's service proxy (the CLI may run outside the
    cluster network)."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    core = k8s.CoreV1Api(api)
    namespace, name = service.get("namespace", ""), service.get("name", "")
    port = service.get("port", 443)
    try:
        core.connect_get_namespaced_service_proxy_with_path(
            f"https:{name}:{port}", namespace, "livez", _request_timeout=PROBE_TIMEOUT_SECONDS
        )
        answered, detail = True, ""
    except ApiException as error:
        # The backend's own 4xx is an answer; the apiserver's 503 means no endpoint answered.
        answered = error.status not in {502, 503, 504}
        detail = f"service {namespace}/{name}: {error.status} {error.reason}"
    serving = _serving_certificate(core, namespace=namespace, service=name)
    if serving is None:
        missing = "no TLS Secret with tls.crt found for the webhook Pods"
        return Probe(answered=answered, verified=None, detail=detail or missing)
    ok = verifies(ca_pem, serving)
    return Probe(answered=answered, verified=ok,
                 detail=detail or ("" if ok else "the caBundle did not issue tls.crt"))  # fmt: skip


def _serving_certificate(core: Any, *, namespace: str, service: str) -> bytes | None:
    from kubernetes.client.exceptions import ApiException

    try:
        selector = core.read_namespaced_service(service, namespace).spec.selector or {}
        pods = core.list_namespaced_pod(
            namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items())
        ).items
    except ApiException:
        return None
    secrets: list[str] = []
    for pod in pods:
        for volume in pod.spec.volumes or []:
            if volume.secret is not None:
                secrets.append(volume.secret.secret_name)
        for container in pod.spec.containers:
            for env in container.env or []:
                if env.name == "SIDECAR_STATE_TLS_SECRET" and env.value:
                    secrets.append(env.value)
    for secret_name in dict.fromkeys(secrets):
        try:
            data = core.read_namespaced_secret(secret_name, namespace).data or {}
        except ApiException:
            continue
        if "tls.crt" in data:
            return base64.b64decode(data["tls.crt"])
    return None
