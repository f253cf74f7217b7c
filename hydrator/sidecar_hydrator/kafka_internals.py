"""Everything the hydrator needs from aiokafka beyond its public API, in one place.

aiokafka 0.14 is the Kafka client; three things the hydrator needs are not public there:

- which topics the client tracks metadata for, and a forced metadata refresh (the partitions
  of every topic must be known before anything is assigned);
- the per-partition fetch size, fixed at construction, which must shrink once a view is live
  (prefetch buffers count against the sidecar's memory limit);
- records without aiokafka's per-record ``ConsumerRecord``: building that dataclass (eleven
  fields, a headers tuple, two ``len`` calls) was the largest single cost of a bootstrap, more
  than decoding the JSON. A consumer given :data:`LIGHT_RECORDS` as its value deserializer
  yields :class:`KafkaRecord` tuples instead (everything the hydrator reads of a record), and
  every other consumer in the process keeps aiokafka's records;
- a fetch in flight while the last one is consumed (:class:`BootstrapFetcher`). aiokafka's
  fetcher asks a broker again only once every buffered partition of that broker is drained,
  so a bootstrap waited on the broker after each buffer (about 30% of its wall time, idle);
- topic IDs. A topic deleted and created again under the same name starts its offsets at 0
  again, so stored positions can fall inside the new topic's range and look resumable;
  resuming would mix the old topic's keys with part of the new one's. Since Kafka 2.8 every
  topic has a UUID, returned by Metadata v10 and later, but aiokafka speaks Metadata up to v5
  only: the v12 request and response are defined here, from aiokafka's own protocol types,
  and sent over the consumer's connection.

``tests/unit/hydrator/test_hydrator_kafka_internals.py`` fails loudly when an aiokafka upgrade
changes any of these.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any, NamedTuple, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.errors import (
    CorruptRecordException,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.types import (
    AbstractType,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords


class KafkaRecord(NamedTuple):
    """One Kafka record as the hydrator reads it (a :class:`~sidecar_hydrator.records.RecordLike`).

    A tuple, built in one ``tuple.__new__`` call: several times cheaper than aiokafka's
    ``ConsumerRecord`` dataclass, which is built once per record on the bootstrap path.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def _light_records(value: bytes | None) -> bytes | None:
    """The marker of consumers that yield :class:`KafkaRecord`; never called on a record."""
    return value


#: Pass as ``value_deserializer`` to an ``AIOKafkaConsumer`` to get :class:`KafkaRecord` s.
LIGHT_RECORDS = _light_records

_STOCK_CONSUMER_RECORD = PartitionRecords._consumer_record
_new_tuple = tuple.__new__


def _consumer_record(self: Any, tp: Any, record: Any) -> Any:
    """``PartitionRecords._consumer_record``, light for consumers marked with
    :data:`LIGHT_RECORDS`. Aborted transactions, control batches and offsets are handled before
    this is called, so which records come out, and the consumer's position, do not change."""
    if self._value_deserializer is not _light_records:
        return _STOCK_CONSUMER_RECORD(self, tp, record)
    return _new_tuple(
        KafkaRecord,
        (tp.topic, tp.partition, record.offset, record.timestamp, record.key, record.value),
    )


PartitionRecords._consumer_record = _consumer_record


#: The all-zero UUID: what brokers answer for a topic without an ID (pre-2.8 metadata).
ZERO_TOPIC_ID = str(uuid.UUID(int=0))


