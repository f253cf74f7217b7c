"""Topic identity: the Metadata v12 encoding the hydrator adds to aiokafka, and the private
aiokafka attributes it relies on (an upgrade that changes them must fail here, loudly)."""

from __future__ import annotations

import inspect
import uuid
from io import BytesIO

from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher

from sidecar_hydrator.kafka_internals import (
    ZERO_TOPIC_ID,
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
