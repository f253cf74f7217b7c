"""Record -> change, per format, and every kind of bad record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar_hydrator.config import KeyMapping, RecordFormat
from sidecar_hydrator.records import BadRecord, Change, RowChange, Truncate, make_decoder


@dataclass(frozen=True)
class Rec:
    key: bytes | None
    value: bytes | None
    topic: str = "flags"
    partition: int = 3
    offset: int = 42
    timestamp: int = 1_700_000_000_000


def decode(
    fmt: RecordFormat,
    record: Rec,
    *,
    prefix: str = "",
    key_field: str | None = None,
    value_field: str | None = None,
    max_value_bytes: int = 1024,
    max_key_bytes: int = 1024,
) -> Change | RowChange | Truncate | None:
    decoder = make_decoder(
        format=fmt,
        keys=KeyMapping(prefix=prefix, key_field=key_field, value_field=value_field),
        max_value_bytes=max_value_bytes,
        max_key_bytes=max_key_bytes,
    )
    return decoder(record)


def bad(fmt: RecordFormat, record: Rec, **kwargs: Any) -> BadRecord:
    with pytest.raises(BadRecord) as info:
        decode(fmt, record, **kwargs)
    return info.value


def js(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- raw ---------------------------------------------------------------------------------------


def test_raw_keeps_bytes_as_they_are_even_if_not_utf8() -> None:
    assert decode("raw", Rec(b"k\xff", b"\x00\xfe"), prefix="p:") == (b"p:k\xff", b"\x00\xfe")


def test_raw_tombstone_deletes_and_empty_value_is_a_value() -> None:
    assert decode("raw", Rec(b"k", None)) == (b"k", None)
    assert decode("raw", Rec(b"k", b"")) == (b"k", b"")


def test_raw_without_key_is_bad() -> None:
    assert bad("raw", Rec(None, b"v")).kind == "missing_key"


# -- json --------------------------------------------------------------------------------------


def test_json_seed_example_flag_key_and_value_field() -> None:
    record = Rec(None, b'{"id": "new-ui-layout", "enabled": true}')
    change = decode("json", record, prefix="flag:", key_field="id", value_field="enabled")
    assert change == (b"flag:new-ui-layout", b"true")


def test_json_string_value_field_is_stored_as_text_not_json() -> None:
    change = decode("json", Rec(None, js({"id": 7, "v": "héllo"})), key_field="id", value_field="v")
    assert change == (b"7", "héllo".encode())


def test_json_object_value_field_is_compact_json() -> None:
    change = decode(
        "json", Rec(None, js({"id": "a", "v": {"x": [1, 2]}})), key_field="id", value_field="v"
    )
    assert change == (b"a", b'{"x":[1,2]}')


def test_json_without_value_field_stores_the_document_bytes_as_received() -> None:
    raw = b'{ "id" : "a",  "n": 1 }'
    assert decode("json", Rec(None, raw), key_field="id") == (b"a", raw)


def test_json_without_key_field_uses_record_key() -> None:
    assert decode("json", Rec(b"rk", b"[1]")) == (b"rk", b"[1]")
    assert decode("json", Rec(b"rk", js({"v": 1})), value_field="v") == (b"rk", b"1")


def test_json_null_value_field_deletes() -> None:
    change = decode("json", Rec(None, js({"id": "a", "v": None})), key_field="id", value_field="v")
    assert change == (b"a", None)


def test_json_empty_string_value_is_a_value() -> None:
    change = decode("json", Rec(None, js({"id": "a", "v": ""})), key_field="id", value_field="v")
    assert change == (b"a", b"")


def test_json_tombstone_deletes_record_key_or_its_key_field() -> None:
    assert decode("json", Rec(b"a", None), prefix="p:", key_field="id") == (b"p:a", None)
    assert decode("json", Rec(js({"id": "b"}), None), prefix="p:", key_field="id") == (b"p:b", None)


def test_json_numbers_beyond_64_bits_are_read_exactly() -> None:
    # The fast parser (orjson) reads such integers as floats: a key or a value that is a
    # number must still come out digit for digit, as the standard library reads it.
    big = 123456789012345678901234567890
    change = decode("json", Rec(None, js({"id": big, "v": big})), key_field="id", value_field="v")
    assert change == (str(big).encode(), str(big).encode())
    nested = decode(
        "json", Rec(None, js({"id": "a", "v": [big, 0.1]})), key_field="id", value_field="v"
    )
    assert nested == (b"a", f"[{big},0.1]".encode())


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"id": "a", "v": NaN}', b"NaN"),  # the standard library accepts it; orjson does not
        (b' {"id": "a", "v": "x"} ', b"x"),
        (b'{"id": "a", "v": 1e400}', b"Infinity"),
    ],
)
def test_json_documents_the_fast_parser_refuses_decode_as_before(raw: bytes, value: bytes) -> None:
    assert decode("json", Rec(None, raw), key_field="id", value_field="v") == (b"a", value)


def test_json_invalid_utf8_and_broken_documents_keep_their_kinds() -> None:
    assert bad("json", Rec(b"k", b'{"v": "\xff"}'), value_field="v").kind == "invalid_utf8"
    assert bad("json", Rec(b"k", b'{"v": 1'), value_field="v").kind == "not_json"
    assert bad("json", Rec(b"k", b"[1]"), value_field="v").kind == "not_object"


def test_json_tombstone_without_key_is_bad() -> None:
    assert bad("json", Rec(None, None), key_field="id").kind == "missing_key"


@pytest.mark.parametrize(
    ("value", "kwargs", "kind"),
    [
        (b"not json", {"key_field": "id"}, "not_json"),
        (b'{"id": "a"', {"key_field": "id"}, "not_json"),
        (b'{"id": "\xff\xfe"}', {"key_field": "id"}, "invalid_utf8"),
        (b'{"name": "a"}', {"key_field": "id"}, "missing_key"),
        (b'{"id": null}', {"key_field": "id"}, "missing_key"),
        (b'{"id": 1.5}', {"key_field": "id"}, "bad_key"),
        (b'{"id": true}', {"key_field": "id"}, "bad_key"),
        (b'{"id": {"a": 1}}', {"key_field": "id"}, "bad_key"),
        (b'["a"]', {"key_field": "id"}, "not_object"),
        (b'{"id": "a"}', {"key_field": "id", "value_field": "v"}, "missing_value"),
    ],
)
def test_json_bad_records(value: bytes, kwargs: dict[str, str], kind: str) -> None:
    error = bad("json", Rec(b"rk", value), **kwargs)
    assert error.kind == kind
    assert (error.topic, error.partition, error.offset) == ("flags", 3, 42)
    assert str(error).startswith(f"flags/3@42: {kind}: ")


def test_too_large_value_is_bad_in_every_format() -> None:
    formats: tuple[RecordFormat, ...] = ("raw", "json", "debezium")
    for fmt in formats:
        error = bad(fmt, Rec(b"k", b"x" * 1025), max_value_bytes=1024)
        assert error.kind == "too_large"
        assert "1025 bytes" in error.detail
    assert decode("raw", Rec(b"k", b"x" * 1024), max_value_bytes=1024) == (b"k", b"x" * 1024)


def test_raw_invalid_utf8_is_fine_but_json_is_not() -> None:
    assert decode("raw", Rec(b"k", b"\xff")) == (b"k", b"\xff")
    assert bad("json", Rec(b"k", b"\xff")).kind == "invalid_utf8"


# -- json: one key mapping for sets and tombstones ------------------------------------------------


@pytest.mark.parametrize(
    ("record_key", "id_value"),
    [
        pytest.param(b'"u1"', "u1", id="JSON string key"),
        pytest.param(b"u1", "u1", id="plain text key"),
        pytest.param(b'{"id": "u1"}', "u1", id="JSON object key"),
        pytest.param(b"42", 42, id="integer key"),
        pytest.param(b'"a\\"b"', 'a"b', id="JSON string with an escape"),
    ],
)
def test_json_tombstone_deletes_the_key_its_set_created(record_key: bytes, id_value: Any) -> None:
    kwargs: dict[str, Any] = {"prefix": "user:", "key_field": "id"}
    created = decode("json", Rec(record_key, js({"id": id_value, "n": 1})), **kwargs)
    deleted = decode("json", Rec(record_key, None), **kwargs)
    assert created is not None and deleted is not None
    assert deleted == (created[0], None)


def test_json_without_key_field_maps_a_json_string_key_the_same_way_both_ways() -> None:
    assert decode("json", Rec(b'"u1"', b"{}"), prefix="p:") == (b"p:u1", b"{}")
    assert decode("json", Rec(b'"u1"', None), prefix="p:") == (b"p:u1", None)
    assert decode("json", Rec(b'{"id": 1}', None)) == (b'{"id": 1}', None)


def test_json_tombstone_keyed_by_an_object_without_the_key_field_is_bad() -> None:
    error = bad("json", Rec(b'{"sku": "u1"}', None), key_field="id")
    assert error.kind == "missing_key" and "'id'" in error.detail


# -- key size ------------------------------------------------------------------------------------


def test_too_large_key_is_bad_in_every_format_prefix_included() -> None:
    record_keys = {"raw": b"k" * 1023, "json": b"k" * 1023, "debezium": js({"id": "k" * 1023})}
    for fmt, record_key in record_keys.items():
        error = bad(fmt, Rec(record_key, None), prefix="p:", max_key_bytes=1024)  # type: ignore[arg-type]
        assert error.kind == "key_too_large"
        assert error.detail == "key of 1025 bytes > max 1024"
    big = decode(
        "json",
        Rec(None, js({"id": "k" * 1024})),
        key_field="id",
        max_key_bytes=1024,
        max_value_bytes=4096,
    )
    assert big is not None and len(big[0]) == 1024


# -- debezium ----------------------------------------------------------------------------------

SOURCE = {"db": "shop", "schema": "public", "table": "products"}
TABLE = "shop.public.products"


def dbz(
    op: str,
    *,
    before: Any = None,
    after: Any = None,
    schemas: bool = False,
    source: Any = SOURCE,
    schema: Any = None,
) -> bytes:
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1, "source": source}
    if schema is not None:
        return js({"schema": schema, "payload": payload})
    return js({"schema": {"type": "struct"}, "payload": payload} if schemas else payload)


KEY = js({"id": 7})


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_debezium_create_update_read_set_after(op: str) -> None:
    row = {"id": 7, "name": "lamp", "price": 12.5}
    change = decode("debezium", Rec(KEY, dbz(op, after=row)), prefix="product:")
    assert change == (b"product:7", b'{"id":7,"name":"lamp","price":12.5}', TABLE)


def test_debezium_delete_deletes_and_tombstone_is_harmless() -> None:
    assert decode("debezium", Rec(KEY, dbz("d", before={"id": 7}))) == (b"7", None, TABLE)
    assert decode("debezium", Rec(KEY, None)) == (b"7", None, None)
    assert decode("debezium", Rec(None, None)) is None


def test_debezium_with_schemas_enabled_is_unwrapped_key_and_value() -> None:
    key = js({"schema": {"type": "struct"}, "payload": {"id": "sku-1"}})
    value = dbz("u", after={"id": "sku-1", "stock": 3}, schemas=True)
    assert decode("debezium", Rec(key, value), value_field="stock") == (b"sku-1", b"3", TABLE)


def test_debezium_composite_key_is_joined_in_key_order() -> None:
    key = js({"tenant": "acme", "id": 9})
    assert decode("debezium", Rec(key, dbz("c", after={"x": 1}))) == (b"acme:9", b'{"x":1}', TABLE)


def test_debezium_composite_keys_that_joined_alike_stay_apart() -> None:
    row = dbz("c", after={"x": 1})
    first = decode("debezium", Rec(js({"a": "x:y", "b": "z"}), row))
    second = decode("debezium", Rec(js({"a": "x", "b": "y:z"}), row))
    escaped = decode("debezium", Rec(js({"a": "x\\", "b": ":z"}), row))
    assert first is not None and second is not None and escaped is not None
    assert (first[0], second[0], escaped[0]) == (b"x\\:y:z", b"x:y\\:z", b"x\\\\:\\:z")


def test_debezium_key_field_from_key_payload_or_from_the_row() -> None:
    key = js({"tenant": "acme", "id": 9})
    row = {"id": 9, "sku": "s-9"}
    from_key = decode("debezium", Rec(key, dbz("c", after=row)), key_field="id")
    assert from_key == (b"9", b'{"id":9,"sku":"s-9"}', TABLE)
    from_row = decode("debezium", Rec(None, dbz("c", after=row)), key_field="sku")
    assert from_row is not None and from_row[0] == b"s-9"
    deleted = decode("debezium", Rec(None, dbz("d", before=row)), key_field="sku")
    assert deleted == (b"s-9", None, TABLE)


def test_debezium_string_converter_key_falls_back_to_the_rows_key_field() -> None:
    key = b"Struct{id=9}"  # what Kafka Connect's StringConverter makes of a key struct
    row = {"id": 9, "sku": "s-9"}
    created = decode("debezium", Rec(key, dbz("c", after=row)), key_field="id")
    deleted = decode("debezium", Rec(key, dbz("d", before=row)), key_field="id")
    assert created is not None and created[0] == b"9"
    assert deleted == (b"9", None, TABLE)
    error = bad("debezium", Rec(key, dbz("c", after=row)))
    assert error.kind == "missing_key" and "not JSON" in error.detail


def test_debezium_truncate_names_its_table_and_message_is_ignored() -> None:
    assert decode("debezium", Rec(None, dbz("t"))) == Truncate(TABLE)
    assert decode("debezium", Rec(None, dbz("t", source={"db": "x"}))) == Truncate("flags")
    mysql = {"db": "inventory", "table": "orders"}
    assert decode("debezium", Rec(None, dbz("t", source=mysql))) == Truncate("inventory.orders")
    assert decode("debezium", Rec(KEY, dbz("m"))) is None


def test_debezium_string_after_of_the_mongodb_connector_is_parsed() -> None:
    doc = {"_id": {"$oid": "65f0"}, "name": "lamp"}
    change = decode(
        "debezium", Rec(js({"id": '{"$oid": "65f0"}'}), dbz("c", after=json.dumps(doc)))
    )
    assert change == (b'{"$oid": "65f0"}', b'{"_id":{"$oid":"65f0"},"name":"lamp"}', TABLE)
    error = bad("debezium", Rec(KEY, dbz("u", after="not a document")))
    assert error.kind == "bad_envelope" and "'after' is a string" in error.detail


def _row_schema(*fields: dict[str, Any]) -> dict[str, Any]:
    row = {"type": "struct", "optional": True, "fields": list(fields)}
    return {
        "type": "struct",
        "fields": [{**row, "field": "before"}, {**row, "field": "after"}],
    }


def test_debezium_connect_logical_types_become_plain_json() -> None:
    schema = _row_schema(
        {"field": "id", "type": "int32"},
        {
            "field": "price",
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": {"scale": "2"},
        },
        {"field": "total", "type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
        {
            "field": "debt",
            "type": "bytes",
            "name": "org.apache.kafka.connect.data.Decimal",
            "parameters": {"scale": "1"},
        },
        {"field": "born", "type": "int32", "name": "io.debezium.time.Date"},
        {"field": "at", "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp"},
        {"field": "seen", "type": "int64", "name": "io.debezium.time.MicroTimestamp"},
        {"field": "opens", "type": "int64", "name": "io.debezium.time.MicroTime"},
        {
            "field": "tags",
            "type": "array",
            "items": {"type": "int32", "name": "org.apache.kafka.connect.data.Date"},
        },
        {"field": "note", "type": "string"},
    )
    row = {
        "id": 1,
        "price": "AK8=",  # 175, scale 2
        "total": {"scale": 2, "value": "AK8="},
        "debt": "/w==",  # -1, scale 1
        "born": 19_723,
        "at": 1_704_164_645_678,
        "seen": 1_704_164_645_678_901,
        "opens": 32_400_000_001,
        "tags": [0, 1],
        "note": "AK8=",
    }
    change = decode("debezium", Rec(KEY, dbz("c", after=row, schema=schema)), max_value_bytes=9999)
    assert change is not None and change[1] is not None
    assert json.loads(change[1]) == {
        "id": 1,
        "price": "1.75",
        "total": "1.75",
        "debt": "-0.1",
        "born": "2024-01-01",
        "at": "2024-01-02T03:04:05.678Z",
        "seen": "2024-01-02T03:04:05.678901",
        "opens": "09:00:00.000001",
        "tags": ["1970-01-01", "1970-01-02"],
        "note": "AK8=",
    }


def test_debezium_logical_types_decode_in_the_key_too_and_bad_values_are_kept() -> None:
    key_schema = {
        "type": "struct",
        "fields": [{"field": "day", "type": "int32", "name": "org.apache.kafka.connect.data.Date"}],
    }
    key = js({"schema": key_schema, "payload": {"day": 1}})
    schema = _row_schema(
        {"field": "price", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal"}
    )
    change = decode("debezium", Rec(key, dbz("c", after={"price": "%%"}, schema=schema)))
    assert change == (b"1970-01-02", b'{"price":"%%"}', TABLE)


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        (KEY, js({"after": {"id": 1}}), "bad_envelope"),  # no op
        (KEY, js([1, 2]), "bad_envelope"),
        (KEY, dbz("x", after={"id": 1}), "bad_envelope"),  # unknown op
        (KEY, dbz("c", after=None), "bad_envelope"),  # create without a row
        (None, dbz("c", after={"name": "no id"}), "missing_key"),
        (js({"id": [1]}), dbz("c", after={"id": 1}), "bad_key"),
        (KEY, b"{oops", "not_json"),
        (KEY, b'{"op": "c", "after": {"id": "\xc3"}}', "invalid_utf8"),
    ],
)
def test_debezium_bad_records(key: bytes | None, value: bytes, kind: str) -> None:
    assert bad("debezium", Rec(key, value)).kind == kind


# -- unpaired surrogate escapes ----------------------------------------------------------------
# ``"\ud800"`` is valid JSON but no UTF-8 can hold the string it parses to: such a record is a
# bad record of kind invalid_utf8, never an exception that would stop the feed.

LONE = b'"\\ud800"'


@pytest.mark.parametrize(
    ("fmt", "record", "kwargs"),
    [
        ("json", Rec(b"k", b'{"v": ' + LONE + b"}"), {"value_field": "v"}),
        ("json", Rec(b"k", b'{"v": {"nested": ' + LONE + b"}}"), {"value_field": "v"}),
        ("json", Rec(b"rk", b'{"id": ' + LONE + b"}"), {"key_field": "id"}),
        ("json", Rec(LONE, None), {"key_field": "id"}),
        (
            "debezium",
            Rec(KEY, dbz("c", after={"id": 7, "name": "x"}).replace(b'"x"', LONE)),
            {},
        ),
    ],
    ids=["value", "nested-value", "key-field", "tombstone-key", "debezium-row"],
)
def test_an_unpaired_surrogate_escape_is_a_bad_record(
    fmt: RecordFormat, record: Rec, kwargs: dict[str, str]
) -> None:
    error = bad(fmt, record, **kwargs)
    assert error.kind == "invalid_utf8"
    assert "surrogate" in str(error)
