"""Builders for the operator's unit tests: StateBindings, Pods, workloads and injected Pods.

The tests run without ``__init__.py`` files (pytest's default "prepend" import mode), so a test
module cannot reliably ``import conftest``. Every builder is therefore offered as a fixture that
returns the builder function: ``def test_x(make_pod, make_binding, injected): ...``.

The seed example of the design card is the default of every builder: a binding
``feature-flags`` in namespace ``shop`` selecting ``app: checkout``, reading topic
``feature-flags`` with prefix ``flag:``, ``keyField: id``, ``valueField: enabled`` and
``maxMemory: 64Mi``; and a Pod ``checkout`` labelled ``app: checkout``.
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar_hydrator.config import CONFIG_ENV, HydratorConfig
from sidecar_operator.api.models import StateBinding, parse_binding
from sidecar_operator.cli import run
from sidecar_operator.injection import Injected, InjectionDefaults, Outcome, inject_pod
from sidecar_operator.injection.names import HYDRATOR_CONTAINER, REDIS_CONTAINER
from tests.support import bindings

# libyaml when present: the CLI tests read and write a lot of YAML.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

NAMESPACE = "shop"
SEED_LABELS = {"app": "checkout"}


# --- StateBindings ---------------------------------------------------------------------------


def build_binding_doc(
    name: str = "feature-flags",
    *,
    namespace: str | None = NAMESPACE,
    match_labels: Mapping[str, str] | None = None,
    match_expressions: list[dict[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The seed example as a user writes it in YAML; ``options`` as :func:`binding_doc`'s."""
    if match_labels is None and match_expressions is None:
        match_labels = SEED_LABELS
    return bindings.binding_doc(name, namespace=namespace, match_labels=match_labels,
                       match_expressions=match_expressions, **options)  # fmt: skip


def build_binding(name: str = "feature-flags", **options: Any) -> StateBinding:
    return parse_binding(build_binding_doc(name, **options))


@pytest.fixture
def binding_doc() -> Callable[..., dict[str, Any]]:
    return build_binding_doc


@pytest.fixture
def make_binding() -> Callable[..., StateBinding]:
    return build_binding


# --- Pods and workloads ----------------------------------------------------------------------


def build_container(
    name: str = "app",
    *,
    image: str = "shop/checkout:1.0",
    env: Mapping[str, str] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, **copy.deepcopy(fields)}
    if env is not None:
        container["env"] = [{"name": key, "value": value} for key, value in env.items()]
    if mounts is not None:
        container["volumeMounts"] = copy.deepcopy(mounts)
    return container


def build_pod(
    name: str = "checkout",
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    **spec_fields: Any,
) -> dict[str, Any]:
    """A Pod (or pod template: same shape) labelled ``app: checkout`` with one container."""
    labels = SEED_LABELS if labels is None else labels
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "containers": copy.deepcopy(containers) if containers is not None else [build_container()],
        **copy.deepcopy(spec_fields),
    }
    if init_containers is not None:
        spec["initContainers"] = copy.deepcopy(init_containers)
    if volumes is not None:
        spec["volumes"] = copy.deepcopy(volumes)
    return {"metadata": metadata, "spec": spec}


