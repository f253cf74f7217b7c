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

The parts: :mod:`.x509` makes certificates, :mod:`.bundle` reads the Secret and decides,
:mod:`.files` writes what the webhook server loads, :mod:`.reconcile` does a pass (all its API
calls are :mod:`sidecar_operator.kube`'s).
"""

from sidecar_operator.webhook_tls.bundle import (
    CA_BUNDLE,
    CA_CERT,
    CA_KEY,
    SECRET_TYPE,
    TLS_CERT,
    TLS_KEY,
    Action,
    Bundle,
    Decision,
    covered_hosts,
    decide,
    issue,
    trusted_cas,
)
from sidecar_operator.webhook_tls.files import DATA_LINK, write_files
from sidecar_operator.webhook_tls.reconcile import (
    ADMISSION_API_VERSION,
    CHECK_INTERVAL,
    MUTATING_KIND,
    RETRY_INTERVAL,
    VALIDATING_KIND,
    WRITE_ATTEMPTS,
    CertificateError,
    Reconciled,
    WebhookTLS,
    ca_bundle_patch,
    ensure_secret,
    keep_current,
    owner_reference,
    patch_ca_bundles,
    prepare,
    reconcile,
    secret_manifest,
)

__all__ = [
    "ADMISSION_API_VERSION",
    "CA_BUNDLE",
    "CA_CERT",
    "CA_KEY",
    "CHECK_INTERVAL",
    "DATA_LINK",
    "MUTATING_KIND",
    "RETRY_INTERVAL",
    "SECRET_TYPE",
    "TLS_CERT",
    "TLS_KEY",
    "VALIDATING_KIND",
    "WRITE_ATTEMPTS",
    "Action",
    "Bundle",
    "CertificateError",
    "Decision",
    "Reconciled",
    "WebhookTLS",
    "ca_bundle_patch",
    "covered_hosts",
    "decide",
    "ensure_secret",
    "issue",
    "keep_current",
    "owner_reference",
    "patch_ca_bundles",
    "prepare",
    "reconcile",
    "secret_manifest",
    "trusted_cas",
    "write_files",
]
