"""The few Kubernetes API calls the controller makes, with the sync client.

They are blocking calls: handlers run them with ``asyncio.to_thread`` so the event loop (and
the webhook server on it, in the ``all`` role) never stalls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, cast

import kubernetes
import urllib3
from kubernetes.client import ApiClient

from sidecar_operator.api.models import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)
T = TypeVar("T")

JSON_PATCH = "application/json-patch+json"
#: Answers worth another try: a conflicting write, throttling, an apiserver restarting.
RETRIED_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
RETRY_DELAYS_SECONDS = (0.2, 0.5, 1.0, 2.0, 4.0)

_WORKLOAD_LISTS = {
    "Deployment": "list_namespaced_deployment",
    "StatefulSet": "list_namespaced_stateful_set",
    "DaemonSet": "list_namespaced_daemon_set",
}
_WORKLOAD_PATCHES = {
    "Deployment": "patch_namespaced_deployment",
    "StatefulSet": "patch_namespaced_stateful_set",
    "DaemonSet": "patch_namespaced_daemon_set",
}


def with_retries(
    call: Callable[[], T], *, what: str, delays: tuple[float, ...] = RETRY_DELAYS_SECONDS
) -> T:
    """Run a blocking API call, retrying transient failures with growing pauses.

    kopf never retries ``on.event`` handlers, so a write that meets a conflict or an apiserver
    restart would otherwise be lost until the object next changes. Client errors (400, 403,
    404, 422) are the request's own fault and are raised at once.
    """
    for attempt, delay in enumerate((*delays, None)):
        try:
            return call()
        except kubernetes.client.ApiException as error:
            if delay is None or error.status not in RETRIED_STATUSES:
                raise
            reason = f"{error.status} {error.reason}"
        except (urllib3.exceptions.HTTPError, OSError) as error:
            if delay is None:
                raise
            reason = repr(error)
        logger.info(f"{what}: attempt {attempt + 1} failed ({reason}); retrying in {delay} s")
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@cache
def client() -> ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return ApiClient()


def _plain(api: ApiClient, obj: Any, kind: str, api_version: str) -> dict[str, Any]:
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    data.setdefault("kind", kind)
    data.setdefault("apiVersion", api_version)
    return data


def custom_objects(response: object) -> dict[str, Any]:
    """What the client's custom-object calls return: the decoded JSON (typed ``object``)."""
    return cast(dict[str, Any], response)


def events_api() -> kubernetes.client.CoreV1Api:
    """A client for the Event recorder to keep: :func:`client` reads the kubeconfig (or the
    in-cluster token) and each new client opens a new TLS connection to the apiserver, which
    cost more CPU than the Event itself. The in-cluster configuration re-reads its rotating
    token on its own; the recorder makes a new client after any failed post."""
    return kubernetes.client.CoreV1Api(client())


def preload_events_api() -> None:
    """Import what :func:`events_api` needs, now rather than at the first Event.

    The kubernetes client imports ``CoreV1Api`` (and the models it names) on first use: over
    a second of CPU, under the GIL. Done by the Event recorder's thread a second after the
    first Pod is admitted, it took the GIL from the event loop serving admissions for that
    long; done before the operator starts, it delays only the start.
    """
    _ = kubernetes.client.CoreV1Api


def create_event(
    namespace: str, body: dict[str, Any], *, api: kubernetes.client.CoreV1Api | None = None
) -> None:
    """Post one Event; the answer is not decoded (into the client's models: nothing reads
    it). ``api``: a client to reuse (:func:`events_api`), else a new one."""
    api = api if api is not None else events_api()
    # The client serializes a plain dict as well as its own model (the stubs name only that).
    # With _preload_content=False the client returns urllib3's response (its stubs do not say).
    response: Any = api.create_namespaced_event(namespace, cast(Any, body), _preload_content=False)
    response.read()
    response.release_conn()


