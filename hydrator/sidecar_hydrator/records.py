"""Kafka record -> Redis change, per binding format. Pure: no I/O, no clocks, no globals.

A decoder turns one record into a change (set a key, or delete it), into a :class:`Truncate`
(a Debezium truncate: drop every row of one table), into ``None`` when the record carries
nothing for the view (a Debezium logical-decoding message, a tombstone without a key), or
raises :class:`BadRecord`. Bad records are the producer's problem, not the hydrator's: the
caller skips and counts them, and the error carries topic/partition/offset so they can be
found.

Decoders are closures specialised per binding, because they run once per record on the
bootstrap path (hundreds of thousands per second) where attribute look-ups and format
dispatch would show up in a profile.

**One key mapping, used both ways.** A record key becomes a Redis key (before the prefix) by
:func:`record_key_text`: a JSON string is its text (``"u1"`` -> ``u1``), a JSON object is its
``key_field`` when one is configured (``{"id": "u1"}`` -> ``u1``), anything else is its bytes as
they are. ``json`` sets without a ``key_field`` and every ``json`` tombstone use it, so a
tombstone deletes exactly what the set created, whether the producer serialized the key as
JSON or as plain text. A ``key_field`` read from a document maps the same way (a string is its
text, an integer its decimal digits).

**Debezium keys** come from the record key's payload: its ``key_field``, else its single field,
else all its fields joined by ``:`` with ``\\`` and ``:`` inside each part escaped as ``\\\\``
and ``\\:`` (so ``{a: "x:y", b: "z"}`` -> ``x\\:y:z`` and ``{a: "x", b: "y:z"}`` -> ``x:y\\:z``
never collide). A record key that is not JSON (Kafka Connect's ``StringConverter``) falls back
to ``key_field`` of ``after``/``before``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from orjson import JSONDecodeError as _OrjsonError
from orjson import loads as _orjson_loads

from sidecar_hydrator.config import KeyMapping, RecordFormat

BadRecordKind = Literal[
    "too_large",  # value bigger than max_value_bytes
    "key_too_large",  # Redis key (prefix included) bigger than max_key_bytes
    "invalid_utf8",  # a json/debezium value that is not UTF-8
    "not_json",  # a json/debezium value that does not parse
    "not_object",  # a field is configured, but the document is not a JSON object
    "missing_key",  # no record key, or the configured key field is absent/null
    "bad_key",  # the key field is not a string or an integer
    "missing_value",  # the configured value field is absent
    "bad_envelope",  # not a Debezium change event
    "reserved_key",  # the key falls in the hydrator's own namespace (config.RESERVED_PREFIX)
]

#: Debezium operations that carry no row: logical-decoding messages.
_DEBEZIUM_IGNORED_OPS = frozenset({"m"})

#: Bookkeeping keys of Debezium bindings live under this prefix (next to the hydrator's
#: offsets and metadata, out of reach of record keys). They belong to their binding's view:
#: whatever copies a binding's keys from one database to another must copy these with them.
TABLE_INDEX_PREFIX = "sidecar-state:tables:"


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

#: A Debezium change: ``(key, value, table)``; ``table`` is ``None`` when the record does not
#: say (a tombstone), see :func:`table_id`.
RowChange = tuple[bytes, bytes | None, str | None]


class Truncate(NamedTuple):
    """A Debezium truncate: every row of ``table`` (as :func:`table_id` names it) goes.

    A tuple like the changes, so the per-record size check needs no type test.
    """

    table: str


Decoder = Callable[[RecordLike], Change | None]


@dataclass(frozen=True, slots=True)
class RowDecoder:
    """The decoder of a Debezium binding: its changes name their table, and it truncates.

    Which Redis keys belong to a table is kept in one set per table (:meth:`index_key`),
    written in the same transaction as the rows: a truncate then costs one look-up of that
    set instead of a scan of the whole keyspace, and the bookkeeping is one ``SADD``/``SREM``
    per table and batch, not per record.
    """

    decode: Callable[[RecordLike], RowChange | Truncate | None]
    binding: str

    def __call__(self, record: RecordLike) -> RowChange | Truncate | None:
        return self.decode(record)

    def index_key(self, table: str) -> bytes:
        return table_index_key(binding=self.binding, table=table)


def table_index_key(*, binding: str, table: str) -> bytes:
    """The set of Redis keys one binding holds for one table. Binding names (Kubernetes
    names) contain no ``:``, so the split is unambiguous."""
    return f"{TABLE_INDEX_PREFIX}{binding}:{table}".encode()


_Decoded = TypeVar("_Decoded", Change | None, RowChange | Truncate | None)


class _Reject(Exception):
    """Internal: raised deep in a decoder, turned into :class:`BadRecord` at its edge."""

    def __init__(self, kind: BadRecordKind, detail: str) -> None:
        super().__init__(detail)
        self.kind: BadRecordKind = kind
        self.detail = detail


#: Redis accepts keys up to 512 MB, but a key is also read by every ``SCAN`` and copied into
#: a Debezium table index: anything this long is a producer bug, not an id.
DEFAULT_MAX_KEY_BYTES = 16 * 1024


def make_decoder(
    *,
    format: RecordFormat,
    keys: KeyMapping,
    max_value_bytes: int,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    binding: str = "",
    allow_empty_key: bool = True,
) -> Decoder | RowDecoder:
    """Build the decoder of one binding (``binding`` names its Debezium table indexes).

    ``raw``: record key (prefixed) -> value bytes as they are; a null value deletes.
    ``json``: the value must be a JSON document. Key from ``key_field`` of the document when
    configured (else the record key, see :func:`record_key_text`); value from ``value_field``
    (a string as its text, anything else as compact JSON, ``null`` deletes) when configured,
    else the document bytes as received. A null record value (tombstone) deletes the entry
    the record key maps to.
    ``debezium``: ``c``/``u``/``r`` set ``after`` (or its ``value_field``), ``d`` deletes, ``t``
    truncates the table, ``m`` is ignored; envelopes with ``schemas.enable=true``
    (``{schema, payload}``) are unwrapped and Kafka Connect's logical types decoded (see
    :func:`from_connect`). A string ``after`` (the MongoDB connector) is parsed as the
    document it holds. ``allow_empty_key`` False (the LMDB engine, which cannot hold an empty
    key) makes an empty key (prefix included) a bad record, ``missing_key``.
    """
    prefix = keys.prefix.encode()
    if format == "debezium":
        return RowDecoder(
            decode=_guarded(
                _debezium(prefix=prefix, keys=keys),
                max_value_bytes=max_value_bytes,
                max_key_bytes=max_key_bytes,
                allow_empty_key=allow_empty_key,
            ),
            binding=binding,
        )
    if format == "json":
        json_decode = _json(
            prefix=prefix, keys=keys, max_value_bytes=max_value_bytes, max_key_bytes=max_key_bytes
        )
        return json_decode if allow_empty_key else _no_empty_keys(json_decode)
    return _guarded(
        _raw(prefix=prefix),
        max_value_bytes=max_value_bytes,
        max_key_bytes=max_key_bytes,
        allow_empty_key=allow_empty_key,
    )


def _no_empty_keys(decode: Decoder) -> Decoder:
    """``decode``, with an empty key a bad record (``missing_key``): LMDB cannot hold one."""

    def guarded(record: RecordLike) -> Change | None:
        change = decode(record)
        if change is not None and not change[0]:
            raise _bad(
                record, _Reject("missing_key", "an empty key (the LMDB engine cannot hold one)")
            )
        return change

    return guarded


def _guarded(
    inner: Callable[[RecordLike], _Decoded],
    *,
    max_value_bytes: int,
    max_key_bytes: int,
    allow_empty_key: bool = True,
) -> Callable[[RecordLike], _Decoded]:
    """Size limits, and :class:`_Reject` -> :class:`BadRecord` with the record's position."""

    def decode(record: RecordLike) -> _Decoded:
        value = record.value
        try:
            if value is not None and len(value) > max_value_bytes:
                raise _Reject("too_large", f"{len(value)} bytes > max {max_value_bytes}")
            change = inner(record)
            if change is not None and len(change[0]) > max_key_bytes:
                raise _Reject(
                    "key_too_large", f"key of {len(change[0])} bytes > max {max_key_bytes}"
                )
            if change is not None and not allow_empty_key and not change[0]:
                raise _Reject("missing_key", "an empty key (the LMDB engine cannot hold one)")
            return change
        except _Reject as exc:
            raise _bad(record, exc) from None
        except UnicodeEncodeError as exc:
            raise _bad(record, _unpaired_surrogate(exc)) from None

    return decode


