"""NATS JetStream as a :class:`~sidecar_hydrator.source.Source`: a KV bucket or a stream.

Each Pod needs the whole state, so each reads with its own *ordered* consumer: ephemeral,
in memory, no acks, never shared and never durable. The source keeps the position itself (the
next stream sequence, stored in Redis with the data by the feed, as Kafka's offsets are) and
re-creates the consumer from it whenever anything looks wrong — a gap in the consumer's
sequence, a consumer the server forgot (a restart loses ephemeral consumers), a lost
connection. So a server restart loses nothing and delivers nothing twice past the position.

A stream is one partition (``<stream>/0`` in the offsets hash). Its identity is its creation
time: a stream deleted and created again under the same name gets a new one, and its
sequences start over, so a view read from the old one is rebuilt.

"Caught up" is the stream's last sequence when positioned (the snapshot): the feed is there
when its position passes it — and a consumer that reports nothing pending has seen every
message that matches its filter, so its position then moves to the end as known when the
fetch began, even when the stream's tail holds other subjects only. The KV watcher's
"initial values done" marker is not used: under writes it can lag without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, Parser

from sidecar_hydrator.aio import sleep_or_stop, until
from sidecar_hydrator.config import BindingSource, HydratorConfig, NatsSourceConfig
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.nats_auth import NkeyCallbacks, NkeyError, creds_callbacks, nkey_callbacks
from sidecar_hydrator.reasons import Problem, Reason
from sidecar_hydrator.records import RecordLike
from sidecar_hydrator.source import Partition, Snapshot, raising_source_errors

logger = logging.getLogger(__name__)

#: KV operations and server markers that remove a key (a KV delete or purge, a TTL expiry).
_KV_OPERATION = "KV-Operation"
_DELETING_OPERATIONS = frozenset({"DEL", "PURGE"})
_MARKER_REASON = "Nats-Marker-Reason"
#: How long the server keeps an ephemeral consumer nobody pulls from (a Pod that went away).
CONSUMER_INACTIVE_SECONDS = 30.0
#: The shortest pull: a fetch asked "only what is buffered" still needs a round trip.
MIN_FETCH_SECONDS = 0.02
#: How long a pull request stays open on the server when nothing is there to deliver.
PULL_EXPIRES_SECONDS = 1.0
_STATUS = "Status"
_DESCRIPTION = "Description"
#: How long an idle fetch waits for the consumer's pending count (bounds a stop's delay).
IDLE_CHECK_SECONDS = 1.0


class StreamPartition(NamedTuple):
    """A stream as the single partition it is to the feed (``partition`` is always 0)."""

    topic: str
    partition: int


class NatsRecord(NamedTuple):
    """One message as the decoders read it: the key is the KV key or the subject, the
    stream sequence is the offset, and a delete (or purge, or expiry) has no value. A named
    tuple: built once per message, it costs a third of a frozen dataclass. The time is kept
    as the reply subject's digits and read when asked for: a batch reads its last one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: When the server stored the message: nanoseconds since the epoch, in decimal digits.
    published_ns: bytes

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch."""
        return int(self.published_ns) // 1_000_000


class NatsConfigError(Exception):
    """The NATS client cannot be set up as configured (a credentials or TLS file)."""


#: The key of :func:`connect_options` that is no ``connect`` argument: the user's public nkey.
PUBLIC_NKEY = "public_nkey"


def connect_options(nats_source: NatsSourceConfig, *, name: str) -> dict[str, Any]:
    """nats-py connection settings (pure, apart from reading secret env vars and files):
    reconnect forever, so an outage only lets staleness grow (fail static).

    creds and nkey sign the server's nonce here (:mod:`sidecar_hydrator.nats_auth`), not with
    nats-py's ``nkeys`` import; their files are checked now, so a bad one is a config error
    that names it. For nkey, :data:`PUBLIC_NKEY` holds the key the server lists (see
    :func:`connect`)."""
    conn = nats_source.connection
    options: dict[str, Any] = {
        "servers": list(conn.servers),
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
    }
    signing: NkeyCallbacks | None = None
    try:
        if conn.auth_method == "creds":
            assert conn.creds_file is not None  # the config's own validation
            signing = creds_callbacks(creds_file=conn.creds_file)
        elif conn.auth_method == "nkey":
            assert conn.nkey_seed_file is not None
            signing = nkey_callbacks(seed_file=conn.nkey_seed_file)
    except NkeyError as exc:
        raise NatsConfigError(f"auth method {conn.auth_method}: {exc}") from None
    if signing is not None:
        options["signature_cb"] = signing.signature_cb
        if signing.user_jwt_cb is not None:
            options["user_jwt_cb"] = signing.user_jwt_cb
        if signing.public_key is not None:
            options[PUBLIC_NKEY] = signing.public_key
    elif conn.auth_method == "token":
        options["token"] = conn.env(conn.token_env)
    elif conn.auth_method == "userPassword":
        options["user"] = conn.env(conn.username_env)
        options["password"] = conn.env(conn.password_env)
    if conn.tls:
        try:
            context = ssl.create_default_context(cafile=conn.ca_file)
            if conn.cert_file:
                context.load_cert_chain(conn.cert_file, conn.key_file)
        except (OSError, ValueError) as exc:
            raise NatsConfigError(f"TLS settings: {exc}") from exc
        options["tls"] = context
    return options


#: A message as it came off the wire: subject, reply subject, payload, and its headers
#: (``None`` when it has none; parsed by nats-py when it has any).
RawMsg = tuple[bytes, bytes, bytes, dict[str, str] | None]
#: Takes a run of a subscription's messages, in the order they came: messages without
#: headers together (all of one read), a message with headers alone.
RawHandler = Callable[[list[RawMsg]], None]


class RawClient(Client):
    """nats-py's client, with subscriptions whose messages go to a plain function as they come
    off the wire (:meth:`subscribe_raw`), a read's worth at a time.

    nats-py hands every message through a ``Msg`` built with decoded subjects, a queue, and a
    task that awaits the callback: one event-loop turn and about as much CPU again as the
    protocol parser's per message. A pull consumer's inbox needs none of it, since its
    messages are taken in runs and decoded in one loop (:func:`records_of`). Its own parser
    (:class:`WireParser`) hands them over; whatever nats-py's parser reads comes through
    nats-py's ``Client._process_msg``, which its parser calls once per message with the
    subscription's id (guarded by a unit test). Every other subscription is nats-py's own.
    Headers, rare here (KV deletes, statuses), are parsed by nats-py as before."""

    def __init__(self) -> None:
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}
        self._ps = WireParser(self, raw_handlers=self._raw_handlers)

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """Subscribe to ``subject``, its messages handed to ``handler``. For inboxes that get
        nothing until asked (pull requests): a message that came between the ``SUB`` and the
        handler's registration would go to the subscription's unread iterator."""
        sub = await self.subscribe(subject)
        self._raw_handlers[sub._id] = handler
        return sub

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._raw_handlers.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        handler = self._raw_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        parsed = await self._process_headers(headers) if headers else None
        handler([(subject, reply, data, parsed)])


class WireParser(Parser):
    """nats-py's protocol parser, with the operation nearly all bytes are (``MSG``/``HMSG``)
    read by offsets into one copy of what was received, and a raw subscription's messages
    without headers handed to its handler together, once per read.

    nats-py matches two regular expressions per message, copies each payload twice and
    deletes it from the front of its buffer, then awaits ``Client._process_msg``: most of
    a bootstrap's CPU past the hydrator's own. Messages split across reads wait in nats-py's
    own state (``msg_arg``, ``needed``, ``header_needed``), so both parsers can take turns on
    one buffer: anything but a message (``PING``, ``INFO``, ``-ERR``...) goes to nats-py's
    parser, which reads the rest of that buffer itself."""

    def __init__(self, nc: Client, *, raw_handlers: Mapping[int, RawHandler]) -> None:
        super().__init__(nc)
        self._raw_handlers = raw_handlers

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        if self.state == AWAITING_MSG_PAYLOAD and len(buf) < self.needed + 2:
            return  # a large payload still arriving: no copy per read
        wire = bytes(buf)
        end = len(wire)
        pos = 0
        nc = self.nc
        handlers = self._raw_handlers
        # Messages for one raw handler, handed over before anything else is.
        run: list[RawMsg] = []
        run_handler: RawHandler = run.extend  # none yet: a stand-in no handler is
        delivered = delivered_bytes = 0
        try:
            while pos < end:
                if self.state == AWAITING_MSG_PAYLOAD:
                    arg = self.msg_arg
                    subject, sid, reply = arg["subject"], arg["sid"], arg["reply"]
                    header_size, size = self.header_needed, self.needed
                    if end - pos < size + 2:
                        break
                    self.state = AWAITING_CONTROL_LINE
                    self.header_needed = 0
                elif wire.startswith(b"MSG ", pos) or wire.startswith(b"HMSG ", pos):
                    eol = wire.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    fields = wire[pos:eol].split()
                    if (
                        len(fields) == 5
                        and fields[0] == b"MSG"
                        and fields[2].isdigit()
                        and fields[4].isdigit()
                    ):  # a delivery (it has a reply subject) without headers: most messages
                        subject, sid, reply, header_size = fields[1], int(fields[2]), fields[3], 0
                        size = int(fields[4])
                    else:
                        subject, sid, reply, header_size, size = _message_line(fields)
                    pos = eol + 2
                    if end - pos < size + 2:
                        self.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
                        self.needed, self.header_needed = size, header_size
                        self.state = AWAITING_MSG_PAYLOAD
                        break
                else:
                    if run:
                        run_handler(run)
                        run = []
                    del buf[:pos]
                    pos = 0
                    await super().parse()
                    return
                at, pos = pos, pos + size + 2
                handler = None if header_size else handlers.get(sid)
                if handler is not None:
                    if handler is not run_handler:
                        if run:
                            run_handler(run)
                        run, run_handler = [], handler
                    run.append((subject, reply, wire[at : at + size], None))
                    delivered += 1
                    delivered_bytes += size
                    continue
                if run:
                    run_handler(run)
                    run = []
                headers = wire[at : at + header_size] if header_size else None
                payload = wire[at + header_size : at + size]
                await nc._process_msg(sid, subject, reply, payload, headers)
                if self.buf is not buf:  # reset meanwhile (a reconnect): nothing left to read
                    pos = 0
                    return
        finally:
            del buf[:pos]
            if delivered:  # counted as nats-py counts each message
                stats = nc.stats
                stats["in_msgs"] += delivered
                stats["in_bytes"] += delivered_bytes
            if run:
                run_handler(run)


def _message_line(fields: list[bytes]) -> tuple[bytes, int, bytes, int, int]:
    """``MSG <subject> <sid> [reply] <size>`` or ``HMSG <subject> <sid> [reply] <header size>
    <size>``, split at whitespace (pure): subject, sid, reply (``b""``: none), header size,
    size."""
    plain = fields[0] == b"MSG"
    numbers = fields[-1:] if plain else fields[-2:]
    count = len(fields) - (0 if plain else 1)  # as many as a MSG line's
    if count not in (4, 5) or not all(n.isdigit() for n in [fields[2], *numbers]):
        raise ProtocolError("nats: malformed MSG")
    sid, size = int(fields[2]), int(fields[-1])
    header_size = 0 if plain else int(fields[-2])
    if header_size > size:
        raise ProtocolError("nats: malformed MSG")
    reply = fields[3] if count == 5 else b""
    return fields[1], sid, reply, header_size, size


async def connect(options: Mapping[str, Any], **callbacks: Any) -> RawClient:
    """Connect with :func:`connect_options`' settings. An nkey's public key has no ``connect``
    argument (nats-py derives it only through the ``nkeys`` package), so it is set on the
    client before connecting: ``Client._public_nkey``, which nats-py sends as ``nkey`` with
    the signature (guarded by a unit test and the nkey integration test)."""
    settings = dict(options)
    public = settings.pop(PUBLIC_NKEY, None)
    nc = RawClient()
    if public is not None:
        nc._public_nkey = public
    await nc.connect(**settings, **callbacks)
    return nc


class Run(NamedTuple):
    """What :func:`records_of` read from a run of delivered messages."""

    records: list[NatsRecord]
    #: The consumer sequence of the last message taken, and the next stream sequence.
    consumer_seq: int
    position: int
    #: What the last message taken said is still pending (``None``: nothing taken).
    pending: int | None
    #: Why the run stopped before its end (a gap or a stray message): re-create the consumer.
    broken: str | None = None


def records_of(
    msgs: Sequence[RawMsg], *, stream: str, subject_prefix: str, consumer_seq: int, position: int
) -> Run:
    """The records of delivered messages, in order (pure), up to the first one that breaks
    the ordered consumer's sequence (``consumer_seq`` is the last one read).

    Sequences, time and pending come from each message's reply subject, read directly
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or with domain
    and account hash after ``ACK``): nats-py's ``Msg.metadata`` builds three dataclasses and a
    datetime per message, a third of a bootstrap's CPU. Subjects stay bytes, as they came, so
    a KV key is a slice of one. KV deletes, purges and server markers (TTL expiry,
    ``Nats-Marker-Reason``) carry no value, so they delete the key. This loop runs once per
    message, hence the locals."""
    records: list[NatsRecord] = []
    append = records.append
    new = tuple.__new__  # NatsRecord(...) without its Python-level __new__
    prefix = subject_prefix.encode()
    cut = len(prefix)
    tokens: list[bytes] = []
    base = 2
    for subject, reply, data, headers in msgs:
        tokens = reply.split(b".")
        count = len(tokens)
        base = 2 if count == 9 else 4
        try:
            if (count != 9 and count < 11) or tokens[0] != b"$JS" or tokens[1] != b"ACK":
                raise ValueError(reply)
            seq = int(tokens[base + 4])
            offset = int(tokens[base + 3])
            published = tokens[base + 5]
            if not published.isdigit():
                raise ValueError(published)
        except ValueError:
            broken = f"not a JetStream message (reply subject {reply.decode(errors='replace')!r})"
            return Run(records, consumer_seq, position, None, broken)
        if seq != consumer_seq + 1:
            broken = f"consumer sequence gap ({seq} after {consumer_seq})"
            return Run(records, consumer_seq, position, None, broken)
        consumer_seq = seq
        deleting = headers is not None and (
            headers.get(_KV_OPERATION) in _DELETING_OPERATIONS or _MARKER_REASON in headers
        )
        key = subject[cut:] if subject.startswith(prefix) else subject
        value = None if deleting else data
        append(new(NatsRecord, (stream, 0, offset, key, value, published)))
        position = offset + 1
    pending = None
    if records:
        with contextlib.suppress(ValueError):  # unknown, as if nothing had been taken
            pending = int(tokens[base + 6])
    return Run(records, consumer_seq, position, pending)


class _Pull:
    """One ephemeral consumer pulled in batches: its messages are appended to a buffer by the
    subscription's callback, and taken from it in runs. nats-py's own ``fetch`` awaits every
    message with a timeout of its own, which caps a consumer at a third of the rate the
    server delivers at; pull requests keep the backpressure (nothing is delivered that was not
    asked for) without that cost.

    Two requests may be open at once: the next is sent when what is still owed drops to half
    a batch, so the server keeps delivering while a batch is applied (one request at a time
    left it idle for a round trip and a batch's apply, each time). Each request has a reply
    subject of its own, so a status that ends one (408: expired) names it; messages fill the
    requests in order, as the server serves them."""

    def __init__(self, *, nc: RawClient, stream: str, name: str) -> None:
        self.nc = nc
        self.stream = stream
        self.name = name
        self.inbox = nc.new_inbox()
        self.sub: Subscription | None = None
        self.buffer: list[RawMsg] = []
        self.arrived = asyncio.Event()
        #: Open requests, oldest first: reply subject -> (messages still owed, expiry).
        self.open: dict[str, list[float]] = {}
        #: Messages received and not yet charged to the open requests (:meth:`_settle`).
        self._unsettled = 0
        self._next = 0
        #: The server said the consumer is gone (or never was): re-create it.
        self.lost = False

    @property
    def owed(self) -> int:
        self._settle()
        return int(sum(owed for owed, _ in self.open.values()))

    async def start(self) -> None:
        self.sub = await self.nc.subscribe_raw(f"{self.inbox}.*", self._on_messages)

    def _on_messages(self, run: list[RawMsg]) -> None:
        headers = run[0][3]  # a message with headers comes alone
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self.buffer += run
            self._unsettled += len(run)
        elif status == "100":  # an idle heartbeat
            return
        else:  # 404 no messages, 408 request expired, 409 / 503: that request is over
            assert headers is not None
            self._settle()
            self.open.pop(run[0][0].decode(errors="replace"), None)
            self.lost = (
                self.lost
                or status == "503"
                or (status == "409" and "deleted" in headers.get(_DESCRIPTION, "").lower())
            )
        self.arrived.set()

    def _settle(self) -> None:
        """Charge the messages received since the last call to the open requests, oldest
        first, as the server filled them; once per run rather than per message."""
        unsettled, self._unsettled = self._unsettled, 0
        while unsettled and self.open:
            oldest = next(iter(self.open))
            credit = self.open[oldest]
            charged = min(unsettled, int(credit[0]))
            credit[0] -= charged
            unsettled -= charged
            if credit[0] <= 0:
                del self.open[oldest]

    async def request(self, *, batch: int, expires_s: float) -> None:
        """Ask for another ``batch`` once what is owed drops to half a batch (at most two
        requests open)."""
        now = time.monotonic()
        self._settle()
        for subject, (_, expires_at) in list(self.open.items()):
            if now > expires_at:  # its end never arrived (a lost status): forget it
                del self.open[subject]
        if len(self.open) >= 2 or (self.open and self.owed > batch // 2):
            return
        self._next += 1
        reply = f"{self.inbox}.{self._next}"
        self.open[reply] = [batch, now + expires_s + 1.0]
        request = {"batch": batch, "expires": int(expires_s * 1e9)}
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.name}",
            json.dumps(request).encode(),
            reply=reply,
        )

    def take(self, limit: int) -> list[RawMsg]:
        run, self.buffer = self.buffer[:limit], self.buffer[limit:]
        if not self.buffer:
            self.arrived.clear()
        return run


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _nats_errors(
    method: Callable[Concatenate[NatsSource, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[NatsSource, _P], Coroutine[Any, Any, _R]]:
    """A :class:`NatsSource` method whose nats-py errors, should one get out of it, leave it
    as :class:`SourceError` (the hydrator knows no nats-py)."""

    @functools.wraps(method)
    async def translated(self: NatsSource, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with raising_source_errors((nats.errors.Error,), source="nats", binding=self._binding.name):
            return await method(self, *args, **kwargs)

    return translated


def connection_problem(exc: BaseException, *, servers: str) -> Problem:
    """What a NATS connection error means for the user (pure), in Kafka's vocabulary."""
    text = str(exc).lower()
    if "permissions violation" in text:
        return Problem(Reason.AUTHORIZATION_FAILED, f"{servers} refused access: {exc}")
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text:
        return Problem(Reason.AUTHENTICATION_FAILED, f"{servers} refused the credentials: {exc!r}")
    return Problem(Reason.UNREACHABLE, f"no NATS server answers at {servers} ({exc!r})")


class NatsSource:
    """One binding's KV bucket or stream (a :class:`~sidecar_hydrator.source.Source`)."""

    def __init__(self, *, binding: BindingSource, config: HydratorConfig, metrics: Metrics) -> None:
        if binding.nats is None:
            raise ValueError(f"binding {binding.name} has no NATS source")
        self._binding = binding
        self._nats = binding.nats
        self._config = config
        self._metrics = metrics
        self._stream = binding.nats.stream_name
        self._partition = StreamPartition(self._stream, 0)
        self._nc: RawClient | None = None
        self._js: JetStreamContext | None = None
        self._sub: _Pull | None = None
        #: Consumers being removed in the background (awaited on close).
        self._dropping: set[asyncio.Task[None]] = set()
        #: The next stream sequence to read.
        self._position = 1
        #: Where a fresh bootstrap starts: below it, last-per-subject delivery applies.
        self._beginning = 1
        #: The next consumer delivers each subject's newest message only (a fresh bootstrap).
        self._deliver_last = False
        self._consumer_seq = 0
        #: The stream's end (last sequence + 1) as last known, and messages still pending.
        self._stream_end: int | None = None
        self._pending: int | None = None
        self._reported_ms: float | None = None
        self._warned = ""
        #: Why the binding cannot be read right now (``None``: nothing known to be wrong).
        self.problem: Problem | None = None
        self._servers = ",".join(binding.nats.connection.servers)
        kv = binding.nats.kv
        what = f"KV bucket {kv.bucket}" if kv is not None else f"stream {self._stream}"
        self._missing = Problem(Reason.TOPIC_MISSING, f"{what} does not exist on {self._servers}")

    # -- the Source protocol ------------------------------------------------------------------

    @_nats_errors
    async def snapshot(self, stop: asyncio.Event) -> Snapshot:
        backoff = 0.1
        while True:
            js = await self._open(stop)
            taken_ms = time.time() * 1000
            try:
                info = await until(stop, js.stream_info(self._stream))
            except nats.js.errors.NotFoundError:
                self.problem = self._missing
                self._warn_once(f"waiting for stream {self._stream}")
                await until(stop, asyncio.sleep(1.0))
                continue
            except (nats.errors.Error, TimeoutError) as exc:
                self._failed("positioning", exc)
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            self.problem = None
            state = info.state
            end = state.last_seq + 1
            # Per-subject retention keeps every subject's newest message, so any earlier
            # position can be continued from; a stream replayed in full needs all of it.
            beginning = 1 if self._nats.last_per_subject else max(1, state.first_seq)
            self._stream_end = end
            self._beginning = beginning
            return Snapshot(
                beginnings={self._partition: beginning},
                ends={self._partition: end},
                identities={self._stream: _identity(info.created)},
                taken_ms=taken_ms,
            )

    def assign(self, starts: Mapping[Partition, int]) -> None:
        start = starts.get(self._partition, self._beginning)
        self._position = max(1, start)
        self._deliver_last = self._nats.last_per_subject and start <= self._beginning
        self._pending = None
        self._drop_consumer()

    @_nats_errors
    async def fetch(
        self, *, max_records: int, timeout_ms: int, stop: asyncio.Event
    ) -> Mapping[Partition, Sequence[RecordLike]]:
        if self._nc is not None and not self._nc.is_connected:
            # Reconnecting (forever): the view stays served and its staleness grows.
            self._drop_consumer()
            await sleep_or_stop(stop, max(MIN_FETCH_SECONDS, timeout_ms / 1000))
            return {}
        try:
            sub = await self._consumer(stop)
            known_end = self._stream_end
            # The next batch is asked for while this one is applied.
            await sub.request(batch=max_records, expires_s=PULL_EXPIRES_SECONDS)
            if not sub.buffer:
                # asyncio.timeout, not wait_for: no task per wait, so a live message reaches
                # the write one event-loop turn sooner.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(MIN_FETCH_SECONDS, timeout_ms / 1000)):
                        await sub.arrived.wait()
            if sub.lost:
                raise nats.js.errors.NotFoundError(description=f"consumer {sub.name} is gone")
            msgs = sub.take(max_records)
            if not msgs:
                await self._idle(known_end)
                return {}
        except (nats.errors.Error, TimeoutError) as exc:
            self._failed("reading", exc)
            self._drop_consumer()
            await sleep_or_stop(stop, 0.5)
            return {}
        run = records_of(
            msgs,
            stream=self._stream,
            subject_prefix=self._nats.subject_prefix,
            consumer_seq=self._consumer_seq,
            position=self._position,
        )
        records: Sequence[RecordLike] = run.records
        self._consumer_seq, self._position = run.consumer_seq, run.position
        if run.pending is not None:
            self._pending = run.pending
        gap = run.broken is not None
        if gap:
            # Ordered consumer: a gap means lost messages; re-read from the position.
            logger.info("binding %s: %s; re-creating the consumer", self._binding.name, run.broken)
            self._drop_consumer()
        self._reported_ms = time.time() * 1000
        self.problem = None  # the server answered
        if self._pending == 0 and known_end is not None and not gap:
            # Nothing more matches the filter: the stream's tail (other subjects) is read.
            self._position = max(self._position, known_end)
        if self._stream_end is None or self._position > self._stream_end:
            self._stream_end = self._position
        return {self._partition: records} if records else {}

    async def position(self, partition: Partition) -> int:
        return self._position

    def end(self, partition: Partition) -> int | None:
        """The position plus the messages the consumer reported still pending: the lag is
        pending messages, which a filtered stream's sequences would overstate."""
        if self._pending is None:
            return self._stream_end
        return self._position + self._pending

    def reported_at(self, partition: Partition) -> float | None:
        return self._reported_ms

    def go_live(self) -> None:
        """Nothing to resize: a pull asks for at most one batch."""

    @_nats_errors
    async def identities(self, stop: asyncio.Event) -> Mapping[str, str]:
        if self._js is None:
            return {}
        try:
            info = await until(stop, self._js.stream_info(self._stream))
        except nats.js.errors.NotFoundError:
            return {self._stream: "missing"}
        except (nats.errors.Error, TimeoutError) as exc:
            self._failed("stream info", exc)
            return {}
        self._stream_end = max(self._stream_end or 0, info.state.last_seq + 1)
        return {self._stream: _identity(info.created)}

    async def added_partitions(
        self, known: Iterable[Partition], stop: asyncio.Event
    ) -> dict[Partition, int]:
        return {}

    async def close(self) -> None:
        self._drop_consumer()
        if self._dropping:
            await asyncio.wait(self._dropping, timeout=0.5)
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            try:
                await asyncio.wait_for(nc.close(), timeout=1.0)
            except (TimeoutError, nats.errors.Error) as exc:
                logger.warning("closing the NATS connection of %s: %r", self._binding.name, exc)

    # -- nats-py ------------------------------------------------------------------------------

    async def _open(self, stop: asyncio.Event) -> JetStreamContext:
        backoff = 0.1
        while self._js is None:
            try:
                options = connect_options(
                    self._nats, name=f"sidecar-state-hydrator.{self._binding.name}"
                )
                self._nc = await until(stop, connect(options, error_cb=self._on_error))
                self._js = self._nc.jetstream(timeout=5.0)
            except NatsConfigError as exc:
                self.problem = Problem(
                    Reason.SOURCE_CONFIG, f"the NATS client cannot be set up: {exc}"
                )
                self._metrics.nats_errors.labels(binding=self._binding.name, kind="config").inc()
                self._warn_once(f"the NATS client cannot be set up: {exc}", level=logging.ERROR)
                await until(stop, asyncio.sleep(5.0))
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self._failed("connecting", exc)
                await until(stop, asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        """nats-py reports every failed (re)connect here; each distinct error is logged once.
        Refused credentials are an error a person must fix, so they say so."""
        problem = connection_problem(exc, servers=self._servers)
        if problem.reason is not Reason.UNREACHABLE:
            self.problem = problem
            self._metrics.nats_errors.labels(binding=self._binding.name, kind="auth").inc()
            method = self._nats.connection.auth_method or "none"
            self._warn_once(
                f"the NATS server refused the credentials (auth method {method}): {exc!r}; "
                "check the binding's auth Secret (retrying; the served view stays as it is)",
                level=logging.ERROR,
            )
            return
        self._metrics.nats_errors.labels(binding=self._binding.name, kind="unreachable").inc()
        self._warn_once(f"NATS connection: {exc!r}")

    async def _consumer(self, stop: asyncio.Event) -> _Pull:
        if self._sub is not None:
            return self._sub
        js = await self._open(stop)
        assert self._nc is not None
        filters = list(self._nats.filter_subjects)
        config = ConsumerConfig(
            name=self._nc.new_inbox().rsplit(".", 1)[-1],
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=CONSUMER_INACTIVE_SECONDS,
            filter_subjects=filters or None,
        )
        if self._deliver_last:
            config.deliver_policy = DeliverPolicy.LAST_PER_SUBJECT
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self._position
        if len(filters) == 1:
            config.filter_subject, config.filter_subjects = filters[0], None
        assert config.name is not None
        pull = _Pull(nc=self._nc, stream=self._stream, name=config.name)
        await pull.start()
        try:
            await until(stop, js.add_consumer(self._stream, config=config))
        except BaseException:
            await _remove(pull, js)
            raise
        self._sub = pull
        self._consumer_seq = 0
        # From now on a re-created consumer continues from the position, whatever it was.
        self._deliver_last = False
        if self._warned:
            logger.info("binding %s: reading %s again", self._binding.name, self._stream)
            self._warned = ""
        return self._sub

    async def _idle(self, known_end: int | None) -> None:
        """A fetch that found nothing: ask the consumer whether anything is pending (this also
        tells a reachable server from a lost one, and a consumer the server forgot, from one
        with nothing to deliver); nothing pending means caught up to now."""
        assert self._js is not None
        assert self._sub is not None
        info = await self._js.consumer_info(
            self._stream, self._sub.name, timeout=IDLE_CHECK_SECONDS
        )
        self._pending = info.num_pending
        self._reported_ms = time.time() * 1000
        self.problem = None  # the server answered
        # Only once every message the consumer delivered has been received: one still on
        # its way is not pending any more, but not read either.
        received = info.delivered is not None and info.delivered.consumer_seq == self._consumer_seq
        if info.num_pending == 0 and received and known_end is not None:
            self._position = max(self._position, known_end)

    def _drop_consumer(self) -> None:
        """Forget the consumer; it is removed from the server in the background (should that
        fail, the server drops it after ``CONSUMER_INACTIVE_SECONDS`` anyway)."""
        sub, self._sub = self._sub, None
        if sub is None or self._js is None or self._nc is None or self._nc.is_closed:
            return
        task = asyncio.ensure_future(_remove(sub, self._js))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    def _failed(self, what: str, exc: BaseException) -> None:
        problem = connection_problem(exc, servers=self._servers)
        refused = (Reason.AUTHENTICATION_FAILED, Reason.AUTHORIZATION_FAILED)
        # A refusal the error callback reported outlives the "no servers" that follows it.
        if problem.reason in refused or self.problem is None or self.problem.reason not in refused:
            self.problem = problem
        self._metrics.nats_errors.labels(binding=self._binding.name, kind="unreachable").inc()
        self._warn_once(f"{what} failed: {exc!r}")

    def _warn_once(self, message: str, *, level: int = logging.WARNING) -> None:
        if message != self._warned:
            self._warned = message
            logger.log(level, "binding %s: %s", self._binding.name, message)


async def _remove(pull: _Pull, js: JetStreamContext) -> None:
    # A consumer on a connection that went away, or one a restarted server never knew:
    # nothing to undo.
    if pull.sub is not None:
        with contextlib.suppress(Exception):
            await pull.sub.unsubscribe()
    with contextlib.suppress(Exception):
        await js.delete_consumer(pull.stream, pull.name)


def _identity(created: Any) -> str:
    return created.isoformat() if created is not None else "unknown"
