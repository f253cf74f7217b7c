"""A fetched batch of records -> the one set of writes that leaves Redis in the same state.

Collapsing per key (last write wins) is what makes bootstrap from a topic that is not yet
fully compacted cheap: a key updated a thousand times costs one ``SET``. Sets and deletes come
out disjoint, so their order inside the transaction does not matter. Pure: no I/O.

Debezium batches also keep each table's index (see :class:`~sidecar_hydrator.records.RowDecoder`)
and carry truncates. A truncate drops the batch's earlier writes of that table, and runs before
the batch's remaining writes (which all came after it, or belong to other tables), so one
transaction still leaves Redis as the records did in order.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sidecar_hydrator.records import (
    BadRecord,
    Change,
    Decoder,
    RecordLike,
    RowChange,
    RowDecoder,
    Truncate,
)

#: Deletes every key a table index names, then the index; run inside the batch's transaction.
#: ``UNLINK`` frees the values off Redis's main thread; chunks keep ``unpack`` within Lua's
#: stack limit.
TRUNCATE_SCRIPT = """
local members = redis.call('SMEMBERS', KEYS[1])
for i = 1, #members, 1000 do
  redis.call('UNLINK', unpack(members, i, math.min(i + 999, #members)))
end
redis.call('UNLINK', KEYS[1])
return #members
"""

#: One Redis command as its arguments, e.g. ``("SADD", key, member)``.
Command = tuple[bytes | str | int, ...]


@dataclass(slots=True)
class Batch:
    """What one ``MULTI/EXEC`` writes, plus what the hydrator counts about it."""

    sets: dict[bytes, bytes] = field(default_factory=dict)
    deletes: set[bytes] = field(default_factory=set)
    #: Next offset to read per ``(topic, partition)``: last record's offset + 1.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    ignored: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    #: Newest record timestamp (ms since the epoch), for the "last event time" metadata.
    last_event_ms: int | None = None
    #: Debezium: table index keys to empty (with their rows) before this batch's writes.
    truncates: list[bytes] = field(default_factory=list)
    #: Debezium: the table index key of each key in ``sets``/``deletes`` that names one.
    index_of: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return len(self.sets) + len(self.deletes)

    @property
    def commands(self) -> list[Command]:
        """Bookkeeping to run first in the batch's transaction: truncates, then the table
        indexes of its keys (one ``SADD``/``SREM`` per table, not per key)."""
        commands: list[Command] = [("EVAL", TRUNCATE_SCRIPT, 1, key) for key in self.truncates]
        return commands + index_commands(self.index_of, sets=self.sets)


def index_commands(index_of: Mapping[bytes, bytes], *, sets: Container[bytes]) -> list[Command]:
    """The table index updates of keys (key -> index key): a key in ``sets`` is added to its
    table's index, any other one (a delete) removed; one ``SADD``/``SREM`` per table."""
    added: dict[bytes, list[bytes]] = {}
    removed: dict[bytes, list[bytes]] = {}
    for key, index in index_of.items():
        (added if key in sets else removed).setdefault(index, []).append(key)
    commands: list[Command] = [("SADD", index, *keys) for index, keys in added.items()]
    return commands + [("SREM", index, *keys) for index, keys in removed.items()]


def guard_reserved(
    decode: Decoder | RowDecoder, *, prefix: str, reserved: str
) -> Decoder | RowDecoder:
    """``decode``, refusing changes to keys in the hydrator's ``reserved`` namespace.

    A record keyed ``sidecar-state:offsets`` under the default prefix ``""`` would otherwise
    turn the offsets hash into a string, and every later transaction would fail. Only a
    prefix that can reach the namespace pays for the check; ``"flag:"`` never can.
    """
    if not (reserved.startswith(prefix) or prefix.startswith(reserved)):
        return decode
    reserved_bytes = reserved.encode()

    def refuse(record: RecordLike, key: bytes) -> BadRecord:
        return BadRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            kind="reserved_key",
            detail=f"key {key[:80]!r} is inside the hydrator's namespace {reserved!r}",
        )

    if isinstance(decode, RowDecoder):
        decode_row = decode.decode

        def guarded_row(record: RecordLike) -> RowChange | Truncate | None:
            change = decode_row(record)
            if (
                change is not None
                and not isinstance(change, Truncate)
                and change[0].startswith(reserved_bytes)
            ):
                raise refuse(record, change[0])
            return change

        return RowDecoder(decode=guarded_row, binding=decode.binding)

    def guarded(record: RecordLike) -> Change | None:
        change = decode(record)
        if change is not None and change[0].startswith(reserved_bytes):
            raise refuse(record, change[0])
        return change

    return guarded


def build_batch(partitions: Iterable[Sequence[RecordLike]], decode: Decoder | RowDecoder) -> Batch:
    """Decode and collapse records, given in order per partition; bad ones are collected.

    ``partitions`` is what a consumer's ``getmany`` returns (one ordered run of records per
    partition). Offsets advance past bad and ignored records too: they are consumed, not
    retried, so a poison record cannot wedge its partition. This loop runs once per record
    during bootstrap, hence the locals.
    """
    if isinstance(decode, RowDecoder):
        return _build_row_batch(partitions, decode)
    batch = Batch()
    sets = batch.sets
    deletes = batch.deletes
    bad = batch.bad
    count = ignored = 0
    last_event_ms = -1
    for records in partitions:
        if not records:
            continue
        last = records[-1]
        batch.offsets[(last.topic, last.partition)] = last.offset + 1
        # The newest event is the last one of a partition (its log order is time order).
        last_event_ms = max(last_event_ms, last.timestamp)
        count += len(records)
        for record in records:
            try:
                change = decode(record)
            except BadRecord as exc:
                bad.append(exc)
                continue
            if change is None:
                ignored += 1
                continue
            key, value = change
            if value is None:
                sets.pop(key, None)
                deletes.add(key)
            else:
                sets[key] = value
                if deletes:
                    deletes.discard(key)
    batch.records = count
    batch.ignored = ignored
    if last_event_ms >= 0:
        batch.last_event_ms = last_event_ms
    return batch


def _build_row_batch(partitions: Iterable[Sequence[RecordLike]], decoder: RowDecoder) -> Batch:
    """:func:`build_batch` for Debezium: the same collapsing, plus table indexes and truncates."""
    batch = Batch()
    sets = batch.sets
    deletes = batch.deletes
    index_of = batch.index_of
    decode = decoder.decode
    index_keys: dict[str, bytes] = {}
    last_event_ms = -1
    for records in partitions:
        if not records:
            continue
        last = records[-1]
        batch.offsets[(last.topic, last.partition)] = last.offset + 1
        last_event_ms = max(last_event_ms, last.timestamp)
        batch.records += len(records)
        for record in records:
            try:
                change = decode(record)
            except BadRecord as exc:
                batch.bad.append(exc)
                continue
            if change is None:
                batch.ignored += 1
                continue
            if isinstance(change, Truncate):
                index = decoder.index_key(change.table)
                for key in [k for k, i in index_of.items() if i == index]:
                    del index_of[key]
                    sets.pop(key, None)
                    deletes.discard(key)
                if index not in batch.truncates:
                    batch.truncates.append(index)
                continue
            key, value, table = change
            if table is not None:
                table_index = index_keys.get(table)
                if table_index is None:
                    table_index = index_keys[table] = decoder.index_key(table)
                index_of[key] = table_index
            if value is None:
                sets.pop(key, None)
                deletes.add(key)
            else:
                sets[key] = value
                deletes.discard(key)
    if last_event_ms >= 0:
        batch.last_event_ms = last_event_ms
    return batch
