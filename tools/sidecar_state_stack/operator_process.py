"""The operator under test, as a real process (local cluster) or as the chart installed it.

Locally the operator runs on this machine with the ``all`` role; its webhook is registered with
``url:`` configurations and the CA bundle of certificates made for 127.0.0.1. On an existing
cluster (kind in CI) the chart installed it; the same handle then scales its Deployments.
Tests only use the handle's methods, so both modes run the same scenarios.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localkube.access import ClusterAccess
from localkube.ports import free_port
from sidecar_operator.injection import InjectionDefaults
from sidecar_operator.settings import OperatorSettings
from sidecar_operator.webhook_config import DEFAULT_NAME, FailurePolicy
from sidecar_operator.webhook_tls.x509 import write_webhook_certs
from sidecar_state_stack.objects import binding, wait_for

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "sidecar-state-system"
#: How the apiserver says it could not call a webhook; any other answer came from the webhook.
UNREACHABLE = "failed calling webhook"
E2E_IMAGES = {
    "SIDECAR_STATE_REDIS_IMAGE": "ghcr.io/sidecar-state/redis:7.0-bookworm",
    "SIDECAR_STATE_HYDRATOR_IMAGE": "sidecar-state/hydrator:e2e",
}


class LocalOperator:
    """``sidecar-state-operator run`` on this machine, against the test cluster."""

    def __init__(self, *, cluster: ClusterAccess, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.webhook_port = free_port()
        self.health_port = free_port()
        self.certs = write_webhook_certs(workdir / "certs", hosts=["127.0.0.1"])
        self.log_path = workdir / "operator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.failure_policy: FailurePolicy = "Fail"
        #: Settings of the next start on top of the suite's (``restart_with``).
        self.extra_env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def env(self) -> dict[str, str]:
        return {
            **self.cluster.env(),
            **E2E_IMAGES,
            "SIDECAR_STATE_ROLE": "all",
            "SIDECAR_STATE_NAMESPACE": OPERATOR_NAMESPACE,
            "SIDECAR_STATE_WEBHOOK_HOST": "127.0.0.1",
            "SIDECAR_STATE_WEBHOOK_PORT": str(self.webhook_port),
            "SIDECAR_STATE_WEBHOOK_CERT_FILE": str(self.certs.cert_file),
            "SIDECAR_STATE_WEBHOOK_KEY_FILE": str(self.certs.key_file),
            "SIDECAR_STATE_HEALTH_PORT": str(self.health_port),
            "SIDECAR_STATE_WATCHDOG_INTERVAL_SECONDS": "2",
            "SIDECAR_STATE_BOOTSTRAP_SERVERS": "kafka.kafka.svc:9092",
            **self.extra_env,
        }

    @contextlib.contextmanager
    def restart_with(self, env: dict[str, str]) -> Iterator[None]:
        """Run the operator with changed settings (an upgrade, a chart value change), then
        as before."""
        self.stop()
        self.extra_env = dict(env)
        try:
            self.start()
            yield
        finally:
            self.stop()
            self.extra_env = {}
            self.start()

    def start(self) -> None:
        if self.process is not None:
            return
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar_operator", "run"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the operator exited:\n{self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.health_port}/readyz"
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the operator did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def register_webhooks(self, failure_policy: FailurePolicy = "Fail") -> None:
        subprocess.run(
            [sys.executable, "-m", "sidecar_operator", "register-webhooks",
             "--url", self.url, "--ca-file", str(self.certs.ca_file),
             "--failure-policy", failure_policy],
            env=self.env(), check=True, capture_output=True, cwd=REPO,
        )  # fmt: skip
        self.failure_policy = failure_policy

    def unregister_webhooks(self) -> None:
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            self.cluster.kubectl_run("delete", kind, DEFAULT_NAME, "--ignore-not-found")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def injection_defaults(self) -> InjectionDefaults:
        settings: dict[str, Any] = _settings_from_env(self.env())
        return OperatorSettings(**settings).injection_defaults()


def _settings_from_env(env: dict[str, str]) -> dict[str, str]:
    prefix = "SIDECAR_STATE_"
    return {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}


class ChartOperator:
    """The operator as ``helm install`` put it on an existing cluster (kind in CI).

    Outages are made by scaling its Deployments to zero; the failure policy is patched on the
    chart's webhook configuration. Same methods as :class:`LocalOperator`.

    ``kubectl scale`` and ``rollout status`` return before the cluster has caught up: a Pod
    scaled away still runs (and repairs) until it is gone, and a Pod that is Ready is not yet
    behind the webhook's Service (the EndpointSlice, then kube-proxy's rules on the node, follow
    it). So every step waits for the condition the next one depends on, not for the command.
    """

    def __init__(self, *, cluster: ClusterAccess, release: str = "sidecar-state") -> None:
        self.cluster = cluster
        self.release = release
        self.webhook = f"{release}-webhook"
        self.controller = f"{release}-controller"
        self.configuration = release

    def _scale(self, deployment: str, replicas: int) -> None:
        self.cluster.kubectl_run(
            "scale", "deployment", deployment, "-n", OPERATOR_NAMESPACE, f"--replicas={replicas}"
        )

    def _pods(self, role: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={role}"
        found = self.cluster.kubectl_json("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", selector)
        return list(found["items"])

    def _wait_gone(self, role: str, *, timeout: float = 120.0) -> None:
        wait_for(
            lambda: not self._pods(role) or None, timeout=timeout, interval=0.5,
            what=f"the {role} Pods to be gone",
        )  # fmt: skip

    def start(self) -> None:
        self._scale(self.webhook, 2)
        self._scale(self.controller, 1)
        self.wait_ready()

    def stop_controller(self) -> None:
        """The controller scaled to zero and its Pod gone: nothing repairs labels or status."""
        self._scale(self.controller, 0)
        self._wait_gone("controller")

    def wait_ready(self, timeout: float = 180.0) -> None:
        for deployment in (self.webhook, self.controller):
            self.cluster.kubectl_run(
                "rollout", "status", "deployment", deployment, "-n", OPERATOR_NAMESPACE,
                f"--timeout={int(timeout)}s", timeout=timeout + 10,
            )  # fmt: skip
        wait_for(
            self._only_ready_pods_behind_the_service, timeout=timeout, interval=0.5,
            what=f"the {self.webhook} Service to hold exactly its Deployment's ready Pods",
        )  # fmt: skip
        # Then through the Service's ClusterIP, as the apiserver calls a webhook: a dry-run
        # StateBinding reaches the validating webhook, three times running (kube-proxy picks
        # an endpoint per connection).
        streak = [0]

        def answered() -> bool:
            streak[0] = streak[0] + 1 if self._webhook_answers() else 0
            return streak[0] >= 3

        wait_for(answered, timeout=timeout, interval=0.3,
                 what=f"the apiserver to reach {self.webhook} through its Service")  # fmt: skip

    def _only_ready_pods_behind_the_service(self) -> bool:
        deployment = self.cluster.kubectl_json(
            "get", "deployment", self.webhook, "-n", OPERATOR_NAMESPACE
        )
        wanted = deployment["spec"].get("replicas", 1)
        pods = {
            p["status"].get("podIP") for p in self._pods("webhook")
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))
        }  # fmt: skip
        slices = self.cluster.kubectl_json(
            "get", "endpointslices", "-n", OPERATOR_NAMESPACE,
            "-l", f"kubernetes.io/service-name={self.webhook}",
        )["items"]  # fmt: skip
        return endpoints_settled(slices, pod_ips=pods, replicas=wanted)

    def _webhook_answers(self) -> bool:
        probe = binding("webhook-probe", OPERATOR_NAMESPACE)
        proc = self.cluster.kubectl_run(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
        )
        # Allowed, or refused by the webhook itself: either way it answered.
        return UNREACHABLE not in proc.stderr

    def stop(self) -> None:
        for deployment in (self.webhook, self.controller):
            self._scale(deployment, 0)
        for role in ("webhook", "controller"):
            self._wait_gone(role)

    def register_webhooks(self, failure_policy: FailurePolicy = "Fail") -> None:
        patch = json.dumps([{"op": "replace", "path": "/webhooks/0/failurePolicy",
                             "value": failure_policy}])  # fmt: skip
        self.cluster.kubectl_run(
            "patch", "mutatingwebhookconfiguration", self.configuration,
            "--type=json", "-p", patch,
        )  # fmt: skip

    def unregister_webhooks(self) -> None:
        self.register_webhooks("Fail")

    def log_tail(self, lines: int = 60) -> str:
        return self.cluster.kubectl_run(
            "logs", f"deployment/{self.webhook}", "-n", OPERATOR_NAMESPACE, f"--tail={lines}",
            check=False,
        ).stdout  # fmt: skip

    @contextlib.contextmanager
    def restart_with(self, env: dict[str, str]) -> Iterator[None]:
        """``kubectl set env`` on both roles (what a chart upgrade does), then back."""
        before = {}
        for deployment in (self.webhook, self.controller):
            found = self.cluster.kubectl_json(
                "get", "deployment", deployment, "-n", OPERATOR_NAMESPACE
            )
            container = found["spec"]["template"]["spec"]["containers"][0]
            before[deployment] = {e["name"]: e.get("value") for e in container.get("env", [])}

        def set_env(deployment: str, values: dict[str, str | None]) -> None:
            pairs = [f"{k}={v}" if v is not None else f"{k}-" for k, v in values.items()]
            self.cluster.kubectl_run(
                "set", "env", f"deployment/{deployment}", "-n", OPERATOR_NAMESPACE, *pairs
            )

        for deployment in before:
            set_env(deployment, dict(env))
        self.wait_ready()
        try:
            yield
        finally:
            for deployment, old in before.items():
                set_env(deployment, {k: old.get(k) for k in env})
            self.wait_ready()

    def injection_defaults(self) -> InjectionDefaults:
        deployment = self.cluster.kubectl_json(
            "get", "deployment", self.webhook, "-n", OPERATOR_NAMESPACE
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        settings: dict[str, Any] = _settings_from_env(env)
        return OperatorSettings(**settings).injection_defaults()


def endpoints_settled(
    slices: list[dict[str, Any]], *, pod_ips: set[str | None], replicas: int
) -> bool:
    """True when a Service's EndpointSlices hold exactly ``pod_ips`` as ready endpoints, all
    ``replicas`` of them, and nothing else (no endpoint of a Pod on its way out)."""
    ready: set[str | None] = set()
    other = 0
    for piece in slices:
        for endpoint in piece.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                ready.update(endpoint.get("addresses") or [])
            else:
                other += 1
    return len(pod_ips) == replicas and ready == pod_ips and other == 0


OperatorHandle = LocalOperator | ChartOperator
