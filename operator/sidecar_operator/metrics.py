"""The operator's Prometheus metrics: why each Pod was injected, skipped or refused."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ADMISSIONS = Counter(
    "sidecar_state_admissions_total",
    "Pod admission decisions of the injecting webhook",
    ["outcome", "reason"],
)
ADMISSION_SECONDS = Histogram(
    "sidecar_state_admission_seconds",
    "Time spent deciding and building one Pod's patch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
UNINJECTED_PODS = Gauge(
    "sidecar_state_uninjected_pods",
    "Pods a StateBinding selects that run without the sidecars",
    ["namespace", "binding"],
)
WEBHOOK_CONNECTIONS = Counter(
    "sidecar_state_webhook_connections_total",
    "TLS connections the admission webhook server accepted (each one handshake); rising with "
    "every admission means the apiserver does not reuse its connections",
)
