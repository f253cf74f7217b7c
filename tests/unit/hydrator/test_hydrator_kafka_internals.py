"""Topic identity: the Metadata v12 encoding the hydrator adds to aiokafka, and the private
aiokafka attributes it relies on (an upgrade that changes them must fail here, loudly)."""

from __future__ import annotations

import inspect
import uuid
from io import BytesIO

from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import READ_COMMITTED, Fetcher, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, TopicPartition

from sidecar_hydrator import kafka_internals
from sidecar_hydrator.kafka_internals import (
    LIGHT_RECORDS,
    ZERO_TOPIC_ID,
    KafkaRecord,
    MetadataRequest_v12,
    MetadataResponse_v12,
    TopicIdsRequest,
    parse_topic_ids,
)
from sidecar_hydrator.source import recreated


def test_the_request_is_metadata_v12_for_the_named_topics_without_creating_them() -> None:
    struct = TopicIdsRequest(["a", "b"]).prepare({3: (0, 13)})
    assert isinstance(struct, MetadataRequest_v12)
    encoded = struct.encode()
    # compact array of 2 (varint 3), then the zero UUID and "a" as a compact string (2, "a")
    assert encoded[:1] == b"\x03" and encoded[1:17] == bytes(16) and encoded[17:19] == b"\x02a"
    assert encoded[-3:] == b"\x00\x00\x00"  # no auto-creation, no authorized ops, no tags


def test_a_response_yields_the_ids_of_the_topics_that_exist() -> None:
    topic_id = str(uuid.uuid4())
    response = MetadataResponse_v12(
        0,
        [(1, "h", 9092, None, {})],
        "cluster",
        1,
        [
            (0, "flags", topic_id, False, [], 0, {}),
            (3, "missing", ZERO_TOPIC_ID, False, [], 0, {}),
        ],
        {},
    )
    decoded = MetadataResponse_v12.decode(BytesIO(response.encode()))
    assert parse_topic_ids(decoded) == {"flags": topic_id}


def test_recreated_compares_only_topics_known_on_both_sides() -> None:
    assert recreated({"a": "1", "b": "2"}, {"a": "1", "b": "3"}) == ["b"]
    assert recreated({"a": "1"}, {}) == []  # deleted, not (yet) re-created: nothing to say
    assert recreated({}, {"a": "1"}) == []


def test_the_private_aiokafka_attributes_the_hydrator_uses_still_exist() -> None:
    consumer_init = inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._client = AIOKafkaClient(" in consumer_init
    assert "self._fetcher" in inspect.getsource(AIOKafkaConsumer)
    for name in ("send", "get_random_node", "set_topics", "force_metadata_update"):
        assert callable(getattr(AIOKafkaClient, name)), name
    assert "self._max_partition_fetch_bytes" in inspect.getsource(Fetcher.__init__)


def _partition_records(*, value_deserializer: object, batches: list[bytes]) -> PartitionRecords:
    from aiokafka.record.memory_records import MemoryRecords

    return PartitionRecords(
        TopicPartition("t", 3), MemoryRecords(b"".join(batches)), [], 0,
        None, value_deserializer, False, READ_COMMITTED,
    )  # fmt: skip


def _batch(records: list[tuple[int, bytes | None, bytes | None]], **kwargs: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=2**20, **kwargs,
    )  # fmt: skip
    for offset, key, value in records:
        builder.append(offset, timestamp=1_700_000_000_000 + offset, key=key, value=value,
                       headers=[("h", b"x")])  # fmt: skip
    return bytes(builder.build())


def test_a_light_consumer_yields_the_same_records_as_tuples() -> None:
    """Marked with LIGHT_RECORDS, aiokafka's own batch parsing yields KafkaRecord tuples that
    carry what a ConsumerRecord would (tombstones and key-less records included); any other
    consumer in the process still gets ConsumerRecords."""
    batch = _batch([(0, b"k0", b'{"a":1}'), (1, None, b"v"), (2, b"k2", None)])
    stock = list(_partition_records(value_deserializer=None, batches=[batch]))
    light = list(_partition_records(value_deserializer=LIGHT_RECORDS, batches=[batch]))

    assert all(isinstance(r, ConsumerRecord) for r in stock)
    assert all(type(r) is KafkaRecord for r in light)
    fields = ("topic", "partition", "offset", "timestamp", "key", "value")
    assert [tuple(getattr(r, f) for f in fields) for r in stock] == [tuple(r) for r in light]
    assert [r.offset for r in light] == [0, 1, 2] and light[2].value is None


def test_light_records_keep_the_fetch_position_past_what_was_read() -> None:
    records = _partition_records(value_deserializer=LIGHT_RECORDS, batches=[_batch(
        [(0, b"a", b"1"), (1, b"b", b"2")]), _batch([(2, b"c", b"3")])])  # fmt: skip
    assert [r.key for r in records] == [b"a", b"b", b"c"]
    assert records.next_fetch_offset == 3


def test_the_record_hook_is_the_one_aiokafka_calls() -> None:
    """aiokafka builds each record in PartitionRecords._consumer_record(tp, record): if an
    upgrade renames or inlines it, the light records silently stop (this fails instead)."""
    source = inspect.getsource(PartitionRecords._unpack_records)
    assert "self._consumer_record(tp, record)" in source
    assert PartitionRecords._consumer_record is kafka_internals._consumer_record
    assert "_value_deserializer" in inspect.getsource(kafka_internals._STOCK_CONSUMER_RECORD)
