"""Every installed command answers ``--help`` with its usage: a user's first try is no error."""

from __future__ import annotations

import subprocess

import pytest

from sidecar_state_stack.console_scripts import CONSOLE_SCRIPTS, console_script


@pytest.mark.parametrize("name", CONSOLE_SCRIPTS)
def test_help_prints_usage_and_exits_0(name: str) -> None:
    completed = subprocess.run(
        [console_script(name), "--help"],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"usage: {name}")
    assert completed.stderr == ""


def test_hydrator_without_its_config_says_what_sets_it() -> None:
    completed = subprocess.run(
        [console_script("sidecar-state-hydrator")],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip

    assert completed.returncode != 0
    assert "SIDECAR_STATE_HYDRATOR_CONFIG is not set" in completed.stderr
    assert "sidecar-state inject" in completed.stderr
