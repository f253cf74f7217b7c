"""aiokafka's codecs (cramjam) load at the first compressed batch, not at the hydrator's start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from sidecar_hydrator.config import HydratorConfig
from sidecar_hydrator.hydrator import Hydrator
config = {"bindings": [{"name": "k", "kafka": {"bootstrap_servers": ["127.0.0.1:1"]},
                        "topics": ["t"]}]}
Hydrator(HydratorConfig.parse(config))
import aiokafka.codec
before = aiokafka.codec.cramjam.loaded
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
codec = getattr(DefaultRecordBatch, "CODEC_" + sys.argv[1])
builder = DefaultRecordBatchBuilder(
    magic=2, compression_type=codec, is_transactional=0, producer_id=-1, producer_epoch=-1,
    base_sequence=-1, batch_size=2**20)
for offset in range(3):
    builder.append(offset, timestamp=1, key=b"k%d" % offset, value=b"v" * 500, headers=[])
batch = bytes(builder.build())
records = PartitionRecords(TopicPartition("t", 0), MemoryRecords(batch), [], 0, None, None,
                           False, 0)
values = [(r.key.decode(), len(r.value)) for r in records]
print(json.dumps({"before": before, "after": aiokafka.codec.cramjam.loaded,
                  "compressed": len(batch) < 1500, "values": values}))
"""


@pytest.mark.parametrize("codec", ["LZ4", "ZSTD", "SNAPPY"])
def test_codecs_load_at_the_first_compressed_batch_and_work(codec: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, codec], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout  # fmt: skip
    seen = json.loads(out)
    assert seen["before"] is False  # a hydrator built for Kafka has not loaded cramjam
    assert seen["after"] is True and seen["compressed"]
    assert seen["values"] == [["k0", 500], ["k1", 500], ["k2", 500]]
