"""One contract, two parsers: the sidecar's standard-library parser and the operator's pydantic.

The hydrator parses its rendered config without pydantic (``sidecar_hydrator.config.parse``,
to keep pydantic out of the sidecar's memory), the operator validates it with pydantic
(``sidecar_hydrator.config_pydantic``). Both read the same dataclasses, so they may differ only
in how each checks types and fields: these tests feed both every document a field-by-field
mutation of a few valid configs makes, and require the same verdict and, when accepted, equal
values.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from sidecar_hydrator.config import ConfigError, HydratorConfig, parse
from sidecar_hydrator.config_pydantic import adapter, rendered, validate_json

KAFKA = {
    "name": "flags",
    "kafka": {"bootstrap_servers": ["kafka:9092"]},
    "topics": ["flags"],
    "keys": {"prefix": "flag:", "key_field": "id", "value_field": "enabled"},
}
SASL = {
    "name": "prices",
    "kafka": {
        "bootstrap_servers": ["a:9093", "b:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username_env": "U",
        "password_env": "P",
        "username_file": "/s/username",
        "password_file": "/s/password",
        "ca_file": "/s/ca.crt",
        "cert_file": "/s/tls.crt",
        "key_file": "/s/tls.key",
    },
    "topics": ["prices", "prices-eu"],
    "start_from": "latest",
    "format": "debezium",
    "keys": {"prefix": "price:"},
}
NATS_KV = {
    "name": "sessions",
    "nats": {
        "connection": {
            "servers": ["nats://n:4222"],
            "auth_method": "creds",
            "creds_file": "/s/user.creds",
            "tls": True,
            "ca_file": "/s/ca.crt",
        },
        "kv": {"bucket": "sessions", "keys": ["user.>"]},
    },
    "format": "raw",
    "keys": {"prefix": "s:"},
}
NATS_STREAM = {
    "name": "orders",
    "nats": {
        "connection": {
            "servers": ["nats://n:4222"],
            "auth_method": "userPassword",
            "username_env": "U",
            "password_env": "P",
        },
        "stream": {"name": "ORDERS", "subjects": ["orders.*"], "deliver": "lastPerSubject"},
    },
    "keys": {"prefix": "o:"},
}
#: Valid documents that between them set every field of the contract.
VALID: dict[str, dict[str, Any]] = {
    "minimal": {"bindings": [KAFKA]},
    "everything": {
        "redis_socket": "/run/r.sock",
        "redis_user": "hydrator",
        "redis_password_file": "/c/password",
        "http_port": 9200,
        "bindings": [KAFKA, SASL, NATS_KV, NATS_STREAM],
        "live_batch_max_keys": 100,
        "bootstrap_batch_max_keys": 2000,
        "metadata_key": "sidecar-state:m",
        "offsets_key": "sidecar-state:o",
        "max_value_bytes": 4096,
        "max_key_bytes": 1024,
        "spare_db": 3,
        "lmdb_path": "/l",
        "lmdb_map_size": 2**21,
        "lmdb_max_readers": 10,
        "fetch_max_wait_ms": 10,
        "catchup_fetch_bytes": 2048,
        "metadata_refresh_ms": 1000,
    },
    "lmdb": {"bindings": [KAFKA], "store_engine": "lmdb", "max_key_bytes": 511},
}
#: What each field is set to in turn: every JSON type, boundaries, and near misses.
PROBES: list[Any] = [
    None, True, False, 0, 1, -1, 15, 16, 100, 511, 512, 1024, 5000, 5001, 65535, 65536, 2**70,
    1.0, 0.5, "", "x", "5", "true", "SASL_SSL", "PLAIN", "lmdb", "raw", "all", "creds",
    "sidecar-state:", "sidecar-state:x", "a.b", "A_b-1", [], ["x"], ["x", "y"], [1], [None],
    {}, {"x": 1},
]  # fmt: skip


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a document: object members and array items, nested."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*at, key)
            yield from _paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*at, index)
            yield from _paths(value, (*at, index))


def _objects(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        yield at
        for key, value in node.items():
            yield from _objects(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _objects(value, (*at, index))


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _mutations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _paths(doc):
        for probe in PROBES:
            changed = copy.deepcopy(doc)
            _at(changed, path[:-1])[path[-1]] = probe
            yield f"{path}={probe!r}", changed
        removed = copy.deepcopy(doc)
        parent = _at(removed, path[:-1])
        parent.pop(path[-1])
        yield f"{path} removed", removed
    for path in _objects(doc):
        added = copy.deepcopy(doc)
        _at(added, path)["unknown"] = 1
        yield f"{path}+unknown", added


def _both(raw: str) -> tuple[object, object]:
    """What each parser makes of ``raw``: the config, or the error's class."""
    try:
        ours: object = HydratorConfig.from_json(raw)
    except ConfigError:
        ours = ConfigError
    try:
        theirs: object = validate_json(raw)
    except ValidationError:
        theirs = ValidationError
    return ours, theirs


@pytest.mark.parametrize("name", VALID)
def test_both_parsers_accept_and_refuse_the_same_documents_with_the_same_values(
    name: str,
) -> None:
    accepted = refused = 0
    for label, doc in _mutations(VALID[name]):
        ours, theirs = _both(json.dumps(doc))
        if ours is ConfigError or theirs is ValidationError:
            assert (ours, theirs) == (ConfigError, ValidationError), label
            refused += 1
        else:
            assert ours == theirs, label
            accepted += 1
    # Both kinds were exercised, in numbers (a mutation set that only breaks, or only passes,
    # would prove nothing).
    assert accepted > 20 and refused > 100, (accepted, refused)


@pytest.mark.parametrize("name", VALID)
def test_the_valid_documents_read_the_same_in_both(name: str) -> None:
    ours, theirs = _both(json.dumps(VALID[name]))
    assert isinstance(ours, HydratorConfig) and ours == theirs


@pytest.mark.parametrize("name", VALID)
def test_the_env_value_is_what_pydantic_renders_and_reads_back(name: str) -> None:
    """The rendered bytes stay pydantic's (an operator upgrade must not change, and so roll,
    every injected Pod's env), and both parsers read them back to the same config."""
    config = HydratorConfig.from_json(json.dumps(VALID[name]))
    raw = rendered(config)
    assert raw == adapter().dump_json(config).decode()
    assert HydratorConfig.from_json(raw) == validate_json(raw) == config


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"bindings": [{**KAFKA, "kafka": {"bootstrap_servers": []}}]}, "bindings[0].kafka"),
        ({"bindings": [{**KAFKA, "format": "avro"}]}, "bindings[0].format"),
        ({"bindings": [KAFKA], "http_port": "9464"}, "http_port"),
        ({"bindings": [{**KAFKA, "keys": {"prefx": "a"}}]}, "bindings[0].keys.prefx"),
        ({"bindings": [{"kafka": KAFKA["kafka"], "topics": ["t"]}]}, "bindings[0].name"),
    ],
)
def test_the_stdlib_parser_names_the_field(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(HydratorConfig, doc)
    assert str(raised.value).startswith(f"{path}:"), raised.value


def test_the_sidecar_process_does_not_load_pydantic() -> None:
    """What the stdlib parser is for: the sidecar's entry point, config parsed, imports no
    pydantic (about 13 MiB of its resident memory)."""
    code = (
        "import json, sys\n"
        "from sidecar_hydrator.main import main\n"
        "from sidecar_hydrator.config import HydratorConfig\n"
        f"HydratorConfig.from_json({json.dumps(json.dumps(VALID['everything']))})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_core'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
