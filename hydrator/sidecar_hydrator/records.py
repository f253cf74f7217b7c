"""Kafka record -> Redis change, per binding format. Pure: no I/O, no clocks, no globals.

A decoder turns one record into a :class:`Change` (set a key, or delete it), into ``None`` when
the record carries nothing for the view (a Debezium truncate or heartbeat message), or raises
:class:`BadRecord`. Bad records are the producer's problem, not the hydrator's: the caller
skips and counts them, and the error carries topic/partition/offset so they can be found.

Decoders are closures specialised per binding, because they run once per record on the
bootstrap path (hundreds of thousands per second) where attribute look-ups and format
dispatch would show up in a profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, Protocol

from sidecar_hydrator.config import KeyMapping, RecordFormat

BadRecordKind = Literal[
    "too_large",  # value bigger than max_value_bytes
    "invalid_utf8",  # a json/debezium value that is not UTF-8
    "not_json",  # a json/debezium value that does not parse
    "not_object",  # a field is configured, but the document is not a JSON object
    "missing_key",  # no record key, or the configured key field is absent/null
    "bad_key",  # the key field is not a string or an integer
    "missing_value",  # the configured value field is absent
    "bad_envelope",  # not a Debezium change event
    "reserved_key",  # the key falls in the hydrator's own namespace (config.RESERVED_PREFIX)
]

#: Debezium operations that carry no row: truncate, and logical-decoding messages.
_DEBEZIUM_IGNORED_OPS = frozenset({"t", "m"})


class RecordLike(Protocol):
    """What a decoder reads from a record (aiokafka's ``ConsumerRecord`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...


class BadRecord(Exception):
    """A record that cannot become a change; it names where it is and why."""

    def __init__(
        self, *, topic: str, partition: int, offset: int, kind: BadRecordKind, detail: str
    ) -> None:
        super().__init__(f"{topic}/{partition}@{offset}: {kind}: {detail}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.kind: BadRecordKind = kind
        self.detail = detail


#: One key's new state, ``(key, value)``: ``value=None`` deletes the key; ``b""`` is a value
#: like any other. A plain tuple, because one is built per record on the bootstrap path.
Change = tuple[bytes, bytes | None]

Decoder = Callable[[RecordLike], Change | None]


class _Reject(Exception):
    """Internal: raised deep in a decoder, turned into :class:`BadRecord` at its edge."""

    def __init__(self, kind: BadRecordKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: BadRecordKind = kind
        self.detail = detail


def make_decoder(*, format: RecordFormat, keys: KeyMapping, max_value_bytes: int) -> Decoder:
    """Build the decoder of one binding.

    ``raw``: record key (prefixed) -> value bytes as they are; a null value deletes.
    ``json``: the value must be a JSON document. Key from ``key_field`` of the document when
    configured (else the record key); value from ``value_field`` (a string as its text,
    anything else as compact JSON, ``null`` deletes) when configured, else the document bytes
    as received. A null record value (tombstone) deletes the record key's entry.
    ``debezium``: ``c``/``u``/``r`` set ``after`` (or its ``value_field``), ``d`` deletes,
    ``t``/``m`` are ignored; the key comes from the record key's payload (its ``key_field``,
    else all its fields joined by ``:``), falling back to ``key_field`` of the row; envelopes
    with ``schemas.enable=true`` (``{schema, payload}``) are unwrapped.
    """
    prefix = keys.prefix.encode()
    if format == "raw":
        inner: Callable[[RecordLike], Change | None] = _raw(prefix=prefix)
    elif format == "json":
        inner = _json(prefix=prefix, keys=keys)
    else:
        inner = _debezium(prefix=prefix, keys=keys)

    def decode(record: RecordLike) -> Change | None:
        value = record.value
        try:
            if value is not None and len(value) > max_value_bytes:
                raise _Reject("too_large", f"{len(value)} bytes > max {max_value_bytes}")
            return inner(record)
        except _Reject as exc:
            raise BadRecord(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                kind=exc.kind,
                detail=exc.detail,
            ) from None

    return decode


def _raw(*, prefix: bytes) -> Callable[[RecordLike], Change | None]:
    def decode(record: RecordLike) -> Change | None:
        if record.key is None:
            raise _Reject("missing_key", "raw records need a record key")
        return prefix + record.key, record.value

    return decode


def _json(*, prefix: bytes, keys: KeyMapping) -> Callable[[RecordLike], Change | None]:
    key_field = keys.key_field
    value_field = keys.value_field

    def decode(record: RecordLike) -> Change | None:
        raw = record.value
        if raw is None:
            return prefix + _tombstone_key(record.key, key_field), None
        doc = _parse(raw)
        if key_field is None and value_field is None:
            return prefix + _record_key(record.key), raw
        if type(doc) is not dict:
            raise _Reject("not_object", f"expected a JSON object, got {_kind(doc)}")
        if key_field is None:
            key = _record_key(record.key)
        else:
            text = doc.get(key_field)
            key = text.encode() if type(text) is str else _key_bytes(text, key_field)
        if value_field is None:
            return prefix + key, raw
        value = doc.get(value_field, _ABSENT)
        if type(value) is str:
            return prefix + key, value.encode()
        return prefix + key, _value_bytes(value, value_field)

    return decode


def _debezium(*, prefix: bytes, keys: KeyMapping) -> Callable[[RecordLike], Change | None]:
    key_field = keys.key_field
    value_field = keys.value_field

    def row_key(record: RecordLike, row: Any) -> bytes:
        if record.key is not None:
            key_doc = _unwrap(_parse(record.key))
            if isinstance(key_doc, dict) and key_doc:
                if key_field is None:
                    return b":".join(_scalar(v, "key payload field") for v in key_doc.values())
                if key_doc.get(key_field) is not None:
                    return _scalar(key_doc[key_field], f"key field {key_field!r}")
        if key_field is not None and isinstance(row, dict):
            return _key_bytes(row.get(key_field), key_field)
        raise _Reject("missing_key", "no key payload and no key field in the row")

    def decode(record: RecordLike) -> Change | None:
        raw = record.value
        if raw is None:
            # Debezium follows each delete with a tombstone for compaction; deleting the key
            # a second time is harmless, and a tombstone without a usable key carries nothing.
            try:
                return prefix + row_key(record, None), None
            except _Reject:
                return None
        envelope = _unwrap(_parse(raw))
        if envelope is None:  # schemas.enable=true wraps tombstones as {schema, payload: null}
            return None
        if not isinstance(envelope, dict) or "op" not in envelope:
            raise _Reject("bad_envelope", "expected a change event with an 'op' field")
        op = envelope["op"]
        if op in ("c", "u", "r"):
            after = envelope.get("after")
            if not isinstance(after, dict):
                raise _Reject("bad_envelope", f"op {op!r} without an 'after' row")
            key = prefix + row_key(record, after)
            if value_field is None:
                return key, _compact(after)
            return key, _value_bytes(after.get(value_field, _ABSENT), value_field)
        if op == "d":
            return prefix + row_key(record, envelope.get("before")), None
        if op in _DEBEZIUM_IGNORED_OPS:
            return None
        raise _Reject("bad_envelope", f"unknown op {op!r}")

    return decode


_DECODER = json.JSONDecoder()
#: The C scanner behind ``json.loads``, called directly: ``loads`` spends more time sniffing
#: the encoding of bytes and matching whitespace than scanning a small document.
_scan: Callable[[str, int], tuple[Any, int]] = getattr(_DECODER, "scan_once")  # noqa: B009


def _parse(raw: bytes) -> Any:
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise _Reject("invalid_utf8", f"byte {exc.start}: {exc.reason}") from None
    try:
        doc, end = _scan(text, 0)
    except (StopIteration, ValueError):
        doc, end = None, -1  # leading whitespace or an error: let json.loads decide
    if end == len(text):
        return doc
    try:
        return json.loads(text)  # trailing whitespace is fine; anything else raises
    except ValueError as exc:
        raise _Reject("not_json", str(exc)) from None


def _unwrap(doc: Any) -> Any:
    """``{schema, payload}`` (Kafka Connect's JsonConverter with schemas) -> payload."""
    if isinstance(doc, dict) and len(doc) == 2 and "schema" in doc and "payload" in doc:
        return doc["payload"]
    return doc


def _record_key(key: bytes | None) -> bytes:
    if key is None:
        raise _Reject("missing_key", "the record has no key")
    return key


def _tombstone_key(key: bytes | None, key_field: str | None) -> bytes:
    """A tombstone has no document to read ``key_field`` from: use the record key, reading
    the field out of it when the producer keyed by a JSON object rather than the bare id."""
    key = _record_key(key)
    if key_field is not None and key[:1] == b"{":
        try:
            doc = json.loads(key)
        except ValueError:
            return key
        if isinstance(doc, dict) and doc.get(key_field) is not None:
            return _scalar(doc[key_field], f"key field {key_field!r}")
    return key


def _key_bytes(value: Any, field: str) -> bytes:
    if value is None:
        raise _Reject("missing_key", f"key field {field!r} is absent or null")
    return _scalar(value, f"key field {field!r}")


def _scalar(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    raise _Reject("bad_key", f"{what} must be a string or an integer, got {_kind(value)}")


#: Marks an absent field (``None`` is JSON null, which deletes).
_ABSENT: Any = object()


def _value_bytes(value: Any, field: str) -> bytes | None:
    if value is _ABSENT:
        raise _Reject("missing_value", f"value field {field!r} is absent")
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return _compact(value)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