class _Uuid(AbstractType[str]):  # type: ignore[misc]  # aiokafka is untyped
    """Kafka's UUID: 16 bytes, big-endian."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        return uuid.UUID(value).bytes

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return str(uuid.UUID(bytes=raw))


class MetadataResponse_v12(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 12
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", _Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class MetadataRequest_v12(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 12
    RESPONSE_TYPE = MetadataResponse_v12
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", _Uuid),
                ("name", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


_Struct: TypeAlias = MetadataRequest_v12


class TopicIdsRequest(Request[_Struct]):  # type: ignore[misc]
    """Metadata v12 for the named topics, never creating them."""

    API_KEY = 3

    def __init__(self, topics: Iterable[str]) -> None:
        self._topics = list(topics)

    def build(self, request_struct_class: type[_Struct]) -> _Struct:
        return request_struct_class(
            [(ZERO_TOPIC_ID, name, {}) for name in self._topics], False, False, {}
        )


def parse_topic_ids(response: Any) -> dict[str, str]:
    """Topic name -> ID from a v12 response; topics with an error or no ID are left out."""
    ids: dict[str, str] = {}
    for error_code, name, topic_id, *_ in response.topics:
        if error_code == 0 and name is not None and topic_id != ZERO_TOPIC_ID:
            ids[name] = topic_id
    return ids


async def fetch_topic_ids(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> dict[str, str]:
    """The current ID of each topic that exists (brokers before 2.8 give none: ``{}``).

    Raises :class:`KafkaError` when no broker answers, like any other Kafka call here.
    """
    client = consumer._client
    node_id = client.get_random_node()
    if node_id is None:
        raise NodeNotReadyError("no broker known to ask for topic IDs")
    try:
        response = await client.send(node_id, TopicIdsRequest(topics))
    except (IncompatibleBrokerVersion, NotImplementedError):
        return {}  # a broker without topic IDs: positions are all there is to go by
    return parse_topic_ids(response)


async def track_topics(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> None:
    """Make the client fetch metadata for ``topics`` (it only does for topics it tracks, and
    ``assign()`` would track them only once their partitions are known)."""
    await consumer._client.set_topics(list(topics))


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch cluster metadata now (a topic that was missing may exist by now)."""
    await consumer._client.force_metadata_update()


