"""NATS JetStream into a Pod's Redis: a real nats-server, a real redis-server, and what the app
reads (keys, values, ``sidecar-state:meta``, ``/readyz``) — the Kafka tests' scenarios."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nkeys
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from sidecar_hydrator.config import (
    BindingSource,
    HydratorConfig,
    KeyMapping,
    NatsConnection,
    NatsKv,
    NatsSourceConfig,
    NatsStream,
    RecordFormat,
    StartFrom,
)
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.nats_auth import PREFIX_ACCOUNT, Nkey
from sidecar_hydrator.nats_source import NatsSource
from sidecar_state_stack.nats_jwt import JwtChain
from sidecar_state_stack.nats_server import NatsServer
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.hydrator.support import (
    eventually,
    http_status,
    hydrate_once,
    hydrated,
    rebuilt,
    running,
    running_hydrated,
    sample,
    serving,
    serving_hydrated,
    view,
)

pytestmark = pytest.mark.timeout(60)


def nats_config(
    *,
    server: NatsServer,
    redis: RedisServer,
    kv: NatsKv | None = None,
    stream: NatsStream | None = None,
    format: RecordFormat = "raw",
    start_from: StartFrom = "earliest",
    prefix: str = "",
    connection: NatsConnection | None = None,
) -> HydratorConfig:
    """One binding ``flags`` reading a KV bucket or a stream of ``server`` into ``redis``;
    ``connection`` replaces the plain one to ``server`` (credentials)."""
    return HydratorConfig(
        redis_socket=str(redis.socket_path),
        bindings=(
            BindingSource(
                name="flags",
                nats=NatsSourceConfig(
                    connection=connection or NatsConnection(servers=(server.url,)),
                    kv=kv,
                    stream=stream,
                ),
                start_from=start_from,
                format=format,
                keys=KeyMapping(prefix=prefix),
            ),
        ),
    )


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def bucket(client: Client) -> KeyValue:
    return await client.jetstream().create_key_value(bucket="flags", history=5)


async def meta(app: aioredis.Redis) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in (await app.hgetall("sidecar-state:meta")).items()}


async def test_kv_bootstrap_live_update_and_delete(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, bucket: KeyValue
) -> None:
    for i in range(50):
        await bucket.put(f"k{i}", f"v{i}".encode())
    await bucket.put("k0", b"newest")  # an older revision must not win
    await bucket.delete("k1")
    await bucket.purge("k2")
    config = nats_config(server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"))
    async with serving_hydrated(config) as (_, port):
        expected = {f"k{i}".encode(): f"v{i}".encode() for i in range(3, 50)}
        expected[b"k0"] = b"newest"
        assert await view(app_redis, b"k") == expected
        assert await http_status(port, "/readyz") == 200
        await eventually(
            lambda: _meta_is(app_redis, hydrated=b"1", lag=b"0"), what="meta hydrated, lag 0"
        )

        await bucket.put("k3", b"live")
        await bucket.put("new", b"1")
        await bucket.delete("k4")
        await bucket.purge("k5")
        await eventually(
            lambda: _view_has(app_redis, {b"k3": b"live", b"new": b"1"}, absent=(b"k4", b"k5")),
            what="live update and deletes",
        )


async def _meta_is(app: aioredis.Redis, **fields: bytes) -> bool:
    current = await meta(app)
    return all(current.get(k.encode()) == v for k, v in fields.items())


async def _view_has(
    app: aioredis.Redis, present: dict[bytes, bytes], *, absent: tuple[bytes, ...] = ()
) -> bool:
    current = await view(app, b"")
    return all(current.get(k) == v for k, v in present.items()) and not any(
        k in current for k in absent
    )


async def test_kv_keys_filter_and_an_empty_bucket_still_hydrate(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, bucket: KeyValue
) -> None:
    """Hydrated means "reached the stream's last sequence at start" even when the tail of the
    stream holds keys the filter does not take."""
    await bucket.put("app.a", b"1")
    await bucket.put("other.b", b"2")
    config = nats_config(
        server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags", keys=("app.>",))
    )
    async with running_hydrated(config, within=10) as hydrator:
        assert await view(app_redis, b"") == {b"app.a": b"1"}
        # Metrics say which source; lag counts the filter's messages, not the stream's tail.
        assert sample(hydrator, "records_read_total", binding="flags", source="nats") == 1
        assert sample(hydrator, "records_read_total", source="kafka") == 0
        await eventually(
            lambda: sample(hydrator, "lag_records", binding="flags", source="nats") == 0,
            what="lag 0",
        )


async def test_lag_is_the_messages_the_consumer_reports_pending(
    nats_server: NatsServer, redis_server: RedisServer, client: Client
) -> None:
    """Halfway through a filtered stream, the lag is what matches the filter and is still
    unread (the consumer's pending count), not the distance to the stream's last sequence."""
    js = client.jetstream()
    await js.add_stream(name="S", subjects=["s.>"])
    for i in range(50):
        await js.publish(f"s.a.{i}", b"1")
        await js.publish(f"s.b.{i}", b"2")
    config = nats_config(
        server=nats_server, redis=redis_server, stream=NatsStream(name="S", subjects=("s.a.>",))
    )
    source = NatsSource(binding=config.bindings[0], config=config, metrics=Metrics())
    stop = asyncio.Event()
    try:
        snapshot = await source.snapshot(stop)
        (partition,) = snapshot.ends
        source.assign({partition: 1})
        read = 0
        while read < 10:
            batch = await source.fetch(max_records=10 - read, timeout_ms=500, stop=stop)
            read += sum(len(records) for records in batch.values())
        position = await source.position(partition)
        end = source.end(partition)
        assert position == 20  # the 10th s.a message is sequence 19
        assert end is not None and end - position == 40  # not 101 - 20
    finally:
        await source.close()


async def test_restart_resumes_and_reads_only_new_messages(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, bucket: KeyValue
) -> None:
    for i in range(20):
        await bucket.put(f"k{i}", b"old")
    config = nats_config(server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"))
    async with running_hydrated(config) as hydrator:
        first_read = sample(hydrator, "records_read_total", binding="flags")
    assert first_read == 20
    await bucket.put("k0", b"new")
    await bucket.delete("k1")
    async with running_hydrated(config) as hydrator:
        await eventually(
            lambda: _view_has(app_redis, {b"k0": b"new", b"k2": b"old"}, absent=(b"k1",)),
            what="resumed",
        )
        assert sample(hydrator, "records_read_total", binding="flags") == 2
        assert sample(hydrator, "rebuilds_total", reason="empty") == 0


async def test_server_killed_mid_stream_then_restarted_nothing_lost(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    kv = await nc.jetstream().create_key_value(bucket="flags")
    for i in range(100):
        await kv.put(f"k{i}", b"before")
    config = nats_config(server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"))
    async with serving_hydrated(config) as (_, port):
        await nc.close()
        nats_server.kill()
        # Fail static: the view is still served while the server is away, and the app is
        # told how stale it may be.
        await eventually(
            lambda: _staleness_ms(app_redis, above=1500), within=10, what="staleness growing"
        )
        assert await view(app_redis, b"k99") == {b"k99": b"before"}
        assert await http_status(port, "/readyz") == 200
        nats_server.start()
        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().key_value("flags")
        for i in range(100):
            await kv.put(f"k{i}", b"after")
        await kv.put("late", b"1")
        expected = {f"k{i}".encode(): b"after" for i in range(100)} | {b"late": b"1"}
        await eventually(
            lambda: _view_equals(app_redis, expected), within=30, what="every write after restart"
        )
        await nc.close()


async def _staleness_ms(app: aioredis.Redis, *, above: int) -> bool:
    staleness = (await meta(app)).get(b"staleness_ms")
    return staleness is not None and int(staleness) > above


async def test_retention_removed_unread_messages_rebuilds_a_replayed_stream(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, client: Client
) -> None:
    js = client.jetstream()
    await js.add_stream(name="S", subjects=["s.>"], max_msgs=5)
    for i in range(3):
        await js.publish(f"s.{i}", b"first")
    config = nats_config(server=nats_server, redis=redis_server, stream=NatsStream(name="S"))
    await hydrate_once(config)
    for i in range(10):  # sequences 4-13; the stream keeps 9-13 only, 4-8 were never read
        await js.publish(f"s.{i}", b"second")
    async with running(config) as hydrator:
        await rebuilt(hydrator, reason="offset_out_of_range")
        await hydrated(hydrator)
        assert await view(app_redis, b"s.") == {f"s.{i}".encode(): b"second" for i in range(5, 10)}


async def _status_is(port: int, path: str, status: int) -> bool:
    return await http_status(port, path) == status


async def _view_equals(app: aioredis.Redis, expected: dict[bytes, bytes]) -> bool:
    return await view(app, b"") == expected


async def test_stream_subject_keys_deliver_all_and_bad_records_counted(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, client: Client
) -> None:
    js = client.jetstream()
    await js.add_stream(name="FLAGS", subjects=["flags.>"])
    await js.publish("flags.a", json.dumps({"on": True}).encode())
    await js.publish("flags.b", b"{not json")
    await js.publish("flags.a", json.dumps({"on": False}).encode())
    config = nats_config(
        server=nats_server,
        redis=redis_server,
        stream=NatsStream(name="FLAGS", subjects=("flags.>",)),
        format="json",
    )
    async with running_hydrated(config) as hydrator:
        assert await view(app_redis, b"flags.") == {b"flags.a": b'{"on": false}'}
        assert sample(hydrator, "bad_records_total", binding="flags", kind="not_json") == 1
        await js.publish("flags.c", b'{"on": 1}')
        await eventually(lambda: _view_has(app_redis, {b"flags.c": b'{"on": 1}'}), what="live")


async def test_stream_recreated_under_the_same_name_is_rebuilt(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, client: Client
) -> None:
    js = client.jetstream()
    await _stream_with(js, {"s.a": b"1", "s.b": b"2", "s.c": b"3"})
    config = nats_config(
        server=nats_server, redis=redis_server, stream=NatsStream(name="S", deliver="all")
    )
    async with running_hydrated(config) as hydrator:
        assert await view(app_redis, b"s.") == {b"s.a": b"1", b"s.b": b"2", b"s.c": b"3"}
    await js.delete_stream("S")
    await _stream_with(js, {"s.x": b"new"})  # sequences start over: 1 is inside the old range
    async with running(config) as hydrator:
        await eventually(
            lambda: _view_equals(app_redis, {b"s.x": b"new"}), within=20, what="rebuilt view"
        )
        assert sample(hydrator, "rebuilds_total", reason="topic_recreated") == 1


async def _stream_with(js: JetStreamContext, messages: dict[str, bytes]) -> None:
    await js.add_stream(name="S", subjects=["s.>"])
    for subject, data in messages.items():
        await js.publish(subject, data)


async def test_start_from_latest_skips_history(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, bucket: KeyValue
) -> None:
    await bucket.put("old", b"1")
    config = nats_config(
        server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"), start_from="latest"
    )
    async with running_hydrated(config):
        await bucket.put("new", b"2")
        await eventually(lambda: _view_has(app_redis, {b"new": b"2"}), what="new key")
        assert b"old" not in await view(app_redis, b"")


def _user_nkey(tmp_path: Path) -> tuple[str, Path]:
    """A fresh user nkey: its public key (for the server) and its seed file (for the Pod)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode()), seed_file


