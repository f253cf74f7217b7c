"""engine: lmdb — real Kafka, the real hydrator writing an LMDB environment, and an app process
reading it with :mod:`sidecar_state_client` (another process, as in a Pod)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import lmdb
import pytest

import sidecar_state_client
from localkube.cache import cache_root
from sidecar_hydrator.config import BindingSource, HydratorConfig, KafkaConnection, KeyMapping
from sidecar_hydrator.store_lmdb import LmdbStore
from sidecar_state_stack.kafka_broker import KafkaBroker
from tests.integration.hydrator.support import (
    MIB,
    delete_records_before,
    eventually,
    hydrate_once,
    hydrated,
    produce,
    rebuilt,
    running,
    running_hydrated,
    sample,
)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]


def lmdb_config(
    broker: KafkaBroker, path: Path, topics: Sequence[str], **overrides: Any
) -> HydratorConfig:
    return HydratorConfig(
        store_engine="lmdb",
        lmdb_path=str(path),
        max_key_bytes=511,
        bindings=(
            BindingSource(
                name="b",
                kafka=KafkaConnection(bootstrap_servers=(broker.bootstrap_servers,)),
                topics=tuple(topics),
                format="raw",
                keys=KeyMapping(prefix="flag:"),
            ),
        ),
        **overrides,
    )


def records(n: int, *, tag: str, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"k{i:05d}".encode(), f"{tag}{i}".encode()) for i in range(start, start + n)]


def keys(n: int) -> list[str]:
    return [f"flag:k{i:05d}" for i in range(n)]


class App:
    """The app's process (``sidecar_state_stack.lmdb_reader``), one request at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, request: dict[str, Any], *, within: float = 20) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=within)
        assert line, "the reader process died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def get_many(self, names: Sequence[str]) -> list[str | None]:
        values: list[str | None] = (await self.ask({"op": "get_many", "keys": list(names)}))[
            "values"
        ]
        return values

    async def meta(self) -> dict[str, str]:
        meta: dict[str, str] = (await self.ask({"op": "meta"}))["meta"]
        return meta

    async def start_watch(self, names: Sequence[str]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "watch", "keys": list(names)}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def end_watch(self) -> dict[str, Any]:
        return await self.ask({"op": "stop"})


def reader_command(path: Path) -> list[str]:
    """A bare interpreter that sees only ``lmdb`` and the client (it may run as another
    UID, which cannot read this test's virtualenv interpreter under /root)."""
    return [sys.executable, "-s", "-m", "sidecar_state_stack.lmdb_reader", str(path)]