def _unpaired_surrogate(exc: UnicodeEncodeError) -> _Reject:
    """A JSON escape such as ``"\\ud800"`` parses to a string no UTF-8 can hold: the value
    is not UTF-8 text, so it is a bad record like invalid bytes, never an error of the feed."""
    found = exc.object[exc.start : exc.end]
    return _Reject("invalid_utf8", f"a JSON string holds an unpaired surrogate escape {found!r}")


def _bad(record: RecordLike, reject: _Reject) -> BadRecord:
    return BadRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        kind=reject.kind,
        detail=reject.detail,
    )


def _raw(*, prefix: bytes) -> Callable[[RecordLike], Change | None]:
    def decode(record: RecordLike) -> Change | None:
        if record.key is None:
            raise _Reject("missing_key", "raw records need a record key")
        return prefix + record.key, record.value

    return decode


def _json(
    *, prefix: bytes, keys: KeyMapping, max_value_bytes: int, max_key_bytes: int
) -> Callable[[RecordLike], Change | None]:
    """The ``json`` decoder, with :func:`_guarded`'s checks done in place: this is the
    bootstrap path's per-record call, and the extra frame of a wrapper was a quarter of it."""
    key_field = keys.key_field
    value_field = keys.value_field
    fields = value_field is not None or key_field is not None

    def decode(record: RecordLike) -> Change | None:
        raw = record.value
        key: bytes | None
        value: bytes | None
        try:
            if raw is None:
                key, value = record_key_text(record.key, key_field=key_field), None
            else:
                if len(raw) > max_value_bytes:
                    raise _Reject("too_large", f"{len(raw)} bytes > max {max_value_bytes}")
                try:  # _parse_fast, inlined
                    doc = _orjson_loads(raw)
                except _OrjsonError:
                    doc = _parse(raw)
                if fields and type(doc) is not dict:
                    raise _Reject("not_object", f"expected a JSON object, got {_kind(doc)}")
                if key_field is None:
                    key = record.key
                    if not key or key[0] == _QUOTE:
                        key = record_key_text(key, key_field=None)
                else:
                    text = doc.get(key_field)
                    if type(text) is str:
                        key = text.encode()
                    else:  # numbers as the standard library reads them (see _parse_fast)
                        key = _key_bytes(_parse(raw).get(key_field), key_field)
                if value_field is None:
                    value = raw
                else:
                    found = doc.get(value_field, _ABSENT)
                    if type(found) is str:
                        value = found.encode()
                    else:
                        exact = _parse(raw).get(value_field, _ABSENT)
                        value = _value_bytes(exact, value_field)
            key = prefix + key
            if len(key) > max_key_bytes:
                raise _Reject("key_too_large", f"key of {len(key)} bytes > max {max_key_bytes}")
            return key, value
        except _Reject as exc:
            raise _bad(record, exc) from None
        except UnicodeEncodeError as exc:
            raise _bad(record, _unpaired_surrogate(exc)) from None

    return decode


