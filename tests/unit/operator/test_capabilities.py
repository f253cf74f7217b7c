"""Native sidecars or plain containers, from what the server can do (issue item 6)."""

from __future__ import annotations

import pytest

from sidecar_operator.capabilities import UnsupportedMode, choose_sidecar_mode, parse_version


@pytest.mark.parametrize(
    ("requested", "version", "kept", "mode"),
    [
        ("auto", (1, 34), None, "native"),
        ("auto", (1, 29), None, "native"),
        ("auto", (1, 28), True, "native"),  # the feature gate is on
        ("auto", (1, 28), False, "containers"),
        ("auto", (1, 25), None, "containers"),
        ("native", (1, 30), None, "native"),
        ("containers", (1, 34), None, "containers"),
    ],
)
def test_the_mode_follows_the_server(requested, version, kept, mode):
    choice = choose_sidecar_mode(requested, version=version, probe_kept_restart_policy=kept)

    assert choice.mode == mode


@pytest.mark.parametrize(("version", "kept"), [((1, 27), None), ((1, 28), False)])
def test_native_on_a_server_without_it_refuses_clearly(version, kept):
    with pytest.raises(UnsupportedMode, match="would drop restartPolicy: Always") as error:
        choose_sidecar_mode("native", version=version, probe_kept_restart_policy=kept)

    assert "sidecars.mode=auto or containers" in str(error.value)


def test_managed_cluster_versions_are_read():
    assert parse_version("1", "28+") == (1, 28)
    with pytest.raises(ValueError, match="cannot read the server version"):
        parse_version("", "x")
