"""Each source turns its client library's errors into the source-neutral ``SourceError`` at its
edge, and the hydrator's loop knows no client library at all."""

from __future__ import annotations

import ast
from pathlib import Path

import nats.errors
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError

import sidecar_hydrator
from sidecar_hydrator.config import BindingSource, HydratorConfig, KafkaConnection
from sidecar_hydrator.health import Metrics
from sidecar_hydrator.kafka_source import KafkaSource
from sidecar_hydrator.source import NeedRebuild, SourceError, raising_source_errors

_PACKAGE = Path(sidecar_hydrator.__file__).parent
#: The only modules that may import each client library.
_CLIENT_MODULES = {
    "aiokafka": {"kafka_source.py", "kafka_internals.py"},
    "nats": {"nats_source.py"},
}


@pytest.mark.parametrize(
    ("error", "source"),
    [(KafkaConnectionError("gone"), "kafka"), (nats.errors.NoRespondersError(), "nats")],
)
def test_a_client_library_error_becomes_a_source_error_naming_source_binding_and_kind(
    error: Exception, source: str
) -> None:
    with (
        pytest.raises(SourceError) as raised,
        raising_source_errors((type(error).__mro__[1],), source=source, binding="flags"),
    ):
        raise error
    assert (raised.value.source, raised.value.binding) == (source, "flags")
    assert raised.value.kind == type(error).__name__
    assert raised.value.__cause__ is error
    assert str(raised.value).startswith(f"{source} source of binding flags: ")


def test_need_rebuild_and_foreign_errors_pass_through() -> None:
    with (
        pytest.raises(NeedRebuild),
        raising_source_errors((Exception,), source="kafka", binding="b"),
    ):
        raise NeedRebuild("offset_out_of_range", binding="b")
    with (
        pytest.raises(KeyError),
        raising_source_errors((KafkaConnectionError,), source="kafka", binding="b"),
    ):
        raise KeyError("not a Kafka error")


async def test_the_kafka_source_raises_aiokafkas_own_errors_as_source_errors() -> None:
    binding = BindingSource(
        name="b", kafka=KafkaConnection(bootstrap_servers=("127.0.0.1:9",)), topics=("t",)
    )
    config = HydratorConfig(redis_socket="/unused", bindings=(binding,))
    source = KafkaSource(binding=binding, config=config, metrics=Metrics())
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")  # never started: no I/O
    source._consumer = consumer
    try:
        # aiokafka refuses the position of a partition it was not assigned.
        with pytest.raises(SourceError) as raised:
            await source.position(TopicPartition("t", 0))
        assert raised.value.kind == "IllegalStateError"
        assert isinstance(raised.value.__cause__, IllegalStateError)
    finally:
        source._consumer = None


def test_only_the_source_modules_import_client_libraries() -> None:
    for path in sorted(_PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        for library, allowed in _CLIENT_MODULES.items():
            if library in imported:
                assert path.name in allowed, f"{path.name} imports {library}"
