"""``sidecar-state check``: each check's verdict and advice, the report, the TLS probe.

The checks are pure functions over API objects; the e2e suite runs them against a real control
plane with one thing broken per case (tests/e2e/operator/test_check.py). The TLS probe is run
here against a real TLS server on loopback.
"""

from __future__ import annotations

import base64
import copy
import http.server
import io
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar_operator.api.crd import build_crd
from sidecar_operator.check import (
    FAILED,
    OK,
    Facts,
    Probe,
    Result,
    check_bindings,
    check_controller,
    check_crd,
    check_hydrators,
    check_namespaces,
    check_pods,
    check_webhooks,
    decode_ca_bundle,
    probe_url,
    report,
    run_checks,
    verifies,
)
from sidecar_operator.cli import run
from sidecar_operator.injection.defaults import InjectionDefaults
from sidecar_operator.webhook_tls.x509 import make_ca, make_serving_cert

CA = make_ca()
SERVING = make_serving_cert(ca=CA, hosts=["127.0.0.1"])
OTHER_CA = make_ca(common_name="someone-else")


def bundle(pem: bytes) -> str:
    return base64.b64encode(pem).decode()


def configuration(webhook: str, *, ca_bundle: str | None) -> dict[str, Any]:
    client_config: dict[str, Any] = {"url": "https://127.0.0.1:8443/x"}
    if ca_bundle is not None:
        client_config["caBundle"] = ca_bundle
    return {"metadata": {"name": "sidecar-state"},
            "webhooks": [{"name": webhook, "clientConfig": client_config}]}  # fmt: skip


GOOD_PROBE = Probe(answered=True, verified=True, detail="HTTP/1.1 404 Not Found")
PROBES = {
    "inject-pods.sidecarstate.dev": GOOD_PROBE,
    "validate-statebindings.sidecarstate.dev": GOOD_PROBE,
}


def sb(name: str = "flags", *, namespace: str = "shop", ready: str = "True",
       generation: int = 2, observed: int = 2, **status: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "sidecarstate.dev/v1alpha1", "kind": "StateBinding",
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": {"selector": {"matchLabels": {"app": "checkout"}},
                 "source": {"kafka": {"topics": ["flags"]}}},
        "status": {"observedGeneration": observed,
                   "conditions": [{"type": "Ready", "status": ready, "reason": "StoreFull",
                                   "message": "raise spec.store.maxMemory"}], **status},
    }  # fmt: skip


def failed(results: list[Result]) -> list[Result]:
    return [r for r in results if not r.ok]


# --- CRD -------------------------------------------------------------------------------------


def test_crd_generated_by_this_cli_passes():
    assert failed(check_crd(build_crd())) == []


def test_missing_crd_says_how_to_install_it():
    (result,) = check_crd(None)

    assert not result.ok and "kubectl apply --server-side -f crds/" in result.fix


def test_crd_of_another_release_fails():
    older = copy.deepcopy(build_crd())
    schema = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["status"]["properties"]["worstStalenessSeconds"]

    (result,) = failed(check_crd(older))

    assert "matches this CLI" in result.name and "upgrade the CRD" in result.fix


# --- webhooks --------------------------------------------------------------------------------


def test_both_webhooks_with_a_good_bundle_pass():
    results = check_webhooks(
        [configuration("inject-pods.sidecarstate.dev", ca_bundle=bundle(CA.cert_pem))],
        [configuration("validate-statebindings.sidecarstate.dev", ca_bundle=bundle(CA.cert_pem))],
        PROBES,
    )

    assert failed(results) == []
    assert len(results) == 6  # exists, caBundle, endpoint, for each


def test_a_missing_configuration_fails():
    results = check_webhooks(
        [configuration("inject-pods.sidecarstate.dev", ca_bundle=bundle(CA.cert_pem))], [], PROBES
    )

    (result,) = failed(results)
    assert "ValidatingWebhookConfiguration" in result.name and "register-webhooks" in result.fix


@pytest.mark.parametrize("ca_bundle", [None, "", "bm90IGEgY2VydA=="])
def test_a_wiped_ca_bundle_fails_and_says_to_restart_the_webhook(ca_bundle):
    results = check_webhooks(
        [configuration("inject-pods.sidecarstate.dev", ca_bundle=ca_bundle)],
        [configuration("validate-statebindings.sidecarstate.dev", ca_bundle=bundle(CA.cert_pem))],
        PROBES,
    )

    (result,) = failed(results)
    assert "inject-pods.sidecarstate.dev: caBundle verifies" in result.name
    assert "rollout restart" in result.fix


def test_a_bundle_that_did_not_issue_the_serving_cert_fails():
    refused = Probe(answered=True, verified=False, detail="TLS: unable to get local issuer cert")
    probes = {**PROBES, "inject-pods.sidecarstate.dev": refused}
    results = check_webhooks(
        [configuration("inject-pods.sidecarstate.dev", ca_bundle=bundle(OTHER_CA.cert_pem))],
        [configuration("validate-statebindings.sidecarstate.dev", ca_bundle=bundle(CA.cert_pem))],
        probes,
    )

    (result,) = failed(results)
    assert "issuer" in result.detail and "re-sync" in result.fix


