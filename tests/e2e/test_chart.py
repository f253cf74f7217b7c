"""``helm install`` the chart into the test cluster, then upgrade and uninstall it.

Without a kubelet the operator's own Pods never run, so the tests assert on objects, and play
the webhook Pods' part themselves where it matters: they call the start-up of the webhook role
(:mod:`sidecar_operator.webhook_tls`) and run both roles as processes on this machine, each
*authenticated as the ServiceAccount the chart made* (a token from the TokenRequest API). That
checks the chart's RBAC for what the code really does, not for what a list says it does.

The release uses ``failurePolicy: Ignore`` and an operator image that cannot be pulled: its
webhook Service has no endpoints here, and on a cluster with nodes (kind) a second operator
must not start next to the one under test in the other scenarios.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from cryptography import x509

from localkube.access import ClusterAccess
from localkube.ports import free_port
from sidecar_operator import webhook_tls
from sidecar_operator.api.models import GROUP, PLURAL
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_tls.x509 import make_serving_cert, service_hosts, write_webhook_certs
from sidecar_state_stack.objects import binding, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sidecar-state"
RELEASE = "e2e-chart"
FULLNAME = f"{RELEASE}-sidecar-state"
CRD = f"{PLURAL}.{GROUP}"
INSTALL_VALUES: dict[str, Any] = {
    "images": {"operator": {"repository": "registry.invalid/sidecar-state/operator"}},
    "webhook": {"failurePolicy": "Ignore"},
}
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "CustomResourceDefinition",
}
FORBIDDEN_MARKS = ("forbidden", "not enough permissions")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Release:
    cluster: ClusterAccess
    namespace: str
    workdir: Path

    @property
    def webhook_account(self) -> str:
        return f"{FULLNAME}-webhook"

    @property
    def controller_account(self) -> str:
        return f"{FULLNAME}-controller"

    @property
    def tls(self) -> webhook_tls.WebhookTLS:
        directory = self.workdir / f"replica-{uuid.uuid4().hex[:6]}"
        return webhook_tls.WebhookTLS(
            secret=f"{FULLNAME}-webhook-tls", namespace=self.namespace,
            service=f"{FULLNAME}-webhook", configuration=FULLNAME,
            cert_file=directory / "tls.crt", key_file=directory / "tls.key",
        )  # fmt: skip

    def helm(self, *args: str, values: dict[str, Any] | None = None) -> str:
        extra: list[str] = []
        if values is not None:
            path = self.workdir / f"values-{uuid.uuid4().hex[:6]}.json"
            path.write_text(json.dumps(values))
            extra = ["--values", str(path)]
        return self.cluster.helm_run(*args, "--namespace", self.namespace, *extra).stdout

    def manifest(self) -> list[dict[str, Any]]:
        text = self.helm("get", "manifest", RELEASE)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def get(self, kind: str, name: str, *, namespaced: bool = True) -> dict[str, Any] | None:
        scope = ["-n", self.namespace] if namespaced else []
        proc = self.cluster.kubectl_run("get", kind, name, *scope, "-o", "json", check=False)
        if proc.returncode != 0:
            assert "NotFound" in proc.stderr, proc.stderr
            return None
        found: dict[str, Any] = json.loads(proc.stdout)
        return found

    def configurations(self) -> list[dict[str, Any]]:
        found = [self.get(kind, FULLNAME, namespaced=False) for kind in
                 ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")]  # fmt: skip
        assert all(found), "a webhook configuration is missing"
        return [c for c in found if c]


def _cluster_endpoint(cluster: ClusterAccess) -> tuple[str, bytes]:
    view = cluster.kubectl_json("config", "view", "--raw", "--minify", "--flatten")
    entry = view["clusters"][0]["cluster"]
    return entry["server"], base64.b64decode(entry["certificate-authority-data"])


def token_for(release: Release, account: str) -> str:
    return release.cluster.kubectl_run(
        "create", "token", account, "-n", release.namespace, "--duration=3600s"
    ).stdout.strip()


def client_as(release: Release, account: str) -> Any:
    """A Kubernetes API client that authenticates as one of the chart's ServiceAccounts."""
    server, ca = _cluster_endpoint(release.cluster)
    ca_file = release.workdir / "cluster-ca.crt"
    ca_file.write_bytes(ca)
    config = kubernetes.client.Configuration()
    config.host = server
    config.ssl_ca_cert = str(ca_file)
    config.api_key = {"authorization": token_for(release, account)}
    config.api_key_prefix = {"authorization": "Bearer"}
    return kubernetes.client.ApiClient(config)