def set_fetch_bytes(consumer: AIOKafkaConsumer, size: int) -> None:
    """Change the per-partition fetch size of a running consumer: its fetcher reads this
    attribute for every request, so big catch-up fetches can shrink once live."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and hasattr(fetcher, "_max_partition_fetch_bytes"):
        fetcher._max_partition_fetch_bytes = size


def unauthorized_topics(consumer: AIOKafkaConsumer) -> set[str]:
    """Topics the last metadata response refused to describe (TOPIC_AUTHORIZATION_FAILED):
    aiokafka keeps them apart from missing ones, but only on its cluster object."""
    return set(getattr(consumer._client.cluster, "unauthorized_topics", set()))


async def connect_error(
    options: Mapping[str, Any], *, timeout_ms: int = 5000
) -> BaseException | None:
    """Why a consumer with ``options`` could not bootstrap, or ``None`` if a broker answers.

    aiokafka's ``start()`` turns every bootstrap failure into one "Unable to bootstrap"
    error, logging the cause (refused SASL credentials, a TLS handshake, a refused
    connection) and dropping it; the cause is what a user must fix. One connection per
    bootstrap server, as the client's own bootstrap makes them, keeps it: the first error
    that is not a plain connection failure wins, since it says more.
    """
    first: BaseException | None = None
    for server in options["bootstrap_servers"]:
        host, _, port = str(server).rpartition(":")
        try:
            conn = await create_conn(
                host,
                int(port),
                client_id=options.get("client_id", "aiokafka"),
                request_timeout_ms=timeout_ms,
                ssl_context=options.get("ssl_context"),
                security_protocol=options.get("security_protocol", "PLAINTEXT"),
                sasl_mechanism=options.get("sasl_mechanism", "PLAIN"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
        except (OSError, TimeoutError, KafkaError) as exc:
            if not isinstance(exc, KafkaConnectionError | OSError | TimeoutError) or (
                isinstance(exc, ssl.SSLError)
            ):
                return exc
            first = first or exc
            continue
        conn.close()
        return None
    return first


class HandOver(Exception):
    """The :class:`BootstrapFetcher` met what only aiokafka's own fetcher handles (a partition
    error, a broker that does not answer, a leader unknown, a record too large to fetch): its
    positions go to the consumer, which fetches from there and deals with it as it always has.
    """


#: Records unpacked at once from one batch: a compressed batch may hold a hundred thousand.
UNPACK_CHUNK = 4096


class PartitionBatches:
    """One partition's record batches of one fetch response, unpacked a chunk at a time.

    What ``PartitionRecords._unpack_records`` yields, filtered as it filters (read_committed:
    the batches of aborted transactions, and control batches, are skipped, their offsets
    passed), but up to ``chunk`` records of a batch built in one comprehension instead of one
    generator step and one ``_consumer_record`` call per record. Chunks keep memory bounded:
    a response's records as tuples would take several times its bytes.
    """

    __slots__ = (
        "_aborted", "_aborted_producers", "_batches", "_check_crcs", "_chunk", "_closing",
        "_current", "_cursor", "_open", "_open_end", "_partition", "_read_committed",
        "_skip_below", "_topic", "next_fetch_offset",
    )  # fmt: skip

    def __init__(
        self,
        tp: TopicPartition,
        batches: Iterable[Any],
        *,
        aborted_transactions: Iterable[tuple[int, int]] | None,
        fetch_offset: int,
        read_committed: bool,
        check_crcs: bool,
        chunk: int = UNPACK_CHUNK,
    ) -> None:
        self._topic: str = tp.topic
        self._partition: int = tp.partition
        self._batches = deque(batches)
        #: (producer id, first offset), by first offset: the transactions that aborted.
        self._aborted = deque(sorted(aborted_transactions or (), key=lambda t: t[1]))
        self._aborted_producers: set[int] = set()
        self._read_committed = read_committed
        self._check_crcs = check_crcs
        self._chunk = chunk
        self._current: list[KafkaRecord] = []
        self._cursor = 0
        #: The batch being unpacked (its records iterator), where it ends, and the offset
        #: below which its records were read already (the fetch position fell inside it).
        self._open: Any = None
        self._closing = False
        self._open_end = fetch_offset
        self._skip_below: int | None = None
        #: The offset to read next: past every record taken, and past every batch that holds
        #: nothing more to take.
        self.next_fetch_offset = fetch_offset

    def take(self, most: int) -> list[KafkaRecord]:
        """Up to ``most`` records, in order; ``[]`` once drained."""
        taken: list[KafkaRecord] = []
        while most > 0:
            if self._cursor >= len(self._current) and not self._unpack_next():
                break
            chunk = self._current[self._cursor : self._cursor + most]
            self._cursor += len(chunk)
            most -= len(chunk)
            taken += chunk
            self.next_fetch_offset = chunk[-1].offset + 1
        return taken

    def _unpack_next(self) -> bool:
        """The next records to hand out, from the open batch or the next one with any, as
        ``PartitionRecords`` filters batches."""
        self._current, self._cursor = [], 0
        while True:
            if self._open is not None:
                # map(next, ...): any C-level consumer calls iter() again, which aiokafka's
                # batch refuses; and no next() once it raised StopIteration (it reads on).
                topic, partition = self._topic, self._partition
                records = [
                    _new_tuple(
                        KafkaRecord, (topic, partition, r.offset, r.timestamp, r.key, r.value)
                    )
                    for r in map(next, itertools.repeat(self._open, self._chunk))
                ]
                if len(records) < self._chunk:
                    self._open, self._closing = None, True
                below = self._skip_below
                if below is not None and records and records[0].offset < below:
                    records = [r for r in records if r.offset >= below]
                if records:
                    self._current = records
                    return True
                continue  # the batch's next records, or past it
            if self._closing:
                # Past the batch, whose last offsets may have been compacted away.
                self.next_fetch_offset, self._closing = self._open_end, False
            if not self._batches:
                return False
            batch = self._batches.popleft()
            if self._check_crcs and not batch.validate_crc():
                raise CorruptRecordException(f"Invalid CRC - {self._topic}-{self._partition}")
            if self._read_committed and batch.producer_id is not None:
                aborted = self._aborted
                while aborted and aborted[0][1] <= batch.base_offset:
                    self._aborted_producers.add(aborted.popleft()[0])
                if batch.is_control_batch and _is_abort_marker(batch):
                    # discard: Kafka may send an abort marker for an otherwise empty partition
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            self._open, self._open_end = iter(batch), batch.next_offset
            # A batch the position falls inside of: its records before it were read.
            position = self.next_fetch_offset
            self._skip_below = position if batch.base_offset < position else None


def _is_abort_marker(control_batch: Any) -> bool:
    """``PartitionRecords._contains_abort_marker``: a control batch's first record says."""
    try:
        control_record = next(control_batch)
    except StopIteration:
        raise KafkaError("Control batch did not contain any records") from None
    return bool(ControlRecord.parse(control_record.key) == ABORT_MARKER)


