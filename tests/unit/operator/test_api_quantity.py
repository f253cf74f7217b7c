"""Kubernetes quantities, parsed exactly: the store size is a quantity in the API and a byte
count in redis.conf."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sidecar_operator.api.quantity import format_bytes, parse_quantity, quantity_bytes

MI = 2**20
GI = 2**30


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64Mi", 64 * MI),
        ("1Ki", 1024),
        ("1Gi", GI),
        ("1.5Gi", GI + GI // 2),
        ("2Ti", 2 * 2**40),
        ("1G", 10**9),
        ("500M", 500 * 10**6),
        ("1k", 1000),
        ("1048576", MI),
        ("1e3", 1000),
        ("1E", 10**18),
        ("100m", Decimal("0.1")),
        ("250u", Decimal("0.00025")),
        (".5Ki", 512),
        ("+1Mi", MI),
        ("-1Mi", -MI),
        ("  64Mi ", 64 * MI),
    ],
)
def test_parse_quantity_is_exact(text, value):
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize(
    "text", ["lots", "", "Mi", "64 Mi", "64MiB", "64MB", "64mi", "1.2.3", "0x40", "1e", "1Ki1"]
)
def test_garbage_is_not_a_quantity(text):
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


def test_refusal_shows_the_accepted_forms():
    with pytest.raises(ValueError, match=r"examples: 64Mi, 1Gi"):
        parse_quantity("lots")


@pytest.mark.parametrize(
    ("text", "count"),
    [("64Mi", 64 * MI), ("1G", 10**9), ("1.5Gi", 1610612736), ("1", 1), ("0", 0)],
)
def test_quantity_bytes_of_whole_quantities(text, count):
    assert quantity_bytes(text) == count
    assert isinstance(quantity_bytes(text), int)


@pytest.mark.parametrize(("text", "count"), [("100m", 1), ("1500m", 2), ("1.1", 2), ("1n", 1)])
def test_quantity_bytes_rounds_fractions_up_like_kubernetes(text, count):
    assert quantity_bytes(text) == count


def test_quantity_bytes_of_a_negative_quantity_stays_negative():
    # The model refuses it as "must be more than zero bytes" on this sign.
    assert quantity_bytes("-100m") == 0
    assert quantity_bytes("-1Ki") == -1024


def test_quantity_bytes_refuses_garbage():
    with pytest.raises(ValueError):
        quantity_bytes("lots")


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (64 * MI, "64Mi"),
        (GI, "1Gi"),
        (1536 * MI, "1536Mi"),
        (80 * MI, "80Mi"),
        (1024, "1Ki"),
        (3 * 2**60, "3Ei"),
        (1000, "1000"),
        (1025, "1025"),
        (1, "1"),
        (0, "0"),
    ],
)
def test_format_bytes_picks_the_largest_exact_binary_suffix(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize("text", ["64Mi", "1Gi", "1.5Gi", "1G", "100", "4097Ki"])
def test_format_bytes_round_trips_through_quantity_bytes(text):
    count = quantity_bytes(text)

    assert quantity_bytes(format_bytes(count)) == count
