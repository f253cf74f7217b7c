"""Record -> change, per format, and every kind of bad record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar_hydrator.config import KeyMapping, RecordFormat
from sidecar_hydrator.records import BadRecord, Change, make_decoder


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
) -> Change | None:
    decoder = make_decoder(
        format=fmt,
        keys=KeyMapping(prefix=prefix, key_field=key_field, value_field=value_field),
        max_value_bytes=max_value_bytes,
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


# -- debezium ----------------------------------------------------------------------------------


def dbz(op: str, *, before: Any = None, after: Any = None, schemas: bool = False) -> bytes:
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1, "source": {"db": "shop"}}
    return js({"schema": {"type": "struct"}, "payload": payload} if schemas else payload)


KEY = js({"id": 7})


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_debezium_create_update_read_set_after(op: str) -> None:
    row = {"id": 7, "name": "lamp", "price": 12.5}
    change = decode("debezium", Rec(KEY, dbz(op, after=row)), prefix="product:")
    assert change == (b"product:7", b'{"id":7,"name":"lamp","price":12.5}')


def test_debezium_delete_deletes_and_tombstone_is_harmless() -> None:
    assert decode("debezium", Rec(KEY, dbz("d", before={"id": 7}))) == (b"7", None)
    assert decode("debezium", Rec(KEY, None)) == (b"7", None)
    assert decode("debezium", Rec(None, None)) is None


def test_debezium_with_schemas_enabled_is_unwrapped_key_and_value() -> None:
    key = js({"schema": {"type": "struct"}, "payload": {"id": "sku-1"}})
    value = dbz("u", after={"id": "sku-1", "stock": 3}, schemas=True)
    assert decode("debezium", Rec(key, value), value_field="stock") == (b"sku-1", b"3")


def test_debezium_composite_key_is_joined_in_key_order() -> None:
    key = js({"tenant": "acme", "id": 9})
    assert decode("debezium", Rec(key, dbz("c", after={"x": 1}))) == (b"acme:9", b'{"x":1}')


def test_debezium_key_field_from_key_payload_or_from_the_row() -> None:
    key = js({"tenant": "acme", "id": 9})
    row = {"id": 9, "sku": "s-9"}
    from_key = decode("debezium", Rec(key, dbz("c", after=row)), key_field="id")
    assert from_key == (b"9", b'{"id":9,"sku":"s-9"}')
    from_row = decode("debezium", Rec(None, dbz("c", after=row)), key_field="sku")
    assert from_row is not None and from_row[0] == b"s-9"
    deleted = decode("debezium", Rec(None, dbz("d", before=row)), key_field="sku")
    assert deleted == (b"s-9", None)


def test_debezium_truncate_and_message_are_ignored() -> None:
    assert decode("debezium", Rec(KEY, dbz("t"))) is None
    assert decode("debezium", Rec(KEY, dbz("m"))) is None


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
