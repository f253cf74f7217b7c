"""A real single-node Apache Kafka (KRaft) broker for integration tests and benchmarks.

Why a real broker: the hydrator depends on broker behaviour that fakes get wrong — log
compaction and tombstones, producer-compressed batches (gzip/snappy/lz4/zstd) stored as-is,
offsets after a broker restart, and what aiokafka does while the broker is down.

Why jars from Maven Central: the machines reach package registries only, and the Kafka
distribution tarball is not on one; but ``org.apache.kafka:kafka_2.13`` and its runtime
dependencies are. :func:`install_kafka` resolves them with Maven
(``tools/sidecar_state_stack/kafka/pom.xml``) into
``${SIDECAR_STATE_CACHE:-~/.cache/sidecar-state}/kafka/<version>/libs/`` once per version.

Command line (run from the repository root)::

    python3 -m sidecar_state_stack.kafka_broker install   # fetch the jars (no-op when cached)
    python3 -m sidecar_state_stack.kafka_broker run       # a broker in the foreground until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from localkube.cache import cache_root
from localkube.ports import free_ports
from localkube.processes import ChildService, kill_process, spawn_logged, stop_process

#: Kafka 4.x brokers need Java 17+, which is what the machines have; 4.x is KRaft-only.
KAFKA_VERSION: Final = os.environ.get("SIDECAR_STATE_KAFKA_VERSION", "4.4.0")

POM_PATH: Final = Path(__file__).resolve().parent / "kafka" / "pom.xml"

#: Topic settings that make the log cleaner act within about a second, for compaction tests.
#: The cleaner never touches the active segment, so segments must roll quickly (``segment.ms``)
#: and any dirty ratio must qualify; tombstones are then dropped after ``delete.retention.ms``.
FAST_COMPACTION_CONFIG: Final[Mapping[str, str]] = {
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.001",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "100",
}

#: SASL/PLAIN users of the broker's second listener (:attr:`KafkaBroker.sasl_bootstrap_servers`),
#: for tests of credentials: right ones, wrong ones, ones corrected later.
SASL_USERS: Final[Mapping[str, str]] = {"sidecar": "sidecar-secret"}

_T = TypeVar("_T")
_CODECS: Final = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_MARKER = ".complete"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Directory holding one Kafka version; its jars are in ``libs/``."""
    return cache_root() / "kafka" / version


def _say(message: str) -> None:
    print(f"[kafka] {message}", file=sys.stderr, flush=True)


def _cds_enabled() -> bool:
    return os.environ.get("SIDECAR_STATE_KAFKA_CDS", "1") != "0"


def _cds_dir(version: str, java: str = "java") -> Path:
    """Where class-data-sharing archives for ``version`` on this JVM live.

    An archive only works with the JVM build that wrote it, so the directory is keyed by the
    resolved ``java`` binary and its mtime: a JDK upgrade simply records new archives.
    """
    binary = shutil.which(java) or java
    real = os.path.realpath(binary)
    try:
        stamp = f"{real}:{os.stat(real).st_mtime_ns}"
    except OSError:
        stamp = real
    key = uuid.uuid5(uuid.NAMESPACE_URL, stamp).hex[:12]
    return kafka_home(version) / "cds" / key


def is_installed(version: str = KAFKA_VERSION) -> bool:
    """True when the jars are cached and (unless disabled) the start-up archives recorded."""
    if not (kafka_home(version) / _MARKER).is_file():
        return False
    return not _cds_enabled() or (_cds_dir(version) / _MARKER).is_file()


