"""Pure parts of the NATS source: connection settings, and messages as records."""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime

import pytest
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError

from sidecar_hydrator.config import NatsConnection, NatsKv, NatsSourceConfig, parse
from sidecar_hydrator.nats_auth import PREFIX_USER, Nkey
from sidecar_hydrator.nats_source import (
    PUBLIC_NKEY,
    NatsConfigError,
    RawClient,
    RawMsg,
    WireParser,
    _Pull,
    connect_options,
    records_of,
)


def source(**connection: object) -> NatsSourceConfig:
    return NatsSourceConfig(
        connection=parse(NatsConnection, {"servers": ["nats://n:4222"], **connection}),
        kv=NatsKv(bucket="flags"),
    )


def test_reconnects_forever_and_reads_secrets_from_the_named_env(monkeypatch):
    monkeypatch.setenv("TOKEN_VAR", "s3cret")

    options = connect_options(source(auth_method="token", token_env="TOKEN_VAR"), name="h")

    assert options["max_reconnect_attempts"] == -1 and options["allow_reconnect"] is True
    assert options["token"] == "s3cret"
    assert options["servers"] == ["nats://n:4222"]


@pytest.mark.parametrize(("method", "field"), [("creds", "creds_file"), ("nkey", "nkey_seed_file")])
def test_a_signing_file_that_is_missing_or_no_key_is_a_config_error_naming_it(
    tmp_path, method, field
):
    missing = str(tmp_path / "missing")
    with pytest.raises(NatsConfigError, match=f"auth method {method}: .*{missing}"):
        connect_options(source(auth_method=method, **{field: missing}), name="h")

    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(NatsConfigError, match=f"auth method {method}: .*{garbage}"):
        connect_options(source(auth_method=method, **{field: str(garbage)}), name="h")