def list_workloads(namespace: str) -> list[dict[str, Any]]:
    api = client()
    apps = kubernetes.client.AppsV1Api(api)
    result = []
    for kind, method in _WORKLOAD_LISTS.items():
        for item in getattr(apps, method)(namespace).items:
            result.append(_plain(api, item, kind, "apps/v1"))
    return result


def set_namespace_label(namespace: str, key: str, value: str | None) -> bool:
    """Set (or remove, with ``None``) one label; return whether anything changed.

    The patch carries the resourceVersion it read, so a concurrent change of the namespace
    makes it fail (409) and it is re-read and decided again, instead of overwriting. A label
    value of :data:`~sidecar_operator.api.labels.INJECTION_PINNED` is the user's
    (GitOps) and is never changed.
    """
    from sidecar_operator.api import labels as ann

    core = kubernetes.client.CoreV1Api(client())

    def attempt() -> bool:
        metadata = core.read_namespace(namespace).metadata
        labels = (metadata.labels if metadata else None) or {}
        if labels.get(key) == value or labels.get(key) == ann.INJECTION_PINNED:
            return False
        version = metadata.resource_version if metadata else None
        body = {"metadata": {"resourceVersion": version, "labels": {key: value}}}
        core.patch_namespace(namespace, body)
        return True

    return with_retries(attempt, what=f"label namespace {namespace}")


