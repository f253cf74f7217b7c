"""The seam between where records come from and how they are applied to the store.

A :class:`Source` knows positions, snapshots, fetching and progress of one binding's
partitions (Kafka: :mod:`sidecar_hydrator.kafka_source`; NATS JetStream, one stream as one
partition: :mod:`sidecar_hydrator.nats_source`). The applier
(:class:`sidecar_hydrator.consumer.Feed`) is source-neutral: it decodes and collapses
record runs, writes them with their positions in one transaction, and decides when a view is
caught up and how fresh it is. Positions are plain integers, "the next one to read", per
partition; a partition is anything with a ``topic`` (stream) and a ``partition`` (shard).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar_hydrator.reasons import Problem
from sidecar_hydrator.records import RecordLike


class Partition(Protocol):
    """One ordered run of records: Kafka's ``TopicPartition`` fits."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    def __hash__(self) -> int: ...


class NeedRebuild(Exception):
    """The stored positions cannot be continued from; the view must be rebuilt.

    ``binding`` names the one binding whose part of the view must be re-read (the others'
    keys are carried over into the rebuilt view); ``None`` means all of them.
    """

    def __init__(self, reason: str, *, binding: str | None = None) -> None:
        super().__init__(reason if binding is None else f"{reason} (binding {binding})")
        self.reason = reason
        self.binding = binding


class SourceError(Exception):
    """A source failed in a way it does not retry by itself (Kafka, NATS: whichever).

    The source's trouble, never the store's: the hydrator positions the binding again and
    the served view stays as it is (fail static); it is never a reason for a rebuild. Each
    source turns its client library's errors into this one at its edge, so nothing outside
    the source modules needs to know any client library.
    """

    def __init__(self, message: str, *, source: str, binding: str, kind: str) -> None:
        super().__init__(f"{source} source of binding {binding}: {message}")
        self.source = source
        self.binding = binding
        #: The client library's own error (``KafkaConnectionError``, ...): for logs.
        self.kind = kind


@contextlib.contextmanager
def raising_source_errors(
    errors: tuple[type[BaseException], ...], *, source: str, binding: str
) -> Iterator[None]:
    """Turn a client library's ``errors`` into :class:`SourceError` at a source's edge (the
    original is the ``__cause__``); :class:`NeedRebuild` and anything else pass through."""
    try:
        yield
    except NeedRebuild:
        raise
    except errors as exc:
        raise SourceError(
            repr(exc), source=source, binding=binding, kind=type(exc).__name__
        ) from exc


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where every partition begins and ends, taken when a binding is (re)positioned."""

    beginnings: Mapping[Partition, int]
    ends: Mapping[Partition, int]
    #: Stream name -> identity (Kafka's topic ID): a re-created stream gets a new one.
    identities: Mapping[str, str]
    #: Wall-clock ms at which the ends were asked for.
    taken_ms: float


class Source(Protocol):
    """One binding's partitions, read in order from explicit positions.

    Any failure a method does not retry itself is raised as :class:`SourceError`.
    """

    @property
    def problem(self) -> Problem | None:
        """Why the binding cannot be read right now (a missing topic, refused credentials, no
        broker), in the reasons' vocabulary; ``None`` when nothing is known to be wrong."""
        ...

    async def snapshot(self, stop: asyncio.Event) -> Snapshot:
        """Every partition with its beginning and end, waiting for missing streams."""
        ...

    def assign(self, starts: Mapping[Partition, int]) -> None:
        """Read exactly these partitions, from these positions."""
        ...

    async def fetch(
        self, *, max_records: int, timeout_ms: int, stop: asyncio.Event
    ) -> Mapping[Partition, Sequence[RecordLike]]:
        """Ordered runs of records per partition (``{}`` on a transient failure, logged).

        Raises :class:`NeedRebuild` when a position no longer exists.
        """
        ...

    async def position(self, partition: Partition) -> int:
        """The next position to read, past anything that carries no record (markers)."""
        ...

    def end(self, partition: Partition) -> int | None:
        """The partition's end as last reported (``None``: not known yet)."""
        ...

    def reported_at(self, partition: Partition) -> float | None:
        """Wall-clock ms of the report :meth:`end` comes from."""
        ...

    def go_live(self) -> None:
        """The view caught up: fetch in small steps from now on."""
        ...

    async def identities(self, stop: asyncio.Event) -> Mapping[str, str]:
        """The current identity of each stream (see :attr:`Snapshot.identities`); the ones
        it cannot tell right now are left out."""
        ...

    async def added_partitions(
        self, known: Iterable[Partition], stop: asyncio.Event
    ) -> dict[Partition, int]:
        """Partitions that appeared since ``known``, with their beginnings."""
        ...

    async def close(self) -> None: ...


def recreated(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Streams whose identity differs from the one the view was read from (pure); a stream
    the source cannot tell about right now is not concluded about."""
    return sorted(t for t, identity in stored.items() if current.get(t, identity) != identity)
