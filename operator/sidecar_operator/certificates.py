"""Webhook TLS without cert-manager: a CA and a serving certificate kept in a Secret.

The apiserver only calls a webhook over TLS, and checks the server against the ``caBundle`` of
the webhook configuration. With a plain ``helm install`` nobody else makes these, so every
replica of the webhook role, before kopf starts its webhook server:

1. reads the Secret (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``) and decides from it
   alone — :func:`decide` — whether to use it, renew the serving certificate or make everything
   anew;
2. writes what it decided with optimistic concurrency: a *create* when there is no Secret, an
   *update carrying the resourceVersion it read* otherwise. Several replicas starting together
   race; the loser's write fails with 409 Conflict/AlreadyExists, it re-reads and uses the
   winner's certificates. So replicas never fight and all serve certificates of one CA;
3. writes the files the webhook server loads, swapping them in atomically (the ``..data``
   symlink layout of Secret volumes), so kopf's ``file_check_interval`` re-read never sees a
   certificate without its key;
4. patches the ``caBundle`` of both webhook configurations where it differs.

:func:`keep_current` repeats that every hour, so a serving certificate is renewed 30 days
before it expires (by whichever replica gets there first) and every replica picks the new one
up and reloads it without a restart.

The decisions and the manifests are pure functions (unit-tested); the Kubernetes calls are thin
and blocking, run before the event loop starts or in a thread (:func:`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import enum
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sidecar_operator.api import labels
from sidecar_operator.tls import RENEW_BEFORE, KeyPair, make_ca, make_serving_cert, service_hosts

logger = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
#: CAs the apiserver should trust: the current one, plus the previous one while a CA rolls over.
CA_BUNDLE = "ca-bundle.crt"
SECRET_TYPE = "kubernetes.io/tls"
#: How often a running replica re-reads the Secret (and renews when due).
CHECK_INTERVAL = dt.timedelta(hours=1)
#: How soon to try again while something is missing (a webhook configuration, the API).
RETRY_INTERVAL = dt.timedelta(seconds=10)
#: Create/update attempts before giving up; each lost race costs one.
WRITE_ATTEMPTS = 5

ADMISSION_API_VERSION = "admissionregistration.k8s.io/v1"
MUTATING_KIND = "MutatingWebhookConfiguration"
VALIDATING_KIND = "ValidatingWebhookConfiguration"


class CertificateError(RuntimeError):
    """The webhook's certificates could not be prepared."""


# --- what the Secret holds ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """Everything in the Secret: the CA (with its key, to sign renewals) and the serving pair."""

    ca: KeyPair
    serving: KeyPair
    #: PEM of the CAs to trust; the current CA, and the previous one during a roll-over.
    trust_pem: bytes

    def secret_data(self) -> dict[str, str]:
        """The Secret's ``data``: base64 of each PEM."""
        raw = {
            CA_CERT: self.ca.cert_pem,
            CA_KEY: self.ca.key_pem,
            TLS_CERT: self.serving.cert_pem,
            TLS_KEY: self.serving.key_pem,
            CA_BUNDLE: self.trust_pem,
        }
        return {key: base64.b64encode(value).decode("ascii") for key, value in raw.items()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> Bundle | None:
        """The bundle in a Secret's ``data``; ``None`` when anything is missing or unreadable."""
        if not data:
            return None
        try:
            raw = {key: base64.b64decode(data[key], validate=True) for key in
                   (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)}  # fmt: skip
            trust = base64.b64decode(data.get(CA_BUNDLE) or data[CA_CERT], validate=True)
            bundle = cls(
                ca=KeyPair(cert_pem=raw[CA_CERT], key_pem=raw[CA_KEY]),
                serving=KeyPair(cert_pem=raw[TLS_CERT], key_pem=raw[TLS_KEY]),
                trust_pem=trust,
            )
            for pair in (bundle.ca, bundle.serving):
                _ = pair.certificate
                serialization.load_pem_private_key(pair.key_pem, password=None)
            x509.load_pem_x509_certificates(trust)
        except (KeyError, ValueError, TypeError, binascii.Error):
            return None
        return bundle

    def ca_bundle(self, *, now: dt.datetime | None = None) -> bytes:
        """The ``caBundle`` for the webhook configurations: the trusted CAs not yet expired."""
        return trusted_cas(self.trust_pem, current=self.ca.cert_pem, now=now)


def trusted_cas(trust_pem: bytes, *, current: bytes, now: dt.datetime | None = None) -> bytes:
    """``current`` first, then every other CA of ``trust_pem`` that is still valid."""
    now = now or dt.datetime.now(dt.UTC)
    current_cert = x509.load_pem_x509_certificate(current)
    kept = [current_cert]
    for cert in x509.load_pem_x509_certificates(trust_pem):
        if cert not in kept and cert.not_valid_after_utc > now:
            kept.append(cert)
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in kept)


