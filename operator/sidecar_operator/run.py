"""``sidecar-state-operator``: run the operator, or prepare a development webhook.

``run`` starts kopf with the handlers of one role: ``webhook`` (admission only, from its own
server beside kopf's index; standalone, any number of replicas, each with its own index),
``controller`` (status, roll-outs, annotations, watchdog; one replica) or ``all`` (both, for
development and the e2e suite).
``dev-certs`` and ``register-webhooks`` let the operator run outside the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import kopf

from sidecar_operator import capabilities
from sidecar_operator.api.models import GROUP
from sidecar_operator.controller.rollout import RolloutThrottle
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_config import (
    build_mutating_configuration,
    build_validating_configuration,
)
from sidecar_operator.webhook_tls.x509 import write_webhook_certs

ROLE_MODULES: dict[str, tuple[str, ...]] = {
    "webhook": ("sidecar_operator.handlers.index",),
    "controller": ("sidecar_operator.handlers.index", "sidecar_operator.handlers.controller"),
}
ROLE_MODULES["all"] = tuple(dict.fromkeys(ROLE_MODULES["webhook"] + ROLE_MODULES["controller"]))


#: What kopf watches only for an index or for ``on.event`` handlers: no ``on.create/update/
#: delete/resume`` handler and no daemon or timer reads their essence (a unit test checks the
#: registry), so :class:`DiffBaseOnlyWhereRead` builds none for them.
ESSENCE_UNREAD: Final = frozenset({
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
})  # fmt: skip


class DiffBaseOnlyWhereRead(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base storage, without the essence of objects whose handlers never read it.

    For every event of every watched object kopf builds the object's "essence" (a deep copy
    of the whole object, then another in the progress storage) and diffs it against the last
    handled one, before it knows whether any handler needs the diff; only change handlers,
    daemons and timers do. The controller watches every Pod for its cache, and an injected
    Pod, with its four containers, is the largest object it sees, several events each: those
    copies were most of the controller's CPU per Pod created. Kinds in :data:`ESSENCE_UNREAD`
    get an empty essence; every other kind (StateBindings) the full one, as before.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if (body.get("apiVersion"), body.get("kind")) in ESSENCE_UNREAD:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings: our own annotation group from day one, and the webhook server."""
    config = kopf.OperatorSettings()
    config.persistence.finalizer = f"{GROUP}/finalizer"
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    config.persistence.diffbase_storage = DiffBaseOnlyWhereRead(
        prefix=GROUP, key="last-handled-configuration"
    )
    config.posting.level = logging.WARNING  # our explicit Events only, not handler chatter
    config.watching.server_timeout = 270
    config.watching.client_timeout = 300
    config.watching.connect_timeout = 10
    config.admission.managed = None  # the chart (or register-webhooks) owns the configuration
    # A namespaced install may not list namespaces: kopf then takes the watched namespaces as
    # given and discovers the resources once at start (the chart installs the CRD first).
    config.scanning.disabled = bool(settings.watch_namespaces)
    # No kopf admission server: the webhook role serves admission from its own
    # (sidecar_operator.webhook_server), started by the start-up handler.
    return config