def kubeconfig_as(release: Release, account: str) -> Path:
    server, ca = _cluster_endpoint(release.cluster)
    path = release.workdir / f"{account}.kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": [{"name": "e2e", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": account, "user": {"token": token_for(release, account)}}],
        "contexts": [{"name": account, "context": {"cluster": "e2e", "user": account}}],
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def release(cluster: ClusterAccess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    namespace = f"e2e-chart-{uuid.uuid4().hex[:8]}"
    cluster.kubectl_run("create", "namespace", namespace)
    handle = Release(cluster=cluster, namespace=namespace, workdir=tmp_path_factory.mktemp("chart"))
    handle.helm("install", RELEASE, str(CHART), values=INSTALL_VALUES)
    try:
        yield handle
    finally:
        handle.cluster.helm_run("uninstall", RELEASE, "--namespace", namespace, check=False)
        cluster.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)


# --- the rendered chart is valid for the real apiserver --------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"webhook": {"failurePolicy": "Ignore", "replicas": 3, "timeoutSeconds": 10}},
        {"excludedNamespaces": ["monitoring"], "sidecars": {"mode": "containers"},
         "controller": {"replicas": 0}, "kafka": {"bootstrapServers": ["k:9092"]}},
        {"certManager": {"enabled": True}},
    ],
    ids=["default", "ignore", "custom", "cert-manager"],
)  # fmt: skip
def test_rendered_objects_pass_server_side_validation(
    cluster: ClusterAccess, tmp_path: Path, values: dict[str, Any]
) -> None:
    """``create --dry-run=server`` runs admission and strict field validation on every object
    (cert-manager's kinds need its CRDs, absent here; they are checked by the unit tests)."""
    namespace = f"e2e-dry-{uuid.uuid4().hex[:8]}"
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    server = cluster.kubectl_json("version")["serverVersion"]["gitVersion"]
    rendered = cluster.helm_run(
        "template", "e2e-dry", str(CHART), "--namespace", namespace,
        "--values", str(values_file), "--kube-version", server,
    ).stdout  # fmt: skip
    objects = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] not in
               {"Certificate", "Issuer"}]  # fmt: skip
    assert objects
    cluster.kubectl_run("create", "namespace", namespace)
    try:
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        proc = cluster.kubectl_run(
            "create", "--dry-run=server", "--validate=strict", "-o", "name", "-f", "-",
            input=document, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.split()) == len(objects)
    finally:
        cluster.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)


# --- install ---------------------------------------------------------------------------------