def test_nkey_signs_without_the_nkeys_package_and_names_its_public_key(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nkeys", None)  # as in the image: no nkeys package
    user = Nkey.generate(PREFIX_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(user.seed + b"\n")

    options = connect_options(source(auth_method="nkey", nkey_seed_file=str(seed_file)), name="h")

    assert options[PUBLIC_NKEY] == user.public_key
    signature = base64.b64decode(options["signature_cb"]("nonce-1"))
    user.key.public_key().verify(signature, b"nonce-1")  # raises when it does not verify
    assert "nkeys_seed" not in options and "user_credentials" not in options


def test_creds_hand_over_the_jwt_and_sign_with_the_seed(tmp_path):
    user = Nkey.generate(PREFIX_USER)
    creds = tmp_path / "user.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJhbGciOi.payload.sig\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )

    options = connect_options(source(auth_method="creds", creds_file=str(creds)), name="h")

    assert options["user_jwt_cb"]() == bytearray(b"eyJhbGciOi.payload.sig")
    user.key.public_key().verify(base64.b64decode(options["signature_cb"]("n")), b"n")
    assert PUBLIC_NKEY not in options  # the JWT names the user


def test_the_client_attribute_that_carries_the_public_nkey_still_exists():
    """nats-py sends ``Client._public_nkey`` as ``nkey``; connect() sets it before connecting."""
    import inspect

    from nats.aio.client import Client

    assert "self._public_nkey" in inspect.getsource(Client._connect_command)
    assert "_public_nkey = None" not in inspect.getsource(Client.connect)


def test_a_tls_file_that_does_not_load_is_a_config_error(tmp_path):
    with pytest.raises(NatsConfigError, match="TLS settings"):
        connect_options(source(tls=True, ca_file=str(tmp_path / "missing.crt")), name="h")


_AT = datetime(2026, 1, 1, tzinfo=UTC)
_NS = int(_AT.timestamp()) * 10**9


def _msg(subject, data, headers=None, *, sseq=7, cseq=1, pending=0):
    """A message as :class:`RawClient` hands it over: bytes as they came, headers parsed."""
    reply = f"$JS.ACK.KV_flags.c1.1.{sseq}.{cseq}.{_NS}.{pending}"
    return (subject.encode(), reply.encode(), data, headers)


def _read(msgs, *, stream="KV_flags", prefix="$KV.flags.", consumer_seq=0):
    return records_of(
        msgs, stream=stream, subject_prefix=prefix, consumer_seq=consumer_seq, position=1
    )


@pytest.mark.parametrize(
    "headers",
    [{"KV-Operation": "DEL"}, {"KV-Operation": "PURGE"}, {"Nats-Marker-Reason": "MaxAge"}],
)
def test_kv_deletes_purges_and_ttl_markers_delete_the_key(headers):
    (record,) = _read([_msg("$KV.flags.a.b", b"", headers)]).records

    assert (record.key, record.value, record.offset) == (b"a.b", None, 7)


def test_a_put_is_the_kv_key_and_value_and_a_stream_message_is_keyed_by_subject():
    (put,) = _read([_msg("$KV.flags.a", b"1")]).records
    (published,) = _read([_msg("flags.a", b"2")], stream="FLAGS", prefix="").records

    assert (put.key, put.value, put.topic, put.partition) == (b"a", b"1", "KV_flags", 0)
    assert (published.key, published.value) == (b"flags.a", b"2")
    assert put.timestamp == int(_AT.timestamp() * 1000)


def test_a_run_moves_the_position_and_reports_the_last_pending_count():
    run = _read([_msg("$KV.flags.a", b"1", sseq=4, cseq=1, pending=9),
                 _msg("$KV.flags.b", b"2", sseq=6, cseq=2, pending=8)])  # fmt: skip

    assert [r.offset for r in run.records] == [4, 6]
    assert (run.consumer_seq, run.position, run.pending, run.broken) == (2, 7, 8, None)


def test_a_consumer_sequence_gap_stops_the_run_before_it():
    run = _read([_msg("$KV.flags.a", b"1", sseq=4, cseq=1),
                 _msg("$KV.flags.b", b"2", sseq=9, cseq=3)])  # fmt: skip

    assert [r.offset for r in run.records] == [4]
    assert (run.consumer_seq, run.position) == (1, 5)
    assert run.broken == "consumer sequence gap (3 after 1)"


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.KV_flags.c1.1.7.3.1767225600000000000.42",  # without domain
        "$JS.ACK._.ACCHASH.KV_flags.c1.1.7.3.1767225600000000000.42.RND",  # with domain, hash
        "$JS.ACK.hub.ACCHASH.KV_flags.c1.1.7.3.1767225600000000000.42",
    ],
)
def test_the_reply_subject_gives_sequences_time_and_pending_as_nats_py_reads_them(reply):
    from nats.aio.msg import Msg

    run = _read([(b"$KV.flags.a", reply.encode(), b"1", None)], consumer_seq=2)
    reference = Msg.Metadata._from_reply(reply)

    (record,) = run.records
    assert (record.offset, run.consumer_seq, run.pending) == (
        reference.sequence.stream,
        reference.sequence.consumer,
        reference.num_pending,
    )
    assert record.timestamp == int(reference.timestamp.timestamp() * 1000)


@pytest.mark.parametrize(
    "reply",
    [
        b"_INBOX.abc",
        b"$JS.ACK.a.b.c",
        b"$JS.ACK.1.2.3.4.5.6.7.8",
        b"",
        b"$JS.ACK.KV_flags.c1.1.x.1.1767225600000000000.0",  # no stream sequence
        b"$JS.ACK.KV_flags.c1.1.7.1.-1767225600000000000.0",  # no time
    ],
)
def test_a_message_that_is_no_jetstream_delivery_breaks_the_run(reply):
    run = _read([(b"$KV.flags.a", reply, b"1", None)])

    assert run.records == [] and run.broken is not None
    assert run.broken.startswith("not a JetStream message")