_API_VERSIONS = {
    "Pod": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "ReplicationController": "v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}


def build_workload(
    kind: str = "Deployment",
    name: str = "checkout",
    *,
    namespace: str | None = NAMESPACE,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest of ``kind`` whose pod template is ``template`` (a seed Pod by default)."""
    template = copy.deepcopy(template) if template is not None else build_pod(name)
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if kind == "Pod":
        metadata = {**template["metadata"], **metadata}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}
    template["metadata"].pop("name", None)
    labels = dict(template["metadata"].get("labels") or {})
    spec: dict[str, Any]
    if kind == "CronJob":
        template["spec"].setdefault("restartPolicy", "Never")
        spec = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
    elif kind == "Job":
        template["spec"].setdefault("restartPolicy", "Never")
        spec = {"template": template}
    elif kind == "ReplicationController":
        spec = {"replicas": 2, "selector": labels, "template": template}
    else:
        spec = {"replicas": 2, "selector": {"matchLabels": labels}, "template": template}
    return {"apiVersion": _API_VERSIONS[kind], "kind": kind, "metadata": metadata, "spec": spec}


@pytest.fixture
def make_container() -> Callable[..., dict[str, Any]]:
    return build_container


@pytest.fixture
def make_pod() -> Callable[..., dict[str, Any]]:
    return build_pod


@pytest.fixture
def make_workload() -> Callable[..., dict[str, Any]]:
    return build_workload


# --- the engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectedPod:
    """An :class:`Injected` outcome with accessors for the parts the tests look at."""

    outcome: Injected

    @property
    def pod(self) -> dict[str, Any]:
        return self.outcome.pod

    @property
    def spec(self) -> dict[str, Any]:
        return self.outcome.pod["spec"]

    @property
    def annotations(self) -> dict[str, str]:
        return self.outcome.pod["metadata"].get("annotations") or {}

    @property
    def init_names(self) -> list[str]:
        return [c["name"] for c in self.spec.get("initContainers") or []]

    @property
    def container_names(self) -> list[str]:
        return [c["name"] for c in self.spec.get("containers") or []]

    def container(self, name: str) -> dict[str, Any]:
        everything = [*(self.spec.get("initContainers") or []), *self.spec["containers"]]
        matches = [c for c in everything if c["name"] == name]
        assert len(matches) == 1, f"expected one container {name!r}, found {len(matches)}"
        return matches[0]

    @property
    def redis(self) -> dict[str, Any]:
        return self.container(REDIS_CONTAINER)

    @property
    def hydrator(self) -> dict[str, Any]:
        return self.container(HYDRATOR_CONTAINER)

    @property
    def redis_args(self) -> dict[str, str]:
        """``redis-server --port 0 --save ""`` as ``{"--port": "0", "--save": ""}``."""
        command = self.redis["command"]
        assert command[0] == "redis-server"
        flags = command[1:]
        assert len(flags) % 2 == 0, f"redis-server flags are not --name value pairs: {flags}"
        return dict(zip(flags[::2], flags[1::2], strict=True))

    def env(self, container: str) -> dict[str, dict[str, Any]]:
        """A container's env by name (the whole entry, to see ``value`` or ``valueFrom``)."""
        entries = self.container(container).get("env") or []
        return {entry["name"]: entry for entry in entries}

    @property
    def hydrator_config_json(self) -> str:
        return str(self.env(HYDRATOR_CONTAINER)[CONFIG_ENV]["value"])

    @property
    def hydrator_config(self) -> HydratorConfig:
        return HydratorConfig.from_json(self.hydrator_config_json)

    def volume(self, name: str) -> dict[str, Any]:
        matches = [v for v in self.spec.get("volumes") or [] if v["name"] == name]
        assert len(matches) == 1, f"expected one volume {name!r}, found {len(matches)}"
        return matches[0]


def run_inject(
    pod: Mapping[str, Any],
    *bindings: StateBinding,
    namespace: str = NAMESPACE,
    defaults: InjectionDefaults | None = None,
) -> Outcome:
    return inject_pod(
        pod, bindings=bindings, namespace=namespace, defaults=defaults or InjectionDefaults()
    )


def run_injected(pod: Mapping[str, Any], *bindings: StateBinding, **options: Any) -> InjectedPod:
    outcome = run_inject(pod, *bindings, **options)
    assert isinstance(outcome, Injected), f"expected the Pod to be injected, got {outcome}"
    return InjectedPod(outcome)


@pytest.fixture
def inject() -> Callable[..., Outcome]:
    """``inject(pod, *bindings, namespace="shop", defaults=None)`` -> the engine's outcome."""
    return run_inject


@pytest.fixture
def injected() -> Callable[..., InjectedPod]:
    """Like ``inject`` but asserts the Pod was injected and wraps it in :class:`InjectedPod`."""
    return run_injected


@pytest.fixture
def seed_injected() -> InjectedPod:
    """The seed Pod injected with the seed binding and the default settings."""
    return run_injected(build_pod(), build_binding())


# --- the CLI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def documents(self) -> list[Any]:
        return list(yaml.load_all(self.out, Loader=YAML_LOADER))


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """``cli("inject", "-f", path, stdin="...")``: the CLI in-process, with captured streams."""

    def invoke(*argv: str | Path, stdin: str = "") -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        code = run([str(a) for a in argv], stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return CliResult(code, out.getvalue(), err.getvalue())

    return invoke


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """``write_yaml(doc, doc, ...)`` -> a fresh multi-document YAML file; a ``str`` is written
    as it is (for broken YAML)."""
    numbers = itertools.count(1)

    def write(*documents: Any) -> Path:
        path = tmp_path / f"file-{next(numbers)}.yaml"
        if len(documents) == 1 and isinstance(documents[0], str):
            path.write_text(documents[0])
        else:
            path.write_text(yaml.dump_all(documents, Dumper=YAML_DUMPER, sort_keys=False))
        return path

    return write
