"""Why a hydrator is not hydrated, against a real broker and a real Redis: every place it says
so (probe bodies, the state gauge, ``sidecar-state:meta`` for the app, the log once per
change), and the way back to hydrated once the fault is fixed, without a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis

from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KafkaConnection,
    KeyMapping,
    NatsConnection,
    NatsKv,
    NatsSourceConfig,
    replace,
)
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.reasons import Reason
from tests.integration.hydrator.support import (
    MIB,
    eventually,
    http_get,
    hydrated,
    make_config,
    produce,
    serving,
    sidecar_redis_config,
)
from tests.support.kafka_broker import SASL_USERS, KafkaBroker
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)


def reason_of(hydrator: Hydrator) -> Reason | None:
    """The reason whose state gauge is 1, as the controller reads it."""
    registry = hydrator.metrics.registry
    current = [
        r for r in Reason
        if registry.get_sample_value("sidecar_state_hydrator_state", {"reason": str(r)}) == 1
    ]  # fmt: skip
    assert len(current) == 1, current
    return current[0]


async def meta_state(app: aioredis.Redis, hydrator: Hydrator) -> tuple[str, str]:
    meta = await app.hgetall(hydrator.config.metadata_key)
    return meta.get(b"state", b"").decode(), meta.get(b"state_detail", b"").decode()


async def says(
    hydrator: Hydrator, port: int, app: aioredis.Redis, reason: Reason, detail: str
) -> None:
    """Within seconds the reason is in the gauge, both probe bodies and the metadata."""
    await eventually(lambda: reason_of(hydrator) is reason, within=20, what=f"state {reason}")
    for path in ("/startupz", "/readyz"):
        status, body = await http_get(port, path)
        assert status == 503, (path, body)
        assert body.decode().startswith(f"{reason}: ") and detail in body.decode(), body
    # The heartbeat writes it for the app within a second.
    await eventually(
        lambda: _meta_is(app, hydrator, str(reason), detail), within=5, what="meta state"
    )


async def _meta_is(app: aioredis.Redis, hydrator: Hydrator, reason: str, detail: str) -> bool:
    state, said = await meta_state(app, hydrator)
    return state == reason and detail in said


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if text in r.getMessage())


async def test_a_missing_topic_is_named_everywhere_once_and_its_creation_hydrates(
    kafka_broker: KafkaBroker,
    unique_topic_name: Callable[[str], str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = unique_topic_name("typo")
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic])
    caplog.set_level(logging.INFO, logger="sidecar_hydrator")
    detail = f"topic {topic} does not exist on {kafka_broker.bootstrap_servers}"
    async with serving(config) as (hydrator, port):
        await says(hydrator, port, app_redis, Reason.TOPIC_MISSING, detail)
        await asyncio.sleep(3.0)  # several retries (one a second)
        assert _logged(caplog, detail) == 1, [r.getMessage() for r in caplog.records]
        assert _logged(caplog, "state topic_missing") == 1

        kafka_broker.create_topic(topic)
        await produce(kafka_broker, topic, [(b"k", b'{"v": 1}')])
        await hydrated(hydrator)
        assert reason_of(hydrator) is Reason.HYDRATED
        assert await http_get(port, "/readyz") == (200, b"hydrated\n")
        await eventually(lambda: _meta_is(app_redis, hydrator, "hydrated", ""), within=5)
        meta = await app_redis.hgetall(config.metadata_key)
        # Everything the hydration set out to read was read (the record may have come in
        # before or after the topic's partitions were positioned).
        assert meta[b"hydration_read_records"] == meta[b"hydration_target_records"]


async def test_a_wrong_bootstrap_address_is_unreachable(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    closed = "127.0.0.1:1"  # nothing listens on port 1
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic])
    wrong = replace(
        config,
        bindings=(replace(config.bindings[0], kafka=KafkaConnection(bootstrap_servers=(closed,))),),
    )
    async with serving(wrong) as (hydrator, port):
        await says(
            hydrator, port, app_redis, Reason.UNREACHABLE, f"no Kafka broker answers at {closed}"
        )


def sasl_config(
    broker: KafkaBroker, redis: RedisServer, topic: str, secret: Path
) -> HydratorConfig:
    """A binding on the broker's SASL/PLAIN listener, its credentials in files as a mounted
    Secret holds them."""
    return HydratorConfig(
        redis_socket=str(redis.socket_path),
        bindings=(
            BindingSource(
                name="b",
                kafka=KafkaConnection(
                    bootstrap_servers=(broker.sasl_bootstrap_servers,),
                    security_protocol="SASL_PLAINTEXT",
                    sasl_mechanism="PLAIN",
                    username_env="UNSET_SASL_USER",
                    password_env="UNSET_SASL_PASSWORD",
                    username_file=str(secret / "username"),
                    password_file=str(secret / "password"),
                ),
                topics=(topic,),
                format="raw",
                keys=KeyMapping(),
            ),
        ),
    )


async def test_refused_sasl_credentials_are_named_and_a_corrected_secret_hydrates(
    tmp_path: Path,
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, [(b"a", b"1")])
    ((user, password),) = SASL_USERS.items()
    (tmp_path / "username").write_text(user)
    (tmp_path / "password").write_text("wrong")
    config = sasl_config(kafka_broker, redis_server, topic, tmp_path)
    async with serving(config) as (hydrator, port):
        await says(
            hydrator, port, app_redis, Reason.AUTHENTICATION_FAILED,
            f"{kafka_broker.sasl_bootstrap_servers} refused the credentials",
        )  # fmt: skip
        (tmp_path / "password").write_text(password)  # the kubelet updates the Secret's file
        await hydrated(hydrator, within=30)
        assert await app_redis.get(b"a") == b"1"
        assert reason_of(hydrator) is Reason.HYDRATED


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * MIB)])
async def test_a_store_too_small_is_store_full(
    kafka_broker: KafkaBroker,
    make_topic: Callable[..., str],
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
) -> None:
    topic = make_topic()
    await produce(kafka_broker, topic, [(f"k{i}".encode(), b"x" * 100_000) for i in range(40)])
    config = make_config(broker=kafka_broker, redis=redis_server, topics=[topic], format="raw")
    async with serving(config) as (hydrator, port):
        await eventually(lambda: reason_of(hydrator) is Reason.STORE_FULL, within=20)
        status, body = await http_get(port, "/startupz")
        assert status == 503 and body.startswith(b"store_full: Redis refused "), body
        assert b"maxmemory" in body
        assert not hydrator.hydrated


async def test_a_topic_the_user_may_not_read_is_authorization_failed(
    tmp_path: Path, redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    # A broker of its own: ACLs on, and the SASL user has none (as a new user of a secured
    # cluster would), while the test's own PLAINTEXT clients are super users.
    with KafkaBroker(authorizer=True, jvm_options=["-XX:TieredStopAtLevel=1"]) as broker:
        topic = "acl-protected"
        broker.create_topic(topic)
        ((user, password),) = SASL_USERS.items()
        (tmp_path / "username").write_text(user)
        (tmp_path / "password").write_text(password)
        config = sasl_config(broker, redis_server, topic, tmp_path)
        async with serving(config) as (hydrator, port):
            await says(
                hydrator, port, app_redis, Reason.AUTHORIZATION_FAILED,
                f"not authorized to read topic {topic} on {broker.sasl_bootstrap_servers}",
            )  # fmt: skip


def nats_kv_config(server: NatsServer, redis: RedisServer, **auth: str) -> HydratorConfig:
    return HydratorConfig(
        redis_socket=str(redis.socket_path),
        bindings=(
            BindingSource(
                name="flags",
                nats=NatsSourceConfig(
                    connection=NatsConnection(servers=(server.url,), **auth),
                    kv=NatsKv(bucket="flags"),
                ),
                format="raw",
            ),
        ),
    )


async def test_nats_speaks_the_same_reasons_a_missing_bucket_then_refused_credentials(
    redis_server: RedisServer, app_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NatsServer(config='authorization { token: "s3cret" }') as server:
        monkeypatch.setenv("NATS_TOKEN", "s3cret")
        config = nats_kv_config(server, redis_server, auth_method="token", token_env="NATS_TOKEN")
        async with serving(config) as (hydrator, port):
            await says(
                hydrator, port, app_redis, Reason.TOPIC_MISSING,
                f"KV bucket flags does not exist on {server.url}",
            )  # fmt: skip
            nc = await nats.connect(server.url, token="s3cret")
            await (await nc.jetstream().create_key_value(bucket="flags")).put("a", b"1")
            await nc.close()
            await hydrated(hydrator)
            assert reason_of(hydrator) is Reason.HYDRATED

        monkeypatch.setenv("NATS_TOKEN", "wrong")
        await app_redis.flushall()
        async with serving(config) as (hydrator, port):
            await says(
                hydrator, port, app_redis, Reason.AUTHENTICATION_FAILED,
                f"{server.url} refused the credentials",
            )  # fmt: skip
