"""The admission webhook server: ``/inject-pods`` and ``/validate-statebindings`` over TLS.

A small server of its own rather than kopf's: kopf's admission path (an ``aiohttp``
application, Body wrappers, a deep copy and a diff of the whole object, handler bookkeeping,
stdlib JSON) cost more than the decision itself, and it restarted the listener on every
certificate renewal. Here each AdmissionReview is parsed once (orjson), handed to the
handler as plain dicts, and the answer is encoded once. kopf still runs the index and the
controller in the same process; the server starts from kopf's start-up handler, which gives
it the live index.

Connections are kept alive longer than the apiserver keeps an idle one (Go's 90 s), so the
apiserver, not this server, closes idle connections and no call races a close; each
connection accepted (one TLS handshake) is counted in
``sidecar_state_webhook_connections_total``, to see whether the apiserver reuses them.

A path other than the two is answered 404: with kopf it was silently allowed, so a
configuration pointing at a wrong path disabled injection without an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from sidecar_operator import metrics
from sidecar_operator.api.models import GROUP, PLURAL, VERSION, StateBinding
from sidecar_operator.handlers.context import OperatorContext
from sidecar_operator.handlers.index import bindings_in
from sidecar_operator.handlers.webhook import (
    AdmissionRefused,
    Verdict,
    pod_mutate,
    statebinding_validate,
    wait_for_index,
)
from sidecar_operator.webhook_config import MUTATE_PODS, VALIDATE_BINDINGS

logger = logging.getLogger(__name__)

#: Longer than the apiserver's idle timeout for webhook connections (Go's default, 90 s).
KEEPALIVE_SECONDS: Final = 120.0
#: How often the certificate files are checked for a renewal (they are then reloaded).
FILE_CHECK_SECONDS: Final = 30.0

Index = Mapping[str, Any]  # kopf.Index[str, StateBinding]: namespace -> bindings


@dataclass(frozen=True)
class Route:
    """What one path admits: the resource and operations its configuration sends there."""

    group: str
    version: str
    resource: str
    operations: tuple[str, ...]


#: The webhook configurations (the chart's and ``register-webhooks``') point at these paths.
ROUTES: Final[Mapping[str, Route]] = {
    f"/{MUTATE_PODS}": Route("", "v1", "pods", ("CREATE",)),
    f"/{VALIDATE_BINDINGS}": Route(GROUP, VERSION, PLURAL, ("CREATE", "UPDATE")),
}


def review_response(
    review: Mapping[str, Any],
    *,
    verdict: Verdict | None = None,
    refused: AdmissionRefused | None = None,
) -> bytes:
    """The AdmissionReview answering ``review``: the fields and order kopf used, the patch
    encoded with orjson (the apiserver decodes it; only its operations matter)."""
    payload = review.get("request") or {}
    response: dict[str, Any] = {"uid": payload.get("uid", ""), "allowed": refused is None}
    if verdict is not None and verdict.warnings:
        response["warnings"] = [str(w) for w in verdict.warnings]
    if verdict is not None and verdict.patch:
        response["patch"] = base64.b64encode(orjson.dumps(verdict.patch)).decode("ascii")
        response["patchType"] = "JSONPatch"
    if refused is not None:
        response["status"] = {"message": str(refused) or repr(refused), "code": refused.code}
    return orjson.dumps({
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": review.get("kind", "AdmissionReview"),
        "response": response,
    })  # fmt: skip


class AdmissionServer:
    """Serves the two admission paths from the live index, until cancelled."""

    def __init__(
        self,
        *,
        memo: OperatorContext,
        index: Index,
        host: str,
        port: int,
        cert_file: Path,
        key_file: Path,
    ) -> None:
        self.memo, self.index = memo, index
        self.host, self.port = host, port
        self.cert_file, self.key_file = cert_file, key_file
        self._handlers: dict[str, Callable[[Mapping[str, Any]], Awaitable[Verdict]]] = {
            f"/{MUTATE_PODS}": self._mutate,
            f"/{VALIDATE_BINDINGS}": self._validate,
        }

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._handlers.get(request.path)
        if handler is None or request.method != "POST":
            known = ", ".join(f"POST {path}" for path in ROUTES)
            return web.Response(status=404, text=f"no admission webhook here; serving {known}")
        try:
            review = orjson.loads(await request.read())
            payload = review["request"]
            if not isinstance(payload, dict) or not isinstance(payload.get("object"), dict):
                raise TypeError("request.object is missing")
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            return web.Response(status=400, text=f"not an AdmissionReview: {error}")
        try:
            verdict = await handler(payload)
        except AdmissionRefused as refused:
            body = review_response(review, refused=refused)
        except Exception as error:  # a fault of ours refuses the object, as kopf did
            logger.exception(f"Admission at {request.path} failed")
            body = review_response(review, refused=AdmissionRefused(str(error) or repr(error)))
        else:
            body = review_response(review, verdict=verdict)
        return web.Response(body=body, content_type="application/json")

    @staticmethod
    def _namespaced(payload: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The object, with the request's namespace filled in: a Pod created by a controller
        may arrive with an empty ``metadata.namespace``."""
        obj: dict[str, Any] = payload["object"]
        namespace = payload.get("namespace") or ""
        metadata = obj.setdefault("metadata", {})
        if namespace and not metadata.get("namespace"):
            metadata["namespace"] = namespace
        return obj, str(metadata.get("namespace") or namespace)

    async def _mutate(self, payload: Mapping[str, Any]) -> Verdict:
        if payload.get("operation") not in ROUTES[f"/{MUTATE_PODS}"].operations:
            return Verdict()
        obj, namespace = self._namespaced(payload)
        await wait_for_index(self.memo)
        bindings: list[StateBinding] = bindings_in(self.index, namespace)  # type: ignore[arg-type]
        return pod_mutate(obj, namespace=namespace, dryrun=bool(payload.get("dryRun")),
                          bindings=bindings, memo=self.memo)  # fmt: skip

    async def _validate(self, payload: Mapping[str, Any]) -> Verdict:
        if payload.get("operation") not in ROUTES[f"/{VALIDATE_BINDINGS}"].operations:
            return Verdict()
        obj, namespace = self._namespaced(payload)
        return await statebinding_validate(obj, namespace=namespace, memo=self.memo)

    async def serve(self) -> None:
        """Listen until cancelled; reload the certificate files when they change."""
        context = self.ssl_context()
        server = web.Server(self.handle, keepalive_timeout=KEEPALIVE_SECONDS, access_log=None)

        def accepted() -> Any:
            metrics.WEBHOOK_CONNECTIONS.inc()  # one TLS handshake follows
            return server()

        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            accepted, self.host, self.port, ssl=context, reuse_address=True, backlog=256
        )
        logger.info(f"Serving admission webhooks at https://{self.host}:{self.port}")
        try:
            await self._reload_on_change(context)
        finally:
            listener.close()
            with contextlib.suppress(Exception):
                await server.shutdown(timeout=2)
            await listener.wait_closed()

    def _stamp(self) -> tuple[float, float]:
        return (self.cert_file.stat().st_mtime, self.key_file.stat().st_mtime)

    async def _reload_on_change(self, context: ssl.SSLContext) -> None:
        """New handshakes use renewed files; established connections keep theirs."""
        stamp = self._stamp()
        while True:
            await asyncio.sleep(FILE_CHECK_SECONDS)
            try:
                now = self._stamp()
                if now != stamp:
                    # A fresh context first: a pair caught mid-write fails there, not in the
                    # live one (which would then hold a certificate without its key).
                    self.ssl_context()
                    context.load_cert_chain(self.cert_file, self.key_file)
                    stamp = now
                    logger.info("Reloaded the webhook's renewed certificate files")
            except (OSError, ssl.SSLError) as error:  # mid-write: the next check retries
                logger.warning(f"Could not reload the webhook certificate yet: {error}")