@contextlib.asynccontextmanager
async def app_process(
    path: Path, *, command: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[App]:
    proc = await asyncio.create_subprocess_exec(
        *(command or reader_command(path)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
        limit=16 * MIB,  # one answer line can carry a megabyte of values
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=40)
        assert json.loads(line) == {"ready": True}
        yield App(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_bootstrap_live_updates_and_tombstones_reach_the_app_process(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(partitions=2)
    await produce(kafka_broker, topic, records(2000, tag="v"))
    async with (
        running_hydrated(lmdb_config(kafka_broker, tmp_path, [topic])),
        app_process(tmp_path) as app,
    ):
        assert await app.get_many(keys(2000)) == [f"v{i}" for i in range(2000)]
        meta = await app.meta()
        assert meta["hydrated"] == "1" and meta["complete"] == "1"
        assert "generation" in meta
        await eventually(lambda: _has(app, "staleness_ms"), what="freshness in meta", within=10)

        await produce(kafka_broker, topic, [(b"k00001", b"changed"), (b"k00002", None)])
        await eventually(
            lambda: _values(app, ["flag:k00001", "flag:k00002"], ["changed", None]),
            what="live update and tombstone",
        )
        # Neither the app's keys nor the metadata show the hydrator's bookkeeping.
        assert not [k for k in await app.meta() if "/" in k or k == "sentinel"]


async def _has(app: App, field: str) -> bool:
    return field in await app.meta()


async def _values(app: App, names: list[str], wanted: list[str | None]) -> bool:
    return await app.get_many(names) == wanted


async def test_a_restarted_hydrator_resumes_the_environment_without_rereading(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(partitions=2)
    await produce(kafka_broker, topic, records(3000, tag="v"))
    config = lmdb_config(kafka_broker, tmp_path, [topic])
    async with running_hydrated(config) as first:
        generation = first._generation

    await produce(kafka_broker, topic, [(b"k00001", b"changed"), (b"new", b"1")])
    async with running_hydrated(config) as second, app_process(tmp_path) as app:
        await eventually(
            lambda: _values(app, ["flag:new", "flag:k00001"], ["1", "changed"]),
            what="records produced while it was down",
        )
        assert sample(second, "records_read_total", binding="b") == 2
        assert sample(second, "rebuilds_total", reason="empty") == 0
        assert second._generation == generation
        assert (await app.get_many(["flag:k02999"])) == ["v2999"]
    assert view_dirs(tmp_path) == [os.readlink(tmp_path / "current")]


def view_dirs(root: Path) -> list[str]:
    """The environments under ``root``: the served one only, once nothing is being built."""
    return [p.name for p in root.iterdir() if p.name.startswith("view-")]


async def test_a_rebuild_read_continuously_by_the_app_only_ever_shows_complete_views(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    n = 1000
    topic = make_topic(partitions=1, compacted=False)
    await produce(kafka_broker, topic, records(n, tag="a"))
    # Small batches stretch the rebuild over many write transactions: many chances for the
    # app to catch a half-built view, were it written into the served environment.
    config = lmdb_config(kafka_broker, tmp_path, [topic], bootstrap_batch_max_keys=20)
    await hydrate_once(config)
    old = [f"a{i}" for i in range(n)]
    # While it is down: every key rewritten, then the topic's head (offsets 0..1499) deleted,
    # so the stored offset (1000) is gone from the log and the view must be rebuilt.
    await produce(kafka_broker, topic, records(n, tag="b"))
    await delete_records_before(kafka_broker, topic, n + n // 2)
    new: list[str | None] = [None] * (n // 2) + [f"b{i}" for i in range(n // 2, n)]

    async with app_process(tmp_path) as app:
        assert await app.get_many(keys(n)) == old
        await app.start_watch(keys(n))
        async with running(config) as hydrator:
            await rebuilt(hydrator, reason="offset_out_of_range", within=30)
            await hydrated(hydrator, within=60)
            watched = await app.end_watch()
            assert await app.get_many(keys(n)) == new
        assert watched["snapshots"] > 10
        assert all(view in (old, new) for view in watched["distinct"]), [
            sum(v is not None for v in view) for view in watched["distinct"]
        ]
        assert old in watched["distinct"]


async def test_a_full_map_refuses_writes_says_so_and_converges_once_freed(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(partitions=1)
    config = lmdb_config(kafka_broker, tmp_path, [topic], lmdb_map_size=MIB)
    await produce(kafka_broker, topic, [(b"small", b"1")])
    async with running(config) as hydrator, app_process(tmp_path) as app:
        await hydrated(hydrator)
        big = [(f"big{i:03d}".encode(), bytes([65 + i % 26]) * 3000) for i in range(400)]
        await produce(kafka_broker, topic, big)
        await eventually(lambda: not hydrator.hydrated, what="the full map noticed")
        assert sample(hydrator, "redis_oom_rejections_total") > 0
        assert not hydrator.ready()
        await eventually(
            lambda: _meta_says(app, "hydrated", "0"), what="meta says incomplete", within=10
        )

        # Tombstones free the map; the refused writes (newest values) get in after them.
        await produce(kafka_broker, topic, [(k, None) for k, _ in big[: len(big) - 100]])
        await hydrated(hydrator, within=30)
        await eventually(lambda: _meta_says(app, "hydrated", "1"), what="meta says complete")
        wanted = [None] * 300 + [v.decode() for _, v in big[300:]]
        assert await app.get_many([f"flag:{k.decode()}" for k, _ in big]) == wanted
        assert await app.get_many(["flag:small"]) == ["1"]


async def _meta_says(app: App, field: str, value: str) -> bool:
    return (await app.meta()).get(field, "0") == value


async def test_a_reader_of_another_uid_with_only_the_lock_file_writable_reads_live_updates(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    if os.getuid() != 0:
        pytest.skip("switching to another UID needs root")
    pod_group, app_uid = 4242, 4243
    # The Pod's volume: group-owned by the Pod's group, setgid so that what the hydrator
    # creates in it belongs to that group too (the app is in it, not the hydrator's user).
    root = Path("/tmp") / f"lmdb-uid-{os.getpid()}"
    root.mkdir(mode=0o2770)
    try:
        os.chown(root, -1, pod_group)
        os.chmod(root, 0o2770)
        topic = make_topic(partitions=1)
        await produce(kafka_broker, topic, records(100, tag="v"))
        site = Path(lmdb.__file__).parents[1]
        command = [
            "setpriv", "--reuid", str(app_uid), "--regid", str(app_uid),
            "--groups", str(pod_group), "--",
            "/usr/bin/python3.11", "-s", "-m", "sidecar_state_stack.lmdb_reader", str(root),
        ]  # fmt: skip
        client = Path(sidecar_state_client.__file__).parents[1]
        env = {"PYTHONPATH": f"{site}:{client}:{REPO / 'tools'}"}
        async with (
            running_hydrated(lmdb_config(kafka_broker, root, [topic])),
            app_process(root, command=command, env=env) as app,
        ):
            probe = await app.ask({"op": "probe_files"})
            assert probe["uid"] == app_uid and pod_group in probe["groups"]
            assert probe["data.mdb"] == "read-only"
            assert probe["lock.mdb"] == "writable"
            await app.start_watch(keys(100))
            for round_ in range(20):
                await produce(kafka_broker, topic, records(100, tag=f"r{round_}-"))
            watched = await app.end_watch()
            await eventually(
                lambda: _values(app, keys(100), [f"r19-{i}" for i in range(100)]),
                what="live updates read as another UID",
            )
        assert watched["snapshots"] > 10
        assert len(watched["distinct"]) > 1  # it saw the updates arrive, not one snapshot
        # No key ever missing: every snapshot is a committed view, never one being written.
        assert all(v is not None and v[0] in "vr" for view in watched["distinct"] for v in view)
    finally:
        for child in sorted(root.rglob("*"), reverse=True):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink()
        root.rmdir()


async def test_an_environment_left_mostly_empty_by_deletes_is_compacted_and_readers_follow(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(partitions=1)
    value = b"x" * 1000
    await produce(kafka_broker, topic, [(f"k{i:05d}".encode(), value) for i in range(12_000)])
    async with running_hydrated(lmdb_config(kafka_broker, tmp_path, [topic])) as hydrator:
        store = hydrator.store
        assert isinstance(store, LmdbStore)
        before = (tmp_path / "current" / "data.mdb").stat().st_size
        async with app_process(tmp_path) as app:
            assert await app.get_many(["flag:k00007"]) == [value.decode()]
            tombstones = [(f"k{i:05d}".encode(), None) for i in range(11_000)]
            await produce(kafka_broker, topic, tombstones)
            await eventually(lambda: store.compactions == 1, what="a compaction", within=30)
            after = (tmp_path / "current" / "data.mdb").stat().st_size
            assert after < before / 4
            # The app reopens the compacted copy by itself and reads the same view.
            assert await app.get_many(["flag:k00007", "flag:k11500"]) == [None, value.decode()]
            assert (await app.meta())["hydrated"] == "1"
            assert hydrator.hydrated


GO_SNIPPET = REPO / "docs" / "clients" / "go"


@pytest.fixture(scope="session")
def go_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go snippet of the README (docs/clients/go), built with its cgo LMDB binding."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (the snippet is built with the go command)")
    binary = tmp_path_factory.mktemp("go") / "reader"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=GO_SNIPPET, check=True, timeout=600, env={**os.environ, "CGO_ENABLED": "1"},
    )  # fmt: skip
    return binary


async def test_the_go_snippet_reads_the_environment_the_hydrator_writes(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path, go_reader: Path
) -> None:
    topic = make_topic(partitions=1)
    await produce(kafka_broker, topic, [(b"new-ui-layout", b"true"), (b"dark-mode", b"false")])

    async def go_read() -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            str(go_reader), "flag:new-ui-layout", "flag:dark-mode", "flag:absent",
            env={"SIDECAR_STATE_LMDB_PATH": str(tmp_path)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        result: dict[str, Any] = json.loads(out)
        return result

    async with running_hydrated(lmdb_config(kafka_broker, tmp_path, [topic])):
        first = await go_read()
        assert first["values"] == {
            "flag:new-ui-layout": "true", "flag:dark-mode": "false", "flag:absent": None,
        }  # fmt: skip
        assert first["meta"]["hydrated"] == "1"
        assert not [k for k in first["meta"] if "/" in k]
        await produce(kafka_broker, topic, [(b"dark-mode", None)])

        async def deleted() -> bool:
            return (await go_read())["values"]["flag:dark-mode"] is None

        await eventually(deleted, what="the tombstone, read from Go")


NODE_SNIPPET = REPO / "docs" / "clients" / "node"


@pytest.fixture(scope="session")
def node_reader() -> Path:
    """The Node snippet with the npm ``lmdb`` package rebuilt for data format v1, as
    docs/clients/node/reader.mjs says (its prebuilt binaries crash on this environment).

    The build (a minute or two of C++) is kept under the project's cache, by the snippet's
    package.json and the Node version; the snippet itself is copied fresh every run."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed")
    nodedir = Path(node).resolve().parents[1]
    if not (nodedir / "include" / "node" / "node.h").is_file():
        pytest.skip(f"no Node headers under {nodedir}/include/node (Debian: libnode-dev)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    manifest = (NODE_SNIPPET / "package.json").read_bytes()
    digest = hashlib.sha256(manifest + version.encode()).hexdigest()[:12]
    cache = cache_root()
    work = cache / "clients" / f"node-lmdb-v1-{digest}"
    if not (work / "node_modules" / "lmdb" / "build" / "Release" / "lmdb.node").is_file():
        building = work.with_name(work.name + f".{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        shutil.copy(NODE_SNIPPET / "package.json", building / "package.json")
        subprocess.run(
            [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=building, check=True, timeout=600,
        )  # fmt: skip
        gyp = Path(npm).resolve().parents[1] / "node_modules/node-gyp/bin/node-gyp.js"
        subprocess.run(
            [node, str(gyp), "rebuild", "-j", "2", f"--nodedir={nodedir}"],
            cwd=building / "node_modules" / "lmdb", check=True, timeout=900,
            env={**os.environ, "LMDB_DATA_V1": "true"}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
        building.rename(work)
    shutil.copy(NODE_SNIPPET / "reader.mjs", work / "reader.mjs")
    return work / "reader.mjs"


@pytest.mark.timeout(900)  # the first run builds the npm package from source
async def test_the_node_snippet_reads_the_environment_the_hydrator_writes(
    kafka_broker: KafkaBroker, make_topic: Callable[..., str], tmp_path: Path, node_reader: Path
) -> None:
    topic = make_topic(partitions=1)
    await produce(kafka_broker, topic, [(b"new-ui-layout", b"true")])
    async with running_hydrated(lmdb_config(kafka_broker, tmp_path / "lmdb", [topic])):
        proc = await asyncio.create_subprocess_exec(
            "node", str(node_reader), "flag:new-ui-layout", "flag:absent",
            env={**os.environ, "SIDECAR_STATE_LMDB_PATH": str(tmp_path / "lmdb")},
            cwd=node_reader.parent,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["values"] == {"flag:new-ui-layout": "true", "flag:absent": None}
    assert result["meta"]["hydrated"] == "1"
