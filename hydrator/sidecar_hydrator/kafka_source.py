"""Kafka as a :class:`~sidecar_hydrator.source.Source`: everything aiokafka-specific.

No consumer group: each Pod needs the whole state, so the source assigns every partition
itself, and positions come from the store. They are always set with an explicit ``seek`` to
offsets fetched with a timeout, never with aiokafka's lazy resets, so no call here can hang on
a broker that went away — the Pod keeps serving the last view (fail static) and its staleness
grows instead. Reads are ``read_committed``: aborted transactions never reach the view, and
the consumer's position (not the last record's offset) is the progress, so commit markers do
not keep a partition from its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    IllegalSaslStateError,
    KafkaError,
    OffsetOutOfRangeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from sidecar_hydrator.aio import sleep_or_stop, until
from sidecar_hydrator.config import BindingSource, HydratorConfig, KafkaConnection
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.kafka_internals import (
    LIGHT_RECORDS,
    connect_error,
    fetch_topic_ids,
    refresh_metadata,
    set_fetch_bytes,
    track_topics,
    unauthorized_topics,
)
from sidecar_hydrator.reasons import Problem, Reason
from sidecar_hydrator.records import RecordLike
from sidecar_hydrator.source import NeedRebuild, Partition, Snapshot, raising_source_errors

logger = logging.getLogger(__name__)

#: Per-partition fetch size once hydrated: live traffic is small, and prefetch buffers count
#: against the sidecar's memory limit.
LIVE_FETCH_BYTES = 1024 * 1024
#: How often a Kafka client that cannot be set up as configured is tried again.
CONFIG_RETRY_SECONDS = 5.0


class KafkaConfigError(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The Kafka client cannot be set up as configured (a TLS file that does not load, say).

    A Kafka error like any other: reported as one, retried (a mounted Secret may be fixed in
    place), and never a reason to touch the store.
    """


