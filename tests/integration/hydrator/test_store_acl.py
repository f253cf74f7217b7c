"""Issue 19, part 1: an app reads its store and cannot change it; the hydrator still writes.

Real parts only: Debian's redis-server started with the operator's rendered command line
(``redis_server_args``, ``aclfile`` included) and the ACL file the credentials step writes, a
real Kafka broker, and the real :class:`Hydrator` authenticating as its ACL user.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from sidecar_hydrator.config import HydratorConfig
from sidecar_hydrator.credentials import (
    ACL_FILE,
    HYDRATOR_REDIS_USER,
    PASSWORD_FILE,
    write_credentials,
)
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config
from tests.integration.hydrator.support import (
    KafkaPod,
    eventually,
    hydrated,
    running_hydrated,
    sample,
    view,
)

pytestmark = pytest.mark.timeout(90)

META = b"sidecar-state:meta"
RECORDS = [(f"k{i:04d}".encode(), f"v{i}".encode()) for i in range(200)]

#: Commands that change the store or the server, as an app (a bug, a debug shell, a library
#: that flushes on start) would send them. Each must be refused.
FORBIDDEN: list[tuple[str, ...]] = [
    ("SET", "k0001", "changed"),
    ("DEL", "k0001"),
    ("UNLINK", "k0001"),
    ("HSET", "sidecar-state:meta", "hydrated", "1"),
    ("EXPIRE", "k0001", "1"),
    ("RENAME", "k0001", "k9999"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("SWAPDB", "0", "1"),
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "0"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("SELECT", "1"),
    ("EVAL", "return redis.call('SET', 'k0001', 'x')", "0"),
    ("FCALL", "f", "0"),
    ("PUBLISH", "__redis__:invalidate", "k0001"),
    ("CLIENT", "KILL", "USER", HYDRATOR_REDIS_USER),
    ("CLIENT", "PAUSE", "10000", "WRITE"),
    ("CLIENT", "LIST"),
    ("MONITOR",),
    ("ACL", "SETUSER", "default", "+@all"),
    ("INFO",),
    ("SAVE",),
]

REFUSALS = ("NOPERM", "no permissions", "DEBUG command not allowed")

#: Commands an app may run that Redis does not flag read-only: connection and transaction
#: housekeeping, subscriptions and client-side caching. Reviewed one by one; a new one here
#: must be argued for.
ALLOWED_NOT_READONLY = frozenset(
    {
        "auth", "hello", "ping", "echo", "quit", "reset",
        "multi", "exec", "discard", "watch", "unwatch",
        "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
        "client|id", "client|info", "client|getname", "client|setname", "client|reply",
        "client|tracking", "client|trackinginfo", "client|caching", "client|getredir",
        "client|help",
        "command", "command|count", "command|docs", "command|getkeys",
        "command|getkeysandflags", "command|help", "command|info", "command|list",
    }
)  # fmt: skip


@pytest.fixture
def credentials_dir() -> Iterator[Path]:
    """What the credentials init container writes (short path: the socket lives nearby)."""
    directory = Path(tempfile.mkdtemp(prefix="sidecar-cred-"))
    write_credentials(directory=directory)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def redis_config(credentials_dir: Path) -> list[str]:
    """The injected container's full command line, ACL file included; the app's client
    (``pod.app``) gets what any process in an app container gets: the socket, no credentials."""
    return sidecar_redis_config(acl_file=str(credentials_dir / ACL_FILE))


def hydrator_config(pod: KafkaPod, credentials_dir: Path, topic: str) -> HydratorConfig:
    """The hydrator as injected: its own Redis user, its password from the credentials."""
    return pod.config(
        topic,
        format="raw",
        redis_user=HYDRATOR_REDIS_USER,
        redis_password_file=str(credentials_dir / PASSWORD_FILE),
    )


async def test_an_app_may_read_its_store_but_never_change_it(
    pod: KafkaPod, credentials_dir: Path
) -> None:
    topic = await pod.topic_with(RECORDS)
    config = hydrator_config(pod, credentials_dir, topic)
    async with running_hydrated(config) as hydrator:
        meta_before = await pod.app.hgetall(META)

        # What an app does: reads, in one round trip or several.
        assert await pod.app.get(b"k0001") == b"v1"
        assert await pod.app.mget([b"k0001", b"k0199", b"absent"]) == [b"v1", b"v199", None]
        assert meta_before[b"hydrated"] == b"1"
        async with pod.app.pipeline(transaction=True) as reads:
            reads.get(b"k0002").hgetall(META)
            value, meta = await reads.execute()
        assert (value, meta[b"hydrated"]) == (b"v2", b"1")
        assert await view(pod.app, b"k") == dict(RECORDS)

        for command in FORBIDDEN:
            with pytest.raises((NoPermissionError, ResponseError)) as refused:
                await pod.app.execute_command(*command)
            # NOPERM from the ACL; DEBUG is refused even earlier (enable-debug-command no).
            assert any(m in str(refused.value) for m in REFUSALS), (command, refused.value)
        # A write queued in a transaction is refused, and the whole EXEC with it.
        async with pod.app.pipeline(transaction=True) as mixed:
            mixed.get(b"k0001").set(b"k0001", b"changed")
            with pytest.raises((NoPermissionError, ResponseError)):
                await mixed.execute()
        # Knowing the hydrator's user name is not enough.
        with pytest.raises(AuthenticationError):
            await pod.app.execute_command("AUTH", HYDRATOR_REDIS_USER, "guessed")

        # Nothing changed, and the hydrator still writes.
        assert await view(pod.app, b"k") == dict(RECORDS)
        await pod.produce(topic, [(b"k0001", b"updated")])
        await eventually(lambda: _reads(pod.app, b"k0001", b"updated"), what="the update")
        meta_after = await pod.app.hgetall(META)
        assert meta_after[b"hydrated"] == b"1"
        assert int(meta_after[b"last_apply_ms"]) > int(meta_before[b"last_apply_ms"])
        assert hydrator.hydrated


async def test_an_app_gets_change_notifications_of_the_hydrators_writes(
    pod: KafkaPod, credentials_dir: Path
) -> None:
    """SUBSCRIBE works, and client-side caching delivers invalidations (RESP2: redirected to a
    subscribed connection) when the hydrator writes a key the app has read."""
    topic = await pod.topic_with(RECORDS[:10])
    async with running_hydrated(hydrator_config(pod, credentials_dir, topic)):
        listener = await RawConnection.open(pod.redis.socket_path)
        try:
            listener_id = await listener.call("CLIENT", "ID")
            assert await listener.call("SUBSCRIBE", "__redis__:invalidate") == [
                b"subscribe",
                b"__redis__:invalidate",
                1,
            ]
            async with pod.app.client() as reader:
                await reader.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", listener_id)
                assert await reader.get(b"k0003") == b"v3"

                await pod.produce(topic, [(b"k0003", b"new")])

                message = await asyncio.wait_for(listener.reply(), timeout=10)
                assert message == [b"message", b"__redis__:invalidate", [b"k0003"]]
                assert await reader.get(b"k0003") == b"new"
        finally:
            listener.close()


async def test_the_hydrator_rebuilds_a_restarted_redis_with_its_own_user(
    pod: KafkaPod, credentials_dir: Path
) -> None:
    """A rebuild needs INFO, FLUSHDB of the spare database and SWAPDB: all still allowed to
    the hydrator's user after Redis restarts from the same ACL file."""
    topic = await pod.topic_with(RECORDS, partitions=2)
    async with running_hydrated(hydrator_config(pod, credentials_dir, topic)) as h:
        pod.redis.restart()  # comes back empty, same socket, same ACL file
        # The first start counts as one rebuild from empty; the restart is the second.
        await eventually(
            lambda: sample(h, "rebuilds_total", reason="empty") == 2, what="the rebuild"
        )
        await hydrated(h)

        async def rebuilt() -> bool:
            return await view(pod.app, b"k") == dict(RECORDS)

        await eventually(rebuilt, what="the rebuilt view")
        assert (await pod.app.hgetall(META))[b"hydrated"] == b"1"
        with pytest.raises(NoPermissionError):
            await pod.app.set(b"k0001", b"changed")


