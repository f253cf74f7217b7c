"""Record -> key mapping against a real broker and Redis: what the app reads after JSON
tombstones, Debezium truncates, keys, envelopes and logical types, and oversized keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from sidecar_hydrator.batch import Batch
from sidecar_hydrator.config import KeyMapping, replace
from sidecar_hydrator.hydrator import Hydrator
from sidecar_hydrator.records import table_index_key
from sidecar_hydrator.store import Store
from sidecar_state_stack.redis_server import RedisServer, sidecar_redis_config
from tests.integration.hydrator.support import (
    MIB,
    KafkaPod,
    eventually,
    running,
    running_hydrated,
    sample,
    view,
    view_is,
)

pytestmark = pytest.mark.timeout(60)


def js(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def row_event(
    op: str, table: str, *, key: Any, row: Any, schema: Any = None
) -> tuple[bytes, bytes]:
    """A Debezium PostgreSQL change event of ``shop.public.<table>`` (JSON, no schemas)."""
    source = {"connector": "postgresql", "db": "shop", "schema": "public", "table": table}
    payload = {
        "op": op,
        "before": row if op == "d" else None,
        "after": None if op == "d" else row,
        "source": source,
        "ts_ms": 1,
    }
    value = payload if schema is None else {"schema": schema, "payload": payload}
    return js(key), js(value)


def truncate_event(table: str) -> tuple[None, bytes]:
    """Debezium's truncate: no key (a compacted topic refuses it), no rows."""
    source = {"connector": "postgresql", "db": "shop", "schema": "public", "table": table}
    return None, js({"op": "t", "before": None, "after": None, "source": source, "ts_ms": 1})


async def test_json_tombstone_deletes_what_its_set_created_with_json_serialized_keys(
    pod: KafkaPod,
) -> None:
    topic = pod.new_topic()
    # A producer with a JSON key serializer: the key of id "u1" is the 4 bytes "u1" quoted.
    await pod.produce(
        topic,
        [
            (js("u1"), js({"id": "u1", "name": "Ann"})),
            (js("u2"), js({"id": "u2", "name": "Bob"})),
            (js({"id": "u3"}), js({"id": "u3", "name": "Cy"})),
            (js("u1"), None),  # bootstrap: the tombstone comes in the same read
        ],
    )
    config = pod.config(topic, prefix="user:", key_field="id")
    async with running_hydrated(config) as hydrator:
        assert set(await view(pod.app, b"user:")) == {b"user:u2", b"user:u3"}

        await pod.produce(topic, [(js("u2"), None), (js({"id": "u3"}), None)])
        await eventually(
            lambda: view_is(pod.app, {}, prefix=b"user:"), what="live tombstones delete the sets"
        )
        assert sample(hydrator, "bad_records_total", binding="b", kind="missing_key") == 0


async def test_debezium_truncate_removes_that_tables_rows_of_that_binding_only(
    pod: KafkaPod,
) -> None:
    # Truncates have no key, so they only arrive on a topic that is not compacted.
    topic = pod.new_topic(compacted=False)
    await pod.produce(
        topic,
        [
            row_event("r", "orders", key={"id": 1}, row={"id": 1, "total": 10}),
            row_event("r", "orders", key={"id": 2}, row={"id": 2, "total": 20}),
            row_event("r", "users", key={"id": 7}, row={"id": 7, "name": "Ann"}),
            truncate_event("orders"),  # during bootstrap, into the spare database
            row_event("c", "orders", key={"id": 3}, row={"id": 3, "total": 30}),
        ],
    )
    orders = pod.config(topic, format="debezium", prefix="o:")
    other = replace(orders.bindings[0], name="mirror", keys=KeyMapping(prefix="m:"))
    config = replace(orders, bindings=(*orders.bindings, other))
    async with running_hydrated(config):
        assert await view(pod.app, b"o:") == {
            b"o:7": b'{"id":7,"name":"Ann"}',
            b"o:3": b'{"id":3,"total":30}',
        }
        await pod.produce(
            topic,
            [
                row_event("c", "orders", key={"id": 4}, row={"id": 4, "total": 40}),
                truncate_event("orders"),  # live, in the served database
                row_event("c", "orders", key={"id": 5}, row={"id": 5, "total": 50}),
            ],
        )
        expected = {b"o:7": b'{"id":7,"name":"Ann"}', b"o:5": b'{"id":5,"total":50}'}
        await eventually(lambda: view_is(pod.app, expected, prefix=b"o:"), what="live truncate")
        # The other binding reads the same table under its own prefix, through a feed of its
        # own (so not in lockstep with the first): it truncated its own copy, and nothing of
        # one binding's truncate reached the other's keys.
        mirrored = {b"m:7": b'{"id":7,"name":"Ann"}', b"m:5": b'{"id":5,"total":50}'}
        await eventually(
            lambda: view_is(pod.app, mirrored, prefix=b"m:"), what="the mirror's live truncate"
        )