def _raw_client_with_inbox() -> tuple[RawClient, list[RawMsg], int]:
    """A client (not connected) whose subscription 7 takes its messages raw."""
    nc = RawClient()
    taken: list[RawMsg] = []
    nc._subs[7] = Subscription(nc, 7, "_INBOX.x.*")
    nc._raw_handlers[7] = taken.extend
    return nc, taken, 7


async def test_a_raw_subscription_gets_wire_bytes_and_parsed_headers_from_the_parser():
    nc, taken, _ = _raw_client_with_inbox()
    reply = b"$JS.ACK.KV_flags.c1.1.7.1.1767225600000000000.0"
    headers = b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n"
    wire = (
        b"MSG $KV.flags.a 7 " + reply + b" 2\r\nv1\r\n"
        b"HMSG $KV.flags.b 7 " + reply + b" %d %d\r\n" % (len(headers), len(headers))
        + headers + b"\r\n"
        b"HMSG _INBOX.x.1 7 16 16\r\nNATS/1.0 408\r\n\r\n\r\n"
    )  # fmt: skip

    for at in range(0, len(wire), 5):  # split across reads anywhere
        await nc._ps.parse(wire[at : at + 5])

    assert taken == [
        (b"$KV.flags.a", reply, b"v1", None),
        (b"$KV.flags.b", reply, b"", {"KV-Operation": "DEL"}),
        (b"_INBOX.x.1", b"", b"", {"Status": "408"}),
    ]
    assert nc.stats["in_msgs"] == 3


async def test_other_subscriptions_and_an_unsubscribed_inbox_are_nats_pys_own():
    nc, taken, sid = _raw_client_with_inbox()
    nc._remove_sub(sid)  # what Subscription.unsubscribe calls

    await nc._ps.parse(b"MSG $KV.flags.a 7 2\r\nv1\r\n")

    assert taken == [] and sid not in nc._raw_handlers


def test_the_nats_py_hooks_of_the_raw_client_still_exist():
    """nats-py's parser hands each message to ``Client._process_msg`` (sid, subject, reply,
    payload, headers); ``unsubscribe`` forgets a subscription through ``Client._remove_sub``;
    a subscription without a callback starts no task."""
    import inspect

    from nats.aio.client import Client
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.protocol.parser import Parser

    assert "self.nc._process_msg(sid, subject, reply, payload, hdr)" in inspect.getsource(
        Parser.parse
    )
    assert list(inspect.signature(Client._process_msg).parameters) == [
        "self", "sid", "subject", "reply", "data", "headers",
    ]  # fmt: skip
    assert "self._conn._remove_sub(self._id)" in inspect.getsource(NatsSubscription.unsubscribe)
    assert "if self._cb:" in inspect.getsource(NatsSubscription._start)


def _wire_stream() -> bytes:
    """Messages as nats-server sends them, with and without reply, headers and payload,
    payloads that look like protocol, and operations that are no messages between them."""
    reply = b"$JS.ACK.KV_flags.c1.1.7.1.1767225600000000000.0"
    status = b"NATS/1.0 408 Request Timeout\r\n\r\n"
    headers = b"NATS/1.0\r\nKV-Operation: PURGE\r\nNats-Rollup: sub\r\n\r\n"
    return b"".join(
        [
            b"MSG $KV.flags.a 7 " + reply + b" 2\r\nv1\r\n",
            b"MSG plain.subject 9 0\r\n\r\n",
            b"PING\r\n",
            b"HMSG $KV.flags.b 7 " + reply + b" %d %d\r\n" % (len(headers), len(headers) + 3),
            headers + b"abc\r\n",
            b"+OK\r\n",
            b"MSG $KV.flags.c 7 " + reply + b" 14\r\nMSG x 7 1\r\ny\r\n\r\n",
            b"HMSG _INBOX.x.1 7 %d %d\r\n" % (len(status), len(status)) + status + b"\r\n",
            b"MSG\t$KV.flags.d  7 \t" + reply + b"  1\r\nz\r\n",  # odd but valid whitespace
            b"MSG $KV.flags.e 7 " + reply + b" 5\r\n" + bytes(range(5)) + b"\r\n",
        ]
    )


