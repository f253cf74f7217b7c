"""Pure parts of the NATS source: connection settings, and messages as records."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from sidecar_hydrator.config import NatsConnection, NatsKv, NatsSourceConfig
from sidecar_hydrator.nats_source import NatsConfigError, connect_options, message_record


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
def test_signing_methods_without_nkeys_get_a_clear_error(monkeypatch, method, field):
    monkeypatch.setitem(sys.modules, "nkeys", None)  # as in an image without the package

    with pytest.raises(NatsConfigError, match=f"auth method {method} signs with the 'nkeys'"):
        connect_options(source(auth_method=method, **{field: "/x"}), name="h")


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