async def test_debezium_keys_string_converter_composite_and_mongodb_after(pod: KafkaPod) -> None:
    topic = pod.new_topic()
    mongo_doc = {"_id": {"$oid": "65f0"}, "sku": "lamp"}
    await pod.produce(
        topic,
        [
            # StringConverter keys are not JSON: the row's key field names the entry.
            (b"Struct{sku=desk}", row_event("c", "items", key=None, row={"sku": "desk"})[1]),
            # The MongoDB connector sends the document as a JSON string.
            (js({"sku": "lamp"}), js({"op": "c", "after": json.dumps(mongo_doc), "source": {}})),
            # A logical-decoding message: nothing for the view, but counted.
            (js({"sku": "msg"}), js({"op": "m", "message": {"prefix": "p"}, "source": {}})),
        ],
    )
    composite = pod.new_topic(suffix="composite")
    await pod.produce(
        composite,
        [  # two composite keys that a plain ':' join made into the same Redis key
            row_event("c", "lines", key={"a": "x:y", "b": "z"}, row={"n": 1}),
            row_event("c", "lines", key={"a": "x", "b": "y:z"}, row={"n": 2}),
        ],
    )
    by_sku = pod.config(topic, format="debezium", prefix="i:", key_field="sku")
    by_key = replace(
        by_sku.bindings[0], name="lines", topics=(composite,), keys=KeyMapping(prefix="l:")
    )
    config = replace(by_sku, bindings=(*by_sku.bindings, by_key))
    async with running_hydrated(config) as hydrator:
        assert await view(pod.app, b"i:") == {
            b"i:desk": b'{"sku":"desk"}',
            b"i:lamp": b'{"_id":{"$oid":"65f0"},"sku":"lamp"}',
        }
        assert await view(pod.app, b"l:") == {
            b"l:x\\:y:z": b'{"n":1}',
            b"l:x:y\\:z": b'{"n":2}',
        }
        assert sample(hydrator, "records_ignored_total", binding="b") == 1
        for kind in ("not_json", "bad_envelope", "missing_key"):
            assert sample(hydrator, "bad_records_total", binding="b", kind=kind) == 0, kind


