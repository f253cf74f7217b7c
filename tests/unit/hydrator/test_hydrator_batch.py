"""Collapsing a batch per key: last write wins, tombstones delete, offsets and counts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from sidecar_hydrator.batch import build_batch, guard_reserved
from sidecar_hydrator.config import KeyMapping
from sidecar_hydrator.records import BadRecord, make_decoder

RAW = make_decoder(format="raw", keys=KeyMapping(prefix="p:"), max_value_bytes=100)
JSON = make_decoder(format="json", keys=KeyMapping(key_field="id"), max_value_bytes=100)


@dataclass(frozen=True)
class Rec:
    key: bytes | None
    value: bytes | None
    offset: int
    partition: int = 0
    topic: str = "t"
    timestamp: int = 0


def test_last_write_wins_per_key() -> None:
    batch = build_batch([[Rec(b"a", b"1", 0), Rec(b"b", b"1", 1), Rec(b"a", b"2", 2)]], RAW)
    assert batch.sets == {b"p:a": b"2", b"p:b": b"1"}
    assert batch.deletes == set()
    assert batch.writes == 2


def test_tombstone_after_set_deletes_and_set_after_tombstone_revives() -> None:
    batch = build_batch(
        [[Rec(b"a", b"1", 0), Rec(b"a", None, 1), Rec(b"b", None, 2), Rec(b"b", b"", 3)]], RAW
    )
    assert batch.sets == {b"p:b": b""}  # the empty value is a value, not a delete
    assert batch.deletes == {b"p:a"}


def test_sets_and_deletes_are_disjoint() -> None:
    records = [Rec(bytes([65 + i % 3]), None if i % 2 else b"v", i) for i in range(20)]
    batch = build_batch([records], RAW)
    assert not batch.sets.keys() & batch.deletes
    assert batch.writes == 3


def test_offsets_are_next_offset_per_partition() -> None:
    p0 = [Rec(b"a", b"1", 10, 0), Rec(b"a", b"1", 11, 0)]
    p1 = [Rec(b"a", b"1", 5, 1)]
    batch = build_batch([p0, p1], RAW)
    assert batch.offsets == {("t", 0): 12, ("t", 1): 6}
    assert batch.sets == {b"p:a": b"1"} and batch.records == 3


def test_bad_records_are_collected_counted_and_still_advance_offsets() -> None:
    records = [
        Rec(None, b'{"id": "a"}', 0),
        Rec(None, b"nope", 1),
        Rec(None, b'{"no": "id"}', 2),
        Rec(None, b'{"id": "b"}', 3),
    ]
    batch = build_batch([records], JSON)
    assert batch.sets == {b"a": b'{"id": "a"}', b"b": b'{"id": "b"}'}
    assert [(e.offset, e.kind) for e in batch.bad] == [(1, "not_json"), (2, "missing_key")]
    assert batch.records == 4
    assert batch.offsets == {("t", 0): 4}


def test_ignored_records_are_counted() -> None:
    debezium = make_decoder(format="debezium", keys=KeyMapping(), max_value_bytes=1000)
    batch = build_batch([[Rec(b'{"id": 1}', b'{"op": "m"}', 0)]], debezium)
    assert (batch.ignored, batch.writes, batch.records) == (1, 0, 1)


def test_last_event_time_is_the_newest_partition_end() -> None:
    p0 = [Rec(b"a", b"1", 0, timestamp=10), Rec(b"a", b"1", 1, timestamp=20)]
    p1 = [Rec(b"b", b"1", 0, 1, timestamp=30)]
    assert build_batch([p0, p1], RAW).last_event_ms == 30
    assert build_batch([p0], RAW).last_event_ms == 20
    assert build_batch([[]], RAW).last_event_ms is None


# -- Debezium: table indexes and truncates -------------------------------------------------------

DBZ = make_decoder(
    format="debezium", keys=KeyMapping(prefix="p:"), max_value_bytes=1000, binding="b"
)
ORDERS = b"sidecar-state:tables:b:shop.public.orders"
USERS = b"sidecar-state:tables:b:shop.public.users"


def row(op: str, table: str, key: int, offset: int) -> Rec:
    source = {"db": "shop", "schema": "public", "table": table}
    image = {"id": key}
    value = {"op": op, "source": source, "after": image if op != "d" else None, "before": image}
    return Rec(json.dumps({"id": key}).encode(), json.dumps(value).encode(), offset)


def truncate(table: str, offset: int) -> Rec:
    source = {"db": "shop", "schema": "public", "table": table}
    return Rec(None, json.dumps({"op": "t", "source": source}).encode(), offset)


def test_debezium_batch_indexes_its_keys_per_table() -> None:
    batch = build_batch(
        [[row("c", "orders", 1, 0), row("c", "users", 1, 1), row("d", "orders", 2, 2)]], DBZ
    )
    assert batch.sets == {b"p:1": b'{"id":1}'}  # the users row overwrote the order (same key)
    assert batch.commands == [("SADD", USERS, b"p:1"), ("SREM", ORDERS, b"p:2")]


def test_truncate_drops_the_tables_earlier_writes_and_runs_first() -> None:
    records = [
        row("c", "orders", 1, 0),
        row("d", "orders", 2, 1),
        row("c", "users", 3, 2),
        truncate("orders", 3),
        row("c", "orders", 4, 4),
    ]
    batch = build_batch([records], DBZ)
    assert batch.sets == {b"p:3": b'{"id":3}', b"p:4": b'{"id":4}'}
    assert batch.deletes == set()
    (script, *indexes) = batch.commands
    assert script[0] == "EVAL" and script[2:] == (1, ORDERS)
    assert indexes == [("SADD", USERS, b"p:3"), ("SADD", ORDERS, b"p:4")]
    assert (batch.ignored, batch.records, batch.offsets) == (0, 5, {("t", 0): 5})


def test_a_tombstone_keeps_its_keys_table() -> None:
    tombstone = Rec(b'{"id": 1}', None, 1)
    batch = build_batch([[row("c", "orders", 1, 0), tombstone, truncate("orders", 2)]], DBZ)
    assert (batch.sets, batch.deletes) == ({}, set())
    assert [c[0] for c in batch.commands] == ["EVAL"]


def test_reserved_namespace_is_guarded_only_where_a_prefix_can_reach_it() -> None:
    assert guard_reserved(RAW, prefix="p:", reserved="sidecar-state:") is RAW
    bare = make_decoder(format="raw", keys=KeyMapping(), max_value_bytes=100)
    guarded = guard_reserved(bare, prefix="", reserved="sidecar-state:")
    with pytest.raises(BadRecord) as caught:
        guarded(Rec(b"sidecar-state:meta", None, 7))  # a tombstone must not delete it either
    assert (caught.value.kind, caught.value.offset) == ("reserved_key", 7)
    assert guarded(Rec(b"sidecar-statement", b"x", 8)) == (b"sidecar-statement", b"x")
    batch = build_batch([[Rec(b"sidecar-state:offsets", b"x", 0), Rec(b"a", b"1", 1)]], guarded)
    assert batch.sets == {b"a": b"1"}
    assert [bad.kind for bad in batch.bad] == ["reserved_key"]
