"""What an idle hydrator imports: its resident memory is mostly the modules it loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KAFKA = {"name": "k", "kafka": {"bootstrap_servers": ["127.0.0.1:1"]}, "topics": ["t"]}
NATS = {"name": "n", "nats": {"connection": {"servers": ["nats://127.0.0.1:1"]},
                              "kv": {"bucket": "b"}}}  # fmt: skip
#: Top-level packages (and hydrator modules) that only some configs need, and some that no
#: config does: redis-py (the store has its own client, sidecar_hydrator.resp; redis-py and
#: the importlib.metadata it reads its version with were ~8.7 MiB), argparse (only for
#: --help) and decimal (only when a Debezium decimal is decoded).
OPTIONAL = ("nats", "aiokafka", "lmdb", "sidecar_hydrator.nats_source",
            "sidecar_hydrator.kafka_source", "sidecar_hydrator.store_lmdb",
            "redis", "importlib.metadata", "argparse", "decimal")  # fmt: skip


def _loaded_by(config: dict[str, object]) -> set[str]:
    """The optional modules a hydrator built for ``config`` (as the sidecar's main does) has
    loaded, before it connects to anything."""
    probe = (
        "import json, sys\n"
        "import sidecar_hydrator.main\n"
        "from sidecar_hydrator.config import HydratorConfig\n"
        "from sidecar_hydrator.hydrator import Hydrator\n"
        f"Hydrator(HydratorConfig.from_json({json.dumps(json.dumps(config))}))\n"
        f"optional = {OPTIONAL!r}\n"
        "print(json.dumps(sorted({o for o in optional for m in sys.modules"
        " if m == o or m.startswith(o + '.')})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # nats-py (and what it pulls in) was over a quarter of an idle hydrator's RSS.
        ({"bindings": [KAFKA]}, {"aiokafka", "sidecar_hydrator.kafka_source"}),
        # nats-py reads its own version with importlib.metadata.
        ({"bindings": [NATS]}, {"nats", "sidecar_hydrator.nats_source", "importlib.metadata"}),
        (
            {"bindings": [KAFKA], "store_engine": "lmdb", "max_key_bytes": 511},
            {"aiokafka", "sidecar_hydrator.kafka_source", "lmdb", "sidecar_hydrator.store_lmdb"},
        ),
    ],
)
def test_a_hydrator_loads_only_the_clients_its_config_uses(
    config: dict[str, object], expected: set[str]
) -> None:
    assert _loaded_by(config) == expected