def test_install_creates_every_object(release: Release) -> None:
    status = json.loads(release.helm("status", RELEASE, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    manifest = release.manifest()
    kinds = {obj["kind"] for obj in manifest}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
            "Service", "Deployment", "PodDisruptionBudget", "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration"} <= kinds  # fmt: skip
    for obj in manifest:
        namespaced = obj["kind"] not in CLUSTER_SCOPED
        live = release.get(obj["kind"], obj["metadata"]["name"], namespaced=namespaced)
        assert live is not None, f"{obj['kind']} {obj['metadata']['name']} was not created"
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    webhook = release.get("deployment", f"{FULLNAME}-webhook")
    assert webhook is not None and webhook["spec"]["replicas"] == 2


def test_crd_is_installed_and_served(release: Release) -> None:
    crd = release.get("customresourcedefinition", CRD, namespaced=False)
    assert crd is not None
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    listed = release.cluster.kubectl_json("get", PLURAL, "-n", release.namespace)
    assert listed["items"] == []


def _may(release: Release, account: str, *args: str) -> bool:
    """``kubectl auth can-i``, as the chart's ServiceAccount ``account``."""
    proc = release.cluster.kubectl_run(
        "auth", "can-i", *args,
        f"--as=system:serviceaccount:{release.namespace}:{account}", check=False,
    )  # fmt: skip
    return proc.stdout.strip() == "yes"


def test_service_accounts_may_do_what_the_code_does_and_no_more(release: Release) -> None:
    can = functools.partial(_may, release)
    webhook, controller = release.webhook_account, release.controller_account
    secret = f"secrets/{FULLNAME}-webhook-tls"
    for args in (("list", f"{PLURAL}.{GROUP}", "-A"), ("watch", f"{PLURAL}.{GROUP}", "-A"),
                 ("create", "events", "-n", "default"),
                 ("get", secret, "-n", release.namespace),
                 ("update", secret, "-n", release.namespace),
                 ("create", "secrets", "-n", release.namespace),
                 ("patch", f"mutatingwebhookconfigurations/{FULLNAME}"),
                 ("patch", f"validatingwebhookconfigurations/{FULLNAME}"),
                 ("watch", "mutatingwebhookconfigurations"),
                 ("watch", "validatingwebhookconfigurations"),
                 # the opt-in label of a binding's Secret, read as metadata only
                 ("get", "secrets/other", "-n", "default")):  # fmt: skip
        assert can(webhook, *args), f"webhook may not {args}"
    for args in (("list", "secrets", "-n", release.namespace),
                 ("watch", "secrets", "-A"), ("update", "secrets/other", "-n", "default"),
                 ("patch", "mutatingwebhookconfigurations/sidecar-state-other"),
                 ("list", "pods", "-A"), ("patch", f"{PLURAL}.{GROUP}", "-A"),
                 ("create", "pods", "-n", "default")):  # fmt: skip
        assert not can(webhook, *args), f"webhook may {args}"
    for args in (("list", "pods", "-A"), ("watch", "deployments.apps", "-A"),
                 ("patch", "deployments.apps", "-A"), ("patch", "statefulsets.apps", "-A"),
                 ("patch", "daemonsets.apps", "-A"), ("patch", "namespaces/default"),
                 ("create", f"{PLURAL}.{GROUP}", "-A"), ("delete", f"{PLURAL}.{GROUP}", "-A"),
                 ("patch", f"{PLURAL}.{GROUP}", "--subresource=status", "-A")):  # fmt: skip
        assert can(controller, *args), f"controller may not {args}"
    for args in (("get", "secrets", "-A"), ("create", "pods", "-A"), ("delete", "pods", "-A"),
                 ("patch", f"mutatingwebhookconfigurations/{FULLNAME}"),
                 ("delete", "namespaces/default")):  # fmt: skip
        assert not can(controller, *args), f"controller may {args}"


# --- webhook TLS, as the webhook Pods do it --------------------------------------------------


def _assert_serves_with(bundle: webhook_tls.Bundle, release: Release) -> None:
    """The caBundle of both configurations verifies the serving certificate for the Service."""
    host = f"{FULLNAME}-webhook.{release.namespace}.svc"
    serving = bundle.serving.certificate
    assert host in webhook_tls.covered_hosts(serving)
    for configuration in release.configurations():
        for webhook in configuration["webhooks"]:
            trusted = x509.load_pem_x509_certificates(
                base64.b64decode(webhook["clientConfig"]["caBundle"])
            )
            assert any(_issued_by(serving, ca) for ca in trusted), configuration["kind"]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def _start_replicas(release: Release, count: int) -> list[webhook_tls.Bundle]:
    """``count`` webhook replicas starting at once, each with its own files and token."""
    apis = [client_as(release, release.webhook_account) for _ in range(count)]
    configs = [release.tls for _ in range(count)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        futures = [
            pool.submit(webhook_tls.reconcile, api, tls)
            for api, tls in zip(apis, configs, strict=True)
        ]
        results = [future.result(timeout=120) for future in futures]
    assert all(result.configured for result in results)
    bundles = [result.bundle for result in results]
    for tls, bundle in zip(configs, bundles, strict=True):
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))  # what kopf loads
        assert tls.cert_file.read_bytes() == bundle.serving.cert_pem
    return bundles


