"""Fixtures that give integration tests a real Kafka broker and a real Redis.

- ``kafka_broker`` (session): one KRaft broker for the whole run. Starting a JVM costs
  seconds, so tests share it and isolate themselves with unique topic names
  (``unique_topic_name`` / ``make_topic``). A test may ``kill()``/``stop()`` it; if it leaves
  the broker down, it is restarted after that test so the next one is not affected.
- ``nats_server`` (function): a fresh ``nats-server -js`` on a free loopback port per test; it
  starts in milliseconds, so tests that kill or restart it need no sharing rules.
- ``redis_server`` (function): a fresh, empty redis-server on a Unix socket per test, with the
  directives of the ``redis_config`` fixture (override or parametrize it) appended to the
  defaults. ``make_redis_server`` builds more (e.g. several sidecars, or custom configs).

The broker jars come from Maven Central on first use (about 20-40 s, cached afterwards); CI
should fetch them up front with ``python3 -m sidecar_state_stack.kafka_broker install``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from sidecar_state_stack.kafka_broker import KafkaBroker, install_kafka
from sidecar_state_stack.nats_server import NatsServer
from sidecar_state_stack.redis_server import RedisServer

_SESSION_BROKERS: list[KafkaBroker] = []


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """The session's Kafka broker (``bootstrap_servers`` is ``127.0.0.1:<port>``)."""
    install_kafka()
    # C1-only JIT: the broker is up ~40% sooner (every kill/start in outage tests pays this),
    # at a throughput cost that only benchmarks care about (they use the default JIT).
    broker = KafkaBroker(jvm_options=["-XX:TieredStopAtLevel=1"])
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    _SESSION_BROKERS.append(broker)
    try:
        yield broker
    finally:
        _SESSION_BROKERS.remove(broker)
        broker.close()


@pytest.fixture(autouse=True)
def _bring_kafka_back() -> Iterator[None]:
    """Restart the shared broker if a test (say, an outage test that failed) left it down."""
    yield
    for broker in _SESSION_BROKERS:
        if not broker.running:
            broker.start()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A started nats-server with JetStream (``nats_server.url``), its store on disk."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def unique_topic_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_topic_name("orders")`` -> ``"test_x-orders-1a2b3c4d"``: never reused.

    The broker is shared by the session and topics are not deleted, so names must not
    collide between tests, parametrizations or reruns.
    """

    def make(suffix: str = "") -> str:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:150]
        parts = [base, re.sub(r"[^A-Za-z0-9._-]+", "_", suffix)[:50], uuid.uuid4().hex[:8]]
        return "-".join(p for p in parts if p)

    return make


@pytest.fixture
def make_topic(
    kafka_broker: KafkaBroker, unique_topic_name: Callable[[str], str]
) -> Callable[..., str]:
    """``make_topic(partitions=1, compacted=True, config=None, suffix="")`` -> new topic name."""

    def make(
        *,
        partitions: int = 1,
        compacted: bool = True,
        config: Mapping[str, str] | None = None,
        suffix: str = "",
    ) -> str:
        name = unique_topic_name(suffix)
        kafka_broker.create_topic(name, partitions=partitions, compacted=compacted, config=config)
        return name

    return make


@pytest.fixture
def redis_config() -> Sequence[str] | str:
    """Extra redis.conf directives for ``redis_server``; override to test sidecar configs."""
    return ()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Factory for started :class:`RedisServer` instances, all closed after the test."""
    servers: list[RedisServer] = []

    def make(*, config: Sequence[str] | str = (), defaults: bool = True) -> RedisServer:
        server = RedisServer(config=config, defaults=defaults)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def redis_server(
    make_redis_server: Callable[..., RedisServer], redis_config: Sequence[str] | str
) -> RedisServer:
    """A fresh, empty redis-server on ``redis_server.socket_path`` (no TCP, no persistence)."""
    return make_redis_server(config=redis_config)
