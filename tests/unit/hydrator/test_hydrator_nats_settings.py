"""Pure parts of the NATS source: connection settings, and messages as records."""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from sidecar_hydrator.config import NatsConnection, NatsKv, NatsSourceConfig, parse
from sidecar_hydrator.nats_auth import PREFIX_USER, Nkey
from sidecar_hydrator.nats_source import (
    PUBLIC_NKEY,
    NatsConfigError,
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
    reply = f"$JS.ACK.KV_flags.c1.1.{sseq}.{cseq}.{_NS}.{pending}"
    return SimpleNamespace(subject=subject, data=data, headers=headers, reply=reply)


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

    msg = SimpleNamespace(subject="$KV.flags.a", data=b"1", headers=None, reply=reply)
    run = _read([msg], consumer_seq=2)
    reference = Msg.Metadata._from_reply(reply)

    (record,) = run.records
    assert (record.offset, run.consumer_seq, run.pending) == (
        reference.sequence.stream,
        reference.sequence.consumer,
        reference.num_pending,
    )
    assert record.timestamp == int(reference.timestamp.timestamp() * 1000)


@pytest.mark.parametrize("reply", ["_INBOX.abc", "$JS.ACK.a.b.c", "$JS.ACK.1.2.3.4.5.6.7.8", None])
def test_a_message_that_is_no_jetstream_delivery_breaks_the_run(reply):
    msg = SimpleNamespace(subject="$KV.flags.a", data=b"1", headers=None, reply=reply)

    run = _read([msg])

    assert run.records == [] and run.broken is not None
    assert run.broken.startswith("not a JetStream message")
