"""Kubernetes resource quantities (``64Mi``, ``1G``, ``500m``) as exact numbers.

The store's memory limit is a quantity in the API but a byte count in ``redis.conf`` and a
sum across bindings in the injected Pod, so it is parsed once, exactly (``Decimal``), here.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(text: str) -> Decimal:
    """Parse a Kubernetes quantity; raise ``ValueError`` with the accepted forms."""
    text = text.strip()
    if not _QUANTITY.match(text):
        raise ValueError(
            f"{text!r} is not a Kubernetes quantity (examples: 64Mi, 1Gi, 500M, 1048576)"
        )
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    if text[-1] in "numkMGTPE":
        return Decimal(text[:-1]) * _DECIMAL[text[-1]]
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already excludes this
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from exc


def quantity_bytes(text: str) -> int:
    """A memory quantity as whole bytes, rounded up (Kubernetes rounds memory up too)."""
    value = parse_quantity(text)
    whole = int(value.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def format_bytes(count: int) -> str:
    """The shortest exact binary quantity for a byte count: ``67108864`` -> ``64Mi``."""
    for suffix, factor in reversed(_BINARY.items()):
        if count >= factor and count % factor == 0:
            return f"{count // factor}{suffix}"
    return str(count)
