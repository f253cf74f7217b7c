"""Probes and Prometheus metrics over a tiny asyncio HTTP server.

Why not aiohttp: it is not a dependency of the hydrator, and four fixed GET routes do not
justify one in a sidecar whose memory budget is counted in MiB. The kubelet and Prometheus send
simple ``GET`` requests; each connection gets one response and is closed.

- ``/livez``: the event loop answers (a wedged loop fails the probe by not answering);
- ``/readyz``: database 0 holds a complete view (hydrated) — stays true while Kafka is away
  (fail static) and false while a Redis that lost its data is rebuilt;
- ``/startupz``: the first hydration of this process finished (native sidecar startupProbe,
  which keeps the app's containers from starting on a cold store);
- a failing probe's body is the state's line, ``<reason>: <detail>`` (see
  :mod:`sidecar_hydrator.reasons`): ``kubectl describe pod`` shows it, the controller reads it;
- ``/metrics``: the Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sidecar_hydrator.config import (
    HYDRATED_METRIC,
    HYDRATION_READ_METRIC,
    HYDRATION_TARGET_METRIC,
    METRICS_NAMESPACE,
    OOM_REJECTIONS_METRIC,
    STALENESS_METRIC,
    STATE_METRIC,
)
from sidecar_hydrator.metrics import (
    CONTENT_TYPE,
    Counter,
    Family,
    Gauge,
    Histogram,
    Registry,
    Sample,
)
from sidecar_hydrator.reasons import Reason, State

logger = logging.getLogger(__name__)

_NS = METRICS_NAMESPACE
#: Labels of the per-binding series: the binding, and its source (``kafka`` or ``nats``).
_BINDING = ["binding", "source"]


class Metrics:
    """Every metric the hydrator exports, in a registry of its own (one per hydrator)."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.records_read = Counter(
            "records_read", "Records fetched from the source.", _BINDING, namespace=_NS, registry=r
        )
        self.records_applied = Counter(
            "records_applied",
            "Records whose batch was written to Redis.",
            _BINDING,
            namespace=_NS,
            registry=r,
        )
        self.keys_written = Counter(
            "keys_written",
            "Keys set or deleted after collapsing batches per key.",
            _BINDING,
            namespace=_NS,
            registry=r,
        )
        self.records_ignored = Counter(
            "records_ignored",
            "Records read that carry nothing for the view (Debezium messages, tombstones "
            "without a key).",
            _BINDING,
            namespace=_NS,
            registry=r,
        )
        self.bad_records = Counter(
            "bad_records",
            "Records skipped because they cannot be mapped, by kind.",
            [*_BINDING, "kind"],
            namespace=_NS,
            registry=r,
        )
        self.lag = Gauge(
            "lag_records",
            "Records between the hydrator's position and the partition's end, as of the last "
            "fetch response (NATS: the messages its consumer reports pending; topic is the "
            "stream, partition 0).",
            [*_BINDING, "topic", "partition"],
            namespace=_NS,
            registry=r,
        )
        self.last_apply = Gauge(
            "last_apply_timestamp_seconds",
            "Wall-clock time of the last batch written to Redis.",
            namespace=_NS,
            registry=r,
        )
        self._last_apply_at = 0.0
        self.last_apply_age = OptionalGauge(
            f"{_NS}_last_apply_age_seconds",
            "Seconds since the last batch was written (no sample before the first).",
            lambda: time.time() - self._last_apply_at if self._last_apply_at else None,
        )
        r.register(self.last_apply_age)
        #: What the staleness gauge reports; the hydrator sets it (``None``: unknown).
        self.staleness_source: Callable[[], float | None] = lambda: None
        self.staleness = OptionalGauge(
            STALENESS_METRIC,
            "How old the served view may be: time since every partition was last known to be "
            "fully applied (grows while Kafka is unreachable or writes are refused; no sample "
            "while unknown, e.g. before the first hydration: see hydrated).",
            lambda: self.staleness_source(),
        )
        r.register(self.staleness)
        self.hydrated = Gauge(HYDRATED_METRIC, "1 when Redis holds a complete view.", registry=r)
        #: What the state gauges report; the hydrator sets it.
        self.state_source: Callable[[], State] = lambda: State(Reason.HYDRATING)
        r.register(StateCollector(lambda: self.state_source()))
        self.rebuilds = Counter(
            "rebuilds",
            "Full rebuilds into the spare database, by reason.",
            ["reason"],
            namespace=_NS,
            registry=r,
        )
        self.kafka_errors = Counter(
            "kafka_errors",
            "Kafka client failures by kind: unreachable (connecting), auth (the brokers "
            "refused the credentials or access), config (the client cannot be set up as "
            "configured, e.g. TLS files).",
            ["binding", "kind"],
            namespace=_NS,
            registry=r,
        )
        self.nats_errors = Counter(
            "nats_errors",
            "NATS client failures by kind: unreachable (connecting or reading), config (the "
            "client cannot be set up as configured, e.g. a credentials file).",
            ["binding", "kind"],
            namespace=_NS,
            registry=r,
        )
        self.source_errors = Counter(
            "source_errors",
            "Source failures the source did not retry by itself (the hydrator positions the "
            "binding again; never a rebuild), by source (kafka, nats) and the client "
            "library's error.",
            ["binding", "source", "kind"],
            namespace=_NS,
            registry=r,
        )
        self.store_failures = Counter(
            "store_failures",
            "Cycles ended by a Redis error, by exception kind; while they keep failing for "
            "more than a few seconds the Pod is not ready.",
            ["kind"],
            namespace=_NS,
            registry=r,
        )
        self.redis_used_memory = Gauge(
            "redis_used_memory_bytes", "Redis INFO used_memory.", namespace=_NS, registry=r
        )
        self.redis_max_memory = Gauge(
            "redis_max_memory_bytes",
            "Redis maxmemory (the binding's spec.store.maxMemory; 0 = unlimited).",
            namespace=_NS,
            registry=r,
        )
        self.oom_rejections = Counter(
            OOM_REJECTIONS_METRIC,
            "Key writes Redis refused because maxmemory was reached (noeviction).",
            registry=r,
        )
        self.apply_seconds = Histogram(
            "batch_apply_seconds",
            "Time to write one batch (MULTI/EXEC round trip).",
            namespace=_NS,
            registry=r,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

        self.event_to_visible = Histogram(
            "event_to_visible_seconds",
            "Live batches: newest record's timestamp (producer clock) to the write's ack.",
            namespace=_NS,
            registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
        )

    def mark_applied(self, at: float) -> None:
        """A batch was written at wall-clock time ``at``."""
        self._last_apply_at = at
        self.last_apply.set(at)

    def render(self) -> bytes:
        return self.registry.render()


class OptionalGauge:
    """A gauge whose sample is left out while its value is unknown.

    A placeholder such as -1 reads as "fresh" to an alert like ``staleness_seconds > 60``, so
    a Pod that never hydrated would never fire it; with no sample, ``absent()`` or the
    ``hydrated`` gauge tells instead.
    """

    def __init__(self, name: str, documentation: str, value: Callable[[], float | None]) -> None:
        self.name = name
        self._name = name
        self._documentation = documentation
        self._value = value

    def collect(self) -> Iterable[Family]:
        value = self._value()
        samples = [] if value is None else [Sample(self._name, {}, float(value))]
        yield Family(self._name, self._documentation, "gauge", samples)


class StateCollector:
    """The state as gauges: one sample per reason (1 for the current one, 0 for the others,
    so the ``reason`` label is bounded and ``== 1`` selects it), and the hydration's
    progress in records."""

    def __init__(self, state: Callable[[], State]) -> None:
        self._state = state

    def collect(self) -> Iterable[Family]:
        state = self._state()
        yield Family(
            STATE_METRIC,
            "1 for the hydrator's current state (reason hydrated, or why not), 0 for the others.",
            "gauge",
            [
                Sample(STATE_METRIC, {"reason": str(r)}, 1.0 if r is state.reason else 0.0)
                for r in Reason
            ],
        )
        yield Family(
            HYDRATION_READ_METRIC,
            "Records read by the hydration under way (since the bindings were positioned).",
            "gauge",
            [Sample(HYDRATION_READ_METRIC, {}, float(state.read_records))],
        )
        yield Family(
            HYDRATION_TARGET_METRIC,
            "Records the hydration under way reads (to the ends snapshotted when positioned).",
            "gauge",
            [Sample(HYDRATION_TARGET_METRIC, {}, float(state.target_records))],
        )


@dataclass(frozen=True, slots=True)
class Probes:
    """What the probe routes ask the hydrator."""

    ready: Callable[[], bool]
    started: Callable[[], bool]
    #: Why not (the failing probes' body); a fixed "hydrating" when not given.
    state: Callable[[], State] = lambda: State(Reason.HYDRATING)


class HealthServer:
    """Serves the probes and ``/metrics`` on ``host:port`` until :meth:`stop`."""

    def __init__(
        self, *, metrics: Metrics, probes: Probes, port: int, host: str = "0.0.0.0"
    ) -> None:
        self._metrics = metrics
        self._probes = probes
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=0.5)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            status, content_type, body = self.respond(request.split(b"\r\n", 1)[0])
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def respond(self, request_line: bytes) -> tuple[str, str, bytes]:
        """Route one request line (``GET /path HTTP/1.1``) to (status, content type, body)."""
        parts = request_line.split()
        if len(parts) < 2 or parts[0] != b"GET":
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE, self._metrics.render()
        if path == b"/livez":
            return "200 OK", "text/plain", b"ok\n"
        if path == b"/readyz":
            return self._probe(self._probes.ready(), b"hydrated\n")
        if path == b"/startupz":
            return self._probe(self._probes.started(), b"started\n")
        return "404 Not Found", "text/plain", b"not found\n"

    def _probe(self, ok: bool, yes: bytes) -> tuple[str, str, bytes]:
        if ok:
            return "200 OK", "text/plain", yes
        line = self._probes.state().line().replace("\n", " ")
        return "503 Service Unavailable", "text/plain", line.encode() + b"\n"