async def test_no_command_an_app_may_run_writes_or_administers(
    make_redis_server: Callable[..., RedisServer], credentials_dir: Path
) -> None:
    """Every command (and subcommand) this Redis knows, checked with ``ACL DRYRUN`` against
    the ``default`` user: what is allowed is flagged read-only or reviewed above."""
    acl_file = credentials_dir / ACL_FILE
    # A test-only administrator, only in this copy of the rendered file: DRYRUN is @admin.
    audited = credentials_dir / "audited.acl"
    audited.write_text(acl_file.read_text() + "user auditor on >audit ~* &* +@all\n")
    server = make_redis_server(config=sidecar_redis_config(acl_file=str(audited)))
    admin = aioredis.Redis(
        unix_socket_path=str(server.socket_path),
        username="auditor",
        password="audit",
        decode_responses=True,
    )
    try:
        commands = await admin.execute_command("COMMAND")
        entries = []
        for name, info in commands.items():
            if info["subcommands"]:
                # A container (CONFIG, CLIENT, ...): its subcommands are what is checked.
                entries += [(s[0], s[1], s[2], s[6]) for s in info["subcommands"]]
            else:
                entries.append((name, info["arity"], info["flags"], info["acl_categories"]))
        allowed = {}
        for name, arity, flags, categories in entries:
            words = name.split("|")
            arguments = words + ["x"] * (abs(arity) - len(words))
            verdict = await admin.execute_command("ACL", "DRYRUN", "default", *arguments)
            if verdict == "OK":
                allowed[name] = (set(flags), set(categories))
            else:
                assert "no permissions" in verdict, (name, verdict)
    finally:
        await admin.aclose()

    assert len(entries) > 300, "COMMAND listed too little to be a real audit"
    assert {"get", "mget", "hgetall", "scan", "subscribe", "multi", "exec"} <= allowed.keys()
    for name, (flags, categories) in allowed.items():
        assert not flags & {"write", "admin"}, (name, flags)
        assert not categories & {"@write", "@admin", "@scripting"}, (name, categories)
        assert "readonly" in flags or name in ALLOWED_NOT_READONLY, (name, flags)


async def _reads(client: aioredis.Redis, key: bytes, value: bytes) -> bool:
    return bool(await client.get(key) == value)


class RawConnection:
    """One RESP2 connection without a client library's bookkeeping: a subscribed connection
    that still answers ``CLIENT ID`` first, as client-side caching needs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._parser = hiredis.Reader()

    @classmethod
    async def open(cls, path: Path) -> RawConnection:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def call(self, *args: str) -> Any:
        self._writer.write(hiredis.pack_command(args))
        await self._writer.drain()
        return await self.reply()

    async def reply(self) -> Any:
        while (parsed := self._parser.gets()) is False:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self._parser.feed(chunk)
        return parsed

    def close(self) -> None:
        self._writer.close()