def list_bindings(namespace: str) -> list[dict[str, Any]]:
    """Every StateBinding of a namespace, in one call (one pass reads them once)."""
    api = kubernetes.client.CustomObjectsApi(client())
    listed = custom_objects(api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
    items: list[dict[str, Any]] = listed.get("items") or []
    return items


def patch_workload(kind: str, name: str, namespace: str, patch: dict[str, Any]) -> None:
    apps = kubernetes.client.AppsV1Api(client())
    getattr(apps, _WORKLOAD_PATCHES[kind])(name, namespace, patch)


def patch_binding_status(name: str, namespace: str, status: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


def create_binding(binding: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    namespace = binding["metadata"]["namespace"]
    with_retries(
        lambda: api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, binding),
        what=f"create StateBinding {namespace}/{binding['metadata']['name']}",
    )


def spec_replacement(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON Patch that replaces the whole spec.

    A JSON merge patch would keep fields the new spec leaves out (a removed key prefix), so
    the spec is replaced wholesale; the list is only valid with the json-patch content type.
    """
    return [{"op": "replace", "path": "/spec", "value": spec}]


def replace_binding_spec(name: str, namespace: str, spec: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    with_retries(
        lambda: api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, spec_replacement(spec),
            _content_type=JSON_PATCH,
        ),
        what=f"update StateBinding {namespace}/{name}",
    )  # fmt: skip


def delete_binding(name: str, namespace: str) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    try:
        with_retries(
            lambda: api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
            what=f"delete StateBinding {namespace}/{name}",
        )
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            raise


PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def read_secret_metadata(name: str, namespace: str) -> dict[str, Any] | None:
    """A Secret's metadata only (labels, annotations), never its data; ``None`` if absent.

    The apiserver serves just the metadata when asked for PartialObjectMetadata, so the
    webhook checks a Secret's opt-in without ever holding its values.
    """
    core = kubernetes.client.CoreV1Api(client())
    try:
        response = core.read_namespaced_secret(
            name, namespace, _headers={"Accept": PARTIAL_METADATA},
            _preload_content=False, _request_timeout=3,
        )  # fmt: skip
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    # Unparsed (_preload_content=False): ``data`` is the body's bytes, not a Secret's data.
    metadata: dict[str, Any] = json.loads(cast(bytes, response.data)).get("metadata") or {}
    return metadata


# --- the webhook's TLS Secret and configurations (sidecar_operator.webhook_tls) --------------

ADMISSION_API_VERSION = "admissionregistration.k8s.io/v1"
_CONFIGURATION_CALLS = {
    "MutatingWebhookConfiguration": "mutating_webhook_configuration",
    "ValidatingWebhookConfiguration": "validating_webhook_configuration",
}


def read_secret(
    name: str, namespace: str, *, api: ApiClient | None = None
) -> dict[str, Any] | None:
    """A whole Secret (values included: only the webhook's own TLS Secret is read so);
    ``None`` when it does not exist."""
    api = api or client()
    try:
        found = kubernetes.client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _plain(api, found, "Secret", "v1")


def write_secret(body: dict[str, Any], *, create: bool, api: ApiClient | None = None) -> bool:
    """Create the Secret, or replace it (guarded by the ``resourceVersion`` in ``body``).
    ``False`` when another writer was first (409: AlreadyExists or Conflict)."""
    core = kubernetes.client.CoreV1Api(api or client())
    metadata = body["metadata"]
    try:
        if create:
            core.create_namespaced_secret(metadata["namespace"], cast(Any, body))
        else:
            core.replace_namespaced_secret(metadata["name"], metadata["namespace"], cast(Any, body))
    except kubernetes.client.ApiException as error:
        if error.status == 409:
            return False
        raise
    return True


def read_webhook_configuration(
    kind: str, name: str, *, api: ApiClient | None = None
) -> dict[str, Any] | None:
    """A Mutating- or ValidatingWebhookConfiguration; ``None`` when it does not exist."""
    api = api or client()
    admission = kubernetes.client.AdmissionregistrationV1Api(api)
    read = getattr(admission, f"read_{_CONFIGURATION_CALLS[kind]}")
    try:
        found = read(name)
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return _plain(api, found, kind, ADMISSION_API_VERSION)


def patch_webhook_configuration(
    kind: str, name: str, operations: list[dict[str, Any]], *, api: ApiClient | None = None
) -> None:
    """Apply a JSON patch to a Mutating- or ValidatingWebhookConfiguration."""
    admission = kubernetes.client.AdmissionregistrationV1Api(api or client())
    getattr(admission, f"patch_{_CONFIGURATION_CALLS[kind]}")(name, operations)


# -- Objects a binding owns (controller.intercept_objects): any group, by the custom-objects API,
# which addresses built-in groups (networking.k8s.io) as well as CRDs (security.istio.io).


def read_object(group: str, version: str, plural: str, name: str, namespace: str) -> Any:
    """The object as a dict, or ``None`` when there is none."""
    api = kubernetes.client.CustomObjectsApi(client())
    try:
        return with_retries(
            lambda: api.get_namespaced_custom_object(group, version, namespace, plural, name),
            what=f"read {plural} {namespace}/{name}",
        )
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise


def create_object(group: str, version: str, plural: str, body: dict[str, Any]) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    namespace = body["metadata"]["namespace"]
    with_retries(
        lambda: api.create_namespaced_custom_object(group, version, namespace, plural, body),
        what=f"create {plural} {namespace}/{body['metadata']['name']}",
    )


def replace_object_fields(
    group: str, version: str, plural: str, body: dict[str, Any], *, resource_version: str
) -> None:
    """Replace spec, our labels and the owner references of an object we own; the
    resourceVersion test makes a concurrent change fail (409) instead of being overwritten."""
    api = kubernetes.client.CustomObjectsApi(client())
    meta = body["metadata"]
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "replace", "path": "/spec", "value": body["spec"]},
        {"op": "add", "path": "/metadata/ownerReferences", "value": meta["ownerReferences"]},
    ]
    patch += [
        {"op": "add", "path": "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1"),
         "value": value}
        for key, value in meta["labels"].items()
    ]  # fmt: skip
    api.patch_namespaced_custom_object(
        group, version, meta["namespace"], plural, meta["name"], patch, _content_type=JSON_PATCH
    )


def delete_object(group: str, version: str, plural: str, name: str, namespace: str) -> None:
    api = kubernetes.client.CustomObjectsApi(client())
    try:
        with_retries(
            lambda: api.delete_namespaced_custom_object(group, version, namespace, plural, name),
            what=f"delete {plural} {namespace}/{name}",
        )
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            raise