# --- deciding -------------------------------------------------------------------------------


class Action(enum.Enum):
    REUSE = "reuse"  # the Secret is good: use it as it is
    CREATE = "create"  # no Secret: make a CA and a serving certificate, create the Secret
    RENEW = "renew"  # same CA, new serving certificate: update the Secret
    REPLACE = "replace"  # unusable Secret or expiring CA: new CA and serving cert, update


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    reason: str


def _public_key_bytes(pair: KeyPair) -> bytes:
    private = serialization.load_pem_private_key(pair.key_pem, password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _matches_key(pair: KeyPair) -> bool:
    return pair.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _public_key_bytes(pair)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def covered_hosts(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = set(san.get_values_for_type(x509.DNSName))
    names.update(str(address) for address in san.get_values_for_type(x509.IPAddress))
    return names


def decide(
    bundle: Bundle | None,
    *,
    exists: bool,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    renew_before: dt.timedelta = RENEW_BEFORE,
) -> Decision:
    """What to do with the Secret as read: pure, so every branch has a unit test.

    ``exists`` tells a missing Secret (create it) from one that holds nothing usable (replace
    its content with an update, which keeps the race safe through its resourceVersion).
    """
    now = now or dt.datetime.now(dt.UTC)
    if not exists:
        return Decision(action=Action.CREATE, reason="the Secret does not exist")
    if bundle is None:
        return Decision(action=Action.REPLACE, reason="the Secret holds no usable certificates")
    if not _matches_key(bundle.ca):
        return Decision(action=Action.REPLACE, reason="the CA certificate does not match its key")
    if bundle.ca.expires_within(renew_before, now=now):
        return Decision(action=Action.REPLACE, reason="the CA expires within the renewal margin")
    serving = bundle.serving.certificate
    if not _matches_key(bundle.serving):
        return Decision(
            action=Action.RENEW, reason="the serving certificate does not match its key"
        )
    if not _issued_by(serving, bundle.ca.certificate):
        return Decision(action=Action.RENEW, reason="the serving certificate is not from the CA")
    missing = sorted(set(hosts) - covered_hosts(serving))
    if missing:
        return Decision(action=Action.RENEW, reason=f"the serving certificate lacks {missing}")
    if serving.not_valid_before_utc > now:
        return Decision(action=Action.RENEW, reason="the serving certificate is not valid yet")
    if bundle.serving.expires_within(renew_before, now=now):
        return Decision(action=Action.RENEW, reason="the serving certificate expires soon")
    return Decision(action=Action.REUSE, reason="the certificates are valid")


def issue(decision: Decision, current: Bundle | None, *, hosts: Sequence[str]) -> Bundle:
    """New certificates for a decision other than :attr:`Action.REUSE` (no I/O)."""
    if decision.action is Action.REUSE:
        raise ValueError("nothing to issue when the certificates are reused")
    if decision.action is Action.RENEW and current is not None:
        serving = make_serving_cert(ca=current.ca, hosts=hosts)
        return Bundle(ca=current.ca, serving=serving, trust_pem=current.trust_pem)
    ca = make_ca()
    serving = make_serving_cert(ca=ca, hosts=hosts)
    trust = ca.cert_pem
    if current is not None and _matches_key(current.ca):
        # Keep trusting the outgoing CA: other replicas serve certificates it signed until they
        # re-read the Secret. Expired CAs drop out of the bundle by themselves.
        trust = trusted_cas(current.trust_pem + current.ca.cert_pem, current=ca.cert_pem)
    return Bundle(ca=ca, serving=serving, trust_pem=trust)


# --- manifests and patches ------------------------------------------------------------------


def owner_reference(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """An owner reference to a webhook configuration: uninstalling the chart deletes the
    configuration, and the garbage collector then deletes the Secret it owns."""
    metadata = configuration["metadata"]
    return {
        "apiVersion": configuration.get("apiVersion") or ADMISSION_API_VERSION,
        "kind": configuration.get("kind") or MUTATING_KIND,
        "name": metadata["name"],
        "uid": metadata["uid"],
    }


def secret_manifest(
    *,
    name: str,
    namespace: str,
    bundle: Bundle,
    owners: Sequence[Mapping[str, Any]] = (),
    resource_version: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {labels.TLS_SECRET_LABEL: labels.TLS_SECRET_LABEL_VALUE},
    }
    if owners:
        metadata["ownerReferences"] = [dict(owner) for owner in owners]
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version  # the update fails if anyone wrote since
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": SECRET_TYPE,
        "data": bundle.secret_data(),
    }


def ca_bundle_patch(configuration: Mapping[str, Any], ca_bundle: bytes) -> list[dict[str, Any]]:
    """A JSON patch setting every webhook's ``caBundle``; empty when all are current.

    Each change is guarded by a ``test`` of the webhook's name at that index, so a concurrent
    edit that reorders the webhooks makes the patch fail instead of landing on the wrong one.
    """
    encoded = base64.b64encode(ca_bundle).decode("ascii")
    operations: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or ()):
        client_config = webhook.get("clientConfig") or {}
        if client_config.get("caBundle") == encoded:
            continue
        operations.append({"op": "test", "path": f"/webhooks/{index}/name",
                           "value": webhook["name"]})  # fmt: skip
        if "clientConfig" not in webhook:
            operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig",
                               "value": {"caBundle": encoded}})  # fmt: skip
        else:
            operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle",
                               "value": encoded})  # fmt: skip
    return operations