def install_kafka(version: str = KAFKA_VERSION, *, log: Callable[[str], None] = _say) -> Path:
    """Make Kafka ``version`` ready to run; return its ``libs`` directory.

    1. Fetch the broker jars with Maven unless cached (``kafka/<version>/libs``).
    2. Once per JVM: start a broker from them, create a topic, stop it — proving the jar set is
       complete — while recording class-data-sharing archives, which cut every later JVM
       start (storage format, broker start/restart) by 1-4 s on two cores.

    Idempotent and safe to run concurrently (a file lock serialises installers; jars are
    copied to a scratch directory and renamed into place, so a half-done download is never
    mistaken for a cached one). When everything is cached it returns in milliseconds.
    """
    libs = kafka_home(version) / "libs"
    if is_installed(version):
        return libs
    kafka_home(version).parent.mkdir(parents=True, exist_ok=True)
    with open(kafka_home(version).parent / f".install-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (kafka_home(version) / _MARKER).is_file():
            _fetch_jars(version, log)
        if _cds_enabled() and not (_cds_dir(version) / _MARKER).is_file():
            log("verifying that the broker starts; recording class-data archives (once per JVM)")
            started = time.monotonic()
            broker = KafkaBroker(version=version, install=False)
            broker._record_cds = True
            with broker:
                broker.create_topic("sidecar-state-install-check")
            (_cds_dir(version) / _MARKER).write_text("ok\n")
            log(
                f"Kafka {version} verified: broker up in {broker.last_start_seconds:.1f} s, "
                f"{time.monotonic() - started:.1f} s in total"
            )
    return libs


def _fetch_jars(version: str, log: Callable[[str], None]) -> None:
    home = kafka_home(version)
    libs = home / "libs"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "Maven ('mvn') is needed to fetch the Kafka broker jars from Maven Central: "
            "apt-get install -y maven openjdk-17-jre-headless"
        )
    home.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    repo = cache_root() / "m2"
    log(f"fetching Kafka {version} jars from Maven Central into {libs} (once per version)")
    started = time.monotonic()
    cmd = [
        mvn, "-B", "-q", "-Dstyle.color=never",
        "-f", str(POM_PATH),
        f"-Dmaven.repo.local={repo}",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={scratch}",
        "dependency:copy-dependencies",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        output = (proc.stdout + proc.stderr).strip()[-4000:]
        raise RuntimeError(
            f"mvn failed ({proc.returncode}) fetching Kafka {version}:\n{output}\n"
            f"command: {' '.join(cmd)}"
        )
    core = scratch / f"kafka_2.13-{version}.jar"
    if not core.is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError(f"mvn succeeded but {core.name} is missing from {scratch}")
    shutil.rmtree(libs, ignore_errors=True)
    scratch.rename(libs)
    jars = sorted(libs.glob("*.jar"))
    size = sum(j.stat().st_size for j in jars) / 2**20
    (home / _MARKER).write_text(f"{len(jars)} jars\n")
    log(f"Kafka {version}: {len(jars)} jars, {size:.0f} MiB in {time.monotonic() - started:.1f} s")


def random_cluster_id() -> str:
    """A KRaft cluster id: a random UUID, URL-safe base64 without padding (as Kafka's Uuid).

    Like ``Uuid.randomUuid()`` it never starts with ``-``, which the storage tool's argument
    parser would take for an option (1 id in 64 otherwise).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    Fixtures and helpers are synchronous but get called from async tests, where
    ``asyncio.run`` is not allowed; a private thread with its own loop works in both places.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class KafkaBrokerError(RuntimeError):
    """The broker could not be started or did not become usable."""


class KafkaBroker(ChildService):
    """One KRaft node (``process.roles=broker,controller``) on free loopback ports.

    Storage lives in a private temporary directory and survives :meth:`stop`/:meth:`kill` +
    :meth:`start` (same ports, same data), so tests can take the broker away mid-stream and
    bring it back. :meth:`close` (or leaving the ``with`` block) stops it and deletes the data.
    """

    def __init__(
        self,
        *,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        config: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = (),
        workdir: Path | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        install: bool = True,
        java: str = "java",
        host: str = "127.0.0.1",
        sasl_users: Mapping[str, str] = SASL_USERS,
        authorizer: bool = False,
    ) -> None:
        """Prepare (but do not start) a broker.

        ``config`` entries override the defaults in :meth:`_server_properties`.
        ``workdir`` is kept on :meth:`close` when given; by default a temporary directory is
        used and removed (set ``SIDECAR_STATE_KEEP_TEST_DIRS=1`` to keep it for debugging).
        ``install=False`` refuses to download jars, for callers that must not hit the network.
        ``host`` is the address clients use (listener, advertised listener, readiness probe):
        a local node's Pods reach the host only at the node's bridge address, not loopback.
        ``sasl_users`` (name -> password) may sign in with SASL/PLAIN on a second listener
        (``sasl_bootstrap_servers``); the first one stays PLAINTEXT, as every other test uses.
        ``authorizer`` turns Kafka's ACLs on: the PLAINTEXT listener's clients (and the
        controller) are super users, and the SASL users may do nothing, as a user without
        ACLs on a secured cluster.
        """
        self.version = version
        self.heap = heap
        self.extra_config = dict(config or {})
        self.jvm_options = list(jvm_options)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.install = install
        self.java = java
        self.host = host
        self._owns_workdir = workdir is None
        self.workdir = (
            workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="sidecar-kafka-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sasl_users = dict(sasl_users)
        self.authorizer = authorizer
        self.port, self.controller_port, self.sasl_port = free_ports(3)
        self.cluster_id = random_cluster_id()
        self._formatted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._record_cds = False  # set by install_kafka() for its one training run
        self._cds_pending: dict[str, tuple[Path, Path]] = {}
        #: Seconds the last :meth:`start` took until the broker answered metadata requests.
        self.last_start_seconds: float | None = None

    # -- paths ------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` to hand to Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        """``host:port`` of the SASL_PLAINTEXT listener (mechanism PLAIN, :attr:`sasl_users`)."""
        return f"{self.host}:{self.sasl_port}"

    @property
    def data_dir(self) -> Path:
        """The broker's ``log.dirs`` (partition directories and segment files)."""
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """The broker's log4j log; read it when a test fails in a broker-shaped way."""
        return self.workdir / "server.log"

    @property
    def stdout_path(self) -> Path:
        """JVM stdout/stderr (crashes before logging is set up end up here)."""
        return self.workdir / "kafka.out"

    @property
    def libs(self) -> Path:
        return kafka_home(self.version) / "libs"

    def segment_files(self, topic: str, partition: int = 0) -> list[Path]:
        """The ``.log`` segment files of a partition, oldest first (for storage assertions)."""
        return sorted((self.data_dir / f"{topic}-{partition}").glob("*.log"))

    def stored_batches(self, topic: str, partition: int = 0) -> list[tuple[int, str]]:
        """``(base offset, codec)`` of every record batch on disk, read from the segments.

        Lets a test prove what the broker *stored* (e.g. that a producer's zstd batch was kept
        as zstd rather than recompressed), which no client API reveals.
        """
        batches = []
        for segment in self.segment_files(topic, partition):
            data = segment.read_bytes()
            pos = 0
            # v2 batch header: baseOffset i64, length i32, leaderEpoch i32, magic i8, crc u32,
            # attributes i16 (the low 3 bits are the codec).
            while pos + 23 <= len(data):
                base_offset, length = struct.unpack_from(">qi", data, pos)
                if length <= 0 or pos + 12 + length > len(data):
                    break  # a batch still being written
                (attributes,) = struct.unpack_from(">h", data, pos + 21)
                batches.append((base_offset, _CODECS.get(attributes & 0x7, "unknown")))
                pos += 12 + length
        return batches

    # -- configuration ----------------------------------------------------------------------

    def _server_properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{self.host}:{self.port},"
                f"SASL_PLAINTEXT://{self.host}:{self.sasl_port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://{self.host}:{self.port},SASL_PLAINTEXT://{self.host}:{self.sasl_port}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                + " ".join(f'user_{name}="{secret}"' for name, secret in self.sasl_users.items())
                + ";"
            ),
            "log.dirs": str(self.data_dir),
            # A single node: every internal topic must make do with one replica.
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fast start and no surprises: tests create every topic they use explicitly.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            # Keep what producers compressed, as production brokers do.
            "compression.type": "producer",
            # The log manager's periodic tasks (cleaner, retention) otherwise wait 30 s.
            "log.initial.task.delay.ms": "0",
            "log.cleaner.enable": "true",
            "log.cleaner.threads": "1",
            "log.cleaner.backoff.ms": "200",
            "log.cleaner.min.compaction.lag.ms": "0",
            "log.cleaner.dedupe.buffer.size": str(16 * 2**20),
            "log.retention.check.interval.ms": "1000",
            # After a kill the restarted controller rejects the new broker incarnation until the
            # old one's session expires (default 9 s); keep outage tests quick.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # Two cores: fewer threads start faster and steal less from the code under test.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "2",
        }
        if self.authorizer:
            props["authorizer.class.name"] = (
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            )
            props["super.users"] = "User:ANONYMOUS"
            props["allow.everyone.if.no.acl.found"] = "false"
        props.update(self.extra_config)
        return props

    def _write_config(self) -> Path:
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self._server_properties().items()))
        (self.workdir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_path}\n"
            "appender.file.append = true\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            # Per-request and state-change chatter would dominate the log.
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = WARN\n"
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
        )
        return path

    def _cds_options(self, name: str) -> list[str]:
        """Use (or, in the install run, record) a class-data archive for this kind of JVM."""
        if not _cds_enabled():
            return []
        directory = _cds_dir(self.version, self.java)
        final = directory / f"{name}.jsa"
        if self._record_cds:
            directory.mkdir(parents=True, exist_ok=True)
            pending = directory / f"{name}.{uuid.uuid4().hex[:8]}.tmp"
            self._cds_pending[name] = (pending, final)
            return [f"-XX:ArchiveClassesAtExit={pending}"]
        if final.is_file():
            return [f"-XX:SharedArchiveFile={final}"]
        return []

    def _settle_cds(self, name: str, *, keep: bool) -> None:
        """Publish an archive the JVM wrote at a clean exit; drop it after a kill."""
        pending, final = self._cds_pending.pop(name, (None, None))
        if pending is None or final is None:
            return
        if keep and pending.is_file() and pending.stat().st_size > 0:
            pending.replace(final)
        else:
            pending.unlink(missing_ok=True)

    def _java_command(self, main: str, *args: str, cds: str) -> list[str]:
        if cds == "broker":
            jvm = [
                "-Xms128m",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                *self.jvm_options,
            ]
        else:  # a short-lived tool: skip the optimising JIT and G1's threads
            jvm = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
        return [
            self.java,
            *jvm,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            *self._cds_options(cds),
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _ensure_libs(self) -> None:
        if is_installed(self.version):
            return
        if not self.install:
            if (kafka_home(self.version) / _MARKER).is_file():
                return  # jars are there; only the optional start-up archives are missing
            raise KafkaBrokerError(
                f"Kafka {self.version} jars are not in {self.libs}; fetch them with "
                f"`python3 -m sidecar_state_stack.kafka_broker install --version {self.version}`"
            )
        install_kafka(self.version)

    def _format_storage(self, config_path: Path) -> None:
        cmd = self._java_command(
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(config_path),
            cds="format",
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        self._settle_cds("format", keep=proc.returncode == 0)
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"formatting Kafka storage failed ({proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr).strip()[-3000:]}\ncommand: {' '.join(cmd)}"
            )
        self._formatted = True

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker (first time: also format storage) and wait until it is usable.

        "Usable" means a metadata request through ``bootstrap_servers`` lists this broker, so
        topics can be created and produced to right away.
        """
        if self.running:
            raise KafkaBrokerError(f"broker already running (pid {self.pid})")
        if shutil.which(self.java) is None:
            raise KafkaBrokerError(
                f"{self.java!r} not found; the broker needs Java 17+: "
                "apt-get install -y openjdk-17-jre-headless"
            )
        self._ensure_libs()
        config_path = self._write_config()
        if not self._formatted:
            self._format_storage(config_path)
        started = time.monotonic()
        on_linux_main_thread = (
            sys.platform == "linux" and threading.current_thread() is threading.main_thread()
        )
        self._track(
            spawn_logged(
                self._java_command("kafka.Kafka", str(config_path), cds="broker"),
                self.stdout_path,
                cwd=self.workdir,
                # Killed with this process; PDEATHSIG follows the *thread* that forked, so it is
                # only armed from the main thread.
                pdeathsig=signal.SIGKILL if on_linux_main_thread else None,
            )
        )
        try:
            self._wait_ready(started + self.start_timeout)
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise self._failure(f"the broker exited with code {self._proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    pass
                _run_coroutine(self._probe_metadata)
                return
            except Exception as exc:
                last_error = exc
                time.sleep(0.1)
        raise self._failure(
            f"the broker did not answer metadata requests within {self.start_timeout:.0f} s "
            f"(last error: {last_error!r})"
        )

    async def _probe_metadata(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
        )
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if not cluster.get("brokers"):
                raise KafkaBrokerError("metadata lists no brokers yet")
        finally:
            await admin.close()

    def _failure(self, what: str) -> KafkaBrokerError:
        def tail(path: Path, lines: int) -> str:
            try:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except FileNotFoundError:
                return "(missing)"

        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        # The first ERROR is usually the cause; the tail is mostly the shutdown that followed.
        errors = [ln for ln in lines if "] ERROR " in ln or "] FATAL " in ln][:5]
        return KafkaBrokerError(
            f"Kafka {self.version} broker failed to start: {what}.\n"
            f"--- {self.stdout_path} (tail) ---\n{tail(self.stdout_path, 20)}\n"
            f"--- first errors in {self.log_path} ---\n" + "\n".join(errors) + "\n"
            f"--- {self.log_path} (tail) ---\n{tail(self.log_path, 30)}\n"
            "Checks: `java -version` must be 17+; the jars come from "
            "`python3 -m sidecar_state_stack.kafka_broker install` (delete "
            f"{kafka_home(self.version)} to re-fetch); a port clash shows as "
            "'Address already in use' above; set SIDECAR_STATE_KEEP_TEST_DIRS=1 to keep "
            f"{self.workdir}."
        )

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: controlled shutdown, logs flushed), SIGKILL on timeout."""
        if self._proc is None:
            return
        graceful = stop_process(self._proc, self.stop_timeout)
        self._settle_cds("broker", keep=graceful)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker, as in a crash or an OOM kill; data written so far stays on disk."""
        if self._proc is None:
            return
        kill_process(self._proc)
        self._settle_cds("broker", keep=False)
        self._reap()

    # -- topics -----------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        *,
        partitions: int = 1,
        compacted: bool = True,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create a topic and wait until every partition has a leader.

        Compacted by default because state topics are (``cleanup.policy=compact``); pass
        ``config=FAST_COMPACTION_CONFIG`` when a test needs the cleaner to actually run.
        Callable from sync and async code alike (it blocks the caller for ~100 ms).
        """
        topic_config = {"cleanup.policy": "compact" if compacted else "delete"}
        topic_config.update(config or {})
        deadline = time.monotonic() + timeout
        _run_coroutine(lambda: self._create_topic(name, partitions, topic_config, deadline))

    async def _create_topic(
        self, name: str, partitions: int, config: dict[str, str], deadline: float
    ) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import for_code

        timeout_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=timeout_ms
        )
        await admin.start()
        try:
            response = await admin.create_topics(
                [NewTopic(name, partitions, 1, topic_configs=config)]
            )
            for item in response.topic_errors:
                code = item[1]
                if code != 0:
                    message = item[2] if len(item) > 2 else ""
                    raise for_code(code)(f"creating topic {item[0]!r}: {message}")
            while True:
                (topic,) = await admin.describe_topics([name])
                leaders = [p["leader"] for p in topic["partitions"]]
                if topic["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
                    return
                if time.monotonic() > deadline:
                    raise KafkaBrokerError(f"topic {name!r} has no partition leaders in time")
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    def delete_topic(self, name: str) -> None:
        """Delete a topic (its files are removed asynchronously by the broker)."""
        _run_coroutine(lambda: self._delete_topic(name))

    async def _delete_topic(self, name: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import for_code

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            response = await admin.delete_topics([name])
            for item in response.topic_error_codes:
                if item[1] != 0:
                    raise for_code(item[1])(f"deleting topic {item[0]!r}")
        finally:
            await admin.close()


@contextlib.contextmanager
def running_broker(**kwargs: Any) -> Iterator[KafkaBroker]:
    """``with running_broker() as broker:`` — a started :class:`KafkaBroker`, closed after."""
    with KafkaBroker(**kwargs) as broker:
        yield broker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m sidecar_state_stack.kafka_broker")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="fetch the broker jars into the cache")
    install.add_argument("--version", default=KAFKA_VERSION)
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--version", default=KAFKA_VERSION)
    run.add_argument("--heap", default="512m")
    run.add_argument("--host", default="127.0.0.1", help="listen and advertise address")
    args = parser.parse_args(argv)
    if args.command == "install":
        print(install_kafka(args.version))
        return 0
    with KafkaBroker(version=args.version, heap=args.heap, host=args.host) as broker:
        _say(f"Kafka {broker.version} up in {broker.last_start_seconds:.1f} s")
        _say(f"log: {broker.log_path}")
        print(broker.bootstrap_servers, flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