def test_verifies_checks_the_signature_against_the_bundle():
    assert verifies(CA.cert_pem, SERVING.cert_pem)
    assert verifies(OTHER_CA.cert_pem + CA.cert_pem, SERVING.cert_pem)  # during a CA rotation
    assert not verifies(OTHER_CA.cert_pem, SERVING.cert_pem)
    assert decode_ca_bundle(bundle(CA.cert_pem)) == CA.cert_pem
    assert decode_ca_bundle("%%%") is None


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTPS server on loopback with the serving certificate."""
    (tmp_path / "tls.crt").write_bytes(SERVING.cert_pem)
    (tmp_path / "tls.key").write_bytes(SERVING.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/inject-pods"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_url_verifies_with_the_bundle_and_sees_an_answer(tls_server):
    probe = probe_url(tls_server, ca_pem=CA.cert_pem)

    assert (probe.answered, probe.verified) == (True, True)
    assert probe.detail.startswith("HTTP/1.")


def test_probe_url_with_the_wrong_bundle_does_not_verify(tls_server):
    probe = probe_url(tls_server, ca_pem=OTHER_CA.cert_pem)

    assert probe.verified is False


def test_probe_url_of_a_closed_port_did_not_answer():
    probe = probe_url("https://127.0.0.1:1/x", ca_pem=CA.cert_pem)

    assert probe.answered is False


# --- controller, namespaces, bindings, Pods, hydrators ---------------------------------------


def test_controller_deployment_without_ready_replicas_fails():
    deployment = {"metadata": {"name": "sidecar-state-controller", "namespace": "ops"},
                  "status": {"readyReplicas": 0}}  # fmt: skip

    (result,) = check_controller([deployment], [])

    assert not result.ok and "describe deployment sidecar-state-controller" in result.fix


def test_without_a_deployment_the_controller_is_judged_by_observed_generations():
    assert check_controller([], [sb()])[0].ok
    (result,) = check_controller([], [sb(generation=3, observed=2)])
    assert not result.ok and "shop/flags" in result.detail


def test_namespace_without_the_injection_label_fails_with_the_kubectl_line():
    labelled = {"metadata": {"labels": {"sidecarstate.dev/injection": "enabled"}}}
    namespaces = {"shop": {"metadata": {"labels": {}}}, "cart": labelled}

    results = check_namespaces(namespaces, [sb(), sb(namespace="cart")])

    (result,) = failed(results)
    assert "shop" in result.name
    assert "kubectl label namespace shop sidecarstate.dev/injection=enabled" in result.fix


def test_binding_not_ready_shows_its_reason_and_how_to_look():
    (result,) = check_bindings([sb(ready="False")])

    assert not result.ok and result.detail.startswith("StoreFull")
    assert result.fix == "kubectl describe statebinding -n shop flags"


def test_pods_without_the_sidecars_are_named():
    pods = [
        {"metadata": {"name": "checkout-1", "namespace": "shop", "labels": {"app": "checkout"},
                      "annotations": {"sidecarstate.dev/injected-bindings": "flags"}},
         "status": {"phase": "Running"}},
        {"metadata": {"name": "checkout-2", "namespace": "shop", "labels": {"app": "checkout"}},
         "spec": {"containers": [{"name": "app", "image": "app"}]},
         "status": {"phase": "Running"}},
    ]  # fmt: skip

    (result,) = check_pods([sb()], {"shop": pods}, defaults=InjectionDefaults())

    assert not result.ok and "1 of 2" in result.detail and "checkout-2" in result.fix


def test_hydrators_not_hydrated_or_stale_fail():
    healthy = sb(injectedPods=2, hydratedPods=2, worstStalenessSeconds=1)
    cold = sb("cold", injectedPods=2, hydratedPods=1, unhydratedPods=["p2"],
              worstStalenessSeconds=1)  # fmt: skip
    stale = sb("stale", injectedPods=1, hydratedPods=1, worstStalenessSeconds=900)

    results = check_hydrators([healthy, cold, stale], max_staleness_seconds=300)

    assert [r.name for r in failed(results)] == [
        "hydrators of shop/cold are hydrated",
        "views of shop/stale are fresh",
    ]


# --- the report and the command --------------------------------------------------------------


def test_report_lists_every_check_and_exits_1_on_any_failure():
    out = io.StringIO()
    results = [Result(group="g", name="good", ok=True),
               Result(group="g", name="bad", ok=False, detail="why", fix="do this")]  # fmt: skip

    status = report(results, out=out)

    assert status == 1
    assert f"{OK} good" in out.getvalue()
    assert f"{FAILED} bad (why)\n    -> do this" in out.getvalue()
    assert "1 of 2 checks failed" in out.getvalue()


def test_a_healthy_installation_exits_0():
    ca = bundle(CA.cert_pem)
    labelled = {"metadata": {"labels": {"sidecarstate.dev/injection": "enabled"}}}
    facts = Facts(
        crd=build_crd(),
        mutating=[configuration("inject-pods.sidecarstate.dev", ca_bundle=ca)],
        validating=[configuration("validate-statebindings.sidecarstate.dev", ca_bundle=ca)],
        probes=PROBES,
        controllers=[],
        namespaces={"shop": labelled},
        bindings=[sb(injectedPods=0)],
        pods={"shop": []},
    )
    out = io.StringIO()
    results = run_checks(facts, defaults=InjectionDefaults(), max_staleness_seconds=300)

    assert report(results, out=out) == 0, out.getvalue()


def test_check_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["check", "--help"])

    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--namespace" in help_text and "linkerd check" in help_text


def test_check_without_a_cluster_says_so_and_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    out = io.StringIO()

    assert run(["check"], stdout=out) == 1
    assert "cannot read the cluster" in out.getvalue()