async def _parsed(parser_class: type | None, wire: bytes, chunks: list[int]) -> list[tuple]:
    """What reaches nats-py's ``_process_msg`` or the raw handler, read in ``chunks``."""
    nc = RawClient()
    calls: list[tuple] = []

    async def process(sid, subject, reply, data, headers):
        calls.append((sid, subject, reply, data, headers))

    async def ignore() -> None:
        pass

    nc._process_msg = process
    nc._process_ping = ignore
    if parser_class is None:  # nats-py's own
        from nats.protocol.parser import Parser

        nc._ps = Parser(nc)
    else:
        nc._raw_handlers[7] = lambda run: calls.extend((7, *msg) for msg in run)
    at = 0
    for size in chunks:
        await nc._ps.parse(wire[at : at + size])
        at += size
    await nc._ps.parse(wire[at:])
    return calls


@pytest.mark.parametrize("seed", range(20))
async def test_the_wire_parser_reads_what_nats_pys_parser_reads_however_the_reads_split(seed):
    import random

    wire = _wire_stream()
    rng = random.Random(seed)
    chunks = [rng.randint(1, 40) for _ in range(len(wire) // 10)]

    reference = await _parsed(None, wire, [len(wire)])
    assert len(reference) == 7
    assert await _parsed(WireParser, wire, chunks) == reference


@pytest.mark.parametrize(
    "line",
    [
        b"MSG a 7\r\n",
        b"MSG a b 1\r\n",
        b"MSG a 7 r s 1\r\n",
        b"HMSG a 7 5 3\r\n",
        b"MSG a 7 -1\r\n",
        b"MSG a 7 r +1\r\n",
        b"HMSG a 7 r 1 x\r\n",
    ],
)
async def test_a_malformed_message_line_is_a_protocol_error(line):
    nc, _, _ = _raw_client_with_inbox()

    with pytest.raises(ProtocolError):
        await nc._ps.parse(line + b"xxxxxx\r\n")


async def test_a_pull_charges_its_requests_in_order_and_a_status_ends_the_one_it_names():
    nc = RawClient()
    pull = _Pull(nc=nc, stream="KV_flags", name="c1")
    nc._subs[7] = Subscription(nc, 7, f"{pull.inbox}.*")
    nc._raw_handlers[7] = pull._on_messages
    pull.open = {f"{pull.inbox}.1": [3, 1e12], f"{pull.inbox}.2": [3, 1e12]}
    reply = b"$JS.ACK.KV_flags.c1.1.7.1.1767225600000000000.0"
    data = b"MSG $KV.flags.a 7 " + reply + b" 1\r\nx\r\n"

    await nc._ps.parse(data * 4)  # the first request is filled, one charged to the second
    assert (len(pull.buffer), pull.owed, list(pull.open)) == (4, 2, [f"{pull.inbox}.2"])

    def status(request: int, line: bytes) -> bytes:
        headers = b"NATS/1.0 " + line + b"\r\n\r\n"
        subject = f"{pull.inbox}.{request}".encode()
        return b"HMSG %s 7 %d %d\r\n%s\r\n" % (subject, len(headers), len(headers), headers)

    await nc._ps.parse(status(2, b"100 Idle Heartbeat"))
    assert pull.owed == 2 and not pull.lost

    await nc._ps.parse(status(2, b"408 Request Timeout"))
    assert pull.open == {} and not pull.lost and pull.arrived.is_set()

    await nc._ps.parse(status(3, b"409 Consumer Deleted"))
    assert pull.lost
    assert len(pull.take(10)) == 4 and not pull.arrived.is_set()