async def test_debezium_connect_logical_types_are_decoded_when_the_schema_is_sent(
    pod: KafkaPod,
) -> None:
    topic = pod.new_topic()
    columns = [
        {"field": "id", "type": "int32"},
        # numeric(10, 2) with decimal.handling.mode=precise (Debezium's default)
        {
            "field": "price",
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": {"scale": "2"},
        },
        # numeric without a scale: the struct the issue saw served as is
        {"field": "weight", "type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
        {"field": "since", "type": "int32", "name": "io.debezium.time.Date"},
        {"field": "updated", "type": "int64", "name": "io.debezium.time.MicroTimestamp"},
    ]
    row_schema = {"type": "struct", "optional": True, "fields": columns}
    schema = {
        "type": "struct",
        "fields": [{**row_schema, "field": "before"}, {**row_schema, "field": "after"}],
    }
    row = {
        "id": 1,
        "price": "AK8=",
        "weight": {"scale": 3, "value": "MDk="},
        "since": 19_723,
        "updated": 1_704_164_645_678_901,
    }
    await pod.produce(topic, [row_event("r", "p", key={"id": 1}, row=row, schema=schema)])
    config = pod.config(topic, format="debezium", prefix="p:")
    async with running_hydrated(config):
        served = await pod.app.get(b"p:1")
        assert served is not None
        assert json.loads(served) == {
            "id": 1,
            "price": "1.75",
            "weight": "12.345",
            "since": "2024-01-01",
            "updated": "2024-01-02T03:04:05.678901",
        }


async def test_a_key_over_the_limit_is_a_bad_record_and_later_records_apply(pod: KafkaPod) -> None:
    topic = pod.new_topic(config={"max.message.bytes": str(8 * MIB)})
    huge = b"k" * (5 * MIB)
    await pod.produce(
        topic,
        [(b"small", b"1"), (huge, b"2"), (b"after", b"3")],
        max_request_size=8 * MIB,
    )
    config = pod.config(topic, format="raw")
    async with running_hydrated(config) as hydrator:
        assert await pod.app.exists(huge) == 0
        assert await pod.app.mget([b"small", b"after"]) == [b"1", b"3"]
        assert sample(hydrator, "bad_records_total", binding="b", kind="key_too_large") == 1


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * MIB)])
async def test_a_truncate_frees_a_full_store(pod: KafkaPod) -> None:
    topic = pod.new_topic(compacted=False)
    blobs = [
        row_event("c", "blobs", key={"id": i}, row={"id": i, "data": "x" * 100_000})
        for i in range(60)  # ~6 MB > 3 MB maxmemory: Redis refuses some of them
    ]
    await pod.produce(topic, blobs)
    config = pod.config(
        topic, format="debezium", prefix="b:", bootstrap_batch_max_keys=5, live_batch_max_keys=5
    )
    async with running(config) as hydrator:
        await eventually(
            lambda: sample(hydrator, "redis_oom_rejections_total") > 0, what="store full"
        )
        await eventually(lambda: _has_keys(pod.app, b"b:"), what="some rows served")
        # A truncate reaching a full store frees it, with more big rows on its heels (whether
        # they share its transaction depends on the fetch; the next test pins that case).
        others = [
            row_event("c", "others", key={"id": 100 + i}, row={"data": "y" * 500_000})
            for i in range(4)
        ]
        await pod.produce(topic, [truncate_event("blobs"), *others])
        blob_keys = {f"b:{i}".encode() for i in range(60)}
        await eventually(
            lambda: _none_of(pod.app, b"b:", blob_keys), what="truncate on a full store"
        )
        await pod.produce(topic, [row_event("c", "notes", key={"id": 1}, row={"n": 1})])
        await eventually(lambda: _has_keys(pod.app, b"b:1"), what="a write after it")


async def _none_of(client: aioredis.Redis, prefix: bytes, keys: set[bytes]) -> bool:
    return not (set(await view(client, prefix)) & keys)


async def _has_keys(client: aioredis.Redis, prefix: bytes) -> bool:
    return bool(await view(client, prefix))


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * MIB)])
async def test_a_truncate_in_a_transaction_a_full_redis_refuses_still_happens(
    redis_server: RedisServer, app_redis: aioredis.Redis
) -> None:
    store = Store(
        socket_path=str(redis_server.socket_path),
        offsets_key="sidecar-state:offsets",
        metadata_key="sidecar-state:meta",
        spare_db=1,
    )
    index = table_index_key(binding="b", table="shop.public.blobs")
    await store.inspect()
    try:
        stored = 0
        while True:  # fill Redis with one table's rows until it refuses more
            rows = {f"b:{stored + i}".encode(): b"x" * 100_000 for i in range(5)}
            batch = Batch(sets=rows, index_of=dict.fromkeys(rows, index))
            result = await store.apply(
                sets=batch.sets, deletes=(), offsets={}, meta={}, commands=batch.commands
            )
            if result.oom_rejected:
                break
            stored += len(rows)
        served = set(await view(app_redis, b"b:"))
        assert len(served) == stored > 0
        assert served <= await app_redis.smembers(index)

        # One batch: the truncate, and another table's row that does not fit.
        truncate = Batch(sets={b"b:other": b"y" * 500_000}, truncates=[index])
        result = await store.apply(
            sets=truncate.sets, deletes=(), offsets={}, meta={}, commands=truncate.commands
        )
        assert result.oom_rejected == 1  # the transaction was refused ...
        assert await view(app_redis, b"b:") == {}  # ... and the truncate happened anyway
        assert await app_redis.exists(index) == 0
    finally:
        await store.close()