def test_replicas_starting_together_share_one_certificate(release: Release) -> None:
    bundles = _start_replicas(release, 3)
    assert len({b.serving.cert_pem for b in bundles}) == 1, "replicas fought over the Secret"
    secret = release.get("secret", f"{FULLNAME}-webhook-tls")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert webhook_tls.Bundle.from_secret_data(secret["data"]) == bundles[0]
    mutating = release.configurations()[0]
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == (mutating["kind"], mutating["metadata"]["uid"])
    _assert_serves_with(bundles[0], release)
    version = secret["metadata"]["resourceVersion"]
    again = _start_replicas(release, 1)[0]  # a restart reuses, writes nothing
    assert again == bundles[0]
    secret_after = release.get("secret", f"{FULLNAME}-webhook-tls")
    assert secret_after is not None and secret_after["metadata"]["resourceVersion"] == version


def test_replicas_renew_an_expiring_certificate_once(release: Release) -> None:
    current = _start_replicas(release, 1)[0]
    expiring = webhook_tls.Bundle(
        ca=current.ca, trust_pem=current.trust_pem,
        serving=make_serving_cert(ca=current.ca, hosts=release.tls.hosts,
                                  validity=dt.timedelta(days=10)),
    )  # fmt: skip
    secret = release.get("secret", f"{FULLNAME}-webhook-tls")
    assert secret is not None
    secret["data"] = expiring.secret_data()
    release.cluster.kubectl_run("replace", "-f", "-", input=json.dumps(secret))
    renewed = _start_replicas(release, 3)
    assert len({b.serving.cert_pem for b in renewed}) == 1, "replicas renewed separately"
    assert renewed[0].ca == current.ca  # same CA: the caBundle did not change
    lifetime = renewed[0].serving.certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert lifetime > dt.timedelta(days=300)
    _assert_serves_with(renewed[0], release)


def test_a_secret_made_before_the_configurations_exist_is_adopted(release: Release) -> None:
    """Helm creates the webhook configurations after the Deployments: a fast first replica
    makes the Secret without an owner, and a later pass hands it to the configuration."""
    name = f"{FULLNAME}-webhook-tls"
    release.cluster.kubectl_run("delete", "secret", name, "-n", release.namespace)
    admin = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(release.cluster.kubeconfig)
    )
    early = dataclasses.replace(release.tls, configuration=f"{FULLNAME}-not-yet")
    first = webhook_tls.reconcile(admin, early)
    assert not first.configured
    secret = release.get("secret", name)
    assert secret is not None and "ownerReferences" not in secret["metadata"]
    assert _start_replicas(release, 1)[0] == first.bundle  # adopted, not replaced
    secret = release.get("secret", name)
    assert secret is not None
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == release.configurations()[0]["metadata"]["uid"]
    _assert_serves_with(first.bundle, release)


# --- both roles, as real processes with the chart's ServiceAccounts -------------------------


@dataclasses.dataclass
class RoleProcess:
    process: subprocess.Popen[bytes]
    log: Path
    health_port: int

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log.read_text()[-4000:]}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def permission_errors(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines()
                if any(mark in line.lower() for mark in FORBIDDEN_MARKS)]  # fmt: skip


def _run_role(
    release: Release, role: str, account: str, *, extra: dict[str, str] | None = None
) -> RoleProcess:
    health = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig_as(release, account)),
        "SIDECAR_STATE_ROLE": role,
        "SIDECAR_STATE_NAMESPACE": release.namespace,
        "SIDECAR_STATE_HEALTH_PORT": str(health),
        "SIDECAR_STATE_WATCHDOG_INTERVAL_SECONDS": "2",
        **(extra or {}),
    }
    if role == "webhook":
        tls = release.tls
        env.update({
            "SIDECAR_STATE_WEBHOOK_HOST": "127.0.0.1",
            "SIDECAR_STATE_WEBHOOK_PORT": str(free_port()),
            "SIDECAR_STATE_WEBHOOK_SERVICE": tls.service,
            "SIDECAR_STATE_WEBHOOK_CONFIGURATION": tls.configuration,
        })  # fmt: skip
        if "tls_secret" in OperatorSettings.model_fields:
            # The chart's way: the operator prepares its files from the Secret before start.
            env["SIDECAR_STATE_TLS_SECRET"] = tls.secret
            env["SIDECAR_STATE_WEBHOOK_CERT_FILE"] = str(tls.cert_file)
            env["SIDECAR_STATE_WEBHOOK_KEY_FILE"] = str(tls.key_file)
        else:  # webhook_tls.py not wired into start-up yet: files made here
            hosts = service_hosts(service=tls.service, namespace=release.namespace)
            files = write_webhook_certs(release.workdir / "dev-certs", hosts=hosts)
            env["SIDECAR_STATE_WEBHOOK_CERT_FILE"] = str(files.cert_file)
            env["SIDECAR_STATE_WEBHOOK_KEY_FILE"] = str(files.key_file)
    log = release.workdir / f"{role}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar_operator", "run"], env=env, cwd=REPO,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return RoleProcess(process=process, log=log, health_port=health)


