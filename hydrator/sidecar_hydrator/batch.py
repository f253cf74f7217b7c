"""A fetched batch of records -> the one set of writes that leaves Redis in the same state.

Collapsing per key (last write wins) is what makes bootstrap from a topic that is not yet
fully compacted cheap: a key updated a thousand times costs one ``SET``. Sets and deletes come
out disjoint, so their order inside the transaction does not matter. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sidecar_hydrator.records import BadRecord, Change, Decoder, RecordLike


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

    @property
    def writes(self) -> int:
        return len(self.sets) + len(self.deletes)


def guard_reserved(decode: Decoder, *, prefix: str, reserved: str) -> Decoder:
    """``decode``, refusing changes to keys in the hydrator's ``reserved`` namespace.

    A record keyed ``sidecar-state:offsets`` under the default prefix ``""`` would otherwise
    turn the offsets hash into a string, and every later transaction would fail. Only a
    prefix that can reach the namespace pays for the check; ``"flag:"`` never can.
    """
    if not (reserved.startswith(prefix) or prefix.startswith(reserved)):
        return decode
    reserved_bytes = reserved.encode()

    def guarded(record: RecordLike) -> Change | None:
        change = decode(record)
        if change is not None and change[0].startswith(reserved_bytes):
            raise BadRecord(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                kind="reserved_key",
                detail=f"key {change[0][:80]!r} is inside the hydrator's namespace {reserved!r}",
            )
        return change

    return guarded


def build_batch(partitions: Iterable[Sequence[RecordLike]], decode: Decoder) -> Batch:
    """Decode and collapse records, given in order per partition; bad ones are collected.

    ``partitions`` is what a consumer's ``getmany`` returns (one ordered run of records per
    partition). Offsets advance past bad and ignored records too: they are consumed, not
    retried, so a poison record cannot wedge its partition. This loop runs once per record
    during bootstrap, hence the locals.
    """
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