# --- the files the webhook server loads -----------------------------------------------------

DATA_LINK = "..data"


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_files(bundle: Bundle, *, cert_file: Path, key_file: Path, ca_file: Path) -> bool:
    """Write the serving pair and the CA bundle; True when anything changed.

    The layout is the one of a Secret volume: the files live in a fresh ``..<random>``
    directory, ``..data`` points at it, and each file is a symlink through ``..data``. Moving
    ``..data`` is one atomic rename, so a reader sees the old pair or the new pair — never a
    new certificate with the old key (kopf re-reads the files every ``file_check_interval``).
    """
    directory = cert_file.parent
    if key_file.parent != directory or ca_file.parent != directory:
        raise ValueError(f"{cert_file}, {key_file} and {ca_file} must share one directory")
    contents = {
        cert_file.name: bundle.serving.cert_pem,
        key_file.name: bundle.serving.key_pem,
        ca_file.name: bundle.ca_bundle(),
    }
    if all(_read_or_none(directory / name) == data for name, data in contents.items()):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{dt.datetime.now(dt.UTC):%Y_%m_%d_%H_%M_%S}.{secrets.token_hex(4)}"
    version.mkdir(mode=0o700)
    for name, data in contents.items():
        fd = os.open(version / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    data_link = directory / DATA_LINK
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    staged = directory / f"{DATA_LINK}_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(version.name)
    os.replace(staged, data_link)
    for name in contents:
        link = directory / name
        target = Path(DATA_LINK) / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        staged_link = directory / f".{name}.tmp"
        staged_link.unlink(missing_ok=True)
        staged_link.symlink_to(target)
        os.replace(staged_link, link)
    if previous is not None and previous.startswith("..") and "/" not in previous:
        old = directory / previous
        if old != version and old.is_dir():
            for leftover in old.iterdir():
                leftover.unlink()
            old.rmdir()
    return True


# --- the thin I/O over the Kubernetes API ---------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WebhookTLS:
    """Where the webhook's certificates live; built from the operator's settings."""

    secret: str  # the Secret's name, in ``namespace``
    namespace: str  # the operator's own namespace
    service: str  # the webhook Service: the serving certificate's names derive from it
    configuration: str  # the name of both webhook configurations (mutating and validating)
    cert_file: Path
    key_file: Path

    @property
    def ca_file(self) -> Path:
        return self.cert_file.parent / CA_CERT

    @property
    def hosts(self) -> list[str]:
        return service_hosts(service=self.service, namespace=self.namespace)


def _plain(api: Any, obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    return data


def _read_configuration(api: Any, kind: str, name: str) -> dict[str, Any] | None:
    import kubernetes

    admission = kubernetes.client.AdmissionregistrationV1Api(api)
    read = (admission.read_mutating_webhook_configuration if kind == MUTATING_KIND
            else admission.read_validating_webhook_configuration)  # fmt: skip
    try:
        found = _plain(api, read(name))
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    found.setdefault("apiVersion", ADMISSION_API_VERSION)
    found.setdefault("kind", kind)
    return found


def ensure_secret(
    api: Any,
    tls: WebhookTLS,
    *,
    owner: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Bundle:
    """Get the certificates from the Secret, or make them; safe for replicas that race."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)
    for _ in range(WRITE_ATTEMPTS):
        try:
            live: dict[str, Any] | None = _plain(
                api, core.read_namespaced_secret(tls.secret, tls.namespace)
            )
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            live = None
        current = Bundle.from_secret_data(live.get("data") if live else None)
        decision = decide(current, exists=live is not None, hosts=tls.hosts, now=now)
        if decision.action is Action.REUSE and current is not None and live is not None:
            if owner is None or live["metadata"].get("ownerReferences"):
                return current
            # Made before the webhook configuration existed: let it own the Secret now, so
            # that uninstalling the chart still removes it.
            fresh, what = current, "now owned by the webhook configuration"
        else:
            fresh = issue(decision, current, hosts=tls.hosts)
            what = f"{decision.action.value} ({decision.reason})"
        where = f"Secret {tls.namespace}/{tls.secret}"
        try:
            if live is None:
                body = secret_manifest(name=tls.secret, namespace=tls.namespace, bundle=fresh,
                                       owners=[owner] if owner else [])  # fmt: skip
                core.create_namespaced_secret(tls.namespace, cast(Any, body))
            else:
                kept = live["metadata"].get("ownerReferences") or ([owner] if owner else [])
                body = secret_manifest(
                    name=tls.secret, namespace=tls.namespace, bundle=fresh, owners=kept,
                    resource_version=live["metadata"]["resourceVersion"],
                )  # fmt: skip
                core.replace_namespaced_secret(tls.secret, tls.namespace, cast(Any, body))
        except kubernetes.client.ApiException as error:
            if error.status == 409:  # AlreadyExists or Conflict: another replica was first
                logger.info(f"{where} was written by another replica; reading theirs")
                continue
            raise
        logger.info(f"{where}: {what}")
        return fresh
    raise CertificateError(
        f"Secret {tls.namespace}/{tls.secret} kept changing under {WRITE_ATTEMPTS} attempts"
    )


def patch_ca_bundles(api: Any, configurations: Sequence[Mapping[str, Any]], ca: bytes) -> None:
    """Set the ``caBundle`` of every webhook that lacks the current one."""
    import kubernetes

    admission = kubernetes.client.AdmissionregistrationV1Api(api)
    for configuration in configurations:
        operations = ca_bundle_patch(configuration, ca)
        if not operations:
            continue
        name = configuration["metadata"]["name"]
        if configuration.get("kind") == VALIDATING_KIND:
            admission.patch_validating_webhook_configuration(name, operations)
        else:
            admission.patch_mutating_webhook_configuration(name, operations)
        logger.info(f"caBundle of {configuration.get('kind')} {name} updated")


@dataclass(frozen=True, kw_only=True)
class Reconciled:
    bundle: Bundle
    #: Both webhook configurations exist and carry the bundle's CAs.
    configured: bool


def reconcile(api: Any, tls: WebhookTLS, *, now: dt.datetime | None = None) -> Reconciled:
    """One full pass: Secret, files, caBundles. Blocking; idempotent; cheap when all is well."""
    configurations = [
        found for kind in (MUTATING_KIND, VALIDATING_KIND)
        if (found := _read_configuration(api, kind, tls.configuration)) is not None
    ]  # fmt: skip
    if len(configurations) < 2:
        # Helm creates the webhook configurations after the Deployments; a fast Pod can start
        # first. keep_current() then retries soon rather than in an hour.
        count = len(configurations)
        logger.warning(f"Webhook configurations named {tls.configuration}: {count} of 2 "
                       "found; the missing ones get their caBundle later")  # fmt: skip
    owner = next((owner_reference(c) for c in configurations if c["kind"] == MUTATING_KIND), None)
    bundle = ensure_secret(api, tls, owner=owner, now=now)
    if write_files(bundle, cert_file=tls.cert_file, key_file=tls.key_file, ca_file=tls.ca_file):
        logger.info(f"Webhook certificate files written to {tls.cert_file.parent}")
    patch_ca_bundles(api, configurations, bundle.ca_bundle(now=now))
    return Reconciled(bundle=bundle, configured=len(configurations) == 2)


def prepare(tls: WebhookTLS, *, api: Any | None = None) -> Reconciled:
    """Start-up: make the files exist before kopf starts the webhook server that loads them.

    Called from ``cmd_run`` before the event loop starts, so blocking here stalls nothing.
    """
    if api is None:
        from sidecar_operator import kube

        api = kube.client()
    return reconcile(api, tls)


async def keep_current(
    tls: WebhookTLS,
    *,
    api: Any | None = None,
    interval: dt.timedelta = CHECK_INTERVAL,
    retry: dt.timedelta = RETRY_INTERVAL,
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
) -> None:
    """Run forever: re-read the Secret, renew when due, refresh files and caBundles.

    Every ``interval`` once all is in place; every ``retry`` while a webhook configuration is
    missing or the API failed (the files already served stay valid meanwhile).
    """
    if api is None:
        from sidecar_operator import kube

        api = kube.client()
    delay = retry  # the first pass soon: the configurations may have appeared since start-up
    while True:
        await asyncio.sleep(delay.total_seconds())
        try:
            result = await asyncio.to_thread(reconcile, api, tls)
        except Exception as error:
            log.warning(f"Could not check the webhook certificates: {error}")
            delay = retry
        else:
            delay = interval if result.configured else retry
