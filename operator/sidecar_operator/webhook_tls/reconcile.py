"""The Secret, the files and the ``caBundle`` kept in line, one pass at a time (see the
package's docstring). The manifests and patches are pure; the Kubernetes calls are
:mod:`sidecar_operator.kube`'s, blocking, run before the event loop starts or in a thread."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar_operator.api import labels
from sidecar_operator.webhook_tls.bundle import (
    CA_CERT,
    SECRET_TYPE,
    Action,
    Bundle,
    decide,
    issue,
)
from sidecar_operator.webhook_tls.files import write_files
from sidecar_operator.webhook_tls.x509 import service_hosts

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# sidecar_operator.kube (and the kubernetes client, a second to import) is loaded only when a
# pass runs: ``dev-certs`` and the pure parts never need it.

# The logger keeps the name it had before the package: log queries keep finding its lines.
logger = logging.getLogger("sidecar_operator.certificates")

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


def ensure_secret(
    api: ApiClient | None,
    tls: WebhookTLS,
    *,
    owner: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Bundle:
    """Get the certificates from the Secret, or make them; safe for replicas that race."""
    from sidecar_operator import kube

    for _ in range(WRITE_ATTEMPTS):
        live = kube.read_secret(tls.secret, tls.namespace, api=api)
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
        if live is None:
            body = secret_manifest(name=tls.secret, namespace=tls.namespace, bundle=fresh,
                                   owners=[owner] if owner else [])  # fmt: skip
        else:
            kept = live["metadata"].get("ownerReferences") or ([owner] if owner else [])
            body = secret_manifest(
                name=tls.secret, namespace=tls.namespace, bundle=fresh, owners=kept,
                resource_version=live["metadata"]["resourceVersion"],
            )  # fmt: skip
        if not kube.write_secret(body, create=live is None, api=api):
            # AlreadyExists or Conflict: another replica was first.
            logger.info(f"{where} was written by another replica; reading theirs")
            continue
        logger.info(f"{where}: {what}")
        return fresh
    raise CertificateError(
        f"Secret {tls.namespace}/{tls.secret} kept changing under {WRITE_ATTEMPTS} attempts"
    )


def patch_ca_bundles(
    api: ApiClient | None, configurations: Sequence[Mapping[str, Any]], ca: bytes
) -> None:
    """Set the ``caBundle`` of every webhook that lacks the current one."""
    from sidecar_operator import kube

    for configuration in configurations:
        operations = ca_bundle_patch(configuration, ca)
        if not operations:
            continue
        name = configuration["metadata"]["name"]
        kind = VALIDATING_KIND if configuration.get("kind") == VALIDATING_KIND else MUTATING_KIND
        kube.patch_webhook_configuration(kind, name, operations, api=api)
        logger.info(f"caBundle of {configuration.get('kind')} {name} updated")


@dataclass(frozen=True, kw_only=True)
class Reconciled:
    bundle: Bundle
    #: Both webhook configurations exist and carry the bundle's CAs.
    configured: bool


def reconcile(
    api: ApiClient | None, tls: WebhookTLS, *, now: dt.datetime | None = None
) -> Reconciled:
    """One full pass: Secret, files, caBundles. Blocking; idempotent; cheap when all is well."""
    from sidecar_operator import kube

    configurations = [
        found for kind in (MUTATING_KIND, VALIDATING_KIND)
        if (found := kube.read_webhook_configuration(kind, tls.configuration, api=api))
        is not None
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


def prepare(tls: WebhookTLS, *, api: ApiClient | None = None) -> Reconciled:
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
    api: ApiClient | None = None,
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
