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

import ssl
import uuid
from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any, NamedTuple, TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.conn import create_conn
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
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
