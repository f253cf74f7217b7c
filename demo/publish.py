"""Publish a feature-flag change to Kafka: ``python -m demo.publish new-ui-layout true``.

Why a script rather than ``kafka-console-producer``: the machines have no Kafka CLI, and the
record format is the contract of the demo's StateBinding (``format: json``, key from ``id``,
value from ``enabled``, Redis key ``flag:<id>``); writing it here keeps that in one place. The
bootstrap address comes from ``--bootstrap`` or ``$SIDECAR_STATE_DEMO_BOOTSTRAP`` (``make demo``
prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

TOPIC = "feature-flags"


def flag_record(flag: str, enabled: bool) -> bytes:
    """The JSON value the demo binding maps to ``flag:<id>`` = ``enabled``."""
    return json.dumps({"id": flag, "enabled": enabled}).encode()


async def publish_many(
    bootstrap: str, records: Sequence[tuple[str, bytes]], *, topic: str = TOPIC
) -> float:
    """Send (key, value) records, wait for every ack; return the wall-clock time of the last ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k.encode(), value=v) for k, v in records]
        for future in futures:
            await future
        return time.time()
    finally:
        await producer.stop()


async def _ensure_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


def ensure_topic(bootstrap: str, topic: str = TOPIC) -> None:
    """Create the topic if missing (the local broker does not auto-create topics)."""
    asyncio.run(_ensure_topic(bootstrap, topic))


def publish(bootstrap: str, flag: str, enabled: bool, *, topic: str = TOPIC) -> float:
    """Publish one flag change; return the wall-clock time Kafka acknowledged it."""
    return asyncio.run(publish_many(bootstrap, [(flag, flag_record(flag, enabled))], topic=topic))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.publish", description=__doc__)
    parser.add_argument("flag", help="flag id, e.g. new-ui-layout")
    parser.add_argument("value", choices=["true", "false"])
    parser.add_argument("--bootstrap", default=os.environ.get("SIDECAR_STATE_DEMO_BOOTSTRAP"))
    parser.add_argument("--topic", default=TOPIC)
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error("give --bootstrap HOST:PORT or set SIDECAR_STATE_DEMO_BOOTSTRAP")
    acked = publish(args.bootstrap, args.flag, args.value == "true", topic=args.topic)
    print(f"published {args.flag}={args.value} to {args.topic} (acked {acked:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
