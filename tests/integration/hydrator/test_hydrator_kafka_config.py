"""Kafka-side configuration problems are Kafka errors: reported as such, retried, and never a
reason to rebuild (or even touch) the store; and a stop while Kafka is not there is quiet."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar_hydrator.config import KafkaConnection
from sidecar_state_stack.kafka_broker import KafkaBroker
from sidecar_state_stack.redis_server import RedisServer
from tests.integration.hydrator.support import (
    KafkaPod,
    http_get,
    make_config,
    running,
    sample,
    serving,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("ca", ["absent", "garbage"])
async def test_tls_settings_that_do_not_work_are_kafka_errors_and_never_rebuilds(
    ca: str, tmp_path: Path, pod: KafkaPod, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await pod.topic_with([(b"a", b"1")])
    ca_file = tmp_path / "ca.crt"
    if ca == "garbage":
        ca_file.write_text("not a certificate\n")
    # The broker speaks plaintext: with the system's CAs (no ca.crt in the Secret) the TLS
    # handshake fails, which is the broker being unreachable over TLS, nothing else.
    tls = KafkaConnection(
        bootstrap_servers=(pod.broker.bootstrap_servers,),
        security_protocol="SSL",
        ca_file=str(ca_file),
    )
    config = pod.config(topic, format="raw", kafka=tls)
    caplog.set_level(logging.INFO, logger="sidecar_hydrator")
    async with running(config) as hydrator:
        await asyncio.sleep(4.0)
        rebuilds = hydrator.metrics.registry.get_sample_value(
            "sidecar_state_hydrator_rebuilds_total", {"reason": "empty"}
        )
        assert rebuilds == 1  # the first start's, and no more
        assert not [r for r in caplog.records if "Redis failed" in r.getMessage()]
        kind = "config" if ca == "garbage" else "unreachable"
        assert sample(hydrator, "kafka_errors_total", binding="b", kind=kind) >= 1
        if ca == "garbage":
            said = [r for r in caplog.records if "cannot be set up" in r.getMessage()]
            assert len(said) == 1 and "TLS settings" in said[0].getMessage()
        assert not hydrator.hydrated
    meta = await pod.app.hgetall("sidecar-state:meta")
    assert meta.get(b"hydrated") == b"0"


async def test_a_stop_before_the_first_hydration_is_quiet_and_reports_no_made_up_staleness(
    kafka_broker: KafkaBroker,
    unique_topic_name: Callable[[str], str],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(
        broker=kafka_broker,
        redis=redis_server,
        topics=[unique_topic_name("never-created")],
        format="raw",
    )
    caplog.set_level(logging.WARNING)
    async with serving(config) as (hydrator, port):
        await asyncio.sleep(1.5)  # waiting for the topic
        assert not hydrator.started
        # Never hydrated: staleness and last-apply age are unknown, so they have no sample
        # (a -1 would read as "fresh" to a `> 60` alert).
        status, body = await http_get(port, "/metrics")
        assert status == 200
        samples = [line for line in body.decode().splitlines() if not line.startswith("#")]
        assert not [s for s in samples if s.startswith("sidecar_state_hydrator_staleness_")]
        assert not [s for s in samples if "last_apply_age" in s]
        assert "sidecar_state_hydrator_hydrated 0.0" in samples
    gc.collect()  # an unretrieved future's error is logged when it is collected
    await asyncio.sleep(0.1)
    # aiokafka's own complaints are silenced by the sidecar's process (main.py).
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and not r.name.startswith("aiokafka")
    ]
    assert not errors, [r.getMessage() for r in errors]
