"""Counters, gauges and histograms, and the Prometheus text format (0.0.4), in one small module.

The hydrator used ``prometheus_client``, which with what it imports (its HTTP servers, the
multiprocess and OpenMetrics support, ``email``, ``wsgiref``) was 2 MiB of an idle sidecar's
resident memory, for a dozen metrics served by its own probe server. This module writes what
``prometheus_client.generate_latest`` writes for the same metrics, less the optional
``_created`` series; ``tests/unit/hydrator/test_hydrator_metrics.py`` compares the two.

The reading side keeps ``prometheus_client``'s shape where tests and tools read a registry:
:meth:`Registry.collect` yields families whose samples have ``name``, ``labels``, ``value``,
and :meth:`Registry.get_sample_value` finds one sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol, Self, cast

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    """One metric: ``name`` without the ``_total`` of a counter's samples."""

    name: str
    documentation: str
    type: str
    samples: list[Sample]


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The metrics of one hydrator, in registration order."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterable[Family]:
        for collector in self._collectors:
            yield from collector.collect()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        wanted = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return sample.value
        return None

    def render(self) -> bytes:
        """The text exposition format, as ``prometheus_client.generate_latest`` writes it."""
        lines: list[str] = []
        for family in self.collect():
            name = f"{family.name}_total" if family.type == "counter" else family.name
            lines.append(f"# HELP {name} {_escape_help(family.documentation)}")
            lines.append(f"# TYPE {name} {family.type}")
            for sample in family.samples:
                lines.append(f"{sample.name}{_labels(sample.labels)} {go_float(sample.value)}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


def go_float(value: float) -> str:
    """A float as Prometheus (Go) writes it, as ``prometheus_client.utils.floatToGoString``."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return (
        "{"
        + ",".join(f'{key}="{_escape_label(value)}"' for key, value in sorted(labels.items()))
        + "}"
    )


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Metric:
    """A metric with label names; its series are created on first use, as children."""

    type = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        namespace: str = "",
        registry: Registry | None = None,
    ) -> None:
        self.name = f"{namespace}_{name}" if namespace else name
        if self.type == "counter":
            self.name = self.name.removesuffix("_total")
        self.documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Metric] = {}
        self._labelvalues: tuple[str, ...] = ()
        if registry is not None:
            registry.register(self)

    def labels(self, **labels: str) -> Self:
        if set(labels) != set(self._labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)}, not {self._labelnames}")
        key = tuple(str(labels[name]) for name in self._labelnames)
        found = self._children.get(key)
        if found is not None:
            return cast(Self, found)
        child = type(self).__new__(type(self))
        child._init_child(self, key)
        self._children[key] = child
        return child

    def _init_child(self, parent: Metric, values: tuple[str, ...]) -> None:
        self.name = parent.name
        self._labelnames = parent._labelnames
        self._labelvalues = values
        self._children = {}
        self._reset()

    def _reset(self) -> None:
        raise NotImplementedError

    def _series(self) -> Iterable[Metric]:
        if self._labelnames:
            return list(self._children.values())
        return [self]

    def _label_dict(self) -> dict[str, str]:
        return dict(zip(self._labelnames, self._labelvalues, strict=True))

    def _samples(self) -> list[Sample]:
        raise NotImplementedError

    def collect(self) -> Iterable[Family]:
        samples = [s for series in self._series() for s in series._samples()]
        yield Family(self.name, self.documentation, self.type, samples)

    def describe(self) -> Iterable[Family]:
        """The family without its samples (what it exports, for tools that list metrics)."""
        yield Family(self.name, self.documentation, self.type, [])


class Counter(Metric):
    type = "counter"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._reset()

    def _reset(self) -> None:
        self._value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self._value += amount

    def _samples(self) -> list[Sample]:
        return [Sample(f"{self.name}_total", self._label_dict(), self._value)]


class Gauge(Metric):
    type = "gauge"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._reset()

    def _reset(self) -> None:
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self._function = function

    def _samples(self) -> list[Sample]:
        value = self._function() if self._function is not None else self._value
        return [Sample(self.name, self._label_dict(), float(value))]


class Histogram(Metric):
    type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        namespace: str = "",
        registry: Registry | None = None,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = (*sorted(float(b) for b in buckets if b != math.inf), math.inf)
        super().__init__(name, documentation, labelnames, namespace=namespace, registry=registry)
        self._reset()

    def _init_child(self, parent: Metric, values: tuple[str, ...]) -> None:
        assert isinstance(parent, Histogram)
        self._bounds = parent._bounds
        super()._init_child(parent, values)

    def _reset(self) -> None:
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._sum += value
        for index, bound in enumerate(self._bounds):
            if value <= bound:
                self._counts[index] += 1
                break

    def _samples(self) -> list[Sample]:
        labels = self._label_dict()
        samples = []
        total = 0
        for bound, count in zip(self._bounds, self._counts, strict=True):
            total += count
            samples.append(Sample(f"{self.name}_bucket", {**labels, "le": go_float(bound)}, total))
        samples.append(Sample(f"{self.name}_count", labels, float(total)))
        samples.append(Sample(f"{self.name}_sum", labels, self._sum))
        return samples