#: Debezium rows Redis refuses while it is full: each is bigger than the room left.
_ORDER_ROWS = [{"id": i, "data": "o" * 100_000} for i in range(10)]
_ORDERS = {
    f"b:{row['id']}".encode(): json.dumps(row, separators=(",", ":")).encode()
    for row in _ORDER_ROWS
}


async def _fill_then_refuse_orders(pod: KafkaPod, topic: str, hydrator: Hydrator) -> None:
    """Fill the store (something else's key, grown until Redis refuses it: less than 64 KiB
    left), then produce orders rows and see them refused."""
    while True:
        try:
            await pod.app.append(b"ballast", b"x" * 65536)
        except OutOfMemoryError:
            break
    refused = sample(hydrator, "redis_oom_rejections_total")
    await pod.produce(
        topic,
        [row_event("c", "orders", key={"id": row["id"]}, row=row) for row in _ORDER_ROWS],
    )
    await eventually(
        lambda: sample(hydrator, "redis_oom_rejections_total") >= refused + len(_ORDERS),
        what="the orders rows refused",
    )
    await _settled(hydrator)
    assert not set(await view(pod.app, b"b:")) & _ORDERS.keys()
    assert not hydrator.hydrated


async def _settled(hydrator: Hydrator) -> None:
    await eventually(lambda: hydrator.feeds[0].lag() == 0, what="every record read")


async def _free_memory(app_redis: aioredis.Redis) -> None:
    await app_redis.delete(b"ballast")


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * MIB)])
async def test_debezium_rows_a_full_store_refused_are_truncated_after_their_retry(
    pod: KafkaPod,
) -> None:
    """Refused rows get in on a retry once memory is freed, with their table index entries
    (refused with them): a truncate after that removes every one of them."""
    topic = await pod.topic_with(
        [row_event("c", "notes", key={"id": "n"}, row={"n": 1})], compacted=False
    )
    config = pod.config(topic, format="debezium", prefix="b:", live_batch_max_keys=5)
    async with running_hydrated(config) as hydrator:
        await _fill_then_refuse_orders(pod, topic, hydrator)

        await _free_memory(pod.app)
        expected = {b"b:n": b'{"n":1}', **_ORDERS}
        await eventually(
            lambda: view_is(pod.app, expected, prefix=b"b:"), within=15, what="orders retried"
        )
        await eventually(lambda: hydrator.hydrated, within=5, what="complete again")

        await pod.produce(topic, [truncate_event("orders")])
        await eventually(
            lambda: view_is(pod.app, {b"b:n": b'{"n":1}'}, prefix=b"b:"),
            what="the truncate removed the retried rows",
        )


@pytest.mark.parametrize("redis_config", [sidecar_redis_config(max_memory_bytes=3 * MIB)])
async def test_a_truncate_while_its_rows_are_refused_keeps_them_from_coming_back(
    pod: KafkaPod,
) -> None:
    """A truncate that arrives while rows of its table wait for a retry removes them from
    the retry too: retried after the truncate, they would be rows the table no longer has."""
    topic = await pod.topic_with(
        [row_event("c", "notes", key={"id": "n"}, row={"n": 1})], compacted=False
    )
    config = pod.config(topic, format="debezium", prefix="b:", live_batch_max_keys=5)
    async with running_hydrated(config) as hydrator:
        await _fill_then_refuse_orders(pod, topic, hydrator)
        await pod.produce(topic, [truncate_event("orders")])
        await _settled(hydrator)

        await _free_memory(pod.app)
        await eventually(lambda: hydrator.hydrated, within=15, what="complete again")
        await _settled(hydrator)
        assert await view(pod.app, b"b:") == {b"b:n": b'{"n":1}'}
        assert sample(hydrator, "records_applied_total", binding="b") == sample(
            hydrator, "records_read_total", binding="b"
        )
