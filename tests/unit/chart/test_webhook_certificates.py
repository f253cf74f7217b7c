"""The pure half of :mod:`sidecar_operator.webhook_tls`: deciding, issuing, manifests, files.

The Kubernetes half (create/update races, caBundle patches, RBAC) runs against a real
apiserver in ``tests/e2e/test_chart.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import ssl
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509

from localkube.ports import free_port
from sidecar_operator import webhook_tls as certs
from sidecar_operator.webhook_tls import Action, Bundle
from sidecar_operator.webhook_tls.x509 import (
    RENEW_BEFORE,
    KeyPair,
    make_ca,
    make_client_cert,
    make_serving_cert,
    service_hosts,
)

HOSTS = service_hosts(service="demo-sidecar-state-webhook", namespace="sidecar-state-system")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    ca = make_ca()
    return Bundle(ca=ca, serving=make_serving_cert(ca=ca, hosts=HOSTS), trust_pem=ca.cert_pem)


def not_after(pair: KeyPair) -> dt.datetime:
    return pair.certificate.not_valid_after_utc


# --- decide ----------------------------------------------------------------------------------


def test_no_secret_is_created() -> None:
    decision = certs.decide(None, exists=False, hosts=HOSTS)
    assert decision.action is Action.CREATE


def test_an_unusable_secret_is_replaced_not_created() -> None:
    # An update (with the resourceVersion read) keeps the race safe; a create would 409 forever.
    assert certs.decide(None, exists=True, hosts=HOSTS).action is Action.REPLACE


def test_a_fresh_bundle_is_reused(bundle: Bundle) -> None:
    decision = certs.decide(bundle, exists=True, hosts=HOSTS)
    assert decision.action is Action.REUSE, decision.reason


def test_serving_cert_is_renewed_within_the_margin_and_not_before(bundle: Bundle) -> None:
    end = not_after(bundle.serving)
    assert dt.timedelta(days=30) == RENEW_BEFORE
    before = end - RENEW_BEFORE - dt.timedelta(minutes=1)
    within = end - RENEW_BEFORE + dt.timedelta(minutes=1)
    assert certs.decide(bundle, exists=True, hosts=HOSTS, now=before).action is Action.REUSE
    assert certs.decide(bundle, exists=True, hosts=HOSTS, now=within).action is Action.RENEW
    after_expiry = end + dt.timedelta(days=1)
    assert certs.decide(bundle, exists=True, hosts=HOSTS, now=after_expiry).action is Action.RENEW


def test_an_expiring_ca_replaces_everything(bundle: Bundle) -> None:
    soon = not_after(bundle.ca) - dt.timedelta(days=10)
    decision = certs.decide(bundle, exists=True, hosts=HOSTS, now=soon)
    assert decision.action is Action.REPLACE
    assert "CA" in decision.reason


def test_a_renamed_service_renews(bundle: Bundle) -> None:
    other = service_hosts(service="renamed", namespace="sidecar-state-system")
    decision = certs.decide(bundle, exists=True, hosts=other)
    assert decision.action is Action.RENEW
    assert "renamed.sidecar-state-system.svc" in decision.reason


def test_a_serving_cert_from_another_ca_renews(bundle: Bundle) -> None:
    stranger = make_ca()
    mixed = Bundle(ca=bundle.ca, serving=make_serving_cert(ca=stranger, hosts=HOSTS),
                   trust_pem=bundle.trust_pem)  # fmt: skip
    assert certs.decide(mixed, exists=True, hosts=HOSTS).action is Action.RENEW


def test_mismatched_keys_are_not_trusted(bundle: Bundle) -> None:
    other = make_serving_cert(ca=bundle.ca, hosts=HOSTS)
    wrong_serving_key = Bundle(
        ca=bundle.ca,
        serving=KeyPair(cert_pem=bundle.serving.cert_pem, key_pem=other.key_pem),
        trust_pem=bundle.trust_pem,
    )
    assert certs.decide(wrong_serving_key, exists=True, hosts=HOSTS).action is Action.RENEW
    wrong_ca_key = Bundle(
        ca=KeyPair(cert_pem=bundle.ca.cert_pem, key_pem=make_ca().key_pem),
        serving=bundle.serving,
        trust_pem=bundle.trust_pem,
    )
    assert certs.decide(wrong_ca_key, exists=True, hosts=HOSTS).action is Action.REPLACE


# --- issue -----------------------------------------------------------------------------------


def test_renewal_keeps_the_ca_so_the_ca_bundle_does_not_change(bundle: Bundle) -> None:
    renewed = certs.issue(certs.Decision(action=Action.RENEW, reason=""), bundle, hosts=HOSTS)
    assert renewed.ca == bundle.ca
    assert renewed.ca_bundle() == bundle.ca_bundle()
    assert renewed.serving.cert_pem != bundle.serving.cert_pem
    renewed.serving.certificate.verify_directly_issued_by(bundle.ca.certificate)
    assert set(HOSTS) <= certs.covered_hosts(renewed.serving.certificate)
    assert certs.decide(renewed, exists=True, hosts=HOSTS).action is Action.REUSE


def test_create_makes_a_consistent_bundle() -> None:
    created = certs.issue(certs.Decision(action=Action.CREATE, reason=""), None, hosts=HOSTS)
    assert certs.decide(created, exists=True, hosts=HOSTS).action is Action.REUSE
    assert created.ca_bundle() == created.ca.cert_pem


def test_a_replaced_ca_is_trusted_alongside_the_old_one_until_it_expires(bundle: Bundle) -> None:
    replaced = certs.issue(certs.Decision(action=Action.REPLACE, reason=""), bundle, hosts=HOSTS)
    assert replaced.ca != bundle.ca
    trusted = x509.load_pem_x509_certificates(replaced.ca_bundle())
    assert trusted == [replaced.ca.certificate, bundle.ca.certificate]  # the new one first
    later = not_after(bundle.ca) + dt.timedelta(days=1)
    assert replaced.ca_bundle(now=later) == replaced.ca.cert_pem


def test_reuse_issues_nothing(bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="nothing to issue"):
        certs.issue(certs.Decision(action=Action.REUSE, reason=""), bundle, hosts=HOSTS)


# --- the Secret ------------------------------------------------------------------------------


def test_secret_data_round_trip(bundle: Bundle) -> None:
    data = bundle.secret_data()
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key", "ca-bundle.crt"}
    assert base64.b64decode(data["tls.crt"]) == bundle.serving.cert_pem
    assert Bundle.from_secret_data(data) == bundle


def test_a_secret_without_ca_bundle_trusts_its_ca(bundle: Bundle) -> None:
    data = bundle.secret_data()
    del data["ca-bundle.crt"]
    restored = Bundle.from_secret_data(data)
    assert restored is not None and restored.trust_pem == bundle.ca.cert_pem


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("tls.key"),
        lambda d: d.update({"ca.crt": "not base64!"}),
        lambda d: d.update({"tls.crt": base64.b64encode(b"-----BEGIN CERT").decode()}),
        lambda d: d.update({"ca.key": base64.b64encode(b"garbage").decode()}),
        lambda d: d.clear(),
    ],
)
def test_a_damaged_secret_reads_as_unusable(bundle: Bundle, damage: object) -> None:
    data = bundle.secret_data()
    damage(data)  # type: ignore[operator]
    assert Bundle.from_secret_data(data) is None
    assert Bundle.from_secret_data(None) is None


def test_secret_manifest_carries_the_resource_version_and_owner(bundle: Bundle) -> None:
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "demo-sidecar-state", "uid": "1234"},
    }
    owner = certs.owner_reference(configuration)
    assert owner == {"apiVersion": "admissionregistration.k8s.io/v1",
                     "kind": "MutatingWebhookConfiguration", "name": "demo-sidecar-state",
                     "uid": "1234"}  # fmt: skip
    update = certs.secret_manifest(name="tls", namespace="ops", bundle=bundle, owners=[owner],
                                   resource_version="42")  # fmt: skip
    assert update["metadata"]["resourceVersion"] == "42"
    assert update["metadata"]["ownerReferences"] == [owner]
    assert update["type"] == "kubernetes.io/tls"
    assert update["data"] == bundle.secret_data()
    create = certs.secret_manifest(name="tls", namespace="ops", bundle=bundle)
    assert "resourceVersion" not in create["metadata"]
    assert "ownerReferences" not in create["metadata"]


# --- caBundle patches ------------------------------------------------------------------------


def test_ca_bundle_patch_sets_only_what_differs(bundle: Bundle) -> None:
    encoded = base64.b64encode(bundle.ca_bundle()).decode()
    configuration = {
        "webhooks": [
            {"name": "a.sidecarstate.dev", "clientConfig": {"service": {"name": "s"}}},
            {"name": "b.sidecarstate.dev", "clientConfig": {"caBundle": encoded}},
            {"name": "c.sidecarstate.dev"},
        ]
    }
    assert certs.ca_bundle_patch(configuration, bundle.ca_bundle()) == [
        {"op": "test", "path": "/webhooks/0/name", "value": "a.sidecarstate.dev"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": encoded},
        {"op": "test", "path": "/webhooks/2/name", "value": "c.sidecarstate.dev"},
        {"op": "add", "path": "/webhooks/2/clientConfig", "value": {"caBundle": encoded}},
    ]
    current = {"webhooks": [{"name": "b", "clientConfig": {"caBundle": encoded}}]}
    assert certs.ca_bundle_patch(current, bundle.ca_bundle()) == []


# --- the files -------------------------------------------------------------------------------


def files_in(directory: Path) -> dict[str, Path]:
    return {
        "cert_file": directory / "tls.crt",
        "key_file": directory / "tls.key",
        "ca_file": directory / "ca.crt",
    }


def test_files_are_written_once_and_load_as_a_pair(bundle: Bundle, tmp_path: Path) -> None:
    files = files_in(tmp_path / "tls")
    assert certs.write_files(bundle, **files) is True
    assert certs.write_files(bundle, **files) is False  # unchanged: kopf need not reload
    assert files["cert_file"].read_bytes() == bundle.serving.cert_pem
    assert files["key_file"].read_bytes() == bundle.serving.key_pem
    assert files["ca_file"].read_bytes() == bundle.ca_bundle()
    assert os.readlink(files["cert_file"]) == os.path.join("..data", "tls.crt")
    assert files["key_file"].resolve().stat().st_mode & 0o777 == 0o600
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(files["cert_file"]), str(files["key_file"]))  # what kopf does


def test_renewed_files_swap_in_atomically(bundle: Bundle, tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    files = files_in(directory)
    certs.write_files(bundle, **files)
    first_version = os.readlink(directory / "..data")
    renewed = certs.issue(certs.Decision(action=Action.RENEW, reason=""), bundle, hosts=HOSTS)
    assert certs.write_files(renewed, **files) is True
    assert os.readlink(directory / "..data") != first_version
    assert not (directory / first_version).exists()  # the old version is cleaned up
    assert files["cert_file"].read_bytes() == renewed.serving.cert_pem
    assert files["key_file"].read_bytes() == renewed.serving.key_pem
    versions = [p.name for p in directory.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(versions) == 1


def test_files_replace_plain_files_left_by_others(bundle: Bundle, tmp_path: Path) -> None:
    files = files_in(tmp_path)
    for path in files.values():
        path.write_bytes(b"stale")
    assert certs.write_files(bundle, **files) is True
    assert files["cert_file"].is_symlink()
    assert files["cert_file"].read_bytes() == bundle.serving.cert_pem


def test_files_must_share_a_directory(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one directory"):
        certs.write_files(
            bundle,
            cert_file=tmp_path / "a" / "tls.crt",
            key_file=tmp_path / "b" / "tls.key",
            ca_file=tmp_path / "a" / "ca.crt",
        )


def test_webhook_tls_names(tmp_path: Path) -> None:
    tls = certs.WebhookTLS(
        secret="demo-sidecar-state-webhook-tls", namespace="sidecar-state-system",
        service="demo-sidecar-state-webhook", configuration="demo-sidecar-state",
        cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key",
    )  # fmt: skip
    assert tls.hosts == HOSTS
    assert tls.hosts[0] == "demo-sidecar-state-webhook.sidecar-state-system.svc"
    assert tls.ca_file == tmp_path / "ca.crt"


def _served_certificate(port: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        ssl.get_server_certificate(("127.0.0.1", port), timeout=5).encode()
    )


async def test_kopf_serves_renewed_files_without_a_restart(bundle: Bundle, tmp_path: Path) -> None:
    """kopf's WebhookServer re-reads the files every ``file_check_interval`` and restarts its
    listener with the new pair: the symlink swap is what it sees."""
    files = files_in(tmp_path / "tls")
    certs.write_files(bundle, **files)
    port = free_port()
    server = kopf.WebhookServer(
        addr="127.0.0.1", port=port, certfile=str(files["cert_file"]),
        pkeyfile=str(files["key_file"]), file_check_interval=0.1,
    )  # fmt: skip
    started: asyncio.Queue[None] = asyncio.Queue()

    async def no_handler(*_: Any, **__: Any) -> Any:
        return {}

    async def serve() -> None:
        async for _ in server(no_handler):
            await started.put(None)

    task = asyncio.create_task(serve())
    try:
        await asyncio.wait_for(started.get(), timeout=10)
        served = await asyncio.to_thread(_served_certificate, port)
        assert served == bundle.serving.certificate
        renewed = certs.issue(certs.Decision(action=Action.RENEW, reason=""), bundle, hosts=HOSTS)
        assert certs.write_files(renewed, **files)
        await asyncio.wait_for(started.get(), timeout=10)  # the listener restarted
        served = await asyncio.to_thread(_served_certificate, port)
        assert served == renewed.serving.certificate
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_client_cert_names_its_user_and_groups_and_serves_no_one() -> None:
    """The builder's client certificates (the local control plane's admin and components):
    Kubernetes reads CN as the user and each O as a group; only client auth is allowed."""
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = make_ca()
    pair = make_client_cert(ca=ca, common_name="admin", organizations=("system:masters",))
    cert = pair.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:masters"
    )
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(ValueError, match="common name"):
        make_client_cert(ca=ca, common_name="")
