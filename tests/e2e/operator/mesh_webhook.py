"""A stand-in for a service mesh's injector that runs *after* ours: a real admission webhook.

Webhooks run in name order; this one is named ``zz-...`` so the apiserver calls it after
sidecar-state. Like a mesh it appends a native proxy sidecar (``linkerd-proxy``) to the Pod's
init containers, behind ours, so that the apiserver re-invokes our webhook
(``reinvocationPolicy: IfNeeded``). It is a tiny HTTPS server in the test process; only the
namespace of the test reaches it.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localkube.access import ClusterAccess
from sidecar_operator.webhook_tls.x509 import write_webhook_certs

NAME = "zz-e2e-mesh"
PROXY = {"name": "linkerd-proxy", "image": "registry.invalid/proxy:1", "restartPolicy": "Always"}


def _review_response(review: dict[str, Any]) -> dict[str, Any]:
    pod = review["request"]["object"]
    inits = pod["spec"].get("initContainers")
    if inits and any(c["name"] == PROXY["name"] for c in inits):
        patch: list[dict[str, Any]] = []
    elif inits:
        patch = [{"op": "add", "path": "/spec/initContainers/-", "value": PROXY}]
    else:
        patch = [{"op": "add", "path": "/spec/initContainers", "value": [PROXY]}]
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps(_review_response(review)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def mesh_webhook(cluster: ClusterAccess, *, namespace: str, workdir: Path) -> Iterator[None]:
    """Serve and register the stand-in mesh for ``namespace`` while the block runs."""
    certs = write_webhook_certs(workdir, hosts=["127.0.0.1"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.cert_file), str(certs.key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME},
        "webhooks": [
            {
                "name": "mesh.e2e.invalid",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/mutate",
                    "caBundle": base64.b64encode(certs.ca_file.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "timeoutSeconds": 5,
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
            }
        ],
    }
    cluster.apply(configuration)
    try:
        yield
    finally:
        cluster.kubectl_run("delete", "mutatingwebhookconfiguration", NAME, "--ignore-not-found")
        server.shutdown()
        server.server_close()
