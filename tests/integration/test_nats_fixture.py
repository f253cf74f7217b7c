"""The nats-server fixture is a real JetStream server whose streams survive a restart."""

from __future__ import annotations

import nats

from sidecar_state_stack.nats_server import NatsServer


async def test_kv_survives_a_server_restart(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().create_key_value(bucket="fixture")
    revision = await kv.put("a", b"1")
    await nc.close()
    nats_server.restart()
    nc = await nats.connect(nats_server.url)
    entry = await (await nc.jetstream().key_value("fixture")).get("a")
    await nc.close()
    assert (entry.value, entry.revision) == (b"1", revision)