_QUOTE = ord('"')


def record_key_text(key: bytes | None, *, key_field: str | None) -> bytes:
    """The Redis key (before the prefix) a ``json`` record key maps to; see the module doc.

    Only a JSON string or object is unwrapped: a plain-text key (``u1``, ``42``) is already
    the text a set's ``key_field`` maps to, and is kept byte for byte.
    """
    if key is None:
        raise _Reject("missing_key", "the record has no key")
    first = key[:1]
    if first == b'"':
        try:
            doc = json.loads(key)
        except ValueError:
            return key
        return doc.encode() if type(doc) is str else key
    if first == b"{" and key_field is not None:
        try:
            doc = json.loads(key)
        except ValueError:
            return key
        if type(doc) is dict:
            return _key_bytes(doc.get(key_field), f"record key field {key_field!r}")
    return key


def _debezium(
    *, prefix: bytes, keys: KeyMapping
) -> Callable[[RecordLike], RowChange | Truncate | None]:
    key_field = keys.key_field
    value_field = keys.value_field

    def row_key(record: RecordLike, row: Any) -> bytes:
        key_doc: Any = None
        if record.key is not None:
            try:
                key_doc, key_schema = _split_schema(_parse(record.key))
                if key_schema is not None:
                    key_doc = from_connect(key_doc, key_schema)
            except _Reject:
                key_doc = None  # not JSON (StringConverter): the row's key field decides
            if isinstance(key_doc, dict) and key_doc:
                if key_field is None:
                    return _composite_key(key_doc)
                if key_doc.get(key_field) is not None:
                    return _scalar(key_doc[key_field], f"key field {key_field!r}")
            elif isinstance(key_doc, str | int) and not isinstance(key_doc, bool):
                return _scalar(key_doc, "record key")
        if key_field is not None and isinstance(row, dict):
            return _key_bytes(row.get(key_field), key_field)
        if record.key is not None and key_doc is None:
            raise _Reject("missing_key", "the record key is not JSON and no keyField is configured")
        raise _Reject("missing_key", "no key payload and no key field in the row")

    def decode(record: RecordLike) -> RowChange | Truncate | None:
        raw = record.value
        if raw is None:
            # Debezium follows each delete with a tombstone for compaction; deleting the key
            # a second time is harmless, and a tombstone without a usable key carries nothing.
            try:
                return prefix + row_key(record, None), None, None
            except _Reject:
                return None
        envelope, schema = _split_schema(_parse(raw))
        if envelope is None:  # schemas.enable=true wraps tombstones as {schema, payload: null}
            return None
        if not isinstance(envelope, dict) or "op" not in envelope:
            raise _Reject("bad_envelope", "expected a change event with an 'op' field")
        op = envelope["op"]
        if op in ("c", "u", "r"):
            after = envelope.get("after")
            if schema is not None or type(after) is str:
                after = _row(envelope, "after", schema, op)
            if not isinstance(after, dict):
                raise _Reject("bad_envelope", f"op {op!r} without an 'after' row")
            key = prefix + row_key(record, after)
            table = table_id(envelope, topic=record.topic)
            if value_field is None:
                return key, _compact(after), table
            return key, _value_bytes(after.get(value_field, _ABSENT), value_field), table
        if op == "d":
            before = _row(envelope, "before", schema, op)
            return prefix + row_key(record, before), None, table_id(envelope, topic=record.topic)
        if op == "t":
            return Truncate(table_id(envelope, topic=record.topic))
        if op in _DEBEZIUM_IGNORED_OPS:
            return None
        raise _Reject("bad_envelope", f"unknown op {op!r}")

    return decode


