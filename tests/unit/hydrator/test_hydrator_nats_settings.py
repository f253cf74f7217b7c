"""Pure parts of the NATS source: connection settings, and messages as records."""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from sidecar_hydrator.config import NatsConnection, NatsKv, NatsSourceConfig
from sidecar_hydrator.nats_auth import PREFIX_USER, Nkey
from sidecar_hydrator.nats_source import (
    PUBLIC_NKEY,
    NatsConfigError,
    connect_options,
    message_record,
)


def source(**connection: object) -> NatsSourceConfig:
    return NatsSourceConfig(
        connection=NatsConnection.model_validate({"servers": ["nats://n:4222"], **connection}),
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


def _msg(subject, data, headers=None):
    meta = SimpleNamespace(
        sequence=SimpleNamespace(stream=7, consumer=1),
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return SimpleNamespace(subject=subject, data=data, headers=headers), meta


@pytest.mark.parametrize(
    "headers",
    [{"KV-Operation": "DEL"}, {"KV-Operation": "PURGE"}, {"Nats-Marker-Reason": "MaxAge"}],
)
def test_kv_deletes_purges_and_ttl_markers_delete_the_key(headers):
    msg, meta = _msg("$KV.flags.a.b", b"", headers)

    record = message_record(msg, meta, stream="KV_flags", subject_prefix="$KV.flags.")

    assert (record.key, record.value, record.offset) == (b"a.b", None, 7)


def test_a_put_is_the_kv_key_and_value_and_a_stream_message_is_keyed_by_subject():
    msg, meta = _msg("$KV.flags.a", b"1")
    put = message_record(msg, meta, stream="KV_flags", subject_prefix="$KV.flags.")
    msg, meta = _msg("flags.a", b"2")
    published = message_record(msg, meta, stream="FLAGS", subject_prefix="")

    assert (put.key, put.value, put.topic, put.partition) == (b"a", b"1", "KV_flags", 0)
    assert (published.key, published.value) == (b"flags.a", b"2")
    assert put.timestamp == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
