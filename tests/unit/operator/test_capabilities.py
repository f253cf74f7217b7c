"""Native sidecars or plain containers, from what the server can do (issue item 6)."""

from __future__ import annotations

import pytest

from sidecar_operator.capabilities import UnsupportedMode, choose_sidecar_mode, parse_version


@pytest.mark.parametrize(
    ("requested", "version", "mode"),
    [
        ("auto", (1, 34), "native"),
        ("auto", (1, 29), "native"),
        ("auto", (1, 28), "containers"),  # the gate cannot be seen: the safe mode
        ("native", (1, 28), "native"),  # whoever enabled the gate says so
        ("auto", (1, 25), "containers"),
        ("native", (1, 30), "native"),
        ("containers", (1, 34), "containers"),
    ],
)
def test_the_mode_follows_the_server(requested, version, mode):
    assert choose_sidecar_mode(requested, version=version).mode == mode


def test_native_on_a_server_without_it_refuses_clearly():
    with pytest.raises(UnsupportedMode, match="would drop restartPolicy: Always") as error:
        choose_sidecar_mode("native", version=(1, 27))

    assert "sidecars.mode=auto or containers" in str(error.value)


def test_managed_cluster_versions_are_read():
    assert parse_version("1", "28+") == (1, 28)
    with pytest.raises(ValueError, match="cannot read the server version"):
        parse_version("", "x")