def _row(envelope: dict[str, Any], name: str, schema: Any, op: str) -> Any:
    """``before``/``after`` as a plain JSON row: a string (the MongoDB connector sends the
    document as extended-JSON text) is parsed, Connect logical types are decoded."""
    row = envelope.get(name)
    if isinstance(row, str):
        try:
            row = _parse(row.encode())
        except _Reject as exc:
            raise _Reject(
                "bad_envelope", f"op {op!r}: {name!r} is a string but not JSON: {exc.detail}"
            ) from None
        if not isinstance(row, dict):
            raise _Reject("bad_envelope", f"op {op!r}: {name!r} is a string, not a JSON object")
        return row
    if schema is not None and isinstance(row, dict):
        return from_connect(row, _field_schema(schema, name))
    return row


def table_id(envelope: dict[str, Any], *, topic: str) -> str:
    """The table an event belongs to: ``db.schema.table`` from its ``source`` block (as far as
    the connector fills it in), else the topic (one table per topic is Debezium's default)."""
    source = envelope.get("source")
    if type(source) is not dict:
        return topic
    name = source.get("table")
    if type(name) is not str or not name:
        return topic
    schema = source.get("schema")
    if type(schema) is str and schema:
        name = f"{schema}.{name}"
    db = source.get("db")
    if type(db) is str and db:
        name = f"{db}.{name}"
    return name


def _composite_key(key_doc: dict[str, Any]) -> bytes:
    parts = [_scalar(v, "key payload field") for v in key_doc.values()]
    if len(parts) == 1:
        return parts[0]
    return b":".join(p.replace(b"\\", b"\\\\").replace(b":", b"\\:") for p in parts)


# -- Kafka Connect logical types ----------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1)
_EPOCH_DATE = date(1970, 1, 1)


def _decimal_text(unscaled_base64: Any, scale: Any) -> Any:
    """Connect's Decimal (big-endian two's complement, base64 in JSON) -> exact decimal text.

    Text rather than a JSON number: a double would round ``numeric(38, 10)`` columns.
    """
    if not isinstance(unscaled_base64, str):
        return unscaled_base64
    # Imported here: only Debezium decimal columns need it (libmpdec, ~0.6 MiB resident).
    from decimal import Decimal

    unscaled = int.from_bytes(base64.b64decode(unscaled_base64, validate=True), "big", signed=True)
    digits = tuple(int(d) for d in str(abs(unscaled)))
    return format(Decimal((1 if unscaled < 0 else 0, digits, -int(scale))), "f")


def _timestamp(value: Any, *, per_second: int, zone: str) -> Any:
    if not isinstance(value, int):
        return value
    whole, fraction = divmod(value, per_second)
    stamp = (_EPOCH + timedelta(seconds=whole)).isoformat()
    return f"{stamp}.{fraction:0{len(str(per_second)) - 1}d}{zone}"


def _time_of_day(value: Any, *, per_second: int) -> Any:
    if not isinstance(value, int):
        return value
    whole, fraction = divmod(value, per_second)
    clock = (_EPOCH + timedelta(seconds=whole)).time().isoformat()
    return f"{clock}.{fraction:0{len(str(per_second)) - 1}d}"


