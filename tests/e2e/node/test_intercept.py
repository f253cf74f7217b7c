"""Issue 16 on a real node: Envoy and the authorizer in front of the app, fed from Kafka.

The app is a header echo (the demo image's Python, no code of ours): what it answers is
exactly what reached it through Envoy. Sessions are JSON records on a Kafka topic, mapped by
the binding to ``session:<id>``; the Pod's interceptor turns a bearer token into headers.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from demo.publish import publish_many
from sidecar_state_stack.objects import wait_for
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.stack import IMAGES
from tests.e2e.node.support import bind, container_status, flag_binding, wait_ready

LISTEN_PORT = 15080
APP_PORT = 8080
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

ECHO_APP = """
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("0.0.0.0", 8080), Echo).serve_forever()
"""


def session_binding(name: str, namespace: str, *, topic: str) -> dict[str, Any]:
    """Sessions (JSON ``{"id", "name", "plan"}`` -> ``session:<id>``), and Envoy in front of
    the app's ``http`` port enriching each request with its session."""
    binding = flag_binding(name, namespace, topic=topic)
    binding["spec"]["keys"] = {"prefix": "session:", "keyField": "id"}
    binding["spec"]["intercept"] = {
        "port": "http",
        "listenPort": LISTEN_PORT,
        "timeout": "250ms",
        "bypass": [{"path": "/healthz"}],
        "rules": [
            {
                "name": "session",
                "credential": {"header": "authorization", "prefix": "Bearer "},
                "key": "{credential}",
                "onMissingCredential": {
                    "status": 401,
                    "headers": {"www-authenticate": "Bearer"},
                },
                "onMissingKey": {"action": "deny", "status": 401},
                "inject": [
                    {"header": "x-user-name", "from": "json:/name"},
                    {"header": "x-user-plan", "from": "json:/plan"},
                ],
                "stripUpstream": ["authorization"],
            }
        ],
    }
    return binding


def echo_pod(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "sessions"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": IMAGES["demo-app"],
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", ECHO_APP],
                    "ports": [{"name": "http", "containerPort": APP_PORT}],
                    # Through Envoy, without a credential: the bypass makes it pass.
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": LISTEN_PORT},
                        "periodSeconds": 1,
                    },
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                    },
                }
            ],
            "terminationGracePeriodSeconds": 2,
            "dnsPolicy": "Default",
        },
    }


def through_envoy(ip: str, token: str | None, **headers: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://{ip}:{LISTEN_PORT}/whoami", headers=headers)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _NO_PROXY.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def publish_sessions(bootstrap: str, topic: str, records: dict[str, dict[str, Any] | None]) -> None:
    encoded = [
        (key, None if value is None else json.dumps({"id": key, **value}).encode())
        for key, value in records.items()
    ]
    asyncio.run(publish_many(bootstrap, encoded, topic=topic))  # type: ignore[arg-type]


def test_requests_through_envoy_are_enriched_refused_and_follow_kafka(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    topic = f"sessions-{namespace}"
    broker.create_topic(topic)
    publish_sessions(broker.bootstrap_servers, topic, {"tok-ada": {"name": "Ada", "plan": "pro"}})
    bind(cluster, session_binding("sessions", namespace, topic=topic))
    cluster.apply(echo_pod("sessions-1", namespace))

    pod = wait_ready(cluster, "sessions-1", namespace)
    for sidecar in ("sidecar-state-authz", "sidecar-state-envoy"):
        assert container_status(pod, sidecar)["ready"], sidecar
    ip = pod["status"]["podIP"]

    status, saw = through_envoy(ip, "tok-ada", **{"X-User-Plan": "forged"})
    assert status == 200, saw
    assert saw["x-user-name"] == "Ada"
    assert saw["x-user-plan"] == "pro"  # the store's, not the client's
    assert "authorization" not in saw
    assert int(saw["x-sidecar-state-staleness-ms"]) >= 0

    status, refused = through_envoy(ip, None)
    assert status == 401 and refused["www-authenticate"] == "Bearer"
    assert through_envoy(ip, "tok-nobody")[0] == 401

    # A change on the topic changes the next answer; a tombstone makes the token unknown.
    publish_sessions(broker.bootstrap_servers, topic, {"tok-ada": {"name": "Ada", "plan": "free"}})
    wait_for(
        lambda: through_envoy(ip, "tok-ada")[1].get("x-user-plan") == "free",
        timeout=10,
        interval=0.05,
        what="the new plan through Envoy",
    )
    publish_sessions(broker.bootstrap_servers, topic, {"tok-ada": None})
    wait_for(
        lambda: through_envoy(ip, "tok-ada")[0] == 401,
        timeout=10,
        interval=0.05,
        what="the deleted session refused",
    )
