"""The rendered config contract, as the hydrator parses it."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from sidecar_hydrator.config import CONFIG_ENV, ConfigError, HydratorConfig
from sidecar_hydrator.kafka_source import KafkaConfigError, consumer_options

MINIMAL = {
    "bindings": [
        {
            "name": "feature-flags",
            "kafka": {"bootstrap_servers": ["kafka:9092"]},
            "topics": ["feature-flags"],
            "keys": {"prefix": "flag:", "key_field": "id", "value_field": "enabled"},
        }
    ]
}


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = HydratorConfig.from_env({CONFIG_ENV: json.dumps(MINIMAL)})
    assert config.redis_socket == "/var/run/sidecar-state/redis.sock"
    assert (config.live_batch_max_keys, config.bootstrap_batch_max_keys) == (500, 5000)
    assert (config.spare_db, config.max_value_bytes, config.fetch_max_wait_ms) == (1, 2**20, 100)
    binding = config.bindings[0]
    assert (binding.format, binding.start_from) == ("json", "earliest")


def test_round_trip_through_the_env_value() -> None:
    config = HydratorConfig.parse(MINIMAL)
    assert HydratorConfig.from_env({CONFIG_ENV: config.to_env_value()}) == config


def test_missing_env_is_a_clear_exit() -> None:
    with pytest.raises(SystemExit, match=CONFIG_ENV):
        HydratorConfig.from_env({})


@pytest.mark.parametrize(
    "patch",
    [
        {"bindings": []},
        {"unknown_field": 1},
        {"spare_db": 0},
        {"max_value_bytes": 0},
        {"http_port": 70000},
    ],
)
def test_invalid_configs_are_rejected(patch: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        HydratorConfig.parse({**MINIMAL, **patch})


def test_invalid_binding_format_is_rejected() -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["bindings"][0]["format"] = "avro"
    with pytest.raises(ConfigError, match="format"):
        HydratorConfig.parse(doc)


def test_consumer_options_plaintext_has_no_group_and_never_auto_resets() -> None:
    config = HydratorConfig.parse(MINIMAL)
    options = consumer_options(config.bindings[0].kafka, client_id="c", config=config)
    assert options["group_id"] is None
    assert options["enable_auto_commit"] is False
    assert options["auto_offset_reset"] == "none"
    assert options["fetch_max_wait_ms"] == 100
    assert "sasl_mechanism" not in options and "ssl_context" not in options


def test_consumer_options_sasl_ssl_reads_credentials_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_USER", "alice")
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cret")
    doc = json.loads(json.dumps(MINIMAL))
    doc["bindings"][0]["kafka"].update(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        username_env="KAFKA_USER",
        password_env="KAFKA_PASSWORD",
    )
    config = HydratorConfig.parse(doc)
    options = consumer_options(config.bindings[0].kafka, client_id="c", config=config)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("alice", "s3cret")
    assert options["ssl_context"] is not None
    assert "s3cret" not in config.to_env_value()


def test_main_exits_2_with_a_clear_message_on_an_invalid_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from sidecar_hydrator.main import main

    monkeypatch.setenv(CONFIG_ENV, json.dumps({"bindings": []}))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main([]) == 2
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["level"] == "error" and CONFIG_ENV in line["msg"] and "bindings" in line["msg"]


@pytest.mark.parametrize(
    ("kafka", "fragment"),
    [
        ({"security_protocol": "SASL_SSL", "username_env": "U", "password_env": "P"},
         "needs sasl_mechanism"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
         "needs sasl_mechanism"),
        ({"security_protocol": "SSL", "sasl_mechanism": "PLAIN"}, "which sends no credentials"),
        ({"username_env": "U", "password_env": "P"}, "username_env, password_env given"),
    ],
)  # fmt: skip
def test_credentials_are_never_silently_dropped_nor_made_up(
    kafka: dict[str, str], fragment: str
) -> None:
    doc = json.loads(json.dumps(MINIMAL))
    doc["bindings"][0]["kafka"].update(kafka)
    with pytest.raises(ConfigError, match=fragment):
        HydratorConfig.parse(doc)


def _two_bindings(first: str, second: str) -> dict[str, object]:
    binding = MINIMAL["bindings"][0]
    return {
        "bindings": [
            {**binding, "name": "a", "keys": {"prefix": first}},
            {**binding, "name": "b", "keys": {"prefix": second}},
        ]
    }


@pytest.mark.parametrize(("first", "second"), [("", "x:"), ("flag:", "flag:"), ("fl", "flag:")])
def test_overlapping_key_prefixes_are_refused(first: str, second: str) -> None:
    with pytest.raises(ConfigError, match=r"bindings a and b: key prefixes .* overlap"):
        HydratorConfig.parse(_two_bindings(first, second))


def test_disjoint_key_prefixes_are_accepted() -> None:
    config = HydratorConfig.parse(_two_bindings("flag:", "price:"))
    assert [b.keys.prefix for b in config.bindings] == ["flag:", "price:"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"offsets_key": "offsets"}, "offsets_key must start with 'sidecar-state:'"),
        (
            {"bindings": [{**MINIMAL["bindings"][0], "keys": {"prefix": "sidecar-state:x"}}]},
            "inside the hydrator's reserved namespace",
        ),
    ],
)
def test_the_hydrators_namespace_is_its_own(override: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HydratorConfig.parse({**MINIMAL, **override})


def _tls(ca_file: str) -> HydratorConfig:
    doc = json.loads(json.dumps(MINIMAL))
    doc["bindings"][0]["kafka"].update(security_protocol="SSL", ca_file=ca_file)
    return HydratorConfig.parse(doc)


def test_tls_without_a_ca_file_verifies_with_the_system_cas(tmp_path: Path) -> None:
    config = _tls(str(tmp_path / "ca.crt"))  # the Secret had no ca.crt
    context = consumer_options(config.bindings[0].kafka, client_id="c", config=config)[
        "ssl_context"
    ]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_tls_files_that_do_not_load_are_a_kafka_config_error(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    config = _tls(str(tmp_path / "ca.crt"))
    with pytest.raises(KafkaConfigError, match="TLS settings"):
        consumer_options(config.bindings[0].kafka, client_id="c", config=config)