def consumer_options(
    conn: KafkaConnection, *, client_id: str, config: HydratorConfig
) -> dict[str, Any]:
    """aiokafka consumer settings for one binding (pure, apart from reading secret env vars)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(conn.bootstrap_servers),
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        # Positions come from Redis; a position the broker no longer has means a rebuild.
        "auto_offset_reset": "none",
        # A materialized view must not show writes of aborted transactions.
        "isolation_level": "read_committed",
        "fetch_max_wait_ms": config.fetch_max_wait_ms,
        "max_partition_fetch_bytes": config.catchup_fetch_bytes,
        "fetch_max_bytes": max(config.catchup_fetch_bytes * 2, 50 * 1024 * 1024),
        "metadata_max_age_ms": config.metadata_refresh_ms,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
        "security_protocol": conn.security_protocol,
        # Records as KafkaRecord tuples, not aiokafka's ConsumerRecord (see kafka_internals).
        "value_deserializer": LIGHT_RECORDS,
    }
    if conn.security_protocol in ("SSL", "SASL_SSL"):
        # ``ca.crt`` is optional in the Secret: without it, the system's CAs verify the
        # broker (a public CA, or one the image trusts), as any TLS client would.
        cafile = conn.ca_file if conn.ca_file and os.path.exists(conn.ca_file) else None
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=cafile, certfile=conn.cert_file, keyfile=conn.key_file
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise KafkaConfigError(f"TLS settings: {exc}") from exc
    if conn.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = conn.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = conn.username()
        options["sasl_plain_password"] = conn.password()
    return options


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _kafka_errors(
    method: Callable[Concatenate[KafkaSource, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[KafkaSource, _P], Coroutine[Any, Any, _R]]:
    """A :class:`KafkaSource` method whose aiokafka errors leave it as :class:`SourceError`."""

    @functools.wraps(method)
    async def translated(self: KafkaSource, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._errors():
            return await method(self, *args, **kwargs)

    return translated


def bootstrap_problem(exc: BaseException | None, *, servers: str) -> Problem:
    """What a failed bootstrap means for the user (pure): the credentials, the TLS trust, or
    no broker at the address. ``exc`` is the cause :func:`connect_error` found."""
    refused = (
        SaslAuthenticationFailed,
        AuthenticationFailedError,
        AuthenticationMethodNotSupported,
        UnsupportedSaslMechanismError,
        IllegalSaslStateError,
    )
    if isinstance(exc, refused):
        return Problem(
            Reason.AUTHENTICATION_FAILED, f"{servers} refused the credentials: {_said(exc)}"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Problem(
            Reason.AUTHENTICATION_FAILED,
            f"the TLS certificate of {servers} does not verify: "
            f"{getattr(exc, 'verify_message', None) or _said(exc)}",
        )
    if isinstance(exc, ClusterAuthorizationFailedError | TopicAuthorizationFailedError):
        return Problem(Reason.AUTHORIZATION_FAILED, f"{servers} refused access: {_said(exc)}")
    cause = f" ({_said(exc)})" if exc is not None else ""
    return Problem(Reason.UNREACHABLE, f"no Kafka broker answers at {servers}{cause}")


def topics_problem(*, missing: Sequence[str], unauthorized: Sequence[str], servers: str) -> Problem:
    """Topics that cannot be read yet (pure): refused ones first, they will not appear."""
    if unauthorized:
        return Problem(
            Reason.AUTHORIZATION_FAILED,
            f"not authorized to read {_topics(unauthorized)} on {servers}",
        )
    verb = "does" if len(missing) == 1 else "do"
    return Problem(Reason.TOPIC_MISSING, f"{_topics(missing)} {verb} not exist on {servers}")


def _topics(names: Sequence[str]) -> str:
    return ("topic " if len(names) == 1 else "topics ") + ", ".join(names)


def _said(exc: BaseException) -> str:
    """The error's own words (aiokafka's ``str()`` prefixes its code and class)."""
    first = exc.args[0] if exc.args else None
    text = first.strip() if isinstance(first, str) else str(exc).strip()
    return text if text and text != "None" else type(exc).__name__


class KafkaSource:
    """One binding's topics on one Kafka cluster (a :class:`~sidecar_hydrator.source.Source`)."""

    def __init__(self, *, binding: BindingSource, config: HydratorConfig, metrics: Metrics) -> None:
        if binding.kafka is None:
            raise ValueError(f"binding {binding.name} has no Kafka source")
        self._binding = binding
        self._kafka = binding.kafka
        self._config = config
        self._metrics = metrics
        self._consumer: AIOKafkaConsumer | None = None
        #: Why the binding cannot be read right now (``None``: nothing known to be wrong).
        self.problem: Problem | None = None
        self._servers = ",".join(self._kafka.bootstrap_servers)

    # -- the Source protocol ------------------------------------------------------------------

    @_kafka_errors
    async def snapshot(self, stop: asyncio.Event) -> Snapshot:
        backoff = 0.1
        while True:
            consumer = await self._open(stop)
            try:
                taken_ms = time.time() * 1000
                partitions = await self._partitions(consumer, stop)
                beginnings = await until(stop, consumer.beginning_offsets(list(partitions)))
                ends = await until(stop, consumer.end_offsets(list(partitions)))
                identities = await until(stop, fetch_topic_ids(consumer, self._binding.topics))
            except KafkaError as exc:
                where = f"positioning on {self._servers}: {exc!r}"
                self._report(Problem(Reason.UNREACHABLE, where))
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            self._report(None)
            set_fetch_bytes(consumer, self._config.catchup_fetch_bytes)
            return Snapshot(
                beginnings=beginnings, ends=ends, identities=identities, taken_ms=taken_ms
            )

    def assign(self, starts: Mapping[Partition, int]) -> None:
        with self._errors():
            consumer = self._live()
            consumer.assign(sorted(starts, key=lambda p: (p.topic, p.partition)))
            for partition, offset in starts.items():
                consumer.seek(partition, offset)

    @_kafka_errors
    async def fetch(
        self, *, max_records: int, timeout_ms: int, stop: asyncio.Event
    ) -> Mapping[Partition, Sequence[RecordLike]]:
        try:
            data: Mapping[Partition, Sequence[RecordLike]] = await self._live().getmany(
                timeout_ms=timeout_ms, max_records=max_records
            )
        except OffsetOutOfRangeError as exc:
            raise NeedRebuild("offset_out_of_range", binding=self._binding.name) from exc
        except KafkaError as exc:
            logger.warning("binding %s: fetch failed: %r", self._binding.name, exc)
            await sleep_or_stop(stop, 0.5)
            return {}
        return data

    @_kafka_errors
    async def position(self, partition: Partition) -> int:
        return int(await self._live().position(partition))

    def end(self, partition: Partition) -> int | None:
        """As the last fetch response reported it (read_committed: the last stable offset)."""
        consumer = self._consumer
        if consumer is None:
            return None
        lso = consumer.last_stable_offset(partition)
        if lso is not None and lso >= 0:
            return int(lso)
        highwater = consumer.highwater(partition)
        return None if highwater is None else int(highwater)

    def reported_at(self, partition: Partition) -> float | None:
        consumer = self._consumer
        polled = None if consumer is None else consumer.last_poll_timestamp(partition)
        return None if polled is None else float(polled)

    def go_live(self) -> None:
        if self._consumer is not None:
            set_fetch_bytes(self._consumer, LIVE_FETCH_BYTES)

    @_kafka_errors
    async def identities(self, stop: asyncio.Event) -> Mapping[str, str]:
        """``{}`` when the broker cannot say now (logged): nothing is concluded from it."""
        try:
            return await until(stop, fetch_topic_ids(self._live(), self._binding.topics))
        except KafkaError as exc:
            logger.warning("binding %s: topic IDs: %r", self._binding.name, exc)
            return {}

    @_kafka_errors
    async def added_partitions(
        self, known: Iterable[Partition], stop: asyncio.Event
    ) -> dict[Partition, int]:
        consumer = self._live()
        current = {
            TopicPartition(t, p)
            for t in self._binding.topics
            for p in consumer.partitions_for_topic(t) or ()
        }
        added = current - set(known)
        if not added:
            return {}
        try:
            beginnings: dict[Partition, int] = await until(
                stop, consumer.beginning_offsets(sorted(added))
            )
        except KafkaError as exc:
            logger.warning("binding %s: new partitions wait: %r", self._binding.name, exc)
            return {}
        return beginnings

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await asyncio.wait_for(consumer.stop(), timeout=1.0)
            except (TimeoutError, KafkaError) as exc:
                logger.warning("closing the Kafka consumer of %s: %r", self._binding.name, exc)

    # -- aiokafka -----------------------------------------------------------------------------

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        """aiokafka's errors, should one get out of a method here, as a :class:`SourceError`
        (the hydrator knows no aiokafka)."""
        return raising_source_errors((KafkaError,), source="kafka", binding=self._binding.name)

    def _live(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "snapshot() first"
        return self._consumer

    async def _open(self, stop: asyncio.Event) -> AIOKafkaConsumer:
        backoff = 0.1
        while self._consumer is None:
            try:
                consumer = AIOKafkaConsumer(
                    **consumer_options(
                        self._kafka,
                        client_id=f"sidecar-state-hydrator.{self._binding.name}",
                        config=self._config,
                    )
                )
            except KafkaConfigError as exc:
                self._report(
                    Problem(Reason.SOURCE_CONFIG, f"the Kafka client cannot be set up: {exc}")
                )
                self._metrics.kafka_errors.labels(binding=self._binding.name, kind="config").inc()
                await until(stop, asyncio.sleep(CONFIG_RETRY_SECONDS))
                continue
            try:
                await until(stop, consumer.start())
                self._consumer = consumer
            except KafkaError as exc:
                await consumer.stop()
                # start() keeps only "Unable to bootstrap"; one connection of our own tells
                # refused credentials from a broker that is not there.
                options = consumer_options(
                    self._kafka, client_id=f"sidecar-state-hydrator.{self._binding.name}",
                    config=self._config,
                )  # fmt: skip
                cause = await until(stop, connect_error(options)) or exc
                problem = bootstrap_problem(cause, servers=self._servers)
                kind = {
                    Reason.AUTHENTICATION_FAILED: "auth",
                    Reason.AUTHORIZATION_FAILED: "auth",
                }.get(problem.reason, "unreachable")
                self._metrics.kafka_errors.labels(binding=self._binding.name, kind=kind).inc()
                self._report(problem)
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
            except BaseException:
                await consumer.stop()
                raise
        return self._consumer

    async def _partitions(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> set[Any]:
        """Every partition of every topic, waiting (and saying so) for missing topics."""
        topics = self._binding.topics
        await until(stop, track_topics(consumer, topics))
        while True:
            found = {t: consumer.partitions_for_topic(t) for t in topics}
            missing = sorted(t for t, parts in found.items() if not parts)
            if not missing:
                return {TopicPartition(t, p) for t, parts in found.items() for p in parts or ()}
            refused = sorted(set(missing) & unauthorized_topics(consumer))
            self._report(
                topics_problem(
                    missing=[t for t in missing if t not in refused],
                    unauthorized=refused,
                    servers=self._servers,
                )
            )
            await until(stop, asyncio.sleep(1.0))
            await until(stop, refresh_metadata(consumer))

    def _report(self, problem: Problem | None) -> None:
        """Remember why the binding cannot be read; log it once per change, not per retry
        (the served view stays as it is meanwhile: fail static)."""
        if problem == self.problem:
            return
        if problem is None:
            assert self.problem is not None
            logger.info(
                "binding %s: Kafka reads again (was: %s)", self._binding.name, self.problem.detail
            )
        else:
            # Waiting (for a topic, for brokers) is a warning; what a person must fix (the
            # credentials, the client's files) is an error.
            waiting = problem.reason in (Reason.UNREACHABLE, Reason.TOPIC_MISSING)
            level = logging.WARNING if waiting else logging.ERROR
            logger.log(
                level,
                "binding %s: %s: %s (retrying; the served view stays as it is)",
                self._binding.name,
                problem.reason,
                problem.detail,
            )
        self.problem = problem