def _eventually(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    return wait_for(probe, timeout=timeout, interval=0.5, what=what)


@pytest.fixture
def app_namespace(release: Release) -> Iterator[str]:
    """A namespace of the test's own for the app's objects, deleted after it (pytest runs
    the code after ``yield`` whatever the test's outcome)."""
    name = f"e2e-chart-app-{uuid.uuid4().hex[:6]}"
    release.cluster.kubectl_run("create", "namespace", name)
    yield name
    release.cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@contextlib.contextmanager
def _both_roles(
    release: Release, *, extra: dict[str, str] | None = None
) -> Iterator[tuple[RoleProcess, RoleProcess]]:
    """The webhook and the controller role, each a process as its chart ServiceAccount, once
    both are ready; stopped after the block."""
    webhook = _run_role(release, "webhook", release.webhook_account, extra=extra)
    controller = _run_role(release, "controller", release.controller_account, extra=extra)
    try:
        _eventually("the webhook role to be ready", webhook.ready)
        _eventually("the controller role to be ready", controller.ready)
        yield webhook, controller
    finally:
        webhook.stop()
        controller.stop()


def _assert_a_binding_is_reconciled_without_a_permission_error(
    release: Release, roles: tuple[RoleProcess, RoleProcess], app: str
) -> None:
    """The controller labels the namespace (namespaces get/patch), lists Pods and workloads
    and writes the status (statebindings/status patch) as its own ServiceAccount; and no
    watcher of either role was refused."""
    release.cluster.apply(binding("flags", app))
    _eventually("the binding's status", lambda: release.cluster.kubectl_json(
        "get", "statebinding", "flags", "-n", app).get("status", {}).get(
        "observedGeneration"))  # fmt: skip
    labels = release.cluster.kubectl_json("get", "namespace", app)["metadata"]["labels"]
    assert labels.get(f"{GROUP}/injection") == "enabled"
    time.sleep(3)  # let every watcher of both roles list and watch once
    for role in roles:
        assert role.ready()
        assert role.permission_errors() == [], "\n".join(role.permission_errors())


def test_both_roles_run_with_nothing_but_the_charts_rbac(
    release: Release, app_namespace: str
) -> None:
    with _both_roles(release) as roles:
        _assert_a_binding_is_reconciled_without_a_permission_error(release, roles, app_namespace)
        if "tls_secret" in OperatorSettings.model_fields:
            secret = release.get("secret", f"{FULLNAME}-webhook-tls")
            assert secret is not None
            bundle = webhook_tls.Bundle.from_secret_data(secret["data"])
            assert bundle is not None
            _assert_serves_with(bundle, release)


def test_a_wiped_ca_bundle_is_repaired_within_seconds(release: Release) -> None:
    """``helm upgrade --force`` or an Argo CD Replace sync rewrites the configurations without
    a caBundle; with failurePolicy Fail that refuses Pods until it is back."""
    webhook = _run_role(release, "webhook", release.webhook_account)
    try:
        _eventually("the webhook role to be ready", webhook.ready)
        before = [
            c["webhooks"][0]["clientConfig"].get("caBundle") for c in release.configurations()
        ]
        assert all(before)
        wipe = json.dumps([{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}])
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            release.cluster.kubectl_run("patch", kind, FULLNAME, "--type=json", "-p", wipe)
        started = time.monotonic()

        def restored() -> bool:
            now = [
                c["webhooks"][0]["clientConfig"].get("caBundle") for c in release.configurations()
            ]
            return now == before

        _eventually("both caBundles to be restored", restored, timeout=15)
        assert time.monotonic() - started < 15
        assert webhook.permission_errors() == [], "\n".join(webhook.permission_errors())
    finally:
        webhook.stop()


# --- upgrade and uninstall -------------------------------------------------------------------


def test_upgrade_applies_values_and_keeps_the_ca_bundle(release: Release) -> None:
    bundle = _start_replicas(release, 1)[0]
    before = [c["webhooks"][0]["clientConfig"]["caBundle"] for c in release.configurations()]
    assert all(before)
    values = {**INSTALL_VALUES, "webhook": {"failurePolicy": "Ignore", "replicas": 3},
              "excludedNamespaces": ["team-x"]}  # fmt: skip
    release.helm("upgrade", RELEASE, str(CHART), values=values)
    status = json.loads(release.helm("status", RELEASE, "-o", "json"))
    assert (status["version"], status["info"]["status"]) == (2, "deployed")
    webhook = release.get("deployment", f"{FULLNAME}-webhook")
    assert webhook is not None and webhook["spec"]["replicas"] == 3
    mutating, validating = release.configurations()
    (hook,) = mutating["webhooks"]
    excluded = hook["namespaceSelector"]["matchExpressions"][-1]["values"]
    assert "team-x" in excluded and release.namespace in excluded
    after = [c["webhooks"][0]["clientConfig"]["caBundle"] for c in (mutating, validating)]
    assert after == before, "helm upgrade dropped the caBundle the operator set"
    _assert_serves_with(bundle, release)


def test_a_namespaced_install_serves_its_namespaces_with_roles_only(
    release: Release, app_namespace: str
) -> None:
    """watchNamespaces: Roles in those namespaces, nothing namespaced cluster-wide; both roles
    run as their ServiceAccounts and do their work there without a permission error."""
    app = app_namespace
    release.helm(
        "upgrade", RELEASE, str(CHART), values={**INSTALL_VALUES, "watchNamespaces": [app]}
    )

    can = functools.partial(_may, release)
    webhook_account, controller_account = release.webhook_account, release.controller_account
    assert can(controller_account, "list", "pods", "-n", app)
    assert can(controller_account, "patch", f"namespaces/{app}")
    assert can(webhook_account, "watch", f"{PLURAL}.{GROUP}", "-n", app)
    for account, args in ((controller_account, ("list", "pods", "-A")),
                          (controller_account, ("list", "pods", "-n", "default")),
                          (controller_account, ("patch", "namespaces/default")),
                          (controller_account, ("patch", "deployments.apps", "-n", "default")),
                          (webhook_account, ("list", f"{PLURAL}.{GROUP}", "-A")),
                          (webhook_account, ("get", "secrets/x", "-n", "default"))):  # fmt: skip
        assert not can(account, *args), f"{account} may {args}"

    with _both_roles(release, extra={"SIDECAR_STATE_WATCH_NAMESPACES": app}) as roles:
        _assert_a_binding_is_reconciled_without_a_permission_error(release, roles, app)


def test_uninstall_removes_what_it_installed_and_keeps_the_crd(release: Release) -> None:
    manifest = release.manifest()
    release.helm("uninstall", RELEASE, "--wait", "--timeout", "120s")
    for obj in manifest:
        namespaced = obj["kind"] not in CLUSTER_SCOPED
        assert release.get(obj["kind"], obj["metadata"]["name"], namespaced=namespaced) is None, (
            f"{obj['kind']} {obj['metadata']['name']} survived helm uninstall")  # fmt: skip
    assert release.get("customresourcedefinition", CRD, namespaced=False) is not None
    # The operator's Secret is owned by the MutatingWebhookConfiguration: collected with it.
    _eventually(
        "the garbage collector to delete the TLS Secret",
        lambda: release.get("secret", f"{FULLNAME}-webhook-tls") is None,
        timeout=90,
    )