@pytest.mark.parametrize("method", ["token", "userPassword", "nkey", "creds"])
async def test_credentials_are_accepted_and_wrong_ones_get_a_clear_error(
    method: str,
    redis_server: RedisServer,
    app_redis: aioredis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    public, seed_file = _user_nkey(tmp_path)
    (tmp_path / "wrong").mkdir()
    _, wrong_seed = _user_nkey(tmp_path / "wrong")
    # creds: an operator-mode server trusting a generated operator -> account chain.
    chain = JwtChain.create()
    creds_file, wrong_creds = tmp_path / "user.creds", tmp_path / "wrong.creds"
    creds_file.write_text(chain.user_creds())
    wrong_creds.write_text(chain.user_creds(signer=Nkey.generate(PREFIX_ACCOUNT)))
    users = {
        "token": 'authorization { token: "s3cret" }',
        "userPassword": 'authorization { users: [{user: "app", password: "s3cret"}] }',
        "nkey": f'authorization {{ users: [{{nkey: "{public}"}}] }}',
        "creds": chain.server_config(),
    }
    with NatsServer(config=users[method]) as server:
        connect: dict[str, object] = {
            "token": {"token": "s3cret"},
            "userPassword": {"user": "app", "password": "s3cret"},
            "nkey": {"nkeys_seed": str(seed_file)},  # the reference client, with nkeys
            "creds": {"user_credentials": str(creds_file)},
        }[method]
        nc = await nats.connect(server.url, **connect)
        kv = await nc.jetstream().create_key_value(bucket="flags")
        await kv.put("a", b"1")
        await nc.close()

        monkeypatch.setenv("NATS_TOKEN", "s3cret")
        monkeypatch.setenv("NATS_USER", "app")
        monkeypatch.setenv("NATS_PASSWORD", "s3cret")
        auth = {
            "token": {"token_env": "NATS_TOKEN"},
            "userPassword": {"username_env": "NATS_USER", "password_env": "NATS_PASSWORD"},
            "nkey": {"nkey_seed_file": str(seed_file)},
            "creds": {"creds_file": str(creds_file)},
        }[method]
        # The hydrator signs without the nkeys package, as in its image.
        monkeypatch.setitem(sys.modules, "nkeys", None)
        good = nats_config(
            server=server,
            redis=redis_server,
            kv=NatsKv(bucket="flags"),
            connection=NatsConnection(servers=(server.url,), auth_method=method, **auth),
        )
        async with running_hydrated(good) as hydrator:
            assert await view(app_redis, b"") == {b"a": b"1"}

        monkeypatch.setenv("NATS_TOKEN", "wrong")
        monkeypatch.setenv("NATS_PASSWORD", "wrong")
        if method == "nkey":
            auth = {"nkey_seed_file": str(wrong_seed)}
        if method == "creds":  # a user signed by an account the operator never issued
            auth = {"creds_file": str(wrong_creds)}
        await app_redis.flushall()
        bad = nats_config(
            server=server,
            redis=redis_server,
            kv=NatsKv(bucket="flags"),
            connection=NatsConnection(servers=(server.url,), auth_method=method, **auth),
        )
        async with running(bad) as hydrator:
            await eventually(
                lambda: sample(hydrator, "nats_errors_total", binding="flags", kind="auth") > 0,
                what="the refusal counted",
            )
            assert not hydrator.ready()
        refused = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("refused the credentials" in m and method in m for m in refused), refused


async def test_restart_while_the_server_is_down_serves_the_stored_view_then_catches_up(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().create_key_value(bucket="flags")
    await kv.put("a", b"1")
    await nc.close()
    config = nats_config(server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"))
    await hydrate_once(config)
    nats_server.kill()
    async with serving(config) as (_hydrator, port):
        await eventually(lambda: _status_is(port, "/readyz", 200), within=5, what="ready")
        assert await view(app_redis, b"") == {b"a": b"1"}
        nats_server.start()
        nc = await nats.connect(nats_server.url)
        await (await nc.jetstream().key_value("flags")).put("b", b"2")
        await nc.close()
        await eventually(
            lambda: _view_equals(app_redis, {b"a": b"1", b"b": b"2"}), within=20, what="caught up"
        )


async def test_wire_reads_of_every_size_and_shape_are_what_the_app_reads(
    nats_server: NatsServer, redis_server: RedisServer, app_redis: aioredis.Redis, client: Client
) -> None:
    """The hydrator's own reading of the wire (raw inbox, its own parser): payloads larger
    than a socket read and than many messages together, payloads that look like protocol,
    empty ones, puts that carry headers, KV deletes and purges among thousands of puts, a
    pull request that expires while idle (its 408 status), then live writes."""
    kv = await client.jetstream().create_key_value(bucket="flags", history=1)
    js = client.jetstream()
    expected: dict[bytes, bytes] = {}
    for i in range(3000):
        value = f"v{i}".encode() * (i % 7)
        await js.publish(f"$KV.flags.k{i}", value)
        expected[f"k{i}".encode()] = value
    shapes = {
        b"big": bytes(range(256)) * 1024,  # 256 KiB: several reads
        b"protocol": b"\r\nMSG $KV.flags.x 1 2\r\nhi\r\nPING\r\nHMSG a 1 2 3\r\n",
        b"empty": b"",
    }
    for key, value in shapes.items():
        await kv.put(key.decode(), value)
    await js.publish("$KV.flags.headed", b"kept", headers={"X-Trace": "1"})
    expected |= shapes | {b"headed": b"kept"}
    for i in range(0, 3000, 10):
        await (kv.delete if i % 20 else kv.purge)(f"k{i}")
        del expected[f"k{i}".encode()]
    config = nats_config(server=nats_server, redis=redis_server, kv=NatsKv(bucket="flags"))
    async with running_hydrated(config) as hydrator:
        assert await view(app_redis, b"") == expected
        assert sample(hydrator, "bad_records_total", binding="flags") == 0
        await asyncio.sleep(1.5)  # the open pull request expires (408)
        await kv.put("live", b"1")
        await kv.delete("k1")
        await kv.put("big", b"small now")
        await eventually(
            lambda: _view_has(app_redis, {b"live": b"1", b"big": b"small now"}, absent=(b"k1",)),
            what="live writes after an idle pull expired",
        )
