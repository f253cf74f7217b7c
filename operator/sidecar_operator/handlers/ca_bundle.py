"""Repair the webhook configurations' ``caBundle`` within seconds of it being wiped.

With ``failurePolicy: Fail`` a configuration without our CA refuses every Pod it selects: a
``helm upgrade --force`` or an Argo CD "Replace" sync rewrites the configuration from the
chart, which has no ``caBundle`` (deliberately: the operator owns it). The hourly pass of
:func:`sidecar_operator.webhook_tls.keep_current` would fix it only after up to an hour, so
the webhook role also watches both configurations and restores the bundle when it differs
from the one it serves with. Imported only when the operator manages its own certificates
(``tls_secret``); with cert-manager, its CA injector does this.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from sidecar_operator import kube, webhook_tls
from sidecar_operator.handlers.context import OperatorContext

ADMISSION_GROUP = "admissionregistration.k8s.io"


def _ours(name: str, memo: OperatorContext, **_: Any) -> bool:
    tls: webhook_tls.WebhookTLS | None = memo.webhook_tls
    return tls is not None and name == tls.configuration


@kopf.on.event(ADMISSION_GROUP, "v1", "mutatingwebhookconfigurations", when=_ours)
@kopf.on.event(ADMISSION_GROUP, "v1", "validatingwebhookconfigurations", when=_ours)
async def webhook_configuration_event(
    body: kopf.Body, type: str | None, memo: OperatorContext, logger: kopf.Logger, **_: Any
) -> None:
    if type == "DELETED":
        return
    tls = memo.webhook_tls
    if tls is None:
        return  # _ours already said no; this tells the type checker
    try:
        serving_ca = tls.ca_file.read_bytes()
    except OSError:
        return  # not prepared yet: the start-up pass sets the bundle
    if not webhook_tls.ca_bundle_patch(body, serving_ca):
        return
    logger.warning(
        f"The caBundle of {body.get('kind')} {body.metadata.name} is not ours; restoring it"
    )
    await asyncio.to_thread(webhook_tls.reconcile, kube.client(), tls)