def _date(value: Any) -> Any:
    return (_EPOCH_DATE + timedelta(days=value)).isoformat() if isinstance(value, int) else value


def _scale(schema: dict[str, Any]) -> Any:
    parameters = schema.get("parameters")
    return parameters.get("scale", 0) if isinstance(parameters, dict) else 0


#: Logical type name -> (value, its schema) -> plain JSON value. Instants with a zone (Connect's
#: Timestamp is UTC) end in ``Z``; Debezium's ``*Timestamp`` types carry no zone, and neither
#: does their text.
_LOGICAL: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "org.apache.kafka.connect.data.Decimal": lambda v, s: _decimal_text(v, _scale(s)),
    "io.debezium.data.VariableScaleDecimal": lambda v, s: (
        _decimal_text(v.get("value"), v.get("scale", 0)) if isinstance(v, dict) else v
    ),
    "org.apache.kafka.connect.data.Date": lambda v, s: _date(v),
    "io.debezium.time.Date": lambda v, s: _date(v),
    "org.apache.kafka.connect.data.Time": lambda v, s: _time_of_day(v, per_second=1000),
    "io.debezium.time.Time": lambda v, s: _time_of_day(v, per_second=1000),
    "io.debezium.time.MicroTime": lambda v, s: _time_of_day(v, per_second=10**6),
    "io.debezium.time.NanoTime": lambda v, s: _time_of_day(v, per_second=10**9),
    "org.apache.kafka.connect.data.Timestamp": lambda v, s: _timestamp(
        v, per_second=1000, zone="Z"
    ),
    "io.debezium.time.Timestamp": lambda v, s: _timestamp(v, per_second=1000, zone=""),
    "io.debezium.time.MicroTimestamp": lambda v, s: _timestamp(v, per_second=10**6, zone=""),
    "io.debezium.time.NanoTimestamp": lambda v, s: _timestamp(v, per_second=10**9, zone=""),
}


def from_connect(value: Any, schema: Any) -> Any:
    """A value of Kafka Connect's JsonConverter (``schemas.enable=true``) -> plain JSON.

    Decimals become exact decimal text (``{"scale": 2, "value": "AK8="}`` -> ``"1.75"``),
    dates ``YYYY-MM-DD``, times and timestamps ISO 8601. Anything without a known logical type
    is returned as it is; a value that does not fit its declared type is kept rather than
    dropping the row.
    """
    if value is None or not isinstance(schema, dict):
        return value
    name = schema.get("name")
    if name is not None:
        convert = _LOGICAL.get(name)
        if convert is not None:
            try:
                return convert(value, schema)
            except (ValueError, TypeError, OverflowError, ArithmeticError):
                return value
    kind = schema.get("type")
    if kind == "struct" and isinstance(value, dict):
        fields = schema.get("fields")
        if isinstance(fields, list):
            for field in fields:
                if isinstance(field, dict):
                    field_name = field.get("field")
                    if isinstance(field_name, str) and field_name in value:
                        value[field_name] = from_connect(value[field_name], field)
    elif kind == "array" and isinstance(value, list):
        items = schema.get("items")
        return [from_connect(item, items) for item in value]
    return value


def _field_schema(schema: Any, name: str) -> Any:
    if isinstance(schema, dict) and isinstance(schema.get("fields"), list):
        for field in schema["fields"]:
            if isinstance(field, dict) and field.get("field") == name:
                return field
    return None


def _split_schema(doc: Any) -> tuple[Any, Any]:
    """``{schema, payload}`` (Kafka Connect's JsonConverter with schemas) -> (payload, schema);
    anything else -> (doc, None)."""
    if type(doc) is dict and len(doc) == 2 and "payload" in doc and "schema" in doc:
        return doc["payload"], doc["schema"]
    return doc, None


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


def _parse_fast(raw: bytes) -> Any:
    """:func:`_parse` through orjson (about 5x faster), for the ``json`` format's hot path.

    Trusted only where it reads a document exactly as the standard library does: whether it is
    an object, and its strings. orjson turns integers beyond 64 bits into floats, so a caller
    that needs any other value (a number as a key, a non-string ``value_field``) re-reads the
    document with :func:`_parse`. Whatever orjson refuses (``NaN``, lone surrogates, invalid
    UTF-8, ...) goes to :func:`_parse` too, which accepts what it always accepted and names
    the error kind as it always did.
    """
    try:
        return _orjson_loads(raw)
    except _OrjsonError:
        return _parse(raw)


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