def cmd_run(settings: OperatorSettings) -> None:
    serves_webhooks = settings.role in {"all", "webhook"}
    if serves_webhooks and not (settings.webhook_cert_file and settings.webhook_key_file):
        raise SystemExit(
            "SIDECAR_STATE_WEBHOOK_CERT_FILE and SIDECAR_STATE_WEBHOOK_KEY_FILE are not set: "
            "the apiserver only calls webhooks over TLS. Make them with "
            "`sidecar-state-operator dev-certs` or let the Helm chart mount them."
        )
    for module in ROLE_MODULES[settings.role]:
        importlib.import_module(module)
    importlib.import_module("sidecar_operator.handlers.lifecycle")
    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON)
    tls = None
    if serves_webhooks and settings.tls_secret:
        from sidecar_operator import webhook_tls  # the Kubernetes client, only when it runs

        # Before kopf starts: the webhook server loads the files at start.
        tls = webhook_tls.WebhookTLS(
            secret=settings.tls_secret, namespace=settings.namespace,
            service=settings.webhook_service, configuration=settings.webhook_configuration,
            cert_file=Path(settings.webhook_cert_file or ""),
            key_file=Path(settings.webhook_key_file or ""),
        )  # fmt: skip
        webhook_tls.prepare(tls)
        importlib.import_module("sidecar_operator.handlers.ca_bundle")
    mode = None
    if serves_webhooks:  # only the webhook's injections depend on the mode, not the hashes
        try:
            choice = capabilities.detect(settings.sidecar_mode)
        except capabilities.UnsupportedMode as error:
            raise SystemExit(f"sidecar-state cannot start: {error}") from None
        logging.getLogger(__name__).warning(f"Sidecars: {choice.reason}")
        mode = choice.mode
    memo = OperatorContext(
        settings=settings,
        injection_defaults=settings.injection_defaults(sidecar_mode=mode),
        webhook_tls=tls,
        rollout_throttle=RolloutThrottle(
            per_minute=settings.rollout_max_per_minute,
            per_namespace=settings.rollout_max_in_progress_per_namespace,
            now=time.monotonic(),
        ),
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per probe
    from sidecar_operator import kube  # the kubernetes client: imported by the handlers anyway

    kube.preload_events_api()
    # A namespaced install (watch_namespaces) watches only those namespaces, with Roles there;
    # kopf still watches cluster-scoped kinds (CRDs, webhook configurations) cluster-wide.
    namespaces = list(settings.watch_namespaces)
    asyncio.run(
        kopf.operator(
            settings=kopf_settings(settings),
            standalone=True,
            memo=memo,
            clusterwide=not namespaces,
            namespaces=namespaces,
        )
    )


def cmd_dev_certs(args: argparse.Namespace) -> None:
    files = write_webhook_certs(Path(args.out), hosts=args.host)
    print(f"export SIDECAR_STATE_WEBHOOK_CERT_FILE={files.cert_file}")
    print(f"export SIDECAR_STATE_WEBHOOK_KEY_FILE={files.key_file}")
    print(f"# CA bundle for register-webhooks: {files.ca_file}")


def cmd_register_webhooks(args: argparse.Namespace, settings: OperatorSettings) -> None:
    import kubernetes  # only this command needs the client at import time

    from sidecar_operator import kube

    ca_bundle = Path(args.ca_file).read_bytes()
    excluded = sorted(settings.injection_defaults().excluded_namespaces)
    objects = [
        build_mutating_configuration(
            base_url=args.url, ca_bundle=ca_bundle, excluded_namespaces=excluded,
            served_namespaces=settings.watch_namespaces,
            failure_policy=args.failure_policy, name=args.name,
        ),
        build_validating_configuration(
            base_url=args.url, ca_bundle=ca_bundle,
            failure_policy=args.failure_policy, name=args.name,
        ),
    ]  # fmt: skip
    api = kubernetes.client.AdmissionregistrationV1Api(kube.client())
    for obj in objects:
        kind = obj["kind"]
        snake = "mutating" if kind.startswith("Mutating") else "validating"
        create = getattr(api, f"create_{snake}_webhook_configuration")
        delete = getattr(api, f"delete_{snake}_webhook_configuration")
        try:
            delete(args.name)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
        create(obj)
        print(f"{kind} {args.name} -> {args.url} (failurePolicy {args.failure_policy})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar-state-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the operator (the default); configured by environment")
    certs = commands.add_parser("dev-certs", help="make a CA and serving certificate files")
    certs.add_argument("--out", required=True, help="folder for ca.crt, tls.crt, tls.key")
    certs.add_argument("--host", action="append", default=None, help="name or IP (repeatable)")
    register = commands.add_parser(
        "register-webhooks", help="point url: webhook configurations at this operator"
    )
    register.add_argument("--url", required=True, help="e.g. https://127.0.0.1:8443")
    register.add_argument("--ca-file", required=True)
    register.add_argument("--failure-policy", choices=["Fail", "Ignore"], default="Fail")
    register.add_argument("--name", default="sidecar-state")
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    settings = OperatorSettings()
    if args.command == "dev-certs":
        args.host = args.host or ["127.0.0.1", "localhost"]
        cmd_dev_certs(args)
    elif args.command == "register-webhooks":
        cmd_register_webhooks(args, settings)
    else:
        cmd_run(settings)
    sys.exit(0)