class _Fetched(NamedTuple):
    """One partition of a fetch response: its records, and the end the broker reported."""

    records: PartitionBatches | None
    next_fetch: int
    end: int
    reported_ms: float


class BootstrapFetcher:
    """Reads a consumer's assigned partitions with one fetch always in flight.

    aiokafka sends a broker the next fetch only once every partition it buffered for that
    broker is drained, so a bootstrap alternated between decoding and waiting on the broker.
    Here the next request, from the end of the last response's record batches, is sent as
    soon as that response is taken, and travels while it is decoded and written. Each
    request asks for half the consumer's per-partition fetch size: one response in use and
    one in flight hold what aiokafka's single buffer held.

    Records come out of :class:`PartitionBatches`, given the response's aborted transactions:
    aborted batches and control batches are dropped and positions move past them as aiokafka
    does it for every other consumer (read_committed is kept as is). The consumer's
    partitions must be paused meanwhile, so that its fetcher sends nothing.
    Anything unusual raises :class:`HandOver`; :attr:`positions` then say where the
    consumer must go on.
    """

    def __init__(self, consumer: AIOKafkaConsumer, *, starts: Mapping[TopicPartition, int]) -> None:
        fetcher = consumer._fetcher
        self._client = consumer._client
        self._max_wait_ms: int = fetcher._fetch_max_wait_ms
        self._min_bytes: int = fetcher._fetch_min_bytes
        self._max_bytes: int = fetcher._fetch_max_bytes
        self._isolation_level: int = fetcher._isolation_level
        self._check_crcs: bool = fetcher._check_crcs
        self._partition_bytes = max(1, fetcher._max_partition_fetch_bytes // 2)
        #: Per partition, the next offset to hand out (records handed out are consumed).
        self.positions: dict[TopicPartition, int] = dict(starts)
        #: Per partition, where the next request starts: past every batch received.
        self._fetch_from: dict[TopicPartition, int] = dict(starts)
        #: Per partition, the end as the last response taken reported it (read_committed: the
        #: last stable offset) and when it was received (ms since the epoch).
        self.ends: dict[TopicPartition, int] = {}
        self.reported_ms: dict[TopicPartition, float] = {}
        self._serving: dict[TopicPartition, PartitionBatches] = {}
        self._next: asyncio.Task[dict[TopicPartition, _Fetched]] | None = None
        self._failed: HandOver | None = None

    async def getmany(
        self, *, max_records: int, timeout_ms: int
    ) -> dict[TopicPartition, list[KafkaRecord]]:
        """Up to ``max_records`` records, as ``AIOKafkaConsumer.getmany`` returns them; waits
        up to ``timeout_ms`` for a response when none is left to serve."""
        if self._failed is not None:
            raise self._failed
        if not self._serving:
            if self._next is None:
                self._next = asyncio.create_task(self._fetch(dict(self._fetch_from)))
            await asyncio.wait([self._next], timeout=timeout_ms / 1000)
            if not self._next.done():
                return {}
            task, self._next = self._next, None
            self._take(task.result())
            self._next = asyncio.create_task(self._fetch(dict(self._fetch_from)))
            # One loop step: the request goes out now, not after the records served below
            # are decoded.
            await asyncio.sleep(0)
        served: dict[TopicPartition, list[KafkaRecord]] = {}
        for tp, records in list(self._serving.items()):
            try:
                taken = records.take(max_records)
            except KafkaError as exc:  # a corrupt batch: aiokafka fetches it again
                # Records served so far are consumed (their positions moved): they go out
                # first, and the next call hands over.
                self._failed = HandOver(f"{tp}: {exc!r}")
                if served:
                    return served
                raise self._failed from exc
            self.positions[tp] = records.next_fetch_offset
            if len(taken) < max_records:
                del self._serving[tp]  # drained, its trailing markers included
            if taken:
                served[tp] = taken
                max_records -= len(taken)
                if not max_records:
                    break
        return served

    def close(self) -> None:
        """Drop the fetch in flight and whatever was not handed out (``positions`` stay)."""
        if self._next is not None:
            if self._next.done() and not self._next.cancelled():
                self._next.exception()  # retrieved: it is dropped, not lost unseen
            self._next.cancel()
            self._next = None
        self._serving.clear()

    def _take(self, fetched: Mapping[TopicPartition, _Fetched]) -> None:
        for tp, part in fetched.items():
            self.ends[tp] = part.end
            self.reported_ms[tp] = part.reported_ms
            self._fetch_from[tp] = part.next_fetch
            if part.records is not None:
                self._serving[tp] = part.records

    async def _fetch(
        self, fetch_from: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, _Fetched]:
        """One request per partition leader, sent together."""
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        cluster = self._client.cluster
        for tp, offset in fetch_from.items():
            node_id = cluster.leader_for_partition(tp)
            if node_id is None or node_id == -1:
                raise HandOver(f"no leader known for {tp}")
            by_node[node_id][tp.topic].append((tp.partition, offset, self._partition_bytes))
        requests = [
            self._client.send(
                node_id,
                FetchRequest(
                    self._max_wait_ms,
                    self._min_bytes,
                    self._max_bytes,
                    self._isolation_level,
                    list(topics.items()),
                ),
            )
            for node_id, topics in by_node.items()
        ]
        responses: list[Any]
        if len(requests) == 1:
            # Awaited in this task, so that its first step already writes the request.
            try:
                responses = [await requests[0]]
            except KafkaError as exc:
                responses = [exc]
        else:
            responses = await asyncio.gather(*requests, return_exceptions=True)
        fetched: dict[TopicPartition, _Fetched] = {}
        for response in responses:
            if isinstance(response, BaseException):
                if isinstance(response, KafkaError):
                    raise HandOver(f"fetch failed: {response!r}") from response
                raise response
            fetched.update(self._parse(response, fetch_from))
        return fetched

    def _parse(
        self, response: Any, fetch_from: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, _Fetched]:
        """A fetch response's partitions, read as ``Fetcher._proc_fetch_request`` reads them."""
        received_ms = time.time() * 1000
        fetched: dict[TopicPartition, _Fetched] = {}
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *part_data in partitions:
                tp = TopicPartition(topic, partition)
                if error_code != 0:
                    raise HandOver(f"{tp}: error code {error_code}")
                if response.API_VERSION < 4:
                    raise HandOver(f"fetch v{response.API_VERSION} has no read_committed")
                # v4: [lso, aborted, records]; v5-v10: [lso, log_start, aborted, records];
                # v11+: [lso, log_start, aborted, preferred_read_replica, records]
                lso = part_data[0]
                aborted = part_data[2] if response.API_VERSION >= 11 else part_data[-2]
                end = lso if lso is not None and lso >= 0 else highwater
                offset = fetch_from[tp]
                memory = MemoryRecords(part_data[-1])
                batches = []
                try:
                    while memory.has_next():
                        batch = memory.next_batch()
                        if batch is None:
                            break
                        if not isinstance(batch, DefaultRecordBatch):
                            raise HandOver(f"{tp}: a message set older than v2")
                        batches.append(batch)
                except KafkaError as exc:  # a corrupt response: aiokafka fetches it again
                    raise HandOver(f"{tp}: {exc!r}") from exc
                if not batches:
                    if memory.size_in_bytes() > 0:
                        raise HandOver(f"{tp}: a record larger than the fetch size at {offset}")
                    fetched[tp] = _Fetched(None, offset, end, received_ms)
                    continue
                records = PartitionBatches(
                    tp,
                    batches,
                    aborted_transactions=aborted,
                    fetch_offset=offset,
                    read_committed=self._isolation_level == READ_COMMITTED,
                    check_crcs=self._check_crcs,
                )
                fetched[tp] = _Fetched(records, batches[-1].next_offset, end, received_ms)
        return fetched
