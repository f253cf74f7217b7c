"""Topic identity: the Metadata v12 encoding the hydrator adds to aiokafka, and the private
aiokafka attributes it relies on (an upgrade that changes them must fail here, loudly)."""

from __future__ import annotations

import inspect
import itertools
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
    fetcher_init = inspect.getsource(Fetcher.__init__)
    for name in (
        "_max_partition_fetch_bytes", "_fetch_max_wait_ms", "_fetch_min_bytes",
        "_fetch_max_bytes", "_isolation_level", "_check_crcs",
    ):  # fmt: skip
        assert f"self.{name} = " in fetcher_init, name


def test_the_filtering_partition_batches_mirror_is_aiokafkas() -> None:
    """PartitionBatches re-does PartitionRecords._unpack_records batch-wise: if aiokafka
    changes how it filters aborted transactions and control batches, this fails (and the
    batch-wise copy must follow)."""
    unpack = inspect.getsource(PartitionRecords._unpack_records)
    for step in (
        "self._isolation_level == READ_COMMITTED",
        "and next_batch.producer_id is not None",
        "self._consume_aborted_up_to(next_batch.base_offset)",
        "next_batch.is_control_batch",
        "and self._contains_abort_marker(next_batch)",
        "self._aborted_producers.discard(next_batch.producer_id)",
        "next_batch.is_transactional",
        "and next_batch.producer_id in self._aborted_producers",
        "if record.offset < self.next_fetch_offset:",
        "self.next_fetch_offset = next_batch.next_offset",
    ):
        assert step in unpack, step
    aborted_up_to = inspect.getsource(PartitionRecords._consume_aborted_up_to)
    assert "if first_offset <= batch_offset:" in aborted_up_to


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


def _at(
    base: int,
    records: list[tuple[int, bytes | None, bytes | None]],
    *,
    producer_id: int = -1,
    control: bool = False,
) -> bytes:
    """A batch whose base offset is ``base`` (record offsets relative to it), of
    ``producer_id`` (transactional unless -1); ``control``: a control batch, its records'
    keys markers. The builder starts every batch at 0 and has no control flag: both are set
    by hand (neither is covered by the CRC, which is not checked here)."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=int(producer_id >= 0),
        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1, batch_size=2**20,
    )  # fmt: skip
    for delta, key, value in records:
        builder.append(delta, timestamp=1_700_000_000_000 + base + delta, key=key, value=value,
                       headers=[])  # fmt: skip
    built = bytearray(builder.build())
    built[0:8] = base.to_bytes(8, "big")
    if control:
        built[22] |= 0x20  # attributes (int16 at byte 21): bit 5, the control batch
    return bytes(built)


ABORT = b"\x00\x00\x00\x00"  # control record key: version 0, type 0 (abort)
COMMIT = b"\x00\x00\x00\x01"


def _stream() -> tuple[list[bytes], list[tuple[int, int]]]:
    """Plain batches, a committed and an aborted transaction interleaved, their markers,
    and a gap left by compaction; with the aborted transactions a broker would report."""
    batches = [
        _at(0, [(0, b"a", b"1"), (1, b"b", b"2"), (2, b"c", b"3")]),
        _at(3, [(0, b"x", b"aborted")], producer_id=7),
        _at(4, [(0, b"d", b"committed")], producer_id=8),
        _at(5, [(0, b"e", None)]),  # a tombstone
        _at(6, [(0, b"y", b"aborted")], producer_id=7),
        _at(7, [(0, COMMIT, b"")], producer_id=8, control=True),
        _at(8, [(0, ABORT, b"")], producer_id=7, control=True),
        _at(9, [(0, b"f", b"4"), (3, b"g", b"5")]),  # 10, 11 compacted away
        _at(13, [(0, b"z", b"later")], producer_id=7),  # producer 7 again, committed
        _at(14, [(0, COMMIT, b"")], producer_id=7, control=True),
    ]
    return batches, [(7, 3)]


def _batches_of(data: bytes) -> list[object]:
    from aiokafka.record.memory_records import MemoryRecords

    memory = MemoryRecords(data)
    found = []
    while memory.has_next():
        found.append(memory.next_batch())
    return found


def test_partition_batches_serve_what_aiokafka_serves_at_every_take_size() -> None:
    """The bootstrap fetcher's batch unpacking against aiokafka's PartitionRecords, from
    every fetch offset (inside a batch too: a broker's response starts at the batch holding
    it), in takes of every size and unpacked in chunks of every size: the same records,
    aborted ones and markers dropped, and
    the same position once drained."""
    from aiokafka.record.memory_records import MemoryRecords

    from sidecar_hydrator.kafka_internals import PartitionBatches

    batches, aborted = _stream()
    bases = [_batches_of(batch)[0].base_offset for batch in batches]  # type: ignore[attr-defined]
    tp = TopicPartition("t", 3)
    for fetch_offset in range(15):
        data = b"".join(batches[max(i for i, base in enumerate(bases) if base <= fetch_offset) :])
        stock = PartitionRecords(
            tp, MemoryRecords(data), aborted, fetch_offset, None, LIGHT_RECORDS, False,
            READ_COMMITTED,
        )  # fmt: skip
        expected = list(stock)
        assert all(r.offset >= fetch_offset for r in expected)
        for size, chunk in itertools.product((1, 2, 3, 100), (1, 2, 4096)):
            ours = PartitionBatches(
                tp, _batches_of(data), aborted_transactions=aborted, fetch_offset=fetch_offset,
                read_committed=True, check_crcs=False, chunk=chunk,
            )  # fmt: skip
            served: list[KafkaRecord] = []
            while taken := ours.take(size):
                assert len(taken) <= size
                assert ours.next_fetch_offset > taken[-1].offset
                served += taken
            assert served == expected, (fetch_offset, size, chunk)
            assert ours.next_fetch_offset == stock.next_fetch_offset == 15
        if fetch_offset == 0:
            assert [(r.offset, r.key, r.value) for r in expected] == [
                (0, b"a", b"1"), (1, b"b", b"2"), (2, b"c", b"3"), (4, b"d", b"committed"),
                (5, b"e", None), (9, b"f", b"4"), (12, b"g", b"5"), (13, b"z", b"later"),
            ]  # fmt: skip
