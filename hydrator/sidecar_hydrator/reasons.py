"""Why a hydrator is (not) hydrated: one vocabulary for the hydrator and the operator.

The hydrator reports its state everywhere a user looks (``/startupz`` and ``/readyz`` bodies,
the ``state`` gauge's ``reason`` label, ``sidecar-state:meta``, its log); the operator reads
the gauge (its name is in :mod:`sidecar_hydrator.config`, with the other metric names) and
names the reason on the StateBinding (condition ``Hydrated``, a Warning Event,
``kubectl get sb``). Both import this module, so a reason renamed on one side breaks the type
checker, not a binding's status. Kafka and NATS map their errors onto the same reasons, so a
runbook entry (README, "Troubleshooting") covers both.

The set is closed on purpose: the ``reason`` label stays bounded (every reason is exported,
0 or 1), and an alert or a runbook can list them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """The hydrator's state: ``hydrated``, or the first thing that keeps it from being so."""

    HYDRATED = "hydrated"
    #: Reading the source into the store; the detail says how far (records and %).
    HYDRATING = "hydrating"
    #: A Kafka topic (or NATS stream/bucket) the binding names does not exist.
    TOPIC_MISSING = "topic_missing"
    #: No broker (server) answers at the configured address.
    UNREACHABLE = "unreachable"
    #: The broker refused the credentials (SASL, NATS auth).
    AUTHENTICATION_FAILED = "authentication_failed"
    #: The credentials were accepted but may not read the topic (ACLs, permissions).
    AUTHORIZATION_FAILED = "authorization_failed"
    #: The client cannot be set up as configured (a TLS file that does not load, say).
    SOURCE_CONFIG = "source_config"
    #: Redis refused writes: ``maxMemory`` is too small for the view.
    STORE_FULL = "store_full"
    #: Redis does not answer or keeps failing.
    STORE_UNAVAILABLE = "store_unavailable"
    #: The served view was flushed or written over; it is being rebuilt.
    DAMAGED = "damaged"


#: Worst first: a hydrator with several problems reports the first of these it has (a store
#: that refuses writes is the problem even while a topic is also missing).
PRIORITY: tuple[Reason, ...] = (
    Reason.STORE_UNAVAILABLE,
    Reason.DAMAGED,
    Reason.STORE_FULL,
    Reason.AUTHENTICATION_FAILED,
    Reason.AUTHORIZATION_FAILED,
    Reason.SOURCE_CONFIG,
    Reason.TOPIC_MISSING,
    Reason.UNREACHABLE,
    Reason.HYDRATING,
    Reason.HYDRATED,
)

#: The binding condition's CamelCase ``reason`` for each (Kubernetes convention).
CONDITION_REASONS: dict[Reason, str] = {
    Reason.HYDRATED: "Hydrated",
    Reason.HYDRATING: "Hydrating",
    Reason.TOPIC_MISSING: "TopicMissing",
    Reason.UNREACHABLE: "SourceUnreachable",
    Reason.AUTHENTICATION_FAILED: "AuthenticationFailed",
    Reason.AUTHORIZATION_FAILED: "AuthorizationFailed",
    Reason.SOURCE_CONFIG: "SourceConfigInvalid",
    Reason.STORE_FULL: "StoreFull",
    Reason.STORE_UNAVAILABLE: "StoreUnavailable",
    Reason.DAMAGED: "ViewDamaged",
}

#: What to do about each, in a few words (the README's troubleshooting section has more).
FIXES: dict[Reason, str] = {
    Reason.HYDRATED: "",
    Reason.HYDRATING: "wait; a large topic takes a while (see the progress)",
    Reason.TOPIC_MISSING: "create the topic, or correct spec.source.kafka.topics",
    Reason.UNREACHABLE: "correct spec.source.kafka.bootstrapServers, or let the Pods reach "
    "the brokers (NetworkPolicy, DNS)",
    Reason.AUTHENTICATION_FAILED: "correct the credentials in the auth Secret "
    "(spec.source.kafka.auth.secretRef)",
    Reason.AUTHORIZATION_FAILED: "grant the user Read and Describe on the topic (Kafka ACLs)",
    Reason.SOURCE_CONFIG: "correct the TLS or credential files in the auth Secret",
    Reason.STORE_FULL: "raise spec.store.maxMemory",
    Reason.STORE_UNAVAILABLE: "check the sidecar-state-redis container of the Pod",
    Reason.DAMAGED: "nothing: the view is rebuilt; find who writes to the store",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a source (or the store) reports: a reason and, for people, what exactly."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class State:
    """The hydrator's state as it reports it: the reason, what exactly, and the progress of
    the hydration under way (records read of records to read; 0 of 0 when none is)."""

    reason: Reason
    detail: str = ""
    read_records: int = 0
    target_records: int = 0

    @property
    def percent(self) -> int:
        """How far the hydration is, in whole percent (100 when there is nothing to read)."""
        if self.target_records <= 0:
            return 100
        return min(100, self.read_records * 100 // self.target_records)

    def line(self) -> str:
        """``<reason>: <detail>``: the probes' body, the log's and the metadata's wording."""
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)


def progress_detail(*, read: int, target: int) -> str:
    """How a hydration under way is described: records and percent."""
    percent = 100 if target <= 0 else min(100, read * 100 // target)
    return f"read {read} of {target} records ({percent}%)"


def worst(problems: list[Problem]) -> Problem | None:
    """The problem that comes first in :data:`PRIORITY` (the first given among equals)."""
    if not problems:
        return None
    return min(problems, key=lambda p: PRIORITY.index(p.reason))


def parse_body(body: str) -> tuple[Reason, str] | None:
    """Read a probe body (``"<reason>: <detail>"``, first line); ``None`` if it is not one."""
    line = body.strip().splitlines()[0] if body.strip() else ""
    name, _, detail = line.partition(":")
    try:
        return Reason(name.strip()), detail.strip()
    except ValueError:
        return None
